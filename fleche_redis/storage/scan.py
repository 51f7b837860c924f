"""Streaming a whole store in bounded pages: the shared helpers of verify, repair, transform and gc.

The client holds one page or batch at a time; see ``docs/maintenance.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from fleche.digest import DIGEST_LENGTH, Digest

from ..transport.redispy import Client
from ..transport.request import send
from .codec import Codec
from .keys import KeyLayout

__all__ = ["BATCH", "Progress", "Store", "quiet", "batches", "shard_members", "data_keys"]

Progress = Callable[[str, int, "int | None"], None]
"""``progress(stage, done, total)``; *total* may be ``None`` (unknown)."""

BATCH = 500
"""Entries handled per pipelined round trip (read when used, so tests may lower it)."""


class Store(Protocol):
    """What whole-store work needs of a storage (a :class:`~.backend.RedisBackend`)."""

    namespace: str
    server: str
    layout: KeyLayout
    codec: Codec

    def redis(self) -> Any: ...

    def count(self) -> int: ...

    def list(self) -> Iterator[Digest]: ...

    def evict_many(self, keys: Iterable[Digest]) -> None: ...


def quiet(stage: str, done: int, total: int | None) -> None:
    """The default progress callback: reports nothing."""


def batches(items: Iterable[Any], size: int | None = None) -> Iterator[list[Any]]:
    """*items* in lists of *size* (default :data:`BATCH`); the last may be shorter."""
    size = size or BATCH
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def shard_members(client: Client, key: str, *, raw: bool = False) -> Iterator[Any]:
    """Stream one sorted set's members in lexicographic pages (digests, or bytes if *raw*)."""
    low = b"-"
    while True:
        (page,) = send(client, [("ZRANGEBYLEX", key, low, b"+", "LIMIT", 0, BATCH)])
        for m in page:
            yield m if raw else Digest(m.decode())
        if len(page) < BATCH:
            return
        low = b"(" + page[-1]


def data_keys(storage: Store) -> Iterator[Digest]:
    """Digests of every data key of the storage, found by ``SCAN`` (maintenance only).

    Cursor iteration stays with redis-py (``scan_iter``, ``hscan_iter``): on
    Redis Cluster its ``scan_iter`` visits every primary in turn.
    """
    pattern = storage.layout.data_prefix("??") + "?" * DIGEST_LENGTH
    prefix_len = len(storage.namespace) + len(storage.layout.tag("00")) + 2
    for raw in storage.redis().scan_iter(match=pattern, count=1000):
        digest = raw.decode()[prefix_len:]
        if len(digest) == DIGEST_LENGTH:
            yield Digest(digest)
