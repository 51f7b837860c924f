"""Bytes in Redis <-> Python objects: serialize, sign, compress, and refuse.

The format is fleche's pickle-file format (``compressed?(pickle +
signature?)``); anything that cannot be verified or decoded is a miss
(:class:`UndecodableEntry`).  Details: ``docs/storage.md``.
"""

from __future__ import annotations

import logging
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleche.security import SignatureError, SignedBytes

from ..errors import UndecodableEntry

logger = logging.getLogger("fleche_redis.codec")

__all__ = ["Codec", "UndecodableEntry", "SERIALIZERS", "COMPRESSORS"]


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


def _available() -> list[Compressor]:
    found = []
    for loader in COMPRESSORS.values():
        try:
            found.append(loader())
        except ImportError:
            pass
    return found


def _pickle() -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    return (lambda v: pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL)), pickle.loads


def _cloudpickle() -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    from . import pickling

    return pickling.dumps, pickle.loads


def _dill() -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    try:
        import dill
    except ImportError:  # pragma: no cover - depends on the environment
        raise ValueError("serializer 'dill' needs the dill package: pip install dill") from None
    return dill.dumps, dill.loads


SERIALIZERS: dict[str, Callable[[], tuple[Callable[[Any], bytes], Callable[[bytes], Any]]]] = {
    "pickle": _pickle,
    "cloudpickle": _cloudpickle,
    "dill": _dill,
}
"""Serializer name -> loader of its ``(dumps, loads)`` pair, imported only when chosen."""


class _CompressionError(Exception):
    pass


@dataclass(frozen=True)
class Codec:
    """Encodes values for one storage: its serializer, signing keys and compression."""

    serializer: str = "cloudpickle"
    secret_key: tuple[bytes, ...] = ()
    compress: bool | str = False
    compress_min_size: int = 512
    dumps: Callable[[Any], bytes] = field(init=False, repr=False, compare=False)
    loads: Callable[[bytes], Any] = field(init=False, repr=False, compare=False)
    signer: SignedBytes = field(init=False, repr=False, compare=False)
    compressor: Compressor | None = field(init=False, repr=False, compare=False)
    readers: tuple[Compressor, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            dumps, loads = SERIALIZERS[self.serializer]()
        except KeyError:
            raise ValueError(
                f"unknown serializer {self.serializer!r}; choose from {sorted(SERIALIZERS)}"
            ) from None
        object.__setattr__(self, "dumps", dumps)
        object.__setattr__(self, "loads", loads)
        object.__setattr__(self, "signer", SignedBytes(self.secret_key))
        name = "zlib" if self.compress is True else self.compress or None
        compressor = None
        if name is not None:
            if name not in COMPRESSORS:
                raise ValueError(f"unknown compression {name!r}; choose from {sorted(COMPRESSORS)}")
            try:
                compressor = COMPRESSORS[name]()
            except ImportError:
                package = {"zstd": "zstandard", "lz4": "lz4"}[name]
                raise ValueError(
                    f"compress={name!r} needs the {package} package: pip install {package}"
                ) from None
        object.__setattr__(self, "compressor", compressor)
        object.__setattr__(self, "readers", tuple(_available()))

    def encode(self, value: Any) -> bytes:
        data = self.signer.dumps(self.dumps(value))
        if self.compressor is not None and len(data) >= self.compress_min_size:
            data = self.compressor.compress(data)
        return data

    def _decompress(self, data: bytes) -> bytes:
        if data[:1] == b"\x80":
            return data  # a pickle (signed or not); no compressor's magic starts so
        head = bytes(data[:4])
        for reader in self.readers:
            if head.startswith(reader.magic):
                return reader.decompress(data)
        if head[:1] not in (b"\x80", b""):
            # Compressed by a compressor this process lacks (or not ours at all).
            names = [r.name for r in self.readers]
            raise _CompressionError(f"unknown encoding {head!r} (readable: {names})")
        return data

    def decode(self, data: bytes, *, key: str = "?") -> Any:
        """Verify and deserialize; a refusal is :class:`UndecodableEntry`."""
        try:
            data = self._decompress(data)
            payload = self.signer.loads(data)
        except SignatureError as e:
            logger.warning(
                "entry %s failed signature verification (%s); treating it as a miss", key, e
            )
            raise UndecodableEntry(key, "signature verification failed") from None
        except Exception as e:
            logger.warning(
                "entry %s is not valid compressed data (%s); treating it as a miss", key, e
            )
            raise UndecodableEntry(key, "corrupt compressed data") from None
        try:
            return self.loads(payload)
        except Exception as e:
            logger.warning(
                "entry %s could not be deserialized (%s: %s); treating it as a miss",
                key,
                type(e).__name__,
                e,
            )
            raise UndecodableEntry(key, "cannot deserialize") from None
