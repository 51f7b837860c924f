"""Network faults between the client and Redis, through a fault-injecting proxy (issue #15, item 4).

Latency and a slow link, a blackhole (accepted, never answered), a half-open
connection (the server vanishes without FIN or RST), a reset in the middle of
a large reply, and a server stopped with SIGSTOP for longer than the socket
timeout.  In each case: every call returns or fails within the documented
time (a socket timeout per attempt, ``retries + 1`` attempts per request),
the breaker opens and closes as documented, no thread or connection is left
behind (counted), no result is wrong, and a write-behind commit is either
stored or reported by ``flush()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fleche
import pytest

from fleche_redis import RedisCache, StorageUnavailable
from fleche_redis.storage.backend import CallRedis, ValueRedis
from fleche_redis.testing.faultproxy import FaultProxy
from fleche_redis.testing.roundtrips import RoundTrips

TIMEOUT = 0.25
"""socket_timeout and connect_timeout of every storage here."""
RETRIES = 1
BACKOFF = 0.05
"""More than redis-py's ExponentialBackoff(base=0.01) waits before one retry (0.02 s)."""
REQUEST = (RETRIES + 1) * (TIMEOUT + BACKOFF)
"""The most one request may cost against a silent server: one socket timeout per attempt."""
SLACK = 0.3
"""Scheduling on a loaded two-core machine; never a whole socket timeout."""
CALL = 2 * REQUEST + SLACK
"""The most a memoized call may cost: its lookup and its commit each fail once."""
FLUSH = TIMEOUT + 2 * REQUEST + 2 * SLACK
"""The most a flush may wait for a commit that meets a fault: the reply's read, the
commit sent again, the compute lease released (a loaded machine gets more slack here)."""
THRESHOLD = 2
WORKERS = 3
COOLDOWN = 1.0

executions: list[int] = []
inside: list[Callable[[], None]] = []
"""Run by ``square`` while it computes (a fault that starts mid-call)."""


@fleche.fleche
def square(x: int) -> dict:
    executions.append(x)
    for hook in inside:
        hook()
    return {"x": x, "square": x * x}


def expected(x: int) -> dict:
    return {"x": x, "square": x * x}


BIG = 1_000_000


@fleche.fleche
def big(x: int) -> bytes:
    return big_value(x)


