"""fleche caches that know their storages are Redis: single flight, batched writes, streaming gc.

:class:`RedisCache` changes how a memoized call travels (round trips, leases,
optional write-behind), never what it returns; :func:`redis_cache` builds
one.  How and why: ``docs/cache.md``.
"""

from __future__ import annotations

import atexit
import logging
from dataclasses import dataclass, field
from typing import Any

from fleche.caches import Cache, Rejected
from fleche.call import Call, DigestedCall, LazyCall, PreparedCall
from fleche.digest import DIGEST_LENGTH, Digest
from fleche.storage import SaveError

from .. import runtime
from ..admin import maintenance
from ..storage.backend import CallRedis, RedisBackend, ValueRedis
from ..storage.codec import UndecodableEntry
from ..storage.near import DEFAULT_BYTES, check_size
from ..transport import replicas, wire
from ..transport.batch import Step, write_batch
from ..transport.health import Bursts, kind_of
from . import results, singleflight

__all__ = ["RedisCache", "LeasedCall", "redis_cache"]

logger = logging.getLogger("fleche_redis.caches")


@dataclass
class LeasedCall(PreparedCall):
    """A prepared call that carries its argument writes and, maybe, its record's compute lease.

    The arguments were encoded at ``prepare`` (so the stored bytes are the
    arguments as they were at call time, whatever the body does to them) but
    are sent with the commit's request, or with the abandon's, so a miss costs
    no request of its own between the lookup and the commit.
    """

    lease: singleflight.Lease | None = None
    key: str | None = None
    """The record's lookup key, computed once at prepare (fleche would digest the call again)."""
    pending: list[Step] = field(default_factory=list, repr=False)
    """Argument writes queued at prepare, sent with the commit or the abandon."""

    def to_lookup_key(self) -> Digest:
        return Digest(self.key) if self.key is not None else super().to_lookup_key()

    def take_pending(self) -> list[Step]:
        pending, self.pending = self.pending, []
        return pending

    def abandon(self) -> None:
        already = self._finished
        super().abandon()
        if already:
            return
        # fleche's contract: what prepare stored stays stored (fleche.remote
        # even stores values by prepare + abandon), and the waiters look again.
        try:
            with write_batch() as batch:
                batch.resume(self.take_pending())
                if self.lease is not None:
                    batch.add(
                        self.cache.calls,
                        self.lease.finish_request(singleflight.UNCACHEABLE),
                        (singleflight.FINISH,),
                    )
        except Exception:
            key = self.lease.key if self.lease is not None else self.key
            logger.warning("could not finish the abandoned call %s", key, exc_info=True)


