"""Locks across real processes: exclusion, crashes, fairness, fencing, forks, quorum, cluster."""

from __future__ import annotations

import multiprocessing
import threading
import time
from itertools import pairwise

import pytest
from redis.cluster import key_slot

from fleche_redis import LockError, LockUnavailable, Redlock, lock_key

from . import lockworkers

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")


def _run_all(ctx, target, argss, timeout=120):
    procs = [ctx.Process(target=target, args=args) for args in argss]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert codes == [0] * len(procs), codes


@pytest.mark.parametrize(
    "storage_cls", [lockworkers.LockedValueRedis, lockworkers.SerialValueRedis]
)
def test_eight_processes_increment_exactly_under_each_mixin(redis_server, namespace, storage_cls):
    """8 processes x 200 non-atomic read-modify-write increments: no update is lost."""
    storage = storage_cls(url=redis_server.url, namespace=namespace)
    counter = f"{namespace}:counter"
    barrier = FORK.Barrier(8)
    _run_all(FORK, lockworkers.increment, [(storage, redis_server.url, counter, 200, barrier)] * 8)
    assert int(redis_server.client().get(counter)) == 8 * 200


def test_the_same_loop_without_a_lock_loses_updates(redis_server, namespace):
    """The control: the workload above does race when nothing excludes it."""
    counter = f"{namespace}:counter"
    barrier = FORK.Barrier(8)
    _run_all(
        FORK, lockworkers.increment_unlocked, [(redis_server.url, counter, 20, barrier, 0.002)] * 8
    )
    assert int(redis_server.client().get(counter)) < 8 * 20


def test_a_sigkilled_holder_is_replaced_within_ttl(redis_server, namespace):
    name = lock_key("crash", namespace)
    ttl = 1.0
    ready = FORK.Event()
    holder = FORK.Process(
        target=lockworkers.hold_forever, args=(name, [redis_server.url], ttl, ready)
    )
    holder.start()
    try:
        assert ready.wait(10)
        time.sleep(ttl)  # the watchdog has renewed it: the lease is fresh, not a leftover
        waiter = Redlock(name, [redis_server.url], ttl=ttl)
        assert waiter.acquire(blocking=False) is False
        lockworkers.kill(holder)
        killed = time.monotonic()
        waiter.acquire(timeout=10)
        waited = time.monotonic() - killed
        waiter.release()
    finally:
        if holder.is_alive():
            holder.kill()
    assert waited <= ttl + 0.5


def test_no_starvation_under_eight_way_contention(redis_server, namespace):
    """Zero hold time, 8 processes: every contender gets a share (min/max >= 0.5).

    The holders also log their fencing tokens while holding: in holder
    order they strictly increase across processes.
    """
    name = lock_key("fair", namespace)
    log = f"{namespace}:fences"
    barrier, results = FORK.Barrier(8), FORK.Queue()
    _run_all(
        FORK, lockworkers.contend, [(name, [redis_server.url], 1.5, barrier, results, log)] * 8
    )
    counts = [results.get(timeout=5)[1] for _ in range(8)]
    assert min(counts) / max(counts) >= 0.5, counts
    fences = [int(f) for f in redis_server.client().lrange(log, 0, -1)]
    assert len(fences) == sum(counts)
    assert all(b > a for a, b in pairwise(fences))


def test_a_forked_child_never_releases_or_renews_its_parents_lock(redis_server, namespace):
    name = lock_key("fork", namespace)
    lock = Redlock(name, [redis_server.url], ttl=5)
    lock.acquire()
    results = FORK.Queue()

    def child():
        from fleche_redis.locks import watchdog

        lock.release()  # forgets, touches nothing
        results.put((lock.held, len(watchdog.shared())))

    p = FORK.Process(target=child)
    p.start()
    p.join(20)
    assert p.exitcode == 0
    assert results.get(timeout=5) == (False, 0)
    r = redis_server.client()
    assert r.get(name) is not None  # still the parent's
    assert lock.held
    lock.release()
    assert r.get(name) is None


# -- several masters ---------------------------------------------------------------


def test_quorum_survives_one_stopped_master_and_refuses_with_two(three_masters, namespace):
    urls = [s.url for s in three_masters]
    name = lock_key("quorum", namespace)
    three_masters[0].stop()
    with Redlock(name, urls, ttl=5) as lock:
        assert lock.held and lock.fencing_token
        assert Redlock(name, urls, ttl=5).acquire(blocking=False) is False
    three_masters[1].stop()
    started = time.monotonic()
    with pytest.raises(LockUnavailable) as err:
        Redlock(name, urls, ttl=5).acquire(timeout=0.5)
    assert time.monotonic() - started < 0.5 + 1.0
    assert err.value.name == name


