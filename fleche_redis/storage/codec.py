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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn

from fleche.security import SignatureError, SignedBytes

from ..errors import UndecodableEntry
from ..transport.gather import Gather
from . import trust
from .formats import COMPRESSORS, SERIALIZERS, Compressor, Dumps, Loads, available

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
        object.__setattr__(self, "readers", tuple(available()))
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

    def _key_index(self, body: Any, tag: bytes, *, hexed: bool) -> int:
        """The index in ``secret_key`` of the key whose HMAC of *body* is *tag*.

        0 is the key that signs; a later one is kept only to read entries
        signed before a rotation (fleche's ``new:old``).
        """
        for index, key in enumerate(self.secret_key):
            mac = hmac.new(key, body, hashlib.sha256)
            expected = mac.hexdigest().encode("ascii") if hexed else mac.digest()
            if hmac.compare_digest(expected, tag):
                return index
        raise SignatureError("Invalid signature")

    def _compressor_of(self, data: bytes | bytearray) -> Compressor | None:
        """The compressor whose magic *data* starts with; ``None`` for a pickle (signed or not)."""
        if data[:1] == b"\x80":
            return None  # no compressor's magic starts so
        head = bytes(data[:4])
        for reader in self.readers:
            if head.startswith(reader.magic):
                return reader
        if head:
            # Compressed by a compressor this process lacks (or not ours at all).
            names = [r.name for r in self.readers]
            raise _CompressionError(f"unknown encoding {head!r} (readable: {names})")
        return None

    def _decompress(self, data: bytes | bytearray) -> bytes | bytearray:
        compressor = self._compressor_of(data)
        # decompress returns the same object when given bytes
        return data if compressor is None else compressor.decompress(bytes(data))

    def _split(self, data: bytes | bytearray) -> tuple[memoryview, bytes]:
        """fleche's format: the pickle stream (a view, not copied) and the signature after it."""
        stop = data.rfind(pickle.STOP)
        if stop == -1:
            raise SignatureError("No STOP opcode found")
        view = memoryview(data)
        signature = bytes(view[stop + 1 :])
        if not signature:
            raise _Unsigned("No signature found")
        return view[: stop + 1], signature

    def _verified(self, data: bytes | bytearray) -> Any:
        """fleche's ``SignedBytes.loads`` over a view: the stream without its signature, not copied."""
        if not self.secret_key:
            return data
        stream, signature = self._split(data)
        self._key_index(stream, signature, hexed=True)
        return stream

    def _frame(self, view: memoryview) -> tuple[int, list[tuple[int, int]], int, int]:
        """A framed entry's head: where its stream starts, its buffers, the stream's length, where the tag starts."""
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
        if self.secret_key and not signed:
            raise _Unsigned("No signature found")
        return at, specs, size, end

    def _unframed(self, data: bytes | bytearray) -> tuple[memoryview, list[Any]]:
        """A framed entry's stream and buffers, views into *data*, once its signature verifies."""
        view = memoryview(data)
        at, specs, size, end = self._frame(view)
        if self.secret_key:
            self._key_index(view[:end], bytes(view[end:]), hexed=False)
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

    def _signed(self, data: bytes | bytearray, key: str) -> tuple[int, Callable[[], bytes]]:
        """Which key signed *data* (see :meth:`_key_index`), and how to sign it with the first instead.

        Whatever fails is :class:`UndecodableEntry`, not logged: maintenance counts them.
        """
        try:
            return self._signed_as(data)
        except Exception as e:
            raise UndecodableEntry(key, f"not verified ({type(e).__name__}: {e})") from None

    def _signed_as(self, data: bytes | bytearray) -> tuple[int, Callable[[], bytes]]:
        if data[:1] == FRAMED[:1]:
            view = memoryview(data)
            end = self._frame(view)[3]
            body = view[:end]

            def tagged() -> bytes:
                return bytes(body) + hmac.new(self.secret_key[0], body, hashlib.sha256).digest()

            return self._key_index(body, bytes(view[end:]), hexed=False), tagged
        compressor = self._compressor_of(data)
        stream, signature = self._split(
            data if compressor is None else compressor.decompress(bytes(data))
        )

        def again() -> bytes:
            fresh = bytes(stream) + self._hex_signature(stream)
            return fresh if compressor is None else compressor.compress(fresh)

        return self._key_index(stream, signature, hexed=True), again

    def signed_by(self, data: bytes | bytearray, *, key: str = "?") -> int:
        """Which key signed *data*: its index in ``secret_key`` (0 for a storage without keys).

        0 is the first key, the one that signs; a later one means the entry
        was signed before a rotation.  Nothing is unpickled; an entry no key
        verifies is :class:`UndecodableEntry`.
        """
        if not self.secret_key:
            return 0
        return self._signed(data, key)[0]

    def resigned(self, data: bytes | bytearray, *, key: str = "?") -> bytes | None:
        """*data* signed with the first key, or ``None`` when it already is (or nothing is signed).

        Only an entry one of the keys verifies is signed again
        (:class:`UndecodableEntry` otherwise), and nothing is unpickled: the
        stream stays byte for byte, only its signature changes (a compressed
        entry is compressed again by the same compressor), so re-signing
        needs none of the classes the entries hold.
        """
        if not self.secret_key:
            return None
        index, again = self._signed(data, key)
        return again() if index else None

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
