"""Big values: framed entries through real servers, without copies, and beyond one Redis string."""

import tracemalloc

import fleche
import numpy as np
import pytest

from fleche_redis import CallRedis, RedisCache, ValueRedis
from fleche_redis.testing.roundtrips import RoundTrips

MB = 2**20


def _array(mb: float) -> np.ndarray:
    return np.random.default_rng(0).random(int(mb * MB) // 8)


@pytest.mark.parametrize("secret_key", [None, b"key"])
def test_a_framed_value_round_trips_writable(connection, secret_key):
    storage = ValueRedis(secret_key=secret_key, **connection)
    value = {"x": _array(2), "y": np.arange(20_000, dtype=np.int32).reshape(100, 200)}
    key = storage.save(value)
    back = storage.load(key)
    assert np.array_equal(back["x"], value["x"]) and np.array_equal(back["y"], value["y"])
    assert back["x"].flags.writeable and back["y"].dtype == np.int32
    back["x"][0] = -1.0  # the caller's own copy
    assert storage.load(key)["x"][0] == value["x"][0]


def test_put_and_get_of_a_framed_value_are_one_request_each(redis_server, namespace):
    storage = ValueRedis(url=redis_server.url, namespace=namespace)
    value = _array(4)
    key = storage.save(value)
    with RoundTrips() as trips:
        storage.put(value, key)
    assert trips.count == 1, trips.commands
    with RoundTrips() as trips:
        storage.get(key)
    assert trips.count == 1, trips.commands


def test_a_put_makes_no_copy_of_the_array(redis_server, namespace):
    """The array's memory goes to the socket as it is: no pickle stream, no join, no packed request."""
    storage = ValueRedis(url=redis_server.url, namespace=namespace, secret_key=b"key")
    value = _array(16)
    key = storage.save(value)
    storage.put(value, key)  # connections, scripts
    tracemalloc.start()
    try:
        storage.put(value, key)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < value.nbytes / 16, peak


def test_a_get_makes_no_copy_of_the_array(redis_server, namespace):
    """The reply is received into a bytearray and the array is built on it, writable."""
    storage = ValueRedis(url=redis_server.url, namespace=namespace, secret_key=b"key")
    value = _array(16)
    key = storage.save(value)
    storage.get(key)
    tracemalloc.start()
    try:
        back = storage.get(key)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The received entry and nothing else of its size (the pickle-file format
    # took three: the reply's bytes, the signature's slice, the array).
    assert peak < 1.2 * value.nbytes, peak
    assert np.array_equal(back, value) and back.flags.writeable


@pytest.mark.parametrize("secret_key", [None, b"key"])
def test_a_chunked_framed_value_round_trips(redis_server, namespace, secret_key):
    storage = ValueRedis(
        url=redis_server.url, namespace=namespace, chunk_size=MB, secret_key=secret_key
    )
    value = _array(3.5)
    key = storage.save(value)
    chunk_keys = [f"{storage.layout.data(key)}:{i}" for i in range(5)]
    assert storage.redis().exists(*chunk_keys) == 4
    back = storage.load(key)
    assert np.array_equal(back, value) and back.flags.writeable
    storage.evict(key)
    assert storage.redis().exists(*chunk_keys) == 0


def test_a_framed_value_through_cluster(redis_cluster, namespace):
    storage = ValueRedis(url=redis_cluster.url, namespace=namespace, secret_key=b"key")
    value = _array(1)
    key = storage.save(value)
    assert np.array_equal(storage.load(key), value)


@fleche.fleche
def _doubled(x):
    return x * 2.0


def test_a_redis_cache_stores_and_reads_big_results(redis_server, namespace):
    cache = RedisCache(
        values=ValueRedis(url=redis_server.url, namespace=namespace),
        calls=CallRedis(url=redis_server.url, namespace=namespace),
    )
    x = _array(1.6)
    with fleche.cache(cache):
        first = _doubled(x)
        again = _doubled(x)
    assert np.array_equal(first, x * 2.0) and np.array_equal(again, first)
    record = next(iter(cache.calls.query(fleche.call.QueryCall(name=_doubled.__qualname__))))
    assert cache.values.redis().get(cache.values.layout.data(record.result))[:2] == b"\xf5\x01"


@pytest.mark.slow
def test_600_mb_array_round_trips(redis_server, namespace):
    storage = ValueRedis(url=redis_server.url, namespace=namespace, serializer="pickle")
    array = np.arange(600 * 2**20 // 8, dtype=np.float64)  # 600 MiB
    key = storage.save(array)
    chunk_keys = [f"{storage.layout.data(key)}:{i}" for i in range(20)]
    assert storage.redis().exists(*chunk_keys) == 19  # 600 MiB (+ head) in 32 MiB chunks
    loaded = storage.load(key)
    assert loaded.shape == array.shape and np.array_equal(loaded[-1000:], array[-1000:])
    assert loaded.sum() == array.sum()
    del loaded
    storage.evict(key)
    assert not storage.contains(key) and storage.redis().exists(*chunk_keys) == 0


def test_a_posted_commit_sent_again_stores_the_result_as_it_was_returned(redis_server, namespace):
    """Write-behind: a commit refused with NOSCRIPT is sent again at the next request, after the
    call returned its array to the caller; changing that array in place must not change the entry."""
    cache = RedisCache(
        values=ValueRedis(url=redis_server.url, namespace=namespace),
        calls=CallRedis(url=redis_server.url, namespace=namespace),
        write_behind=True,
    )
    x = _array(0.5)
    with fleche.cache(cache):
        _doubled(_array(0.01))  # scripts loaded, connections kept
    cache.flush()
    redis_server.client().script_flush()  # the commit's script is gone when it is posted
    with fleche.cache(cache):
        result = _doubled(x)
    result[:] = -1.0  # the caller's array, changed in place
    cache.flush()  # the commit's NOSCRIPT is read; it is sent again
    with fleche.cache(cache):
        again = _doubled(x)
    assert np.array_equal(again, x * 2.0)