def big_value(x: int) -> bytes:
    return (b"%07d" % x) * (BIG // 7)


def make_cache(url: str, namespace: str, on_error: str = "raise", **cache_options) -> RedisCache:
    """A cache through the proxy; no near cache unless asked, so every read crosses the network."""
    options: dict[str, Any] = dict(
        url=url,
        namespace=namespace,
        on_error=on_error,
        socket_timeout=TIMEOUT,
        connect_timeout=TIMEOUT,
        retries=cache_options.pop("retries", RETRIES),
        breaker_threshold=THRESHOLD,
        breaker_cooldown=COOLDOWN,
        near_cache_bytes=cache_options.pop("near_cache_bytes", 0),
    )
    return RedisCache(ValueRedis(**options), CallRedis(**options), **cache_options)


def timed(function: Callable[..., Any], *args: Any) -> tuple[float, Any, BaseException | None]:
    start = time.monotonic()
    try:
        result, error = function(*args), None
    except Exception as e:
        result, error = None, e
    return time.monotonic() - start, result, error


def call_square(cache: RedisCache, x: int) -> Any:
    with fleche.cache(cache), fleche.meta():
        return square(x)


def clients(server) -> int:
    """Connections the server has now, besides the one asking."""
    admin = server.client()
    try:
        return admin.info("clients")["connected_clients"] - 1
    finally:
        admin.close()


def started_since(before: set[threading.Thread]) -> list[str]:
    """Threads alive now that were not before: a leak (threads that ended meanwhile are fine,
    e.g. an earlier test's near-cache listener ending with its last subscriber)."""
    return [t.name for t in threading.enumerate() if t not in before]


def settled(count: Callable[[], int], at_most: int, timeout: float = 2.0) -> int:
    """*count()* once it is at most *at_most* (closing sockets takes the server a moment)."""
    deadline = time.monotonic() + timeout
    while (n := count()) > at_most and time.monotonic() < deadline:
        time.sleep(0.02)
    return n


def workload(
    workers: ThreadPoolExecutor, cache: RedisCache, keys: range
) -> list[tuple[float, int, Any, Any]]:
    """Each worker thread calls ``square`` on every key: ``(elapsed, x, result, error)`` per call.

    The same threads serve every round, so each keeps one connection
    throughout, and the connections counted are exactly theirs.
    """

    together = threading.Barrier(WORKERS)  # one round each, on every worker thread

    def run() -> list[tuple[float, int, Any, Any]]:
        together.wait(10)
        with fleche.cache(cache), fleche.meta():
            return [(*timed(square, x), x) for x in keys]

    rounds = [workers.submit(run) for _ in range(WORKERS)]
    done = [call for r in rounds for call in r.result(timeout=30)]  # a call that hangs fails here
    return [(elapsed, x, result, error) for elapsed, result, error, x in done]


def through_a_fault(server, cache: RedisCache, on_error: str, fault, heal) -> None:
    """Calls made while *fault* lasts end in time, the breaker opens, and it all recovers without leaks."""
    call_square(cache, 0)  # this thread's connection (it probes the breaker below), the watchdog
    threads = set(threading.enumerate())
    with ThreadPoolExecutor(WORKERS) as workers:
        _through_a_fault(workers, server, cache, on_error, fault, heal)
    assert not started_since(threads)


def _through_a_fault(workers, server, cache: RedisCache, on_error: str, fault, heal) -> None:
    breaker = cache.calls.channel.breaker
    workload(workers, cache, range(4))  # warm: the workers' connections
    threads, connections = set(threading.enumerate()), clients(server)

    fault()
    try:
        during = workload(workers, cache, range(10, 16))
        for elapsed, x, result, error in during:
            assert elapsed <= CALL, (elapsed, x, error)
            if on_error == "raise":
                assert result is None and isinstance(error, StorageUnavailable), (result, error)
            else:  # fails open: computed here, never wrong
                assert error is None and result == expected(x), (result, error)
        assert breaker.opened >= 1
        # Failing open, a call also stores values: both storages' breakers count.
        watched = (breaker, cache.values.channel.breaker) if on_error == "miss" else (breaker,)
        for x in range(30, 33):  # a loaded machine may have let the cool-down pass
            if all(b.state == "open" for b in watched):
                break
            elapsed, _, _ = timed(call_square, cache, x)
            assert elapsed <= CALL, elapsed  # a probe fails and opens it again
        assert all(b.state == "open" for b in watched), [b.state for b in watched]
        # While open, a call fails (or computes) at once without a request.
        with RoundTrips() as trips, fleche.cache(cache), fleche.meta():
            elapsed, result, error = timed(square, 20)
        assert trips.count == 0 and elapsed < TIMEOUT / 2, (trips.commands, elapsed)
        assert (error is None) == (on_error == "miss")
    finally:
        heal()

    time.sleep(COOLDOWN)  # the circuit half-opens: one call probes and closes it
    assert call_square(cache, 9) == expected(9)
    after = workload(workers, cache, range(10, 16))
    assert all(error is None and result == expected(x) for _, x, result, error in after), after
    assert breaker.state == "closed" and cache.values.channel.breaker.state == "closed"
    assert not started_since(threads)
    assert settled(lambda: clients(server), connections) <= connections


@pytest.fixture
def proxy(fresh_server):
    with FaultProxy.to_url(fresh_server.url) as proxy:
        yield proxy


# -- a slow network -------------------------------------------------------------


def test_50_ms_of_latency_costs_time_and_nothing_else(fresh_server, proxy, namespace):
    cache = make_cache(proxy.url, namespace, write_behind=True)
    proxy.set_latency(0.05)  # each way
    with fleche.cache(cache), fleche.meta():
        misses = [timed(square, x) for x in range(3)]
        cache.flush()  # every write-behind commit stored
        hits = [timed(square, x) for x in range(3)]
    for elapsed, _, error in misses + hits:
        assert error is None and elapsed >= 0.1, (elapsed, error)
    assert [r for _, r, _ in hits] == [expected(x) for x in range(3)]
    assert cache.calls.channel.breaker.opened == 0 and cache.values.channel.breaker.opened == 0
    assert cache.calls.channel.metrics.errors == 0


def test_a_slow_link_carries_what_fits_in_the_timeout_and_fails_the_rest_in_time(
    fresh_server, proxy, namespace
):
    values = make_cache(proxy.url, namespace).values
    proxy.set_bandwidth(2_000_000)
    small = b"s" * 100_000  # 50 ms through the link
    assert values.load(values.save(small)) == small
    large = b"L" * 4_000_000  # 2 s through the link: longer than a request may take
    elapsed, key, error = timed(values.save, large)
    assert isinstance(error, StorageUnavailable) and elapsed <= REQUEST + SLACK, (elapsed, error)
    proxy.set_bandwidth(None)
    key = values.save(large)  # the same bytes, stored whole or not at all
    assert values.load(key) == large
    # A socket timeout bounds silence, not a transfer: a reply that keeps
    # coming is read whole, however long it takes.
    medium = b"m" * 1_000_000
    key = values.save(medium)
    proxy.set_bandwidth(2_000_000)
    elapsed, loaded, error = timed(values.load, key)
    assert error is None and loaded == medium and elapsed > TIMEOUT, (elapsed, error)


# -- a silent server ------------------------------------------------------------


@pytest.mark.parametrize("on_error", ["raise", "miss"])
def test_a_blackhole(fresh_server, proxy, namespace, on_error):
    cache = make_cache(proxy.url, namespace, on_error)
    through_a_fault(fresh_server, cache, on_error, proxy.blackhole, proxy.heal)


@pytest.mark.parametrize("on_error", ["raise", "miss"])
def test_a_half_open_connection(fresh_server, proxy, namespace, on_error):
    cache = make_cache(proxy.url, namespace, on_error)
    through_a_fault(fresh_server, cache, on_error, proxy.half_open, proxy.heal)


@pytest.mark.parametrize("on_error", ["raise", "miss"])
def test_a_server_stopped_longer_than_the_socket_timeout(fresh_server, namespace, on_error):
    cache = make_cache(fresh_server.url, namespace, on_error)
    through_a_fault(fresh_server, cache, on_error, fresh_server.pause, fresh_server.resume)


@pytest.mark.parametrize("on_error", ["raise", "miss"])
def test_a_waiter_when_the_network_goes_silent(fresh_server, proxy, namespace, on_error):
    """One thread computes under the lease, another waits for it; then the network goes silent."""
    cache = make_cache(proxy.url, namespace, on_error, lease_ttl=0.6, claim_ttl=0.3)
    started = threading.Event()
    inside.append(lambda: (started.set(), time.sleep(0.3)))
    try:
        computing = threading.Thread(target=lambda: timed(call_square, cache, 40))
        computing.start()
        started.wait(2)
        waiter: list[Any] = []
        waiting = threading.Thread(target=lambda: waiter.append(timed(call_square, cache, 40)))
        waiting.start()
        time.sleep(0.1)  # the waiter is blocked on its signal
        proxy.blackhole()
        waiting.join(10)
        computing.join(10)
    finally:
        inside.clear()
        proxy.heal()
    assert not waiting.is_alive() and not computing.is_alive()
    ((elapsed, result, error),) = waiter
    assert elapsed <= CALL + 0.3, elapsed  # and the body, when it computes here
    if on_error == "raise":
        assert result is None and isinstance(error, StorageUnavailable), (result, error)
    else:
        assert error is None and result == expected(40), (result, error)


# -- a broken connection -------------------------------------------------------


def test_a_reset_in_the_middle_of_a_large_reply(fresh_server, proxy, namespace):
    # Caches here have no near cache (make_cache): every read crosses the proxy.
    cache = make_cache(proxy.url, namespace)
    once = make_cache(proxy.url, namespace, retries=0)
    with fleche.cache(cache), fleche.meta():
        assert big(1) == big_value(1)
    key = cache.values.save(big_value(2))
    assert once.values.load(key) == big_value(2)
    threads, connections = set(threading.enumerate()), clients(fresh_server)

    proxy.reset_after(BIG // 3)
    assert cache.values.load(key) == big_value(2)  # the retry reads it whole
    assert proxy.resets == 1
    proxy.reset_after(BIG // 3)
    with fleche.cache(cache), fleche.meta():
        assert big(1) == big_value(1)  # a hit, whole
    assert proxy.resets == 2

    proxy.reset_after(BIG // 3)
    elapsed, result, error = timed(once.values.load, key)  # no retry: an error, never a part
    assert result is None and isinstance(error, StorageUnavailable), result
    assert proxy.resets == 3 and elapsed < TIMEOUT
    assert once.values.load(key) == big_value(2)
    proxy.reset_after(BIG // 3)
    with fleche.cache(once), fleche.meta():
        elapsed, result, error = timed(big, 1)
        assert result is None and isinstance(error, StorageUnavailable), result
        assert big(1) == big_value(1)

    assert not started_since(threads)
    assert settled(lambda: clients(fresh_server), connections) <= connections
    assert proxy.connections <= connections


# -- write-behind commits ------------------------------------------------------


FAULTS = ["blackhole", "half-open", "reset", "sigstop"]


def faults(server, proxy: FaultProxy, fault: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(break, heal)`` for *fault*."""
    if fault == "sigstop":
        return server.pause, server.resume
    if fault == "reset":
        return lambda: proxy.reset_after(0), proxy.heal
    return {"blackhole": proxy.blackhole, "half-open": proxy.half_open}[fault], proxy.heal


def stored(server, namespace: str, x: int) -> bool:
    """Whether ``square(x)`` is stored: a cache straight to the server hits it."""
    direct = make_cache(server.url, namespace, lease_ttl=0.6, claim_ttl=0.3, wait_timeout=5)
    before = len(executions)
    with fleche.cache(direct), fleche.meta():
        elapsed, result, error = timed(square, x)
    assert error is None and result == expected(x), error
    assert elapsed < 2.0, elapsed  # never waits on a lease the failed commit left behind
    return len(executions) == before


@pytest.mark.parametrize("fault", FAULTS)
def test_a_write_behind_commit_posted_into_a_fault_is_reported(
    fresh_server, proxy, namespace, fault
):
    """The fault starts while the function runs: its commit is written into it."""
    cache = make_cache(proxy.url, namespace, write_behind=True, lease_ttl=0.6, claim_ttl=0.3)
    down, up = faults(fresh_server, proxy, fault)
    with fleche.cache(cache), fleche.meta():
        square(0)  # the server knows the scripts: a commit that arrives is stored
        assert cache.flush() is None
        inside.append(down)
        try:
            elapsed, result, error = timed(square, 1)
        finally:
            inside.clear()
        assert error is None and result == expected(1)
        assert elapsed < SLACK  # posted: the call did not wait
        elapsed, _, flushed = timed(cache.flush)
    up()
    assert elapsed <= FLUSH, elapsed
    assert flushed is None or isinstance(flushed, StorageUnavailable), flushed
    if flushed is None:  # not reported: it must be stored
        assert stored(fresh_server, namespace, 1)


@pytest.mark.parametrize("fault", FAULTS)
def test_a_write_behind_commit_in_flight_when_the_fault_starts_is_stored_or_reported(
    fresh_server, proxy, namespace, fault
):
    """The commit was written and the call returned; the fault starts while it travels (100 ms each way)."""
    cache = make_cache(proxy.url, namespace, write_behind=True, lease_ttl=0.6, claim_ttl=0.3)
    down, up = faults(fresh_server, proxy, fault)
    with fleche.cache(cache), fleche.meta():
        square(0)  # the server knows the scripts: a commit that arrives is stored
        assert cache.flush() is None
        proxy.set_latency(0.1)
        assert square(2) == expected(2)  # posted
        down()
        elapsed, _, flushed = timed(cache.flush)
    up()
    assert elapsed <= FLUSH + 0.2, elapsed  # and the round trip the latency held
    assert flushed is None or isinstance(flushed, StorageUnavailable), flushed
    if flushed is None:
        assert stored(fresh_server, namespace, 2)
