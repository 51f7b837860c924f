"""Whole-store work at scale: verify, repair, garbage-collect, transform, redigest.

Everything here streams: the client holds one page or batch at a time, and
state that grows with the store (the set of reachable values, a snapshot of
the keys to transform) lives in Redis, in keys of the storage's own
namespace and shard slots, deleted when the work ends.  Each function takes a
``progress(stage, done, total)`` callback (``total`` may be ``None``) that
the CLI turns into progress bars.

Scanning the keyspace (``SCAN``) happens only here, in :func:`verify` and
:func:`repair`, to find data keys the index lost; the storages' own
operations never scan.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from fleche.call import DigestedCall
from fleche.digest import DIGEST_LENGTH, Digest

from ..storage import chunks
from ..storage.backend import CallRedis, RedisBackend, ValueRedis
from ..storage.codec import UndecodableEntry
from ..storage.keys import SHARDS
from ..storage.query import TERM_BYTES, record_terms
from ..transport.scripts import pipelined

__all__ = [
    "Report",
    "verify",
    "repair",
    "gc",
    "transform",
    "redigest",
    "Progress",
    "GcAlreadyRunning",
]

Progress = Callable[[str, int, "int | None"], None]

BATCH = 500
"""Entries handled per pipelined round trip."""


def _quiet(stage: str, done: int, total: int | None) -> None:
    pass


def _is_cluster(client: Any) -> bool:
    return isinstance(client, redis.RedisCluster)


@dataclass
class Report:
    """What :func:`verify` found (or :func:`repair` fixed) in one storage.

    Every count is a number of problems; ``examples`` keeps up to five digests
    per kind so a person can look at them.
    """

    storage: str
    entries: int = 0
    dangling_index: int = 0
    """Index members whose data is gone (expired, evicted, or deleted behind our back)."""
    unindexed: int = 0
    """Data keys no index shard lists: invisible to expand, list and gc."""
    stale_terms: int = 0
    """Query-index members pointing at a record that is gone or no longer has that term."""
    missing_terms: int = 0
    """Terms a record has that the query index lacks (queries would miss it)."""
    stale_references: int = 0
    """Reference lists (for gc) of values that are gone."""
    orphan_chunks: int = 0
    """Chunks of big entries whose manifest is gone (a writer died mid-write): wasted memory."""
    undecodable: int = 0
    """Entries that fail signature verification or decoding (left in place)."""
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (
            self.dangling_index
            or self.unindexed
            or self.stale_terms
            or self.missing_terms
            or self.stale_references
            or self.orphan_chunks
        )

    def note(self, kind: str, digest: str, n: int = 1) -> None:
        setattr(self, kind, getattr(self, kind) + n)
        samples = self.examples.setdefault(kind, [])
        if len(samples) < 5:
            samples.append(digest)

    def to_dict(self) -> dict[str, Any]:
        return {
            "storage": self.storage,
            "ok": self.ok,
            "entries": self.entries,
            "dangling_index": self.dangling_index,
            "unindexed": self.unindexed,
            "stale_terms": self.stale_terms,
            "missing_terms": self.missing_terms,
            "stale_references": self.stale_references,
            "orphan_chunks": self.orphan_chunks,
            "undecodable": self.undecodable,
            "examples": self.examples,
        }


def _batches(items: Iterable[Any], size: int = BATCH) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _each(client: Any, items: Iterable[Any], command: Callable[[Any, Any], Any]) -> list[Any]:
    """One pipelined request running ``command(pipe, item)`` for every item; the replies in order."""
    pipe = client.pipeline(transaction=False)
    for item in items:
        command(pipe, item)
    return pipe.execute()


def _evict_many(storage: RedisBackend, keys: list[Digest]) -> None:
    """Evict with the storage's atomic script: pipelined where the server allows scripts in pipelines."""
    client = storage.redis()
    if _is_cluster(client):
        for key in keys:
            storage._delete(client, key)
        return

    def queue(pipe: Any) -> None:
        for key in keys:
            storage._delete(pipe, key)

    pipelined(client, queue, storage._scripts())


