"""The near cache: entries this process read lately, kept as their encoded bytes, bounded in bytes.

Values are content-addressed (a digest names one content forever), so a
value held here is never stale: :class:`NearCache` keeps them
unconditionally.  Call records change (a rerun, an evict, a repair), so
:class:`TrackedNearCache` serves them only while Redis's server-assisted
client-side caching tells this process of every change (see
:mod:`fleche_redis.transport.tracking`), and forgets them all when it cannot.

Entries are the bytes as Redis holds them, decoded again on each hit: the
size accounting is exact (their lengths, plus what Python spends per entry),
callers never share a mutable object, and the signature is verified on every
hit as on every read.  Eviction is LRU by
bytes; a forked child starts empty.  Why and how: ``docs/near-cache.md``.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from fleche.call import DigestedCall
from fleche.digest import Digest

from .. import runtime
from ..errors import UndecodableEntry
from ..transport import tracking
from ..transport.connection import ClientSlot
from .keys import SHARDS, KeyLayout

__all__ = [
    "NearCache",
    "TrackedNearCache",
    "NearRecordsMixin",
    "near_cache",
    "DEFAULT_BYTES",
    "check_size",
]

logger = logging.getLogger("fleche_redis.near")

VALUES = "v"
"""The keyspace of values (``ValueRedis.keyspace``), the one whose entries never change."""

DEFAULT_BYTES = 64 * 2**20
"""A storage's default bound (``near_cache_bytes``); 0 turns the near cache off."""

ENTRY_OVERHEAD = 288
"""Bytes an entry costs beyond its data: the digest string, the bytes object's header and
the table's slot (measured with ``tracemalloc`` on CPython 3.11: 212 to 270, by how full the table is and how small the entries)."""


def check_size(size: object) -> int:
    """Return *size* if it is a byte count (an ``int`` >= 0), else raise ``ValueError``."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"near_cache_bytes must be an int >= 0 (0: off), not {size!r}")
    return size


class NearCache:
    """Encoded entries by digest, least recently used first, within *capacity* bytes.

    Thread-safe; an entry larger than the whole capacity is never kept.
    """

    state = "values"
    """What ``metrics()`` reports as ``near_records``: how records are cached here."""

    def __init__(self, capacity: int) -> None:
        self.capacity = check_size(capacity)
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = runtime.fork_generation()
        self.size = 0
        """Bytes held now: the entries' lengths plus :data:`ENTRY_OVERHEAD` each."""
        self.hits = self.misses = self.evictions = self.invalidations = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        """The bytes kept for *key*, made most recently used; ``None`` if not kept."""
        if not self.capacity:
            return None
        with self._locked():
            data = self._entries.get(key)
            if data is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return data

    def keep(self, key: str, data: bytes | bytearray, since: int = 0) -> None:
        """Keep *data* read for *key* (by a read that :meth:`began` at *since*).

        A big reply arrives as a ``bytearray`` whose memory backs the arrays
        decoded from it (the codec decodes views), which the caller may
        change: the near cache keeps ``bytes`` of its own.
        """
        size = len(data) + ENTRY_OVERHEAD
        if size > self.capacity:
            return
        if isinstance(data, bytearray):
            data = bytes(data)
        with self._locked():
            if not self._may_keep(key, since):
                return
            old = self._entries.pop(key, None)
            if old is not None:
                self.size -= len(old) + ENTRY_OVERHEAD
            # Room first, then the entry: the count never passes the bound,
            # even for a reader that looks without the lock (metrics).
            while self.size + size > self.capacity:
                _, dropped = self._entries.popitem(last=False)
                self.size -= len(dropped) + ENTRY_OVERHEAD
                self.evictions += 1
            self._entries[key] = data
            self.size += size

    def began(self) -> int:
        """Call before a read whose bytes may be kept; pass the result to :meth:`keep`."""
        return 0

    def drop(self, keys: Iterable[str]) -> None:
        """Forget *keys* (this process changed them, or Redis said another one did)."""
        with self._locked():
            self._drop(keys)

    def clear(self) -> None:
        """Forget everything."""
        with self._locked():
            self._clear()

    def stats(self) -> dict[str, Any]:
        """The near cache's figures for ``metrics()``."""
        return {
            "near_hits": self.hits,
            "near_misses": self.misses,
            "near_bytes": self.size,
            "near_entries": len(self._entries),
            "near_evictions": self.evictions,
            "near_invalidations": self.invalidations,
            "near_records": self.state,
        }

    # -- under the lock -------------------------------------------------------

    def _may_keep(self, key: str, since: int) -> bool:
        return True

    def _drop(self, keys: Iterable[str]) -> None:
        entries = self._entries
        for key in keys:
            data = entries.pop(key, None)
            if data is not None:
                self.size -= len(data) + ENTRY_OVERHEAD
                self.invalidations += 1

    def _clear(self) -> None:
        self.invalidations += len(self._entries)
        self._entries.clear()
        self.size = 0

    def _locked(self) -> threading.Lock:
        """The lock, after forgetting what a parent process left (its lock may be held by a thread
        that does not exist here; its entries are tracked for nobody here)."""
        if self._generation != runtime.fork_generation():
            with runtime.per_process("storage.near.fork", threading.Lock):
                generation = runtime.fork_generation()
                if self._generation != generation:
                    self._lock = threading.Lock()
                    self._forked()
                    self._generation = generation
        return self._lock

    def _forked(self) -> None:
        self._entries.clear()
        self.size = 0
        self._restart()

    def _restart(self) -> None:
        """What else a forked child forgets (a hook)."""


