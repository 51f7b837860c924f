"""The lock primitive on one server: exclusion, hand-over, fencing, release, timing logic."""

from __future__ import annotations

import gc
import threading
import time
from itertools import pairwise

import pytest
from redis.cluster import key_slot

from fleche_redis import LockError, LockLost, LockNotOwned, LockTimeout, Redlock, lock_key
from fleche_redis.storage.keys import lock_tag_end as _tag_end


@pytest.fixture(params=["fakeredis", "redis-server"])
def master(request, fake_client):
    """One master: an in-process fakeredis or the session's private server (by URL)."""
    if request.param == "fakeredis":
        return fake_client
    return request.getfixturevalue("redis_server").url


def _client(master):
    import redis

    return redis.Redis.from_url(master) if isinstance(master, str) else master


def test_lock_key_puts_namespace_first_and_a_hash_tag_after_it():
    assert lock_key("report", "team-a") == "team-a:{report}"
    for bad in ("", "a{b", "a}b"):
        with pytest.raises(ValueError):
            lock_key(bad)
    for bad in ("plain", "{tag}:x", "ns:{}:x", "ns:nobrace"):
        with pytest.raises(ValueError):
            Redlock(bad, ["redis://localhost:1/0"])
    assert _tag_end("ns:{c.3f}:lock:abc") == len("ns:{c.3f}")


def test_acquire_excludes_and_release_frees(master, namespace):
    name = lock_key("x", namespace)
    a, b = Redlock(name, [master], ttl=5), Redlock(name, [master], ttl=5)
    assert a.acquire()
    assert a.held and a.fencing_token is not None and 0 < a.remaining() <= 5
    assert b.acquire(blocking=False) is False
    assert not b.held and b.fencing_token is None
    a.release()
    assert not a.held and a.fencing_token is None
    assert b.acquire(blocking=False) is True
    b.release()
    assert _client(master).exists(name) == 0


def test_release_is_idempotent_and_release_of_a_free_lock_does_nothing(master, namespace):
    lock = Redlock(lock_key("x", namespace), [master], ttl=5)
    lock.release()  # never acquired
    lock.acquire()
    lock.release()
    lock.release()
    assert not lock.held


def test_the_primitive_is_not_reentrant(master, namespace):
    lock = Redlock(lock_key("x", namespace), [master], ttl=5)
    with lock, pytest.raises(LockError):
        lock.acquire(blocking=False)
    with pytest.raises(LockNotOwned):
        lock.extend()


def test_fencing_tokens_strictly_increase_across_holders(master, namespace):
    name = lock_key("x", namespace)
    tokens = []
    for _ in range(20):
        with Redlock(name, [master], ttl=5) as lock:
            tokens.append(lock.fencing_token)
    assert all(b > a for a, b in pairwise(tokens))


def test_timeout_raises_a_lock_error_carrying_the_name(master, namespace, clock):
    name = lock_key("x", namespace)
    holder = Redlock(name, [master], ttl=30)
    holder.acquire()
    waiter = Redlock(name, [master], ttl=30)
    waiter.RECHECK = 0.01  # each real BLPOP is short; the fake clock does the waiting
    clock.step = 0.5
    with pytest.raises(LockTimeout) as err:
        waiter.acquire(timeout=5)
    assert err.value.name == name and isinstance(err.value, LockError)
    assert not waiter.held
    # A waiter that gave up leaves the queue at once.
    assert _client(master).llen(f"{name}:q") == 0
    holder.release()


def test_validity_counts_the_time_the_acquisition_took(master, namespace, clock):
    """validity = ttl - elapsed - drift; a lock that took too long to get is given back."""
    name = lock_key("x", namespace)
    lock = Redlock(name, [master], ttl=1)
    clock.step = 1.0  # the round trip "took" a whole ttl
    assert lock.acquire(blocking=False) is False
    assert _client(master).exists(name) == 0
    clock.step = 0.0
    assert lock.acquire(blocking=False) is True
    drift = 1 * Redlock.DRIFT_FACTOR + 0.002
    assert lock.remaining() == pytest.approx(1 - drift)
    clock.advance(0.5)
    assert lock.remaining() == pytest.approx(0.5 - drift)
    lock.release()


