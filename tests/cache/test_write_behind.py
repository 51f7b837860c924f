"""RedisCache(write_behind=True): a miss returns once its commit is written; the reply is read later.

What must hold: the result is stored (after the thread's next request or
``flush``); the thread reads its own writes; a refused commit is logged,
counted, releases the waiters and is raised by ``flush``; a commit whose
reply was lost, or that met a flushed script cache, is sent again; nothing
is posted where it cannot be (Redis Cluster).
"""

import logging
import multiprocessing
import threading
import time

import fakeredis
import fleche
import pytest
from fleche.call import QueryCall
from fleche.digest import digest

from fleche_redis import CallRedis, RedisCache, RedisStorageError, ValueRedis, redis_cache, runtime
from fleche_redis.testing.roundtrips import RoundTrips
from fleche_redis.transport import wire

FORK = multiprocessing.get_context("fork")


@fleche.fleche
def triple(x):
    return [x, x, x]


def cache_on(connection, **options):
    return RedisCache(
        ValueRedis(**connection), CallRedis(**connection), write_behind=True, **options
    )


def stored(cache, x):
    return [
        c.result
        for c in cache.calls.query(QueryCall(name=triple.__qualname__, arguments={"x": digest(x)}))
    ]


def test_a_miss_returns_before_redis_confirms_its_commit(connection):
    cache = cache_on(connection)
    with fleche.cache(cache):
        triple(0)  # connections made, scripts loaded
        cache.flush()
        with RoundTrips() as miss:
            assert triple(1) == [1, 1, 1]
        assert wire.owing()  # the commit is written, its reply unread
        with RoundTrips() as hit:
            assert triple(1) == [1, 1, 1]
    assert miss.count == 2, miss.commands  # lookup, commit
    # record and result in one script: reading the owed reply costs no request
    assert hit.count == 1, hit.commands
    cache.flush()
    assert not wire.owing()
    assert cache.calls.count() == 2


def test_without_write_behind_the_commit_is_confirmed_before_returning(connection):
    cache = RedisCache(ValueRedis(**connection), CallRedis(**connection))
    with fleche.cache(cache):
        triple(2)
    assert not wire.owing()


def test_the_thread_reads_its_own_writes(connection):
    cache = cache_on(connection)
    with fleche.cache(cache):
        triple(3)
    assert wire.owing()
    # A query runs on a pipeline, another connection than the commit's: the
    # storage reads the owed reply first, so the commit has run by then.
    assert len(stored(cache, 3)) == 1
    assert not wire.owing()


def test_a_refused_commit_is_logged_counted_releases_the_lease_and_raises_at_flush(
    fresh_server, namespace, caplog
):
    cache = cache_on({"url": fresh_server.url, "namespace": namespace})
    values = cache.values
    # The argument's index shard holds a string: the commit's ZADD there is refused (WRONGTYPE).
    raw = fresh_server.client()
    raw.set(values.layout.index_of(digest(4)), "not a sorted set")
    with fleche.cache(cache), caplog.at_level(logging.WARNING, logger="fleche_redis.caches"):
        assert triple(4) == [4, 4, 4]
        wire.settle()
    assert "write-behind commit" in caplog.text and "WRONGTYPE" in caplog.text
    assert cache.calls.count() == 0  # nothing after the refused step ran
    key = next(iter(raw.scan_iter(f"{namespace}:*lease*")), None)
    assert key is None  # the compute lease was released for the waiters
    assert values.metrics()["errors"] >= 1
    cache_on(
        {"url": fresh_server.url, "namespace": namespace + "-other"}
    ).flush()  # not its failure
    with pytest.raises(RedisStorageError, match="WRONGTYPE"):
        cache.flush()
    cache.flush()  # reported once


def test_a_commit_meeting_a_flushed_script_cache_is_sent_again(fresh_server, namespace):
    cache = cache_on({"url": fresh_server.url, "namespace": namespace})
    with fleche.cache(cache):
        triple(5)
        cache.flush()
        fresh_server.client().script_flush()
        triple(6)  # its lookup reloads LOOKUP; its posted commit meets NOSCRIPT
        cache.flush()  # sent again, waiting this time: no failure
    assert cache.calls.count() == 2
    assert len(stored(cache, 6)) == 1


def test_a_commit_whose_reply_was_lost_is_sent_again(fresh_server, namespace):
    cache = cache_on({"url": fresh_server.url, "namespace": namespace})
    with fleche.cache(cache):
        triple(7)
        runtime.thread.kept.conn.disconnect()  # the reply can no longer be read
        cache.flush()
    assert len(stored(cache, 7)) == 1


def test_a_thread_that_ends_with_a_commit_in_flight_still_stores_it(redis_server, namespace):
    cache = cache_on({"url": redis_server.url, "namespace": namespace})

    def worker():
        with fleche.cache(cache):
            triple(8)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    deadline = time.monotonic() + 5
    while not stored(cache, 8) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(stored(cache, 8)) == 1


def test_a_forked_worker_commits_its_own_and_leaves_the_parents(redis_server, namespace):
    cache = cache_on({"url": redis_server.url, "namespace": namespace})
    with fleche.cache(cache):
        triple(9)
    assert wire.owing()

    def child(out):
        with fleche.cache(cache):
            triple(10)
        cache.flush()
        out.put(len(stored(cache, 10)))

    out = FORK.Queue()
    p = FORK.Process(target=child, args=(out,))
    p.start()
    assert out.get(timeout=20) == 1
    p.join(5)
    cache.flush()  # the parent's reply was still on its socket for it
    assert len(stored(cache, 9)) == 1


def test_redis_cluster_commits_are_not_posted(redis_cluster, namespace):
    cache = redis_cache(url=redis_cluster.url, namespace=namespace, write_behind=True)
    with fleche.cache(cache):
        assert triple(11) == [11, 11, 11]
    assert not wire.owing()
    assert len(stored(cache, 11)) == 1


def test_fakeredis_clients_post_too(namespace):
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    cache = cache_on({"client": client, "namespace": namespace})
    with fleche.cache(cache):
        triple(12)
    cache.flush()
    assert len(stored(cache, 12)) == 1


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_that_exit_with_commits_in_flight_stored_them(
    method, redis_server, namespace, monkeypatch
):
    """Pool workers end without flushing (forked ones skip atexit): what they posted is stored."""
    from concurrent.futures import ProcessPoolExecutor

    from ..integration import workers

    counter = f"{namespace}:executions"
    monkeypatch.setenv("FLECHE_REDIS_TEST_COUNTER", f"{redis_server.url} {counter}")
    cache = redis_cache(url=redis_server.url, namespace=namespace, write_behind=True)
    with fleche.cache(cache), fleche.meta():
        bound = fleche.BoundWrapper.bind(workers.square)
    inputs = list(range(12))
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        first = list(pool.map(bound, inputs))
    deadline = time.monotonic() + 5
    while cache.calls.count() < len(inputs) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.calls.count() == len(inputs)
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        second = list(pool.map(bound, inputs))
    assert second == first  # every call of the second pool was a hit
    assert int(redis_server.client().get(counter)) == len(inputs)