class TrackedNearCache(NearCache):
    """A near cache of entries that change, served only while their changes are tracked.

    *watch* is called once per process with this cache, on first use: it
    subscribes it to an invalidation listener (:meth:`tracking_started`,
    :meth:`invalidated`, :meth:`tracking_stopped`) and returns ``False``
    where tracking is unavailable (fakeredis, Redis Cluster), and then
    nothing is ever kept.  *digest_of* turns an invalidated key name into
    the digest it holds, or ``None`` for keys that hold no entry.

    A read races an invalidation of the key it reads: the reply may be the
    old bytes while the invalidation has already been handled.  Each read
    takes a sequence number first (:meth:`began`); an invalidation bumps the
    sequence and remembers the key's number, and :meth:`keep` refuses bytes
    whose read began before the last invalidation of their key (or before
    tracking last (re)started).
    """

    RECENT = 4096
    """Invalidated keys remembered for racing reads; an older read than the oldest is refused."""

    def __init__(
        self,
        capacity: int,
        watch: Callable[[TrackedNearCache], bool],
        digest_of: Callable[[bytes], str | None],
    ) -> None:
        super().__init__(capacity)
        self._watch = watch
        self._digest_of = digest_of
        self._watched = -1  # the fork generation whose listener this cache is subscribed to
        self._available = True
        self._live = False
        self._seq = 0
        self._floor = 0  # reads that began before this number are never kept
        self._recent: OrderedDict[str, int] = OrderedDict()

    @property
    def state(self) -> str:  # type: ignore[override]
        if not self.capacity:
            return "off"
        if not self._available:
            return "untracked"
        return "tracked" if self._live else "waiting"

    @property
    def live(self) -> bool:
        """Whether entries are served and kept now (tracking is running in this process)."""
        return self._live and self._watched == runtime.fork_generation()

    def get(self, key: str) -> bytes | None:
        if not self.capacity or not self._subscribed():
            return None
        return super().get(key)

    def began(self) -> int:
        if not self.capacity or not self._subscribed():
            return -1
        return self._seq

    def _subscribed(self) -> bool:
        """Whether tracking runs; subscribes on first use in each process."""
        if self._watched != runtime.fork_generation():
            with self._locked():
                if self._watched == self._generation:
                    return self._live
                self._watched = self._generation
            try:
                self._available = self._watch(self)
            except Exception:  # a read must not fail for want of tracking
                logger.warning("cannot track call records; they are not near-cached", exc_info=True)
                self._available = False
        return self._live

    def _may_keep(self, key: str, since: int) -> bool:
        if not self._live or since < self._floor:
            return False
        last = self._recent.get(key)
        return last is None or last <= since

    def _restart(self) -> None:
        self._live = False
        self._recent.clear()
        self._floor = self._seq = self._seq + 1

    # -- the listener's calls -------------------------------------------------

    def tracking_started(self) -> None:
        """The listener is tracking every change: entries read from now on may be kept."""
        with self._locked():
            self._seq += 1
            self._floor = self._seq
            self._recent.clear()
            self._live = True

    def tracking_stopped(self) -> None:
        """The listener lost its connection: changes may go unseen, so forget and keep nothing."""
        with self._locked():
            self._live = False
            self._seq += 1
            self._floor = self._seq
            self._clear()

    def tracking_ended(self) -> None:
        """The listener gave up on the server: keep nothing, and subscribe again on the next read."""
        self.tracking_stopped()
        with self._locked():
            self._watched = -1

    def invalidated(self, names: list[bytes] | None) -> None:
        """Redis says the keys *names* changed (``None``: every key, as after ``FLUSHALL``)."""
        with self._locked():
            self._seq += 1
            if names is None:
                self._floor = self._seq
                self._recent.clear()
                self._clear()
                return
            self._remember([d for d in map(self._digest_of, names) if d is not None])

    def drop(self, keys: Iterable[str]) -> None:
        # This process changes them: also refuse the reads that race the change.
        keys = list(keys)
        with self._locked():
            self._seq += 1
            self._remember(keys)

    def _remember(self, digests: list[str]) -> None:
        recent, seq = self._recent, self._seq
        for digest in digests:
            recent[digest] = seq
            recent.move_to_end(digest)
        while len(recent) > self.RECENT:
            _, forgotten = recent.popitem(last=False)
            self._floor = max(self._floor, forgotten)
        self._drop(digests)