def test_watchdog_renews_on_schedule_and_detects_loss(master, namespace, clock, manual_watchdog):
    name = lock_key("x", namespace)
    r = _client(master)
    lock = Redlock(name, [master], ttl=3, watchdog=manual_watchdog)
    lock.acquire()
    assert manual_watchdog.next_due() == pytest.approx(clock.now + 1.0)
    assert manual_watchdog.tick() == 0  # not due yet
    r.pexpire(name, 200)  # as if the lease had almost run out
    clock.advance(1.01)
    assert manual_watchdog.tick() == 1
    assert r.pttl(name) > 2000
    assert lock.remaining() > 2.9
    # Someone else's takeover (here: the key vanished) is noticed at the next renewal.
    r.delete(name)
    clock.advance(1.01)
    manual_watchdog.tick()
    assert lock.lost and not lock.held
    assert not manual_watchdog.watching(lock)
    with pytest.raises(LockLost, match=r"a renewal had found it gone; held 2\.02 s, ttl 3 s"):
        lock.release()


def test_lock_lost_says_how_long_it_was_held(master, namespace, clock, manual_watchdog):
    """A release that finds the lock gone says so, with the hold's length against the ttl:
    a hold longer than the ttl (a paused holder) reads differently from a short one."""
    lock = Redlock(lock_key("x", namespace), [master], ttl=3, watchdog=manual_watchdog)
    lock.acquire()
    clock.advance(0.25)
    _client(master).set(lock.name, "another holder")
    with pytest.raises(LockLost, match=r"the release found it gone; held 0\.25 s, ttl 3 s"):
        lock.release()
    assert _client(master).get(lock.name) == b"another holder"


def test_release_stops_renewal(master, namespace, clock, manual_watchdog):
    lock = Redlock(lock_key("x", namespace), [master], ttl=3, watchdog=manual_watchdog)
    lock.acquire()
    assert manual_watchdog.watching(lock)
    lock.release()
    assert not manual_watchdog.watching(lock)
    clock.advance(10)
    assert manual_watchdog.tick() == 0
    assert manual_watchdog.next_due() is None


def test_a_dropped_lock_object_is_not_renewed(redis_server, namespace, clock, manual_watchdog):
    """The holder is gone (garbage): renewal stops and the lease is left to expire.

    Real server only: fakeredis keeps the last ``NOSCRIPT`` error's traceback
    (and so the frames that hold the lock) alive.
    """
    lock = Redlock(lock_key("x", namespace), [redis_server.url], ttl=3, watchdog=manual_watchdog)
    lock.acquire()
    del lock
    gc.collect()
    clock.advance(1.01)
    assert manual_watchdog.tick() == 0
    assert len(manual_watchdog) == 0


def test_waiters_are_served_first_come_first_served(redis_server, namespace):
    """One master: the releaser hands the lock to the oldest waiter; nobody barges."""
    name = lock_key("fifo", namespace)
    r = redis_server.client()
    holder = Redlock(name, [redis_server.url], ttl=10)
    holder.acquire()
    order: list[int] = []
    threads = []
    for i in range(4):

        def wait(i=i):
            with Redlock(name, [redis_server.url], ttl=10):
                order.append(i)

        t = threading.Thread(target=wait)
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 5
        while r.llen(f"{name}:q") < i + 1 and time.monotonic() < deadline:
            time.sleep(0.005)  # wait until waiter i is queued before starting the next
    holder.release()
    # The releaser coming straight back queues behind them.
    holder.acquire(timeout=10)
    order.append(-1)
    holder.release()
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2, 3, -1]


def test_handoff_wakes_a_blocked_waiter_without_polling(redis_server, namespace):
    name = lock_key("wake", namespace)
    holder = Redlock(name, [redis_server.url], ttl=10)
    holder.acquire()
    waiter = Redlock(name, [redis_server.url], ttl=10)
    waiter.RECHECK = 30.0  # no fallback re-check within the test: only the push can wake it
    got = threading.Event()
    thread = threading.Thread(target=lambda: (waiter.acquire(timeout=20), got.set()))
    thread.start()
    r = redis_server.client()
    while r.llen(f"{name}:q") < 1:
        time.sleep(0.005)
    holder.release()
    assert got.wait(5), "the waiter was not woken by the release"
    assert waiter.fencing_token > 0
    waiter.release()
    thread.join()


