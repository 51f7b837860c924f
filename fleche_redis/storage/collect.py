"""Whole-cache work over a ValueRedis and a CallRedis, streaming: garbage collection and redigest.

gc keeps the reachable set in Redis (one set per value shard) and a flag in
every shard keeps values written meanwhile; redigest re-keys records from a
snapshot of the index.  See ``docs/maintenance.md``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from typing import Any

from fleche.call import DigestedCall
from fleche.digest import Digest
from redis.exceptions import ResponseError

from ..errors import RedisStorageError, UndecodableEntry
from ..transport.redispy import Client
from ..transport.request import send
from . import scan
from .backend import CallRedis, ValueRedis
from .keys import SHARDS, KeyLayout
from .scan import Progress, batches, shard_members
from .snapshot import snapshot_members

logger = logging.getLogger("fleche_redis.maintenance")

__all__ = ["GcAlreadyRunning", "gc", "redigest"]


class GcAlreadyRunning(RuntimeError):
    """Another garbage collection of the same value storage has not finished (or crashed recently)."""


def gc(cache: Any, *, progress: Progress = scan.quiet, max_runtime: float = 6 * 3600) -> int:
    """Evict every value no call record reaches; returns how many were evicted.

    *cache* is a :class:`fleche.caches.Cache` over a :class:`ValueRedis` and a
    :class:`CallRedis`.  The mark phase walks call records and the reference
    lists of destructured values, keeping the reachable set in Redis (one set
    per value shard); the sweep pages through the value index.  While it runs,
    a flag in every value shard makes each value *written* meanwhile part of
    the reachable set, so results saved during the collection survive it.

    Argument values stored by a call that started before the collection and
    files its record after it may be collected; its result and record are
    kept, so the memoized call still hits.  *max_runtime* bounds how long the
    flags (and thus the lock against a second collection) outlive a crash.
    """
    values, calls = cache.values, cache.calls
    if not isinstance(values, ValueRedis) or not isinstance(calls, CallRedis):
        raise TypeError("fleche_redis.maintenance.gc needs a Cache over ValueRedis and CallRedis")
    run = secrets.token_hex(6)
    client, layout = values.redis(), values.layout
    flags = send(
        client, [("SET", layout.gc_flag(s), run, "EX", int(max_runtime), "NX") for s in SHARDS]
    )
    if not all(flags):
        _release_flags(client, layout, run)
        raise GcAlreadyRunning(
            f"a garbage collection of namespace {values.namespace!r} is already running"
        )
    try:
        _mark_phase(calls, values, run, progress)
        return _sweep(values, run, progress)
    finally:
        _release_flags(client, layout, run)


def _mark_key(layout: KeyLayout, run: str, shard: str) -> str:
    """The set of marked (reachable) digests of *shard* for this collection."""
    return f"{layout.gc_flag(shard)}:{run}"


def _mark_phase(calls: CallRedis, values: ValueRedis, run: str, progress: Progress) -> None:
    """Mark every value a call record reaches, one batch of records at a time."""
    total = calls.count()
    done = 0
    for batch in batches(calls.list()):
        roots: set[str] = set()
        for record in _load_records(calls, batch):
            roots.update(str(d) for d in record.arguments.values())
            if record.result is not None:
                roots.add(str(record.result))
        _mark(values, run, roots)
        done += len(batch)
        progress("mark", done, total)


def _sweep(values: ValueRedis, run: str, progress: Progress) -> int:
    """Evict every indexed value not marked; how many were evicted."""
    client, layout = values.redis(), values.layout
    evicted = seen = 0
    total = values.count()
    for shard in SHARDS:
        for batch in batches(_members_or_none(client, layout.index(shard))):
            members = [bytes.fromhex(k) for k in batch]
            (marked,) = send(client, [("SMISMEMBER", _mark_key(layout, run, shard), *members)])
            doomed = [k for k, is_marked in zip(batch, marked, strict=True) if not is_marked]
            if doomed:
                values.evict_many(doomed)
                evicted += len(doomed)
            seen += len(batch)
            progress("sweep", seen, total)
    return evicted


def _members_or_none(client: Client, key: str) -> Iterator[Digest]:
    """The shard's members; none when a foreign key took it over (logged: repair removes it)."""
    try:
        yield from shard_members(client, key)
    except ResponseError as e:
        if not str(e).startswith("WRONGTYPE"):
            raise
        logger.warning("gc skips %s: %s; run repair", key, e)


def _release_flags(client: Client, layout: KeyLayout, run: str) -> None:
    for chunk in batches(SHARDS, 64):
        owned = send(client, [("GET", layout.gc_flag(s)) for s in chunk])
        mine = [s for s, value in zip(chunk, owned, strict=True) if value == run.encode()]
        # One key per DEL: cluster pipelines refuse multi-key deletes.
        doomed = [key for s in mine for key in (layout.gc_flag(s), _mark_key(layout, run, s))]
        send(client, [("DEL", key) for key in doomed])


def _load_records(calls: CallRedis, keys: list[Digest]) -> Iterator[DigestedCall]:
    layout = calls.layout
    found = send(calls.redis(), [("HGET", layout.data(k), "v") for k in keys], raise_errors=False)
    for key, data in zip(keys, found, strict=True):
        if data is None or isinstance(data, Exception):  # gone, or a foreign key
            continue
        try:
            yield calls.codec.decode(data, key=key)
        except UndecodableEntry:
            continue


def _mark(values: ValueRedis, run: str, roots: set[str]) -> None:
    """Add *roots* and every value they reach through reference lists to the mark sets."""
    client, layout = values.redis(), values.layout
    frontier = sorted(roots)
    while frontier:
        added = send(
            client, [("SADD", _mark_key(layout, run, d[:2]), bytes.fromhex(d)) for d in frontier]
        )
        fresh = [d for d, new in zip(frontier, added, strict=True) if new]
        if not fresh:
            return
        refs = [layout.references_of(d) for d in fresh]
        children = send(
            client,
            [("HGET", key, d) for key, d in zip(refs, fresh, strict=True)],
            raise_errors=False,
        )
        for key, reply in zip(refs, children, strict=True):
            if isinstance(reply, Exception):
                # Without this list, values it reaches would look unreachable.
                raise RedisStorageError(
                    f"gc stopped before sweeping: {key} is unreadable ({reply}); run repair "
                    "first (collecting without it could evict values still in use)",
                    operation="gc",
                    server=values.server,
                ) from reply
        frontier = sorted(
            {raw[i : i + 32].hex() for raw in children if raw for i in range(0, len(raw), 32)}
        )


def redigest(cache: Any, *, progress: Progress = scan.quiet) -> int:
    """fleche's ``Cache.redigest``, streaming; returns how many records changed key."""
    calls = cache.calls
    if not isinstance(calls, CallRedis):
        raise TypeError(
            "fleche_redis.maintenance.redigest needs a Cache whose calls are a CallRedis"
        )
    moved = 0
    for key in snapshot_members(calls, progress, "redigest"):
        try:
            loaded = cache.load(key).fetch()
        except KeyError:
            continue
        new_key = loaded.to_lookup_key()
        if new_key == key:
            continue
        first, second = sorted((key, new_key))
        with cache._operation_context(first), cache._operation_context(second):
            cache.save(loaded)
            cache.evict(key)
        moved += 1
    return moved