def _data_keys(storage: RedisBackend) -> Iterator[Digest]:
    """Digests of every data key of the storage, found by ``SCAN`` (maintenance only)."""
    pattern = f"{storage.layout.data_prefix('??')}" + "?" * DIGEST_LENGTH
    prefix_len = len(storage.namespace) + len(storage.layout.tag("00")) + 2
    for raw in storage.redis().scan_iter(match=pattern, count=1000):
        digest = raw.decode()[prefix_len:]
        if len(digest) == DIGEST_LENGTH:
            yield Digest(digest)


# -- verify / repair ------------------------------------------------------------


def verify(storage: RedisBackend, *, progress: Progress = _quiet) -> Report:
    """Check the storage's invariants without changing anything."""
    return _check(storage, fix=False, progress=progress)


def repair(storage: RedisBackend, *, progress: Progress = _quiet) -> Report:
    """Restore the invariants :func:`verify` checks; the report says what was fixed.

    Dangling index members and stale index terms are removed, unindexed data
    is indexed again, and call records get their query terms back.
    Undecodable entries are counted, not deleted: they may be another
    deployment's (different secret key).
    """
    return _check(storage, fix=True, progress=progress)


def _check(storage: RedisBackend, *, fix: bool, progress: Progress) -> Report:
    report = Report(
        storage=f"{type(storage).__name__}({storage.server}, namespace={storage.namespace!r})"
    )
    total = storage.count()
    client, layout = storage.redis(), storage.layout
    done = 0
    for batch in _batches(storage.list()):
        exists = _each(client, batch, lambda p, k: p.exists(layout.data(k)))
        dead = [k for k, e in zip(batch, exists, strict=True) if not e]
        for k in dead:
            report.note("dangling_index", k)
        report.entries += len(batch) - len(dead)
        if fix and dead:
            _each(client, dead, lambda p, k: p.zrem(layout.index_of(k), k))
        done += len(batch)
        progress("index", done, total)

    seen = 0
    for batch in _batches(_data_keys(storage)):
        scores = _each(client, batch, lambda p, k: p.zscore(layout.index_of(k), k))
        lost = [k for k, score in zip(batch, scores, strict=True) if score is None]
        for k in lost:
            report.note("unindexed", k)
        if fix and lost:
            _each(client, lost, lambda p, k: p.zadd(layout.index_of(k), {k: 0}))
        seen += len(batch)
        progress("data", seen, None)

    _check_chunks(storage, report, fix=fix)
    if isinstance(storage, CallRedis):
        _check_terms(storage, report, fix=fix, progress=progress)
    if isinstance(storage, ValueRedis):
        _check_references(storage, report, fix=fix, progress=progress)
    return report


def _check_chunks(storage: RedisBackend, report: Report, *, fix: bool) -> None:
    """Chunk keys (``<data key>:<n>``) whose data key holds no manifest naming them."""
    client, layout = storage.redis(), storage.layout
    pattern = layout.data_prefix("??") + "?" * DIGEST_LENGTH + ":*"
    for batch in _batches(client.scan_iter(match=pattern, count=1000)):
        owners = [raw.decode().rsplit(":", 1) for raw in batch]
        heads = _each(client, owners, lambda p, o: p.getrange(o[0], 0, 200))
        orphans = []
        for raw, (owner, index), head in zip(batch, owners, heads, strict=True):
            fields = head[len(chunks.MAGIC) :].split() if chunks.is_manifest(head) else []
            if not fields or not index.isdigit() or int(index) >= int(fields[0]):
                orphans.append(raw)
                report.note("orphan_chunks", owner.rsplit(":", 1)[1])
        if fix and orphans:
            _each(client, orphans, lambda p, k: p.delete(k))


