"""kill -9 the Redis server in the middle of a memoization workload, then bring it back."""

import threading
import time

import fleche
import pytest
from fleche.storage import SaveError

from fleche_redis import RedisCache, StorageUnavailable
from fleche_redis.storage.backend import CallRedis, ValueRedis

executions = []


@fleche.fleche
def work(x: int) -> dict:
    executions.append(x)
    return {"x": x, "double": 2 * x}


def make_cache(url, namespace, on_error, **extra):
    options = dict(
        url=url,
        namespace=namespace,
        on_error=on_error,
        socket_timeout=0.5,
        retries=0,
        breaker_threshold=3,
        breaker_cooldown=0.2,
        **extra,
    )
    return RedisCache(ValueRedis(**options), CallRedis(**options))


def test_fail_open_workload_survives_a_crash_and_recovers(fresh_server, namespace):
    cache = make_cache(fresh_server.url, namespace, "miss")
    errors, results = [], []
    stop = threading.Event()

    def workload():
        with fleche.cache(cache), fleche.meta():
            i = 0
            while not stop.is_set():
                try:
                    results.append((i % 50, work(i % 50)))
                except BaseException as e:  # must never happen in "miss" mode
                    errors.append(e)
                i += 1

    thread = threading.Thread(target=workload)
    thread.start()
    time.sleep(0.5)
    fresh_server.kill()  # SIGKILL mid-workload
    time.sleep(1.0)
    fresh_server.restart()
    time.sleep(1.0)
    stop.set()
    thread.join(10)

    assert errors == []
    assert cache.calls.channel.breaker.opened >= 1  # the outage was real and was noticed
    assert results and all(r == {"x": x, "double": 2 * x} for x, r in results)
    # recovered by itself: the restarted (empty) server fills up again and serves hits
    executions.clear()
    with fleche.cache(cache), fleche.meta():
        assert [work(x)["double"] for x in range(50)] == [2 * x for x in range(50)]
        assert [work(x)["double"] for x in range(50)] == [2 * x for x in range(50)]
    assert sorted(executions) == sorted(set(executions))  # the second round was all hits
    assert cache.calls.channel.breaker.state == "closed"


def test_raise_mode_reports_the_crash_clearly(fresh_server, namespace):
    cache = make_cache(fresh_server.url, namespace, "raise")
    with fleche.cache(cache), fleche.meta():
        assert work(1)["double"] == 2
        fresh_server.kill()
        with pytest.raises(StorageUnavailable) as info:
            work(1)
    message = str(info.value)
    assert f"on {fresh_server.url}" in message and "Redis get" in message
    fresh_server.restart()
    time.sleep(0.3)  # past the breaker's cool-down
    with fleche.cache(cache), fleche.meta():
        assert work(1)["double"] == 2  # recovered by itself


def test_a_lock_held_through_a_crash_is_reported_lost(fresh_server, namespace):
    from fleche_redis import LockLost, Redlock, lock_key

    lock = Redlock(lock_key("outage", namespace), [fresh_server.url], ttl=1.0)
    lock.acquire()
    assert lock.held
    fresh_server.kill()
    time.sleep(1.3)  # renewals fail; the lease runs out
    assert not lock.held and lock.remaining() == 0.0
    fresh_server.restart()
    time.sleep(0.2)
    assert lock.lost or not lock.held
    with pytest.raises(LockLost):
        lock.release()
    # and the lock works again for the next holder
    other = Redlock(lock_key("outage", namespace), [fresh_server.url], ttl=1.0)
    assert other.acquire(timeout=2)
    other.release()


def test_writes_interrupted_by_a_crash_leave_consistent_indexes():
    """kill -9 a persisting server (AOF, fsync always) mid-workload: after the restart, verify() is clean."""
    from fleche_redis.testing import RedisServer

    with RedisServer.start(["--appendonly", "yes", "--appendfsync", "always"]) as server:
        cache = make_cache(server.url, "crash", "miss", chunk_size=1000)
        stop = threading.Event()

        def workload():
            with fleche.cache(cache), fleche.meta():
                i = 0
                while not stop.is_set():
                    work(i)
                    try:
                        cache.values.save({"big": "b" * 3000, "i": i})  # chunked
                    except SaveError:
                        pass  # refused while the server is down: on_error="miss"
                    if i % 7 == 0:
                        cache.evict(next(iter(cache.calls.list()), "0" * 64))
                    i += 1

        threads = [threading.Thread(target=workload) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        server.kill()
        stop.set()
        for t in threads:
            t.join(10)
        server.restart()
        time.sleep(0.3)
        assert cache.values.count() > 0  # the AOF brought entries back
        for storage in (cache.values, cache.calls):
            report = storage.verify()
            # A writer killed between a big value's chunks and its manifest
            # leaves orphan chunks: wasted memory, never a wrong read, and
            # exactly what repair() removes.  Every index must be intact.
            index = (
                "dangling_index",
                "unindexed",
                "stale_terms",
                "missing_terms",
                "stale_references",
            )
            assert not any(getattr(report, kind) for kind in index), report.to_dict()
            if not report.ok:
                assert report.orphan_chunks and storage.repair().orphan_chunks
            assert storage.verify().ok
