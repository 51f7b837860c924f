"""Bytes in Redis <-> Python objects: serialize, sign, compress, and refuse.

Two formats, told apart by the first byte.  fleche's pickle-file format
(``compressed?(pickle + signature?)``) for most entries; a *framed* entry
(marker ``0xF5``) for values with big buffers (numpy arrays), whose memory
is kept out of the pickle stream (protocol 5) and goes to the socket as it
is, in a :class:`~fleche_redis.transport.gather.Gather`.  Anything that
cannot be verified or decoded is a miss (:class:`UndecodableEntry`), and
nothing is unpickled before its signature verifies.  Layout:
``docs/storage.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import pickle
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn

from fleche.security import SignatureError, SignedBytes

from ..errors import UndecodableEntry
from ..transport.gather import Gather
from . import trust

logger = logging.getLogger("fleche_redis.codec")

__all__ = [
    "Codec",
    "UndecodableEntry",
    "SERIALIZERS",
    "COMPRESSORS",
    "FRAMED",
    "UNSIGNED",
    "RESTRICTED",
    "unsigned_by_ends",
]

Encoded = bytes | Gather
"""What :meth:`Codec.encode` returns: bytes, or buffers to write as one value without joining them."""

FRAMED = b"\xf5\x01"
"""First bytes of a framed entry: the marker (no pickle, compressor or chunk
manifest starts with ``0xF5``) and the format's version."""

_HEAD = struct.Struct(">2sBIQ")  # FRAMED, flags, buffer count, stream length
_BUFFER = struct.Struct(">QB")  # length, flags
_SIGNED = 1  # head flag: a 32-byte HMAC-SHA256 of everything before it ends the entry
_READONLY = 1  # buffer flag: the pickled object's memory was read-only
_TAG = hashlib.sha256().digest_size


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


class _CompressionError(Exception):
    pass


class _CorruptFrame(Exception):
    pass


class _Unsigned(SignatureError):
    """No signature at all, where a key wants one: told apart from a bad one (counted, logged once)."""


UNSIGNED = "unsigned entry"
"""The reason of an :class:`UndecodableEntry` that carries no signature (with a secret key)."""
RESTRICTED = "refused by the restricted reader"
"""The reason of an :class:`UndecodableEntry` whose pickle names a global off the allow-list."""


