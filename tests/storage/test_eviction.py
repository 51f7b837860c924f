"""Entries Redis evicts under maxmemory never make expand ambiguous or hand out a dead key."""

import pytest
from fleche.storage import AmbiguousDigestError

from fleche_redis import ValueRedis
from fleche_redis.testing import RedisServer


@pytest.fixture
def small_server():
    with RedisServer.start(["--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru"]) as server:
        yield server


def test_expand_after_evictions(small_server, namespace):
    storage = ValueRedis(url=small_server.url, namespace=namespace)
    keys = []
    for i in range(4000):
        try:
            keys.append(storage.save({"i": i, "pad": "x" * 2000}))
        except Exception:
            break  # an OOM refusal is fine too; the point is what is left
    assert small_server.client().info("stats")["evicted_keys"] > 0
    lost = 0
    for key in keys:
        for prefix in (key[:4], key[:7]):
            try:
                found = storage.expand(prefix)
            except KeyError:
                lost += 1
                continue
            except AmbiguousDigestError:
                # ambiguous only between live entries
                lo = str(prefix)
                live = [k for k in keys if k.startswith(lo) and storage.contains(k)]
                assert len(live) >= 2
                continue
            assert storage.load(found)["pad"] == "x" * 2000
    assert lost > 0  # some entries really were evicted


def test_memoization_keeps_serving_under_memory_pressure(small_server, namespace):
    """allkeys-lru evicts entries (and index shards): calls miss and recompute, never fail."""
    import fleche
    from fleche.caches import Cache

    from fleche_redis import CallRedis

    cache = Cache(
        ValueRedis(url=small_server.url, namespace=namespace),
        CallRedis(url=small_server.url, namespace=namespace),
    )

    @fleche.fleche
    def padded(i):
        return {"i": i, "pad": "y" * 3000}

    with fleche.cache(cache), fleche.meta():
        for _round in range(2):
            for i in range(1500):
                assert padded(i) == {"i": i, "pad": "y" * 3000}
    assert small_server.client().info("stats")["evicted_keys"] > 0