@dataclass(frozen=True)
class RedisCache(Cache):
    """A fleche ``Cache`` with single-flight misses, batched writes and streaming gc.

    Args:
        values: a :class:`~fleche_redis.ValueRedis` (any value storage works,
            without batching).
        calls: a :class:`~fleche_redis.CallRedis` (needed for single flight).
        single_flight: ``False`` makes every worker compute its own misses.
        lease_ttl: seconds a computing worker's lease outlives its last
            renewal (renewed every third of it while the function runs): what
            a crashed worker costs the waiters.  Short, since renewals cost
            nothing per call: one request per ``lease_ttl / 3`` of a long
            computation, none for a short one.
        claim_ttl: seconds a lease taken by ``load`` lives until ``prepare``
            confirms it (a ``load`` not followed by a computation).
        wait_timeout: seconds a waiter waits before computing itself.
        write_behind: return from a miss as soon as the commit's request is
            written, without waiting for Redis to confirm it.  Saves a miss
            the commit's wait (the server's work and the reply's trip); in
            exchange a refused commit (``OOM``, an unreachable server) does
            not raise from the call: it is logged as a warning, counted in
            the storages' ``errors``, releases the waiters, and is raised by
            the thread's next :meth:`flush`.  Only a commit that is one
            request to one server (not Redis Cluster) is posted.
        near_cache_bytes: the bound of each Redis storage's near cache
            (records read lately, and values): the cache uses copies of its
            storages with this bound.  ``None`` (the default) keeps the
            storages' own setting; ``0`` turns the near cache off.  See
            ``docs/near-cache.md``.
        wait_replicas: replicas that must acknowledge each commit (``WAIT``,
            in the commit's own request) within *wait_replicas_timeout*
            seconds; the cache uses copies of its Redis storages with these
            settings.  ``None`` (the default) keeps the storages' own (whose
            default, 0, waits for none).  A commit too few acknowledged is
            refused as any other: the call returns its result uncached (see
            ``docs/cache.md``, Durability).
        require_signature: the cache uses copies of its Redis storages with
            this setting (``True``: no start without a key, see
            ``docs/security.md``); ``None`` (the default) keeps the storages'
            own.  ``FLECHE_REDIS_REQUIRE_SIGNATURE`` applies either way.
    """

    single_flight: bool = field(default=True, kw_only=True)
    lease_ttl: float = field(default=4.5, kw_only=True)
    claim_ttl: float = field(default=2.0, kw_only=True)
    wait_timeout: float = field(default=600.0, kw_only=True)
    write_behind: bool = field(default=False, kw_only=True)
    near_cache_bytes: int | None = field(default=None, kw_only=True)
    wait_replicas: int | None = field(default=None, kw_only=True)
    wait_replicas_timeout: float | None = field(default=None, kw_only=True)
    require_signature: bool | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.near_cache_bytes is not None:
            check_size(self.near_cache_bytes)
        count, timeout = self.wait_replicas, self.wait_replicas_timeout
        replicas.check(
            0 if count is None else count, replicas.DEFAULT_TIMEOUT if timeout is None else timeout
        )
        # The storages own their near caches and their writes; the simplest
        # coherent rule is that the cache's settings are theirs (copies, as
        # storages are frozen).
        names = ("near_cache_bytes", "wait_replicas", "wait_replicas_timeout", "require_signature")
        settings = {n: getattr(self, n) for n in names if getattr(self, n) is not None}
        for name in ("values", "calls"):
            storage = getattr(self, name)
            if not isinstance(storage, RedisBackend):
                continue
            changes = {n: v for n, v in settings.items() if getattr(storage, n) != v}
            if changes:
                object.__setattr__(self, name, storage.replaced(**changes))
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:  # a mixin's, in a subclass: it sees the final storages
            parent()

    # -- reading --------------------------------------------------------------

    def load(self, key: str) -> LazyCall:
        calls = self.calls
        if not (self.single_flight and isinstance(calls, CallRedis) and len(key) == DIGEST_LENGTH):
            return super().load(key)
        # Deliberately outside the per-key operation context: a waiter must not
        # hold the in-process lock the computing thread needs to save.
        record, result = self._lookup(calls, Digest(key))
        if result is None:
            return record.fetch(self)
        return record.fetch(result)

    def _lookup(self, calls: CallRedis, key: Digest) -> tuple[DigestedCall, results.Pushed | None]:
        """The record, and its result when it came along; ``KeyError`` to compute.

        Without the result (``None``), ``load`` leaves it to ``load_value``:
        the value storage reads it by digest, and only if it is read.
        """
        near, since = calls.near_lookup(key)  # a record this process read lately
        if near is not None:
            return near, None  # its result: by digest, from the values' near cache first
        layout = calls.layout
        keys = (layout.data(key), layout.key(key, "lease"), layout.key(key, "waiters"))
        token = singleflight.new_token()
        claim_ms = int(self.claim_ttl * 1000)
        largest = singleflight.MAX_PUSHED_RESULT  # bigger results come as their size
        args = (token, claim_ms, 60_000, *results.result_keys(self.values, calls), largest)
        deadline = runtime.clock() + self.wait_timeout
        counts = calls.channel.metrics  # the lookup reads past calls.get: count as it would
        while True:
            status, payload, *result = calls.channel.run("get", singleflight.LOOKUP, keys, args)
            if status == singleflight.HIT:
                counts.hits += 1
                counts.bytes_in += len(payload)
                record = calls.codec.decode(payload, key=key)
                calls.near_keep(key, payload, since)
                return record, results.pushed(self, record, *result)
            if status == singleflight.CLAIMED:
                counts.misses += 1
                runtime.thread.claims[(id(calls), key)] = singleflight.Lease(
                    calls, key, token, self.lease_ttl
                )
                raise KeyError(key)
            if runtime.clock() >= deadline:
                logger.warning(
                    "waited %g s for %s, computed by another worker; computing it here",
                    self.wait_timeout,
                    key,
                )
                raise KeyError(key)
            message = singleflight.wait_for_record(calls, key, token, int(payload), deadline)
            if message == singleflight.UNCACHEABLE:
                # The result will never be stored (None, or the function
                # raised): every waiter computes now, side by side, unleased.
                counts.misses += 1
                raise KeyError(key)
            if message is not None:
                counts.hits += 1  # computed elsewhere, pushed here
                counts.bytes_in += len(message)
                try:
                    return self._unpack(calls, key, message)
                except UndecodableEntry:
                    pass  # logged; look again

    def _unpack(
        self, calls: CallRedis, key: Digest, message: bytes
    ) -> tuple[DigestedCall, results.Pushed | None]:
        encoded_record, encoded_result = singleflight.unpack(message)
        record = calls.codec.decode(encoded_record, key=key)
        if encoded_result is None or record.result is None:
            return record, None
        return record, results.pushed(self, record, record.result.encode(), encoded_result)

    # -- writing --------------------------------------------------------------

    def prepare(self, call: Call) -> PreparedCall:
        if call.module == "__mp_main__":
            _warn_main_script(call)
        with write_batch() as batch:
            start = len(batch.steps)  # an enclosing batch may hold writes of its own
            digested = call.stash(self.values)
            pending = batch.take(start)
        key = digested.to_lookup_key()
        lease = None
        if self.single_flight and isinstance(self.calls, CallRedis):
            lease = runtime.thread.claims.pop((id(self.calls), key), None)
            if lease is not None:
                # The claim lives claim_ttl; the watchdog makes it a full lease
                # before then, unless the commit comes first (no request at all).
                lease.watch(first=self.claim_ttl / 2)
        return LeasedCall(digested=digested, cache=self, lease=lease, key=key, pending=pending)

    def save(self, call: PreparedCall | Call) -> str:
        lease = call.lease if isinstance(call, LeasedCall) else None
        if lease is None:
            return self._save_batched(call)
        try:
            return self._save_leased(call, lease)
        except BaseException as e:
            if not lease.finished:
                try:
                    lease.finish()  # the waiters look again
                except Exception:
                    logger.debug(
                        "could not release the compute lease of %s", lease.key, exc_info=True
                    )
            if isinstance(e, SaveError):
                raise Rejected(e) from e
            raise

    def flush(self) -> None:
        """Wait for this thread's write-behind commits; raise the first that failed since the last flush.

        Every failure was already logged when it was read; ``flush`` is for
        code that must know its results are stored (the end of a job, a test).
        The exception is the storage's usual one (a
        :class:`~fleche_redis.RedisStorageError`, or a
        :class:`~fleche_redis.SaveRefused` when failing open).  Commits of
        other threads, and of other caches, are theirs to flush.
        """
        wire.settle()
        local = runtime.thread
        kept = local.failures
        mine = [error for cache, error in kept if cache is self]
        if mine:
            local.failures = [(cache, error) for cache, error in kept if cache is not self]
            if len(mine) > 1:
                mine[0].add_note(f"{len(mine) - 1} later write-behind commit(s) failed too")
            raise mine[0]

    def _behind(self, key: str, lease: singleflight.Lease | None) -> _Behind | None:
        return _Behind(self, key, lease) if self.write_behind else None

    def _save_batched(self, call: PreparedCall | Call) -> str:
        try:
            key = call.key if isinstance(call, LeasedCall) else None
            with write_batch(self._behind(key or "?", None)) as batch:
                if isinstance(call, LeasedCall):
                    batch.resume(call.take_pending())
                return super().save(call)
        except SaveError as e:
            # fleche turns Rejected into "returned uncached"; a SaveError from
            # the batched record write would escape after the function ran.
            raise Rejected(e) from e

    def _save_leased(self, call: LeasedCall, lease: singleflight.Lease) -> str:
        # fleche's Cache.save for a prepared call, unrolled to keep the record
        # and the result's bytes for the waiters' message.
        key = call.to_lookup_key()
        with self._operation_context(key), write_batch(self._behind(key, lease)) as batch:
            batch.resume(call.take_pending())
            try:
                digested = call.resolve(self.values)
            except SaveError as e:
                raise Rejected(e) from e
            with self.calls._operation_context(key):
                self.calls.put(digested, key)  # CallRedis.save, with the key known
            encoded = batch.encoded
            record = encoded.get((id(self.calls), key)) or self.calls.codec.encode(digested)
            result = encoded.get((id(self.values), digested.result))
            # A result in buffers (a framed array) is far above what travels
            # with the record: the waiters fetch it, and it is never joined.
            message = singleflight.pack(bytes(record), result if type(result) is bytes else None)
            batch.add(self.calls, lease.finish_request(message), (singleflight.FINISH,))
        return key

    # -- whole-store work -----------------------------------------------------

    def gc(self, *, progress: maintenance.Progress | None = None) -> int:  # type: ignore[override]
        """Evict unreachable values, streaming; returns how many were evicted.

        Unlike fleche's ``Cache.gc`` (which returns the set of evicted digests,
        as large as the garbage), this returns a count: the point is to run on
        stores of millions of entries.
        """
        return maintenance.gc(self, **_progress(progress))

    def redigest(self, *, progress: maintenance.Progress | None = None) -> int:  # type: ignore[override]
        """Re-key records whose digest changed, streaming; returns how many moved."""
        return maintenance.redigest(self, **_progress(progress))