def test_an_interrupted_release_keeps_the_token_and_can_be_retried(three_masters, namespace):
    urls = [s.url for s in three_masters]
    name = lock_key("retry", namespace)
    lock = Redlock(name, urls, ttl=30)
    lock.acquire()
    three_masters[1].stop()
    three_masters[2].stop()
    with pytest.raises(LockUnavailable):
        lock.release()
    assert not lock.held
    with pytest.raises(LockError):
        lock.acquire(blocking=False)  # the unconfirmed release must be finished first
    assert three_masters[0].client().get(name) is None  # the live master did release
    three_masters[1].restart()
    lock.release()  # a quorum has now confirmed
    lock.release()  # and it stays done
    assert lock.acquire(blocking=False)
    lock.release()


def test_a_quorum_winner_leaves_every_masters_queue(three_masters, namespace):
    """Left queued on a master it did not win, it would be woken there instead of a real waiter."""
    urls = [s.url for s in three_masters]
    name = lock_key("leave", namespace)
    holder = Redlock(name, urls, ttl=10)
    holder.acquire()
    waiter = Redlock(name, urls, ttl=10)
    thread = threading.Thread(target=lambda: waiter.acquire(timeout=10))
    thread.start()
    clients = [s.client() for s in three_masters]
    while not all(c.llen(f"{name}:q") for c in clients):
        time.sleep(0.005)
    clients[2].set(name, "someone-else", px=10_000)  # the waiter can win only the other two
    holder.release()
    thread.join(10)
    assert waiter.held
    for c in clients:
        assert c.llen(f"{name}:q") == 0
        assert not list(c.scan_iter(match=f"{name}:a:*"))
    waiter.release()


def test_quorum_fencing_tokens_increase_across_processes(three_masters, namespace):
    urls = [s.url for s in three_masters]
    name = lock_key("qfence", namespace)
    log = f"{namespace}:fences"
    barrier, results = FORK.Barrier(3), FORK.Queue()
    _run_all(FORK, lockworkers.contend, [(name, urls, 1.0, barrier, results, log)] * 3)
    counts = [results.get(timeout=5)[1] for _ in range(3)]
    fences = [int(f) for f in three_masters[0].client().lrange(log, 0, -1)]
    assert len(fences) == sum(counts) > 0
    assert all(b > a for a, b in pairwise(fences))


def test_quorum_fencing_survives_a_lagging_master(three_masters, namespace):
    """A master whose counter is far behind must not let a later token go backwards."""
    urls = [s.url for s in three_masters]
    name = lock_key("lag", namespace)
    counter = f"{namespace}:{{lag}}:fence"
    with Redlock(name, urls, ttl=5) as lock:
        first = lock.fencing_token
    three_masters[0].client().set(counter, first + 10**9)  # one master races ahead
    with Redlock(name, urls, ttl=5) as lock:
        ahead = lock.fencing_token
    three_masters[0].stop()  # the next quorum has only the others
    with Redlock(name, urls, ttl=5) as lock:
        assert lock.fencing_token > ahead > first


# -- Redis Cluster -------------------------------------------------------------------


@pytest.mark.cluster
def test_lock_on_a_three_master_cluster(redis_cluster, namespace):
    name = lock_key("cluster", namespace)
    counter = f"{namespace}:{{cluster}}:n"
    client = redis_cluster.client()
    errors = []

    def work():
        lock = Redlock(name, [redis_cluster.url], ttl=5)
        try:
            for _ in range(25):
                with lock:
                    value = int(client.get(counter) or 0)
                    client.set(counter, value + 1)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert int(client.get(counter)) == 100
    node = client.get_node_from_key(name)
    keys = [k.decode() for k in client.scan_iter(match=f"{namespace}*", target_nodes=node)]
    assert keys and {key_slot(k.encode()) for k in keys} == {key_slot(name.encode())}


def test_spawned_workers_rebuild_their_lock_state(redis_server, namespace, tmp_path):
    """Storages pickled into spawn workers (RedisBackend by constructor, fleche's by __dict__)."""
    storages = [
        lockworkers.LockedValueRedis(url=redis_server.url, namespace=namespace),
        lockworkers.LockedPickle(root=str(tmp_path), lock_urls=(redis_server.url,)),
    ]
    results = SPAWN.Queue()
    _run_all(SPAWN, lockworkers.use_storage, [(s, results) for s in storages for _ in range(2)])
    assert [results.get(timeout=5) for _ in range(4)] == [("ok", True)] * 4
