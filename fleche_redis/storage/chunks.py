"""Entries bigger than one Redis string should be: stored as chunks behind a manifest.

The manifest (count, length, checksum) is written last, so a reader sees a
whole entry or a logged miss, never a partial value.  Details:
``docs/storage.md``.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from ..transport.gather import Gather
from ..transport.request import call
from .codec import UndecodableEntry

__all__ = ["MAGIC", "is_manifest", "write", "read"]

logger = logging.getLogger("fleche_redis.chunks")

MAGIC = b"\x00fleche-redis-chunks "
"""Manifests start with a zero byte, which no pickle or compressed entry does."""


def is_manifest(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


def write(client: Any, data_key: str, data: bytes | Gather, chunk_size: int, ttl_ms: int) -> bytes:
    """Write the chunks of *data* (one request each); return the manifest to store at *data_key*.

    A chunk lying within one buffer is sent from it as it is; only one that
    straddles two (a framed entry's head and its array) is copied.
    """
    whole = data if isinstance(data, Gather) else Gather((data,))
    checksum = hashlib.blake2b(digest_size=16)
    count = 0
    for piece in whole.slices(chunk_size):
        for part in piece.parts:
            checksum.update(part)
        value = piece.parts[0] if len(piece.parts) == 1 else bytes(piece)
        client.set(f"{data_key}:{count}", value, px=ttl_ms or None)
        count += 1
    return MAGIC + f"{count} {len(whole)} {checksum.hexdigest()}".encode()


def read(client: Any, data_key: str, manifest: bytes, key: str) -> bytearray:
    """Reassemble the entry a manifest describes, or raise :class:`UndecodableEntry`.

    The entry comes back as the ``bytearray`` it was assembled in (not
    copied once more), so a framed entry's writable buffers need no copy.
    """
    count, total, checksum = manifest[len(MAGIC) :].decode().split()
    out = bytearray()
    for i in range(int(count)):
        chunk = call(client, "GET", f"{data_key}:{i}")
        if chunk is None:
            logger.warning("entry %s lost chunk %d of %s; treating it as a miss", key, i, count)
            raise UndecodableEntry(key, "chunk missing")
        out += chunk
    if len(out) != int(total) or hashlib.blake2b(out, digest_size=16).hexdigest() != checksum:
        logger.warning("entry %s changed while it was read; treating it as a miss", key)
        raise UndecodableEntry(key, "chunks inconsistent")
    return out
