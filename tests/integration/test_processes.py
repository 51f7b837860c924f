"""Storages cross process boundaries as configuration and reconnect there."""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import fleche
import pytest
import redis
from fleche.caches import Cache

from fleche_redis import CallRedis, ValueRedis

from . import workers


@pytest.fixture
def cache(redis_server, namespace):
    return Cache(
        values=ValueRedis(url=redis_server.url, namespace=namespace),
        calls=CallRedis(url=redis_server.url, namespace=namespace),
    )


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_memoizes_through_one_shared_cache(
    method, cache, redis_server, namespace, monkeypatch
):
    counter = f"{namespace}:executions"
    monkeypatch.setenv("FLECHE_REDIS_TEST_COUNTER", f"{redis_server.url} {counter}")
    cache.values.count()  # the parent is connected before the pool forks
    with fleche.cache(cache), fleche.meta():
        bound = fleche.BoundWrapper.bind(workers.square)

    inputs = list(range(12))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method)) as pool:
        first = list(pool.map(bound, inputs))
        second = list(pool.map(bound, inputs))

    executions = int(redis_server.client().get(counter))
    assert [r["square"] for r in first] == [x * x for x in inputs]
    assert second == first  # every second-round call was a hit
    assert executions == len(inputs)
    # The parent sees what the workers saved.
    with fleche.cache(cache), fleche.meta():
        assert workers.square(5)["square"] == 25
    assert int(redis_server.client().get(counter)) == len(inputs)
    assert len({r["pid"] for r in first}) >= 1


def test_forked_child_gets_its_own_connection(redis_server, namespace):
    storage = ValueRedis(url=redis_server.url, namespace=namespace)
    parent_id = storage.redis().client_id()
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=workers.client_id_in_child, args=(storage, send))
    child.start()
    reply = receive.recv()
    child.join(10)
    assert not isinstance(reply, BaseException), reply
    child_id, rebuilt, loaded = reply
    assert child_id != parent_id and rebuilt and loaded == "child"
    # The parent's connection is intact after the child used its own.
    assert storage.redis().client_id() == parent_id
    assert storage.load(storage.save("parent")) == "parent"


def test_pickled_storage_does_not_carry_a_connection(redis_server, namespace):
    import pickle

    storage = CallRedis(url=redis_server.url, namespace=namespace)
    storage.count()
    data = pickle.dumps(storage)
    assert (
        b"redis.connection" not in data and b"ConnectionPool" not in data and b"_socket" not in data
    )
    clone = pickle.loads(data)
    clone.count()
    # In this process the clone shares the client of its server; in a worker
    # it builds its own on first use (see the fork and pool tests above).
    assert clone.redis() is storage.redis()


def test_storages_of_one_server_share_a_client(redis_server, namespace):
    values = ValueRedis(url=redis_server.url, namespace=namespace)
    calls = CallRedis(url=redis_server.url, namespace=namespace)
    assert values.redis() is calls.redis()
    slower = CallRedis(url=redis_server.url, namespace=namespace, socket_timeout=9)
    assert slower.redis() is not values.redis()  # other settings, other client


def test_storage_built_on_a_client_pickles_by_its_address(redis_server, namespace):
    import pickle

    client = redis.Redis(host=redis_server.host, port=redis_server.port, db=2)
    storage = ValueRedis(client=client, namespace=namespace)
    assert storage.url == f"redis://127.0.0.1:{redis_server.port}/2"
    key = storage.save([1, 2, 3])
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.client is None and clone.load(key) == [1, 2, 3]
