"""verify / repair / gc / transform / redigest on real stores, fakeredis and a cluster."""

import fakeredis
import pytest
from fleche.caches import Cache
from fleche.call import Call, DigestedCall
from fleche.digest import digest

from fleche_redis import CallRedis, ValueRedis
from fleche_redis.admin import maintenance
from fleche_redis.admin.maintenance import GcAlreadyRunning
from fleche_redis.storage import scan


@pytest.fixture(params=["fakeredis", "redis-server", "cluster", "sentinel"])
def cache(request, namespace):
    if request.param == "fakeredis":
        conn = {"client": fakeredis.FakeRedis(server=fakeredis.FakeServer())}
    elif request.param == "cluster":
        conn = {"url": request.getfixturevalue("redis_cluster").url}
    elif request.param == "sentinel":
        conn = {"url": request.getfixturevalue("redis_sentinel").url}
    else:
        conn = {"url": request.getfixturevalue("redis_server").url}
    return Cache(ValueRedis(namespace=namespace, **conn), CallRedis(namespace=namespace, **conn))


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(scan, "BATCH", 3)


def fill(cache, n=12):
    keys = []
    for i in range(n):
        keys.append(
            cache.save(Call("f", {"x": i, "nested": [i, [i, "deep"]]}, result={"y": i * i}))
        )
    return keys


def test_healthy_store_verifies(cache, small_batches):
    fill(cache)
    for storage in (cache.values, cache.calls):
        report = storage.verify()
        assert report.ok, report.to_dict()
        assert report.entries == storage.count()


def test_verify_and_repair_find_and_fix_every_kind_of_damage(cache, small_batches):
    keys = fill(cache)
    calls, values = cache.calls, cache.values
    raw, clayout, vlayout = calls.redis(), calls.layout, values.layout
    # data deleted behind the index's back
    raw.delete(clayout.data(keys[0]))
    # a record the index lost
    raw.zrem(clayout.index_of(keys[1]), keys[1])
    # a record whose query terms went missing
    record = calls.load(keys[2])
    from fleche_redis.storage.query import record_terms

    raw.zrem(clayout.terms_of(keys[2]), record_terms(record)[0] + bytes.fromhex(keys[2]))
    # a value gone with its reference list left behind
    nested = next(k for k in values.list() if raw.hget(vlayout.references_of(k), k))
    raw.delete(vlayout.data(nested))

    creport = calls.verify()
    assert (creport.dangling_index, creport.unindexed, creport.missing_terms) == (1, 1, 1)
    assert creport.stale_terms >= 1  # the deleted record's terms
    assert keys[1] in creport.examples["unindexed"]
    vreport = values.verify()
    assert vreport.dangling_index == 1 and vreport.stale_references == 1
    assert not creport.ok and not vreport.ok

    assert calls.repair().missing_terms == 1
    values.repair()
    assert calls.verify().ok and values.verify().ok
    assert calls.expand(keys[1][:10]) == keys[1]
    assert [c.to_lookup_key() for c in cache.query(name="f", arguments={"x": 2})] == [keys[2]]


def test_repair_cleans_what_expired(fresh_server, namespace):
    import time

    calls = CallRedis(url=fresh_server.url, namespace=namespace, ttl=0.1)
    for i in range(5):
        calls.save(DigestedCall(name="f", arguments={"i": digest(i)}))
    time.sleep(0.25)
    report = calls.verify()
    assert report.dangling_index == 5 and report.stale_terms > 0
    calls.repair()
    assert calls.verify().ok and calls.count() == 0
    assert fresh_server.client().dbsize() == 0  # nothing left behind


def reachable_values(cache):
    """What fleche's own Cache.gc keeps: its mark phase, without its sweep."""
    reference = Cache(cache.values, cache.calls)
    reachable = set()
    for key in cache.calls.list():
        dc = cache.calls.load(key)
        reachable |= {dc.result, *dc.arguments.values()}
    frontier = set(reachable)
    while frontier:
        k = frontier.pop()
        try:
            children = reference.values.child_digests(k)
        except KeyError:
            continue
        frontier |= children - reachable
        reachable |= children
    return set(cache.values.list()) & reachable