def test_every_key_starts_with_the_namespace_and_shares_the_hash_slot(redis_server, namespace):
    name = lock_key("slot", namespace)
    r = redis_server.client()
    holder = Redlock(name, [redis_server.url], ttl=10)
    holder.acquire()
    waiter = Redlock(name, [redis_server.url], ttl=10)
    thread = threading.Thread(target=lambda: (waiter.acquire(timeout=10), waiter.release()))
    thread.start()
    while r.llen(f"{name}:q") < 1:
        time.sleep(0.005)
    keys = [k.decode() for k in r.scan_iter(match=f"{namespace}*")]
    assert len(keys) >= 4  # lock, queue, waiter lease, fencing counter
    holder.release()
    thread.join(10)
    keys += [k.decode() for k in r.scan_iter(match=f"{namespace}*")]  # + the signal's trace
    assert all(k.startswith(f"{namespace}:{{") for k in keys)
    assert {key_slot(k.encode()) for k in keys} == {key_slot(name.encode())}
    # Nothing but the fencing counter outlives the lock.
    assert [k.decode() for k in r.scan_iter(match=f"{namespace}*")] == [f"{name}:fence"]


def test_fencing_tokens_survive_a_server_restart(fresh_server):
    name = lock_key("fence")
    with Redlock(name, [fresh_server.url], ttl=5) as lock:
        before = lock.fencing_token
    fresh_server.restart()  # no persistence: the counter is gone
    with Redlock(name, [fresh_server.url], ttl=5) as lock:
        assert lock.fencing_token > before


def test_watchdog_keeps_a_long_hold_and_hands_over_promptly(redis_server, namespace):
    """Hold for 3 x ttl: nobody else gets it; after release a waiter gets it at once."""
    name = lock_key("long", namespace)
    ttl = 0.5
    holder = Redlock(name, [redis_server.url], ttl=ttl)
    holder.acquire()
    other = Redlock(name, [redis_server.url], ttl=ttl)
    end = time.monotonic() + 3 * ttl
    while time.monotonic() < end:
        assert other.acquire(blocking=False) is False
        time.sleep(0.05)
    assert holder.held and not holder.lost
    got = []
    thread = threading.Thread(
        target=lambda: (other.acquire(timeout=5), got.append(time.monotonic()))
    )
    thread.start()
    r = redis_server.client()
    while r.llen(f"{name}:q") < 1:
        time.sleep(0.005)
    released = time.monotonic()
    holder.release()
    thread.join(5)
    assert got and got[0] - released < 0.5
    other.release()


def test_contended_says_whether_the_last_acquisition_waited_its_turn(redis_server, namespace):
    name = lock_key("contended", namespace)
    a, b = Redlock(name, [redis_server.url], ttl=5), Redlock(name, [redis_server.url], ttl=5)
    assert a.acquire() and not a.contended
    waiter = threading.Thread(target=b.acquire, kwargs={"timeout": 5})
    waiter.start()
    time.sleep(0.3)  # b is queued by now
    a.release()
    waiter.join(5)
    assert b.held and b.contended
    b.release()
    # Free now: the pipelined attempt wins at once and is not contended.
    assert b.acquire(timeout=5) and not b.contended
    b.release()


def test_renew_is_public_and_the_former_name_still_works(redis_server, namespace):
    lock = Redlock(lock_key("renew", namespace), [redis_server.url], ttl=3, auto_renew=False)
    assert lock.renew() is None and lock._renew() is None  # not held: stop
    lock.acquire()
    try:
        assert lock.renew() == pytest.approx(1.0)
        assert lock._renew() == pytest.approx(1.0)
        assert lock.held
    finally:
        lock.release()


def test_a_carried_release_does_what_release_would(master, namespace):
    """``carry_release``: the caller sends the command in its own request and settles the reply."""
    client = _client(master)
    lock = Redlock(lock_key("carried", namespace), [master], ttl=10)

    def send(command):
        try:
            return client.execute_command(*command)
        except Exception:  # NOSCRIPT on a fresh server: EVAL it as a caller's bundle would
            return client.execute_command("EVAL", lock.RELEASE.source, *command[2:])

    lock.acquire()
    command, settle = lock.carry_release()
    assert not lock.held  # released here from the start: a renewal meanwhile stops
    settle(send(command))
    assert lock.fencing_token is None and lock.carry_release() is None
    assert client.exists(lock.name) == 0
    # A request whose earlier commands were refused: the release never ran, still held.
    lock.acquire()
    _, settle = lock.carry_release()
    settle(None)
    assert lock.held
    lock.release()
    assert client.exists(lock.name) == 0
    # Lost before the request ran: reported as release() reports it.
    lock.acquire()
    command, settle = lock.carry_release()
    client.set(lock.name, "another holder")
    with pytest.raises(LockLost):
        settle(send(command))
    assert client.get(lock.name) == b"another holder"
    client.delete(lock.name)
