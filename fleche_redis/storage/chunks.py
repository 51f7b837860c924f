"""Entries bigger than one Redis string should be: stored as chunks behind a manifest.

The manifest (count, length, checksum) is written last, so a reader sees a
whole entry or a logged miss, never a partial value.  Details:
``docs/storage.md``.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from ..transport.request import call
from .codec import UndecodableEntry

__all__ = ["MAGIC", "is_manifest", "write", "read"]

logger = logging.getLogger("fleche_redis.chunks")

MAGIC = b"\x00fleche-redis-chunks "
"""Manifests start with a zero byte, which no pickle or compressed entry does."""


def is_manifest(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


def _checksum(data: bytes | bytearray | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def write(client: Any, data_key: str, data: bytes, chunk_size: int, ttl_ms: int) -> bytes:
    """Write the chunks of *data* (one request each); return the manifest to store at *data_key*."""
    view = memoryview(data)
    count = 0
    for offset in range(0, len(data), chunk_size):
        client.set(f"{data_key}:{count}", view[offset : offset + chunk_size], px=ttl_ms or None)
        count += 1
    return MAGIC + f"{count} {len(data)} {_checksum(view)}".encode()


def read(client: Any, data_key: str, manifest: bytes, key: str) -> bytes:
    """Reassemble the entry a manifest describes, or raise :class:`UndecodableEntry`."""
    count, total, checksum = manifest[len(MAGIC) :].decode().split()
    out = bytearray()
    for i in range(int(count)):
        chunk = call(client, "GET", f"{data_key}:{i}")
        if chunk is None:
            logger.warning("entry %s lost chunk %d of %s; treating it as a miss", key, i, count)
            raise UndecodableEntry(key, "chunk missing")
        out += chunk
    if len(out) != int(total) or _checksum(out) != checksum:
        logger.warning("entry %s changed while it was read; treating it as a miss", key)
        raise UndecodableEntry(key, "chunks inconsistent")
    return bytes(out)
