"""Bytes in Redis <-> Python objects: serialize, sign, compress, and refuse.

The wire format is fleche's own pickle-file format, so an entry means the
same thing in Redis as on disk::

    zlib?( pickle + hex HMAC-SHA256 signature? )

The signature is :class:`fleche.security.SignedBytes` (appended after the
pickle ``STOP`` opcode, key rotation by trying every key), and the keys follow
fleche's rules: an explicit ``secret_key`` or else ``FLECHE_SECRET_KEY``.
Compression is detected on read by the zlib header (a pickle starts with
``0x80``), so one store can hold both and ``compress`` can change at any time.

Anything that cannot be verified or decoded is a *miss*: :meth:`Codec.decode`
raises :class:`UndecodableEntry` (a ``KeyError``) and logs a warning.  When a
secret key is configured, bytes whose signature fails are never handed to a
deserializer.
"""

from __future__ import annotations

import logging
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleche.security import SignatureError, SignedBytes

logger = logging.getLogger("fleche_redis.codec")

__all__ = ["Codec", "UndecodableEntry", "SERIALIZERS"]

_ZLIB_HEADERS = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")


def _pickle() -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    return (lambda v: pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL)), pickle.loads


def _cloudpickle() -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    import cloudpickle

    return (lambda v: cloudpickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL)), pickle.loads


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


class UndecodableEntry(KeyError):
    """Stored bytes that fail verification or decoding; fleche treats it as a miss."""


@dataclass(frozen=True)
class Codec:
    """Encodes values for one storage: its serializer, signing keys and compression."""

    serializer: str = "cloudpickle"
    secret_key: tuple[bytes, ...] = ()
    compress: bool = False
    compress_level: int = 1
    dumps: Callable[[Any], bytes] = field(init=False, repr=False, compare=False)
    loads: Callable[[bytes], Any] = field(init=False, repr=False, compare=False)
    signer: SignedBytes = field(init=False, repr=False, compare=False)

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

    def encode(self, value: Any) -> bytes:
        data = self.signer.dumps(self.dumps(value))
        if self.compress:
            data = zlib.compress(data, self.compress_level)
        return data

    def decode(self, data: bytes, *, key: str = "?") -> Any:
        """Verify and deserialize; a refusal is :class:`UndecodableEntry`."""
        try:
            if data[:2] in _ZLIB_HEADERS:
                data = zlib.decompress(data)
            payload = self.signer.loads(data)
        except SignatureError as e:
            logger.warning(
                "entry %s failed signature verification (%s); treating it as a miss", key, e
            )
            raise UndecodableEntry(key, "signature verification failed") from None
        except zlib.error as e:
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
