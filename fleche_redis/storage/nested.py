"""Mending a destructured value: its parts fetched a level of nesting per request.

fleche mends a destructured container by loading its parts one by one;
:func:`mend` fetches every part of one level in one pipelined request (parts
this process holds in its near cache cost none), so a value nested *n* levels
deep costs at most *n* + 1 requests, not one per part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleche.digest import Digest
from fleche.storage.destructuring import Digested

from ..transport.request import send
from . import chunks

if TYPE_CHECKING:
    from .backend import ValueRedis

__all__ = ["mend"]


def mend(storage: ValueRedis, raw: Digested) -> Any:
    """*raw*'s value, with every part read from *storage* (a missing part: ``KeyError``, as in fleche)."""
    parts: dict[str, Any] = {}
    frontier = storage._raw_sub_digests(raw)
    near = storage.near
    while frontier:
        held = {digest: near.get(digest) for digest in frontier}
        wanted = sorted(digest for digest, data in held.items() if data is None)
        found = storage.channel.run("get", _pipelined_reads, storage, wanted) if wanted else []
        held.update(zip(wanted, found, strict=True))
        frontier = set()
        for digest, data in held.items():
            if data is None:
                continue  # mend() will miss it, as fleche's own load would
            part = parts[digest] = storage.codec.decode(data, key=digest)
            near.keep(digest, data)  # decoded: the bytes are sound
            if isinstance(part, Digested):
                frontier |= {d for d in storage._raw_sub_digests(part) if d not in parts}
    return raw.mend(_Parts(parts))


def _pipelined_reads(
    client: Any, storage: ValueRedis, keys: list[str]
) -> list[bytes | bytearray | None]:
    # One by one on Cluster, as before: each routed to its node.
    found = send(client, [("GET", storage.layout.data(key)) for key in keys], ordered=True)
    # Chunked entries hold a manifest here; they are read in full separately.
    return [
        storage._read(client, Digest(key))
        if data is not None and chunks.is_manifest(data)
        else data
        for key, data in zip(keys, found, strict=True)
    ]


@dataclass(frozen=True)
class _Parts:
    """What ``Digested.mend`` loads parts from: the parts fetched ahead, mended in turn."""

    parts: dict[str, Any]

    def load(self, key: str) -> Any:
        part = self.parts[key]  # KeyError: a missing part, a miss as in fleche
        return part.mend(self) if isinstance(part, Digested) else part
