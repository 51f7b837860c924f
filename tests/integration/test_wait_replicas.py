"""Replica-acknowledged writes (``wait_replicas``) on a real primary with one replica.

fakeredis has no ``WAIT`` (see tests/storage/test_wait_replicas.py for what
is tested there); here a private primary and a replica of it (``--replicaof``)
check that a save returns once the replica has the write, costs no request
of its own, and raises ``NotReplicated`` (never succeeds silently) when the
replica is stopped.
"""

from __future__ import annotations

import time

import fleche
import pytest

from fleche_redis import CallRedis, NotReplicated, RedisCache, ValueRedis, redis_cache
from fleche_redis.testing.groups import in_sync, wait_until
from fleche_redis.testing.process import RedisServer
from fleche_redis.testing.roundtrips import RoundTrips

DIGEST = "ab" * 32


@fleche.fleche
def square(x: int) -> dict:
    return {"x": x, "square": x * x}


def acknowledging(primary: RedisServer) -> bool:
    """Whether the replica acknowledges a write at once (its first ack after the sync can lag)."""
    with primary.client() as p:
        p.set("warm", 1)
        return bool(p.wait(1, 2000) >= 1)


@pytest.fixture
def pair():
    """A primary and one replica of it, in sync and acknowledging writes."""
    with RedisServer.start(["--repl-diskless-sync-delay", "0"]) as primary:
        with RedisServer.start(["--replicaof", primary.host, str(primary.port)]) as replica:
            wait_until(lambda: in_sync(replica), 20, "the replica did not sync")
            wait_until(lambda: acknowledging(primary), 20, "the replica did not acknowledge")
            yield primary, replica


def test_a_save_returns_once_the_replica_has_it(pair, namespace):
    primary, replica = pair
    values = ValueRedis(url=primary.url, namespace=namespace, wait_replicas=1)
    with replica.client() as r:
        for i in range(20):
            key = f"{i:064x}"
            values.save(list(range(i)), key)
            # Read at once, on the replica: WAIT returned only after it had the write.
            assert r.exists(values.layout.data(key)) == 1


def test_a_record_and_a_big_value_are_acknowledged_too(pair, namespace):
    primary, replica = pair
    values = ValueRedis(url=primary.url, namespace=namespace, wait_replicas=1, chunk_size=4096)
    calls = CallRedis(url=primary.url, namespace=namespace, wait_replicas=1)
    cache = RedisCache(values, calls)
    with fleche.cache(cache):
        square(1)
    record = calls.layout.data(square.fleche.call(1).to_lookup_key())
    with replica.client() as r:
        assert r.exists(record) == 1
    values.save(b"x" * 20_000, DIGEST)  # chunked: SETs and the manifest's script
    with replica.client() as r:
        assert r.exists(values.layout.data(DIGEST), values.layout.data(DIGEST) + ":4") == 2


def test_too_few_replicas_raise_not_replicated(pair, namespace):
    primary, _ = pair
    values = ValueRedis(
        url=primary.url, namespace=namespace, wait_replicas=2, wait_replicas_timeout=0.2
    )
    with pytest.raises(NotReplicated) as raised:
        values.save("x", DIGEST)
    error = raised.value
    assert (error.acknowledged, error.wanted) == (1, 2)
    assert str(primary.port) in error.server and "1 of the 2" in str(error)
    # On the primary nonetheless: not durable as asked, but written.
    assert values.load(DIGEST) == "x"


def test_a_stopped_replica_fails_the_save_within_the_timeout(pair, namespace):
    primary, replica = pair
    timeout = 0.3
    values = ValueRedis(
        url=primary.url, namespace=namespace, wait_replicas=1, wait_replicas_timeout=timeout
    )
    calls = CallRedis(
        url=primary.url,
        namespace=namespace,
        wait_replicas=1,
        wait_replicas_timeout=timeout,
        on_error="miss",  # failing open does not make an unreplicated write a success
    )
    values.save("before", DIGEST)
    replica.pause()
    try:
        started = time.monotonic()
        with pytest.raises(NotReplicated) as raised:
            values.save("during", "cd" * 32)
        took = time.monotonic() - started
        assert timeout * 0.9 <= took < timeout + 1.0
        assert raised.value.acknowledged == 0
        with pytest.raises(NotReplicated):
            calls.put({"a": 1}, "ef" * 32)
    finally:
        replica.resume()
    wait_until(lambda: acknowledging(primary), 20, "the replica did not catch up")
    values.save("after", "12" * 32)  # acknowledged again