def _check_terms(storage: CallRedis, report: Report, *, fix: bool, progress: Progress) -> None:
    client, layout = storage.redis(), storage.layout
    for i, shard in enumerate(SHARDS):
        terms_key = layout.terms(shard)
        expected: set[bytes] = set()
        for batch in _batches(_shard_members(client, layout.index(shard))):
            fetched = _each(client, batch, lambda p, k: p.hmget(layout.data(k), "v", "t"))
            records: list[tuple[Digest, list[bytes], bool]] = []
            for key, (data, stored) in zip(batch, fetched, strict=True):
                if data is None:
                    continue
                try:
                    record = storage.codec.decode(data, key=key)
                except UndecodableEntry:
                    report.undecodable += 1
                    continue
                terms = record_terms(record) if isinstance(record, DigestedCall) else []
                member = bytes.fromhex(key)
                wanted = [t + member for t in terms]
                expected.update(wanted)
                records.append((key, wanted, (stored or b"") == b"".join(terms)))
            present = _each(
                client, [(terms_key, w) for _, w, _ in records if w], lambda p, kw: p.zmscore(*kw)
            )
            scores = iter(present)
            for key, wanted, listed_right in records:
                missing = (
                    [m for m, sc in zip(wanted, next(scores), strict=True) if sc is None]
                    if wanted
                    else []
                )
                if missing or not listed_right:
                    report.note("missing_terms", key, max(1, len(missing)))
                    if fix:
                        client.hset(layout.data(key), "t", b"".join(m[:TERM_BYTES] for m in wanted))
                        if missing:
                            client.zadd(terms_key, dict.fromkeys(missing, 0))
        stale = [m for m in _shard_members(client, terms_key, raw=True) if m not in expected]
        for m in stale:
            report.note("stale_terms", m[TERM_BYTES:].hex())
        if fix and stale:
            for chunk in _batches(stale):
                client.zrem(terms_key, *chunk)
        progress("terms", i + 1, len(SHARDS))


def _check_references(
    storage: ValueRedis, report: Report, *, fix: bool, progress: Progress
) -> None:
    client, layout = storage.redis(), storage.layout
    for i, shard in enumerate(SHARDS):
        refs_key = layout.references(shard)
        for batch in _batches(client.hscan_iter(refs_key, count=BATCH)):
            owners = [owner.decode() for owner, _ in batch]
            exists = _each(client, owners, lambda p, o: p.exists(layout.data(o)))
            gone = [o for o, e in zip(owners, exists, strict=True) if not e]
            for o in gone:
                report.note("stale_references", o)
            if fix and gone:
                client.hdel(refs_key, *gone)
        progress("references", i + 1, len(SHARDS))


def _shard_members(client: Any, key: str, *, raw: bool = False) -> Iterator[Any]:
    """Stream one sorted set's members in lexicographic pages."""
    low = b"-"
    while True:
        page = client.zrangebylex(key, low, b"+", start=0, num=BATCH)
        for m in page:
            yield m if raw else Digest(m.decode())
        if len(page) < BATCH:
            return
        low = b"(" + page[-1]


# -- garbage collection -----------------------------------------------------------


class GcAlreadyRunning(RuntimeError):
    """Another garbage collection of the same value storage has not finished (or crashed recently)."""


def gc(cache: Any, *, progress: Progress = _quiet, max_runtime: float = 6 * 3600) -> int:
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

    def mark_key(shard: str) -> str:
        return f"{layout.gc_flag(shard)}:{run}"

    flags = _each(
        client, SHARDS, lambda p, s: p.set(layout.gc_flag(s), run, nx=True, ex=int(max_runtime))
    )
    if not all(flags):
        _release_flags(client, layout, run)
        raise GcAlreadyRunning(
            f"a garbage collection of namespace {values.namespace!r} is already running"
        )
    try:
        total = calls.count()
        done = 0
        for batch in _batches(calls.list()):
            roots: set[str] = set()
            for record in _load_records(calls, batch):
                roots.update(str(d) for d in record.arguments.values())
                if record.result is not None:
                    roots.add(str(record.result))
            _mark(client, values, mark_key, roots)
            done += len(batch)
            progress("mark", done, total)

        evicted = seen = 0
        vtotal = values.count()
        for shard in SHARDS:
            for batch in _batches(_shard_members(client, layout.index(shard))):
                marked = client.smismember(mark_key(shard), [bytes.fromhex(k) for k in batch])
                doomed = [k for k, is_marked in zip(batch, marked, strict=True) if not is_marked]
                if doomed:
                    _evict_many(values, doomed)
                    evicted += len(doomed)
                seen += len(batch)
                progress("sweep", seen, vtotal)
        return evicted
    finally:
        _release_flags(client, layout, run)