def test_gc_keeps_exactly_what_fleche_gc_keeps(cache, small_batches):
    fill(cache, 6)
    orphans = [cache.values.save({"orphan": i, "inner": [i, [i, "x"]]}) for i in range(4)]
    expected = reachable_values(cache)
    before = set(cache.values.list())
    stages = []
    evicted = maintenance.gc(cache, progress=lambda stage, done, total: stages.append(stage))
    assert set(cache.values.list()) == expected
    assert evicted == len(before - expected) and len(before - expected) >= 3 * len(orphans)
    assert not any(cache.values.contains(o) for o in orphans)
    assert {"mark", "sweep"} <= set(stages)
    for key in cache.calls.list():  # every memoized call still hits, with its arguments
        call = cache.load(key)
        assert call.result == {"y": call.arguments["x"] ** 2}
        assert call.arguments["nested"][1] == [call.arguments["x"], "deep"]
    assert not list(cache.values.redis().scan_iter(match=f"{cache.values.namespace}:*:gc*"))


@pytest.mark.parametrize("size", [10, 20_000])  # through PUT, and a direct write (SET + INDEX)
def test_values_written_during_gc_survive(cache, small_batches, size):
    fill(cache, 3)
    late = []
    value = {"written": "during gc", "pad": "x" * size}

    def write_while_sweeping(stage, done, total):
        if stage == "sweep" and not late:
            late.append(cache.values.save(value))

    maintenance.gc(cache, progress=write_while_sweeping)
    assert late and cache.values.load(late[0]) == value


def test_only_one_gc_at_a_time(cache):
    fill(cache, 2)

    def nested(stage, done, total):
        if stage == "mark":
            with pytest.raises(GcAlreadyRunning):
                maintenance.gc(cache)

    maintenance.gc(cache, progress=nested)
    maintenance.gc(cache)  # the flags were released


def test_transform_visits_each_record_once(cache, small_batches):
    fill(cache, 10)
    seen = []

    def rename(call: DigestedCall) -> DigestedCall:
        seen.append(call.to_lookup_key())
        return DigestedCall(
            name="g", arguments=call.arguments, result=call.result, metadata={"t": {"n": 1}}
        )

    moved = cache.calls.transform(rename)
    assert moved == 10 and len(seen) == len(set(seen)) == 10
    assert {c.name for c in cache.calls.query(DigestedCall(name=None, arguments=None))} == {"g"}
    assert len(list(cache.query(name="g"))) == 10 and list(cache.query(name="f")) == []
    assert cache.calls.count() == 10 and cache.calls.verify().ok


def test_transform_identity_keeps_keys(cache):
    keys = set(fill(cache, 4))
    assert cache.calls.transform() == 0
    assert set(cache.calls.list()) == keys


def test_redigest_moves_records_filed_under_stale_keys(cache, small_batches):
    keys = fill(cache, 5)
    stale = digest("stale key")
    cache.calls.put(cache.calls.load(keys[0]), stale)
    cache.calls.evict(keys[0])
    assert maintenance.redigest(cache) == 1
    assert not cache.calls.contains(stale)
    assert cache.load(keys[0]).result == {"y": 0}


def test_redis_cache_gc_agrees_with_fleche_cache_gc(cache):
    """Two namespaces filled alike: fleche's Cache.gc on one, RedisCache.gc on the other."""
    from dataclasses import replace

    from fleche_redis.cache.caches import RedisCache

    theirs = cache
    ours = RedisCache(
        replace(cache.values, namespace=cache.values.namespace + "-ours"),
        replace(cache.calls, namespace=cache.calls.namespace + "-ours"),
    )
    for c in (theirs, ours):
        fill(c, 4)
        for i in range(3):
            c.values.save({"orphan": i, "inner": [i, [i]]})
    evicted = theirs.gc()
    assert ours.gc() == len(evicted) > 0
    assert set(ours.values.list()) == set(theirs.values.list())
    assert set(ours.calls.list()) == set(theirs.calls.list())


def test_orphan_chunks_of_an_interrupted_big_write_are_found_and_removed(cache):
    values = ValueRedis(**{**_connection(cache.values), "chunk_size": 100})
    key = values.save(b"z" * 1000)
    from fleche_redis.storage import chunks

    # A writer that died after writing its chunks but before the manifest:
    data_key = values.layout.data(digest("never finished"))
    chunks.write(values.redis(), data_key, b"q" * 500, 100, 0)
    report = values.verify()
    assert report.orphan_chunks == 5 and not report.ok
    values.repair()
    assert values.verify().ok
    assert values.load(key) == b"z" * 1000  # the healthy big value kept its chunks


def _connection(storage):
    conn = {"namespace": storage.namespace}
    if storage.client is not None:
        conn["client"] = storage.client
    else:
        conn["url"] = storage.url
    return conn