def test_a_cache_refuses_an_unreplicated_commit_and_returns_the_result(pair, namespace):
    primary, replica = pair
    cache = redis_cache(
        url=primary.url, namespace=namespace, wait_replicas=1, wait_replicas_timeout=0.2
    )
    with fleche.cache(cache):
        square(0)
        replica.pause()
        try:
            # Rejected, as any refused commit: the call returns its result uncached.
            assert square(3) == {"x": 3, "square": 9}
        finally:
            replica.resume()
        assert sum(s.metrics()["errors"] for s in (cache.values, cache.calls)) == 1
        # The record is on the primary all the same: the next call finds it.
        with RoundTrips() as trips:
            assert square(3) == {"x": 3, "square": 9}
        assert trips.count == 1


def test_write_behind_reports_an_unreplicated_commit_at_flush(pair, namespace):
    primary, replica = pair
    cache = redis_cache(
        url=primary.url,
        namespace=namespace,
        wait_replicas=1,
        wait_replicas_timeout=0.2,
        write_behind=True,
    )
    with fleche.cache(cache):
        square(0)
        cache.flush()
        replica.pause()
        try:
            assert square(4) == {"x": 4, "square": 16}
            with pytest.raises(NotReplicated):
                cache.flush()
            assert sum(s.metrics()["errors"] for s in (cache.values, cache.calls)) == 1
        finally:
            replica.resume()


@pytest.mark.parametrize("write_behind", [False, True])
def test_a_miss_costs_no_request_for_the_wait(pair, namespace, write_behind):
    primary, _ = pair
    counts = {}
    for wanted in (0, 1):
        cache = redis_cache(
            url=primary.url,
            namespace=f"{namespace}-{wanted}",
            wait_replicas=wanted,
            write_behind=write_behind,
        )
        with fleche.cache(cache):
            square(-1)  # connects and loads the scripts
            cache.flush()
            with RoundTrips() as trips:
                for x in range(5):
                    assert square(x) == {"x": x, "square": x * x}
                cache.flush()
        counts[wanted] = (trips.count, trips.commands)
    assert counts[1] == counts[0]
    assert counts[0][0] == 10  # a lookup and a commit per miss


def test_the_cache_setting_is_its_storages(pair, namespace):
    primary, _ = pair
    values = ValueRedis(url=primary.url, namespace=namespace)
    calls = CallRedis(url=primary.url, namespace=namespace)
    cache = RedisCache(values, calls, wait_replicas=2, wait_replicas_timeout=0.2)
    assert (cache.values.wait_replicas, cache.calls.wait_replicas) == (2, 2)
    assert RedisCache(values, calls).values is values  # None: the storages' own
    with fleche.cache(cache):
        assert square(5) == {"x": 5, "square": 25}  # refused (one replica), returned
    with pytest.raises(NotReplicated):
        cache.values.save(1, DIGEST)


def test_through_sentinel_the_primary_it_names_waits(fresh_sentinel, namespace):
    """Sentinel's pool is a single server's: WAIT goes in the write's request on its connection."""
    wait_until(lambda: acknowledging(fresh_sentinel.primary), 20, "the replica did not acknowledge")
    values = ValueRedis(url=fresh_sentinel.url, namespace=namespace, wait_replicas=1)
    values.save("connects and loads the script", "cd" * 32)
    with RoundTrips() as trips:
        values.save([1, 2, 3], DIGEST)
    assert trips.count == 1 and trips.commands == [b"EVALSHA"]
    with fresh_sentinel.replica.client() as r:
        assert r.exists(values.layout.data(DIGEST)) == 1
    with pytest.raises(NotReplicated):
        ValueRedis(
            url=fresh_sentinel.url, namespace=namespace, wait_replicas=2, wait_replicas_timeout=0.1
        ).save(1, DIGEST)
