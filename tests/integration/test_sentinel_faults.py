"""Memoized workloads through Sentinel while the primary is killed or failed over.

Two worker processes memoize through a ``redis+sentinel://`` URL while the
primary is killed with ``kill -9`` (the sentinels promote the replica) and
while the sentinels fail it over on request (``SENTINEL FAILOVER``).  They
must see no exception and no wrong result, and ``verify()`` must be clean
afterwards (issue #15, item 2).
"""

from __future__ import annotations

import time

import pytest

from fleche_redis import LockLost, LockUnavailable, Redlock, StorageUnavailable, ValueRedis

from .faults import check, workload

RIDE = {"failover_wait": 15.0}
"""Sentinels here call a primary down after 1 s; electing and promoting takes seconds more."""


@pytest.mark.parametrize("write_behind", [False, True], ids=["commit", "write-behind"])
def test_workload_rides_through_a_primary_killed(
    fresh_sentinel, namespace, tmp_path, capsys, write_behind
):
    # Write-behind commits are posted on one server: their replies are read later, and a
    # commit whose reply the failover swallowed is sent again, riding through it too.
    with workload(
        fresh_sentinel.url, namespace, tmp_path, write_behind=write_behind, **RIDE
    ) as runs:
        time.sleep(0.5)
        started = time.monotonic()
        fresh_sentinel.failover()
        took = time.monotonic() - started
    totals = check(runs, fresh_sentinel.url, namespace)
    with capsys.disabled():
        print(f"\nsentinel kill -9 ({write_behind=}): promoted after {took:.1f} s: {totals}")
    assert totals["retries"] > 0  # the failover was met, and ridden through


@pytest.mark.slow  # the old primary resyncing as a replica takes a while
def test_workload_rides_through_sentinel_failover(fresh_sentinel, namespace, tmp_path, capsys):
    with workload(fresh_sentinel.url, namespace, tmp_path, **RIDE) as runs:
        time.sleep(0.5)
        old = fresh_sentinel.primary
        fresh_sentinel.switch()
        assert fresh_sentinel.primary is not old
    totals = check(runs, fresh_sentinel.url, namespace)
    with capsys.disabled():
        print(f"\nSENTINEL FAILOVER: {totals}")


def test_past_failover_wait_the_error_policy_applies(fresh_sentinel, namespace):
    values = ValueRedis(url=fresh_sentinel.url, namespace=namespace, failover_wait=0.5)
    missing = ValueRedis(
        url=fresh_sentinel.url, namespace=namespace, failover_wait=0.5, on_error="miss"
    )
    key = values.save("stored before the fault")
    fresh_sentinel.replica.pause()  # nobody to promote: the outage outlasts the wait
    try:
        fresh_sentinel.primary.kill()
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            values.load(key)
        assert time.monotonic() - started < 0.5 + 2 * values.socket_timeout + 1.0
        assert values.channel.breaker.state == "open"
        with pytest.raises(KeyError):
            missing.load(key)
    finally:
        fresh_sentinel.replica.resume()


def test_a_lock_lost_with_its_primary_is_never_released_silently(fresh_sentinel, namespace):
    """The first release after the failover says the lock was lost (``LockLost``), or that it
    could not confirm the release (``LockUnavailable``: its connection to the dead primary
    failed after the request was written, so it cannot tell); it never returns as if the
    lock had been held to the end."""
    lock = Redlock(f"{namespace}:{{job}}", fresh_sentinel.url, ttl=30.0, auto_renew=False)
    with fresh_sentinel.losing_writes():
        assert lock.acquire(blocking=False)  # acknowledged by the primary alone
    with pytest.raises((LockLost, LockUnavailable)):
        lock.release()
    assert not lock.held