def _warn_main_script(call: Call) -> None:
    """Say once per process and function why a worker never shares results with its parent."""
    warned: set[str] = runtime.per_process("cache.main-script", set)
    if call.name in warned:
        return
    warned.add(call.name)
    logger.warning(
        "memoized function %s is defined in the main script: this worker (spawned) digests it "
        "as module __mp_main__ and the parent as __main__, so they never share results; "
        "define memoized functions in an importable module",
        call.name,
    )


_commit_bursts = Bursts()
"""Refused write-behind commits are logged once per burst, like every storage failure."""

MAX_KEPT_FAILURES = 100
"""Write-behind failures a thread keeps for :meth:`RedisCache.flush` (the rest are only logged)."""


@dataclass(frozen=True)
class _Behind:
    """Where a write-behind commit's failure goes: the log, the waiters, and the thread's next flush."""

    cache: RedisCache
    key: str
    lease: singleflight.Lease | None

    def failed(self, error: BaseException) -> None:
        level, unlogged = _commit_bursts.level(kind_of(error))
        more = f" ({unlogged} more since the last warning)" if unlogged else ""
        logger.log(
            level, "write-behind commit of %s failed; not stored: %s%s", self.key, error, more
        )
        lease = self.lease
        if lease is not None:
            # The bundle stops at a failing step, so its release may not have
            # run: release now (the waiters look again, and one computes).
            try:
                lease.calls.channel.run("lease", lease.finish_request())
            except Exception:
                logger.debug("could not release the compute lease of %s", lease.key, exc_info=True)
        failures = runtime.thread.failures
        if len(failures) < MAX_KEPT_FAILURES:
            failures.append((self.cache, error))


