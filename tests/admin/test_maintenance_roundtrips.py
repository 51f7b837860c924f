"""Round trips of whole-store work, pinned: restructuring must not change them.

The figures were measured on the code before issue #12 moved verify, repair
and transform into ``fleche_redis.storage`` and put every group of commands
through ``fleche_redis.transport.request.send``.
"""

import fakeredis
import pytest
from fleche.caches import Cache
from fleche.call import Call

from fleche_redis import CallRedis, ValueRedis, maintenance
from fleche_redis.admin import inspection
from fleche_redis.testing.roundtrips import RoundTrips
from fleche_redis.transport.scripts import LuaScript


@pytest.fixture(params=["fakeredis", "redis-server"])
def cache(request, namespace):
    if request.param == "fakeredis":
        conn = {"client": fakeredis.FakeRedis(server=fakeredis.FakeServer())}
    else:
        # A server of its own: SCAN's round trips grow with every key in the database.
        conn = {"url": request.getfixturevalue("fresh_server").url}
    return Cache(ValueRedis(namespace=namespace, **conn), CallRedis(namespace=namespace, **conn))


def fill(cache, n=7):
    keys = [
        cache.save(Call("f", {"x": i, "nested": [i, [i, "deep"]]}, result={"y": i}))
        for i in range(n)
    ]
    orphans = [cache.values.save({"orphan": i, "inner": [i, [i]]}) for i in range(3)]
    for storage in (cache.values, cache.calls):
        warm(storage)
    return keys, orphans


def warm(storage):
    """Load every script of the storage, so no count depends on what ran before (NOSCRIPT)."""
    scripts = {
        script.sha: script
        for cls in type(storage).__mro__
        for script in vars(cls).values()
        if isinstance(script, LuaScript)
    }
    for script in scripts.values():
        storage.redis().script_load(script.source)


def damage(cache, keys):
    """One of each kind of damage verify counts."""
    calls, values = cache.calls, cache.values
    raw = calls.redis()
    raw.delete(calls.layout.data(keys[0]))
    raw.zrem(calls.layout.index_of(keys[1]), keys[1])
    nested = next(k for k in values.list() if raw.hget(values.layout.references_of(k), k))
    raw.delete(values.layout.data(nested))


def trips(work):
    with RoundTrips() as counted:
        result = work()
    return counted.count, result


def test_verify_and_repair_round_trips(cache):
    keys, _ = fill(cache)
    damage(cache, keys)
    calls, values = cache.calls, cache.values
    # Issue 13 added the type check (one SCAN of the keyspace, one TYPE request
    # per page of keys): 2 more trips each than the figures measured for issue 12.
    assert trips(calls.verify)[0] == 546
    assert trips(values.verify)[0] == 292
    assert trips(calls.repair)[0] == 550
    assert trips(values.repair)[0] == 294
    assert trips(calls.verify)[0] == 547
    assert trips(values.verify)[0] == 291
    assert calls.verify().ok and values.verify().ok


def test_gc_round_trips(cache):
    fill(cache)
    count, evicted = trips(lambda: maintenance.gc(cache))
    assert evicted == 9 and count == 332


def test_transform_and_redigest_round_trips(cache):
    fill(cache)
    count, moved = trips(lambda: cache.calls.transform())
    assert moved == 0 and count == 279
    count, moved = trips(lambda: maintenance.redigest(cache))
    assert moved == 0 and count == 300


def test_inspection_round_trips(fresh_server, namespace):  # fakeredis lacks MEMORY USAGE
    conn = {"url": fresh_server.url, "namespace": namespace}
    cache = Cache(ValueRedis(**conn), CallRedis(**conn))
    keys, _ = fill(cache)
    assert trips(lambda: inspection.store_info(cache.calls))[0] == 19
    assert trips(lambda: inspection.prefix_matches(cache.calls, keys[0][:1]))[0] == 1
    assert trips(lambda: inspection.prefix_matches(cache.calls, keys[0][:3]))[0] == 1