def near_cache(capacity: int, slot: ClientSlot, layout: KeyLayout) -> NearCache:
    """A storage's near cache: plain for values (content-addressed: the bytes under a
    digest never change), tracked under the keyspace's prefix for anything else."""
    if layout.keyspace == VALUES:
        return NearCache(capacity)
    # Only the data keys: a digest starts with its shard's characters, which no
    # helper key of a shard (lease, waiters, wake, index, terms, refs, gc)
    # does, so every miss's lease and index traffic stays off the listener.
    prefixes = tuple(layout.data_prefix(shard) + shard for shard in SHARDS)

    def digest_of(name: bytes) -> str | None:
        digest = name[-64:].decode("ascii", "replace")
        return digest if name.decode("ascii", "replace") == layout.data(digest) else None

    def watch(near: TrackedNearCache) -> bool:
        return tracking.watch(slot, prefixes, near)

    return TrackedNearCache(capacity, watch, digest_of)


class NearRecordsMixin:
    """What a call-record storage adds for its near cache: local drops, and the cache's lookup.

    A record's ``put`` drops the key before the write, so this thread reads
    its own rerun at once (other processes learn of it from tracking);
    :meth:`near_lookup` and :meth:`near_keep` serve
    :class:`~fleche_redis.RedisCache`, whose lookup reads records past ``get``.
    """

    near: NearCache
    codec: Any
    channel: Any

    def put(self, value: Any, key: Digest) -> Digest:
        self.near.drop((key,))
        return super().put(value, key)  # type: ignore[misc]

    def near_lookup(self, key: Digest) -> tuple[DigestedCall | None, int]:
        """The record held for *key* (or ``None``), and the number to :meth:`near_keep` with."""
        near = self.near
        since = near.began()
        data = near.get(key)
        if data is None:
            return None, since
        self.channel.metrics.hits += 1
        try:
            return self.codec.decode(data, key=key), since
        except UndecodableEntry:  # pragma: no cover - kept bytes decoded once already
            near.drop((key,))
            return None, since

    def near_keep(self, key: Digest, data: bytes, since: int) -> None:
        """Keep a record's bytes that a lookup begun at *since* read (and decoded)."""
        self.near.keep(key, data, since)
