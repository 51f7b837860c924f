"""The serializers and compressors a storage's codec can choose, each imported only when chosen.

A serializer is a ``(dumps, loads)`` pair that keeps big buffers out of the
stream (pickle protocol 5); a compressor is known by the magic bytes its
output starts with, so a reader tells compressed entries apart without a
header of ours.  The codec that uses them: :mod:`.codec`.
"""

from __future__ import annotations

import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Compressor", "COMPRESSORS", "SERIALIZERS", "Dumps", "Loads", "available"]


@dataclass(frozen=True)
class Compressor:
    name: str
    magic: tuple[bytes, ...]
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes], bytes]


def _zlib() -> Compressor:
    return Compressor(
        "zlib",
        (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda"),
        lambda b: zlib.compress(b, 1),
        zlib.decompress,
    )


def _zstd() -> Compressor:
    import zstandard

    return Compressor(
        "zstd",
        (b"\x28\xb5\x2f\xfd",),
        zstandard.ZstdCompressor(level=3).compress,
        lambda b: zstandard.ZstdDecompressor().decompress(b),
    )


def _lz4() -> Compressor:
    import lz4.frame

    return Compressor("lz4", (b"\x04\x22\x4d\x18",), lz4.frame.compress, lz4.frame.decompress)


COMPRESSORS: dict[str, Callable[[], Compressor]] = {"zlib": _zlib, "zstd": _zstd, "lz4": _lz4}
"""Compressor name -> loader; zstd and lz4 need the ``zstandard`` / ``lz4`` packages."""


def available() -> list[Compressor]:
    """The compressors this process can read (their packages are installed)."""
    found = []
    for loader in COMPRESSORS.values():
        try:
            found.append(loader())
        except ImportError:
            pass
    return found


Dumps = Callable[[Any, int | None], tuple[bytes, list[memoryview]]]
"""``dumps(value, min_size)``: the stream, and the buffers of *min_size* bytes or more it left out."""
Loads = Callable[[Any, list[Any]], Any]
"""``loads(stream, buffers)``: the value, its out-of-band buffers taken from *buffers*."""


def _pickle() -> tuple[Dumps, Loads]:
    from .pickling import with_buffers

    return (
        lambda value, min_size: with_buffers(pickle.dumps, value, min_size),
        lambda data, buffers: pickle.loads(data, buffers=buffers),
    )


def _cloudpickle() -> tuple[Dumps, Loads]:
    from . import pickling

    return pickling.dumps_buffers, lambda data, buffers: pickle.loads(data, buffers=buffers)


def _dill() -> tuple[Dumps, Loads]:
    try:
        import dill
    except ImportError:  # pragma: no cover - depends on the environment
        raise ValueError("serializer 'dill' needs the dill package: pip install dill") from None
    from .pickling import with_buffers

    return (
        lambda value, min_size: with_buffers(dill.dumps, value, min_size),
        lambda data, buffers: dill.loads(data, buffers=buffers),
    )


SERIALIZERS: dict[str, Callable[[], tuple[Dumps, Loads]]] = {
    "pickle": _pickle,
    "cloudpickle": _cloudpickle,
    "dill": _dill,
}
"""Serializer name -> loader of its ``(dumps, loads)`` pair, imported only when chosen."""