def _settle_at_exit() -> None:
    try:
        wire.settle()  # the main thread's last write-behind commit: report it
    except Exception:
        logger.debug("settling write-behind commits at exit failed", exc_info=True)


atexit.register(_settle_at_exit)


def _progress(progress: Any) -> dict[str, Any]:
    return {"progress": progress} if progress is not None else {}


def redis_cache(
    url: str | None = None,
    namespace: str = "fleche",
    *,
    single_flight: bool = True,
    lease_ttl: float = 4.5,
    claim_ttl: float = 2.0,
    wait_timeout: float = 600.0,
    write_behind: bool = False,
    near_cache_bytes: int = DEFAULT_BYTES,
    wait_replicas: int = 0,
    wait_replicas_timeout: float = replicas.DEFAULT_TIMEOUT,
    **storage_options: Any,
) -> RedisCache:
    """A ready :class:`RedisCache` over a ``ValueRedis`` and a ``CallRedis`` in *namespace*.

    *storage_options* go to both storages (``secret_key``, ``require_signature``,
    ``restricted``, ``compress``, ``ttl``, ``on_error``, ...); *url* defaults to the
    storages' default.
    *near_cache_bytes* bounds each storage's near cache (0: off);
    *wait_replicas* replicas must acknowledge every commit within
    *wait_replicas_timeout* seconds (0: none; see ``docs/cache.md``).
    """
    if url is not None:
        storage_options["url"] = url
    storage_options["near_cache_bytes"] = near_cache_bytes
    storage_options["wait_replicas"] = wait_replicas
    storage_options["wait_replicas_timeout"] = wait_replicas_timeout
    return RedisCache(
        ValueRedis(namespace=namespace, **storage_options),
        CallRedis(namespace=namespace, **storage_options),
        single_flight=single_flight,
        lease_ttl=lease_ttl,
        claim_ttl=claim_ttl,
        wait_timeout=wait_timeout,
        write_behind=write_behind,
        near_cache_bytes=near_cache_bytes,
        wait_replicas=wait_replicas,
        wait_replicas_timeout=wait_replicas_timeout,
    )