def _release_flags(client: Any, layout: Any, run: str) -> None:
    for chunk in _batches(SHARDS, 64):
        owned = _each(client, chunk, lambda p, s: p.get(layout.gc_flag(s)))
        mine = [s for s, value in zip(chunk, owned, strict=True) if value == run.encode()]
        # One key per DELETE: cluster pipelines refuse multi-key deletes.
        doomed = [key for s in mine for key in (layout.gc_flag(s), f"{layout.gc_flag(s)}:{run}")]
        _each(client, doomed, lambda p, key: p.delete(key))


def _load_records(calls: CallRedis, keys: list[Digest]) -> Iterator[DigestedCall]:
    client, layout = calls.redis(), calls.layout
    for key, data in zip(
        keys, _each(client, keys, lambda p, k: p.hget(layout.data(k), "v")), strict=True
    ):
        if data is None:
            continue
        try:
            yield calls.codec.decode(data, key=key)
        except UndecodableEntry:
            continue


def _mark(client: Any, values: ValueRedis, mark_key: Callable[[str], str], roots: set[str]) -> None:
    """Add *roots* and every value they reach through reference lists to the mark sets."""
    layout = values.layout
    frontier = sorted(roots)
    while frontier:
        added = _each(client, frontier, lambda p, d: p.sadd(mark_key(d[:2]), bytes.fromhex(d)))
        fresh = [d for d, new in zip(frontier, added, strict=True) if new]
        if not fresh:
            return
        children = _each(client, fresh, lambda p, d: p.hget(layout.references_of(d), d))
        frontier = sorted(
            {raw[i : i + 32].hex() for raw in children if raw for i in range(0, len(raw), 32)}
        )


# -- transform / redigest ---------------------------------------------------------


def _snapshot(calls: CallRedis, run: str) -> list[str]:
    """Copy every index shard server-side, so keys written while we work are not visited."""
    client, layout = calls.redis(), calls.layout
    keys = [f"{layout.data_prefix(s)}snapshot:{run}" for s in SHARDS]
    for chunk in _batches(list(zip(SHARDS, keys, strict=True)), 64):
        _each(client, chunk, lambda p, pair: p.zunionstore(pair[1], [layout.index(pair[0])]))
    return keys


def _from_snapshot(calls: CallRedis, progress: Progress, stage: str) -> Iterator[Digest]:
    client = calls.redis()
    run = secrets.token_hex(6)
    keys = _snapshot(calls, run)
    try:
        total = sum(_each(client, keys, lambda p, k: p.zcard(k)))
        done = 0
        for key in keys:
            for digest in _shard_members(client, key):
                yield digest
                done += 1
                if done % BATCH == 0 or done == total:
                    progress(stage, done, total)
    finally:
        for chunk in _batches(keys, 64):
            _each(client, chunk, lambda p, k: p.delete(k))


def transform(
    calls: CallRedis,
    func: Callable[[DigestedCall], DigestedCall] | None = None,
    *,
    progress: Progress = _quiet,
) -> int:
    """fleche's ``CallStorage.transform``, streaming; returns how many records changed key.

    Works from a server-side snapshot of the index, so records it writes under
    new keys are never transformed twice.
    """
    moved = 0
    for key in _from_snapshot(calls, progress, "transform"):
        try:
            call = calls.load(key)
        except KeyError:
            continue
        new_call = func(call) if func is not None else call
        new_key = calls.save(new_call)
        if new_key != key:
            calls.evict(key)
            moved += 1
    return moved


def redigest(cache: Any, *, progress: Progress = _quiet) -> int:
    """fleche's ``Cache.redigest``, streaming; returns how many records changed key."""
    calls = cache.calls
    if not isinstance(calls, CallRedis):
        raise TypeError(
            "fleche_redis.maintenance.redigest needs a Cache whose calls are a CallRedis"
        )
    moved = 0
    for key in _from_snapshot(calls, progress, "redigest"):
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
