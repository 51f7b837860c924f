"""Both lock mixins on a local 3-primary Redis Cluster and through Sentinel, across processes."""

import multiprocessing

import pytest

from fleche_redis.transport.connection import client_from_url

from . import lockworkers

FORK = multiprocessing.get_context("fork")


def increment(storage, url: str, counter: str, n: int, barrier) -> None:
    client = client_from_url(url)
    barrier.wait()
    for _ in range(n):
        with storage._operation_context(lockworkers.KEY):
            client.set(counter, int(client.get(counter) or 0) + 1)


@pytest.fixture(params=["cluster", "sentinel"])
def url(request):
    fixture = {"cluster": "redis_cluster", "sentinel": "redis_sentinel"}[request.param]
    return request.getfixturevalue(fixture).url


@pytest.mark.parametrize("storage_cls", [lockworkers.LockedCallRedis, lockworkers.SerialCallRedis])
def test_four_processes_increment_exactly(url, namespace, storage_cls):
    storage = storage_cls(url=url, namespace=namespace)
    counter = f"{namespace}:counter"
    barrier = FORK.Barrier(4)
    procs = [
        FORK.Process(target=increment, args=(storage, url, counter, 50, barrier)) for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4
    assert int(client_from_url(url).get(counter)) == 4 * 50


@pytest.mark.parametrize("storage_cls", [lockworkers.LockedCallRedis, lockworkers.SerialCallRedis])
def test_locked_storage_round_trip(url, namespace, storage_cls):
    from fleche.call import DigestedCall, QueryCall
    from fleche.digest import digest

    storage = storage_cls(url=url, namespace=namespace)
    key = storage.save(DigestedCall(name="f", arguments={"x": digest(1)}, result=digest(2)))
    assert storage.load(key[:8]).result == digest(2)
    assert [c.name for c in storage.query(QueryCall(name="f"))] == ["f"]
    storage.evict(key[:8])
    assert not storage.contains(key)
