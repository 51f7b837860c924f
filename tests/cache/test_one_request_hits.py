"""A RedisCache hit is one request on one server: LOOKUP returns the record and its result.

Each case counts the requests of a hit of a result another process computed
(so nothing of it is held here), and checks the value and the counters; the
fallbacks (Cluster, old records, chunked, destructured or big results, values
elsewhere) take the value storage's own load, as before.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import pickle

import fleche
import pytest
from fleche.caches import Cache
from redis.cluster import RedisCluster

from fleche_redis import CallRedis, RedisCache, RedisStorageError, ValueRedis, redis_cache
from fleche_redis.cache import singleflight
from fleche_redis.testing.roundtrips import RoundTrips

FORK = multiprocessing.get_context("fork")


@fleche.fleche
def square(x: int) -> dict:
    return {"x": x, "square": x * x}


@fleche.fleche
def nested(x: int) -> dict:
    return {"x": x, "parts": [x, [x, x + 1]]}


@fleche.fleche
def blob(x: int, size: int) -> bytes:
    return bytes([x % 256]) * size


def _compute(cache, func, args) -> None:
    with fleche.cache(cache):
        func(*args)


def computed_elsewhere(cache, func, *args):
    """Run ``func(*args)`` through *cache* in a forked process: its record and result are stored there."""
    worker = FORK.Process(target=_compute, args=(cache, func, args))
    worker.start()
    worker.join(30)
    assert worker.exitcode == 0


def counted_hit(cache, func, *args):
    """``func(*args)`` through *cache*, with the requests it sent."""
    with fleche.cache(cache):
        square(-1)  # connects and loads the scripts
        with RoundTrips() as trips:
            value = func(*args)
    return value, trips


def record_key(cache, func, *args):
    return cache.calls.layout.data(func.fleche.call(*args).to_lookup_key())


def test_a_hit_is_one_request(redis_server, namespace):
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    computed_elsewhere(cache, square, 3)
    value, trips = counted_hit(cache, square, 3)
    assert value == {"x": 3, "square": 9}
    assert trips.count == 1 and trips.commands == [b"EVALSHA"]


def test_the_result_counts_as_the_value_storage_read_it(redis_server, namespace):
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    computed_elsewhere(cache, square, 4)
    with fleche.cache(cache):
        values, calls = cache.values.metrics(), cache.calls.metrics()
        assert square(4) == {"x": 4, "square": 16}
    key = record_key(cache, square, 4)
    client = redis_server.client()
    result = client.hget(key, "r").decode()
    stored = client.get(cache.values.layout.data(result))
    after_values, after_calls = cache.values.metrics(), cache.calls.metrics()
    assert after_values["hits"] - values["hits"] == 1
    assert after_values["bytes_in"] - values["bytes_in"] == len(stored)
    assert after_calls["hits"] - calls["hits"] == 1
    assert after_calls["bytes_in"] - calls["bytes_in"] == len(client.hget(key, "v"))


def test_records_carry_their_results_digest(redis_server, namespace):
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    with fleche.cache(cache):
        square(5)
    key = square.fleche.call(5).to_lookup_key()
    record = cache.calls.load(key)
    client = redis_server.client()
    assert client.hget(record_key(cache, square, 5), "r") == record.result.encode()
    # a record rewritten without a result keeps no stale digest
    cache.calls.put(dataclasses.replace(record, result=None), key)
    assert client.hget(record_key(cache, square, 5), "r") is None
    assert cache.calls.verify().ok


def test_a_loaded_call_reaches_its_cache(redis_server, namespace):
    # fleche's query helpers evict and shrink through a LazyCall's cache.
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    computed_elsewhere(cache, square, 15)
    key = square.fleche.call(15).to_lookup_key()
    loaded = cache.load(key)
    assert loaded.result == {"x": 15, "square": 225}
    assert loaded._cache.shrink(key) == cache.shrink(key)
    loaded._cache.evict(key)
    assert not cache.calls.contains(key)


def test_values_in_another_namespace_come_along_too(redis_server, namespace):
    cache = RedisCache(
        ValueRedis(url=redis_server.url, namespace=namespace + "-values"),
        CallRedis(url=redis_server.url, namespace=namespace + "-calls"),
    )
    computed_elsewhere(cache, square, 6)
    value, trips = counted_hit(cache, square, 6)
    assert value == {"x": 6, "square": 36} and trips.count == 1


def test_records_written_before_carry_no_digest_and_take_two_requests(redis_server, namespace):
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    computed_elsewhere(cache, square, 7)
    redis_server.client().hdel(record_key(cache, square, 7), "r")
    value, trips = counted_hit(cache, square, 7)
    assert value == {"x": 7, "square": 49}
    assert trips.commands == [b"EVALSHA", b"GET"]


def test_a_digest_that_is_not_the_records_result_is_ignored(redis_server, namespace):
    # An older version rewriting the record leaves the field as it was.
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    computed_elsewhere(cache, square, 8)
    computed_elsewhere(cache, square, 9)
    client = redis_server.client()
    client.hset(record_key(cache, square, 8), "r", client.hget(record_key(cache, square, 9), "r"))
    value, trips = counted_hit(cache, square, 8)
    assert value == {"x": 8, "square": 64}
    assert trips.commands == [b"EVALSHA", b"GET"]


def test_big_results_are_fetched_by_digest(redis_server, namespace):
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    size = singleflight.MAX_PUSHED_RESULT + 1
    computed_elsewhere(cache, blob, 1, size)
    computed_elsewhere(cache, blob, 2, 1000)
    value, trips = counted_hit(cache, blob, 1, size)
    assert value == b"\x01" * size and trips.commands == [b"EVALSHA", b"GET"]
    value, trips = counted_hit(cache, blob, 2, 1000)
    assert value == b"\x02" * 1000 and trips.count == 1


def test_chunked_results_are_read_by_the_value_storage(redis_server, namespace):
    options = {"url": redis_server.url, "namespace": namespace, "chunk_size": 1000}
    cache = RedisCache(ValueRedis(**options), CallRedis(**options))
    computed_elsewhere(cache, blob, 3, 2500)
    value, trips = counted_hit(cache, blob, 3, 2500)
    assert value == b"\x03" * 2500
    # the manifest came along; the value storage reads it again, then its three chunks
    assert trips.commands == [b"EVALSHA", b"GET"] + [b"GET"] * 3


def test_destructured_results_are_mended_by_the_value_storage(redis_server, namespace):
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    computed_elsewhere(cache, nested, 4)
    value, trips = counted_hit(cache, nested, 4)
    assert value == {"x": 4, "parts": [4, [4, 5]]}
    # the container came along and is kept near: one request per level of nesting
    assert trips.commands == [b"EVALSHA", b"GET", b"GET"]


def test_destructured_results_without_a_near_cache_read_the_container_again(
    redis_server, namespace
):
    cache = redis_cache(url=redis_server.url, namespace=namespace, near_cache_bytes=0)
    computed_elsewhere(cache, nested, 5)
    value, trips = counted_hit(cache, nested, 5)
    assert value == {"x": 5, "parts": [5, [5, 6]]}
    assert trips.commands == [b"EVALSHA", b"GET", b"GET", b"GET"]


def test_a_foreign_key_at_the_results_key_is_reported_by_the_value_storage(fresh_server, namespace):
    # A server of its own: a failure logged on the shared one would make a later
    # test's first WRONGTYPE part of a burst (logged once per server).
    cache = redis_cache(url=fresh_server.url, namespace=namespace)
    computed_elsewhere(cache, square, 10)
    client = fresh_server.client()
    result = cache.values.layout.data(client.hget(record_key(cache, square, 10), "r").decode())
    client.delete(result)
    client.hset(result, "x", b"garbage")
    with fleche.cache(cache), pytest.raises(RedisStorageError, match="WRONGTYPE"):
        square(10)  # the lookup passes over it; the value storage's GET names it


UNPICKLED: list[str] = []


def _went_off(why: str) -> str:
    UNPICKLED.append(why)
    return why


class Bomb:
    def __reduce__(self):
        return (_went_off, ("an entry whose signature does not verify was unpickled",))


def test_a_result_whose_signature_fails_is_never_unpickled(redis_server, namespace):
    key = "11" * 32
    cache = redis_cache(url=redis_server.url, namespace=namespace, secret_key=key)
    computed_elsewhere(cache, square, 11)
    client = redis_server.client()
    result = cache.values.layout.data(client.hget(record_key(cache, square, 11), "r").decode())
    client.set(result, pickle.dumps(Bomb()))  # unsigned: what a writer without the key could do
    with fleche.cache(cache), fleche.meta():
        assert square(11) == {"x": 11, "square": 121}  # a miss: computed again
    assert UNPICKLED == []


def test_on_a_cluster_a_hit_is_two_requests(redis_cluster, namespace):
    cache = redis_cache(url=redis_cluster.url, namespace=namespace)
    computed_elsewhere(cache, square, 12)
    cache.calls.redis().ping(target_nodes=RedisCluster.ALL_NODES)  # a connection to every node
    value, trips = counted_hit(cache, square, 12)
    assert value == {"x": 12, "square": 144}
    assert trips.commands == [b"EVALSHA", b"GET"]


def test_through_sentinel_a_hit_is_one_request(redis_sentinel, namespace):
    cache = redis_cache(url=redis_sentinel.url, namespace=namespace)
    computed_elsewhere(cache, square, 13)
    value, trips = counted_hit(cache, square, 13)
    assert value == {"x": 13, "square": 169} and trips.count == 1


def test_the_lookup_reads_results_on_fakeredis_too(fake_client, namespace, monkeypatch):
    cache = redis_cache(client=fake_client, namespace=namespace)
    with fleche.cache(Cache(cache.values, cache.calls)):
        square(14)  # stored by the plain Cache: no lease involved

    def unused(*args):
        raise AssertionError("the value storage read the result again")

    monkeypatch.setattr(ValueRedis, "_read", unused)
    with fleche.cache(cache):
        assert square(14) == {"x": 14, "square": 196}