@dataclass(frozen=True)
class Codec:
    """Encodes values for one storage: its serializer, signing keys and compression."""

    serializer: str = "cloudpickle"
    secret_key: tuple[bytes, ...] = ()
    compress: bool | str = False
    compress_min_size: int = 512
    allowed: trust.Allowed | None = None
    """The restricted reader's allow-list; ``None`` unpickles with the serializer's own ``loads``."""
    counts: Any = field(default=None, repr=False, compare=False)
    """Where refusals are counted (the storage's ``StorageMetrics``), if anywhere."""
    dumps: Dumps = field(init=False, repr=False, compare=False)
    loads: Loads = field(init=False, repr=False, compare=False)
    signer: SignedBytes = field(init=False, repr=False, compare=False)
    compressor: Compressor | None = field(init=False, repr=False, compare=False)
    readers: tuple[Compressor, ...] = field(init=False, repr=False, compare=False)
    warned: set[tuple[str, str]] = field(init=False, repr=False, compare=False)
    """Entries refused by policy and logged already (each is logged once)."""

    OUT_OF_BAND_MIN: ClassVar[int] = 64 * 1024
    """Buffers this big leave the pickle stream (uncompressed entries): a framed entry."""

    def __post_init__(self) -> None:
        try:
            dumps, loads = SERIALIZERS[self.serializer]()
        except KeyError:
            raise ValueError(
                f"unknown serializer {self.serializer!r}; choose from {sorted(SERIALIZERS)}"
            ) from None
        object.__setattr__(self, "dumps", dumps)
        object.__setattr__(self, "loads", loads if self.allowed is None else self.allowed.loads)
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
        object.__setattr__(self, "warned", set())

    def encode(self, value: Any) -> Encoded:
        """The entry for *value*: bytes, or a :class:`Gather` of buffers to send without joining."""
        if self.compressor is None:
            stream, buffers = self.dumps(value, self.OUT_OF_BAND_MIN)
            if buffers:
                return self._framed(stream, buffers)
            if self.secret_key and len(stream) >= self.OUT_OF_BAND_MIN:
                # fleche's format, the signature sent after the stream, not copied onto it.
                return Gather((stream, self._hex_signature(stream)))
            return self.signer.dumps(stream)
        data = self.signer.dumps(self.dumps(value, None)[0])
        if len(data) >= self.compress_min_size:
            data = self.compressor.compress(data)
        return data

    def _framed(self, stream: bytes, buffers: list[memoryview]) -> Gather:
        flags = _SIGNED if self.secret_key else 0
        head = bytearray(_HEAD.pack(FRAMED, flags, len(buffers), len(stream)))
        for view in buffers:
            head += _BUFFER.pack(view.nbytes, _READONLY if view.readonly else 0)
        parts: list[bytes | bytearray | memoryview] = [head, stream, *buffers]
        if flags:
            mac = hmac.new(self.secret_key[0], digestmod=hashlib.sha256)
            for part in parts:
                mac.update(part)
            parts.append(mac.digest())
        return Gather(parts)

    def _hex_signature(self, stream: Any, key: bytes | None = None) -> bytes:
        """fleche's signature (``SignedBytes``): hex HMAC-SHA256, fed the buffer as it is."""
        mac = hmac.new(self.secret_key[0] if key is None else key, stream, hashlib.sha256)
        return mac.hexdigest().encode("ascii")

    def _decompress(self, data: bytes | bytearray) -> bytes | bytearray:
        if data[:1] == b"\x80":
            return data  # a pickle (signed or not); no compressor's magic starts so
        head = bytes(data[:4])
        for reader in self.readers:
            if head.startswith(reader.magic):
                return reader.decompress(bytes(data))  # the same object when bytes
        if head[:1] not in (b"\x80", b""):
            # Compressed by a compressor this process lacks (or not ours at all).
            names = [r.name for r in self.readers]
            raise _CompressionError(f"unknown encoding {head!r} (readable: {names})")
        return data

    def _verified(self, data: bytes | bytearray) -> Any:
        """fleche's ``SignedBytes.loads`` over a view: the stream without its signature, not copied."""
        if not self.secret_key:
            return data
        stop = data.rfind(pickle.STOP)
        if stop == -1:
            raise SignatureError("No STOP opcode found")
        view = memoryview(data)
        stream, signature = view[: stop + 1], bytes(view[stop + 1 :])
        if not signature:
            raise _Unsigned("No signature found")
        for key in self.secret_key:
            if hmac.compare_digest(self._hex_signature(stream, key), signature):
                return stream
        raise SignatureError("Invalid signature")

    def _unframed(self, data: bytes | bytearray) -> tuple[memoryview, list[Any]]:
        """A framed entry's stream and buffers, views into *data*, once its signature verifies."""
        view = memoryview(data)
        if bytes(view[:2]) != FRAMED:
            raise _CorruptFrame(f"unknown format version {bytes(view[:2])!r}")
        if len(view) < _HEAD.size:
            raise _CorruptFrame("truncated head")
        _, flags, count, size = _HEAD.unpack_from(view)
        at = _HEAD.size
        if at + count * _BUFFER.size > len(view):
            raise _CorruptFrame("truncated head")
        specs = [_BUFFER.unpack_from(view, at + i * _BUFFER.size) for i in range(count)]
        at += count * _BUFFER.size
        end = at + size + sum(length for length, _ in specs)
        signed = flags & _SIGNED
        if len(view) != end + (_TAG if signed else 0):
            raise _CorruptFrame("length does not match its head")
        if self.secret_key:
            if not signed:
                raise _Unsigned("No signature found")
            body, tag = view[:end], view[end:]
            if not any(
                hmac.compare_digest(hmac.new(k, body, hashlib.sha256).digest(), tag)
                for k in self.secret_key
            ):
                raise SignatureError("Invalid signature")
        stream = view[at : at + size]
        at += size
        buffers: list[Any] = []
        for length, buffer_flags in specs:
            part = view[at : at + length]
            at += length
            if part.readonly and not buffer_flags & _READONLY:
                # The object's memory was writable (an array a caller may
                # change in place): so is the one it gets back.
                buffers.append(bytearray(part))
            else:
                buffers.append(part)
        return stream, buffers

    def decode(self, data: bytes | bytearray, *, key: str = "?") -> Any:
        """Verify and deserialize; a refusal is :class:`UndecodableEntry`.

        A ``bytearray`` is given away: arrays in the value may be built on its
        memory (no copy), so a caller that keeps the bytes passes ``bytes``.
        """
        try:
            if data[:1] == FRAMED[:1]:
                stream, buffers = self._unframed(data)
            else:
                stream, buffers = self._verified(self._decompress(data)), []
        except _Unsigned:
            self._refused(
                "unsigned_refused", key, UNSIGNED, "no signature, but a secret key is set"
            )
        except SignatureError as e:
            logger.warning(
                "entry %s failed signature verification (%s); treating it as a miss", key, e
            )
            raise UndecodableEntry(key, "signature verification failed") from None
        except _CorruptFrame as e:
            logger.warning(
                "entry %s is not a valid framed entry (%s); treating it as a miss", key, e
            )
            raise UndecodableEntry(key, "corrupt framed entry") from None
        except Exception as e:
            logger.warning(
                "entry %s is not valid compressed data (%s); treating it as a miss", key, e
            )
            raise UndecodableEntry(key, "corrupt compressed data") from None
        try:
            return self.loads(stream, buffers)
        except trust.Refused as e:
            self._refused("restricted_refused", key, RESTRICTED, str(e))
        except Exception as e:
            logger.warning(
                "entry %s could not be deserialized (%s: %s); treating it as a miss",
                key,
                type(e).__name__,
                e,
            )
            raise UndecodableEntry(key, "cannot deserialize") from None

    def _refused(self, counter: str, key: str, reason: str, detail: str) -> NoReturn:
        """Count and log (once per entry) a refusal by policy, and make it a miss."""
        if self.counts is not None:
            setattr(self.counts, counter, getattr(self.counts, counter) + 1)
        trust.warn_once(self.warned, key, reason, detail)
        raise UndecodableEntry(key, reason) from None

    def unsigned(self, data: bytes | bytearray) -> bool:
        """Whether *data* is an entry with no signature (read in full; nothing is unpickled).

        A bare or compressed pickle with nothing after its ``STOP``, or a
        framed entry without the signed flag; a badly signed entry is not.
        """
        if data[:2] == FRAMED:
            return len(data) > len(FRAMED) and not data[len(FRAMED)] & _SIGNED
        try:
            plain = self._decompress(data)
        except Exception:
            return False  # corrupt, or compressed by what this process lacks
        return plain[:1] == b"\x80" and plain[-1:] == pickle.STOP


def unsigned_by_ends(head: bytes, last: bytes) -> bool | None:
    """Whether an entry is unsigned, from its first three bytes and its last; ``None``: read it all.

    Lets ``verify`` tell uncompressed entries apart without reading them.
    """
    if head[:2] == FRAMED and len(head) > 2:
        return not head[2] & _SIGNED
    if head[:1] == b"\x80":
        return last == pickle.STOP  # a signature ends in a hex digit
    return None
