"""One command argument made of several buffers, written to the socket without being joined.

An entry encoded with out-of-band buffers is a header, a pickle stream and
the buffers themselves (a numpy array's memory).  Joining them would copy
every byte once more before the kernel copies them into the socket; the
wire's framing writes a :class:`Gather` as one bulk string, part after part.
Paths that cannot frame it (redis-py's own packers: Cluster, pipelines)
take ``bytes(gather)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

__all__ = ["Gather"]


@dataclass(frozen=True, eq=False)
class Gather:
    """Byte buffers that make one value, in order; ``len()`` is their total size."""

    parts: tuple[memoryview, ...]
    nbytes: int = field(init=False)

    def __init__(self, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        views = tuple(_flat(p) for p in parts)
        object.__setattr__(self, "parts", views)
        object.__setattr__(self, "nbytes", sum(v.nbytes for v in views))

    def __len__(self) -> int:
        return self.nbytes

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)

    def slices(self, size: int) -> Iterator[Gather]:
        """Consecutive pieces of at most *size* bytes (chunked entries), sharing the parts' memory."""
        piece: list[memoryview] = []
        room = size
        for view in self.parts:
            while view.nbytes:
                taken, view = view[:room], view[room:]
                piece.append(taken)
                room -= taken.nbytes
                if not room:
                    yield Gather(piece)
                    piece, room = [], size
        if piece:
            yield Gather(piece)


def _flat(part: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(part)
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")
