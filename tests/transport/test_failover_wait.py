"""Riding through a failover: which failures are retried, for how long, and what the breaker counts.

The requests here are functions that fail as redis-py fails during a
failover or a slot migration; time is the test's clock (``runtime.clock``
and ``runtime.sleep``), so no test sleeps.  The same policy against real
clusters and sentinels: ``tests/integration/test_cluster_faults.py`` and
``test_sentinel_faults.py``.
"""

from __future__ import annotations

import fakeredis
import pytest
import redis
from redis import exceptions as rx

from fleche_redis import ValueRedis, runtime
from fleche_redis.errors import (
    NotReplicated,
    RedisStorageError,
    SaveRefused,
    StorageUnavailable,
    UnavailableMiss,
)
from fleche_redis.transport.channel import REPEATABLE, WRITES
from fleche_redis.transport.health import Backoff, passing


class Clock:
    """The test's time: ``sleep`` moves it on and records the pauses."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(runtime, "clock", fake)
    monkeypatch.setattr(runtime, "sleep", fake.sleep)
    return fake


def failing(*errors: Exception, then: object = "ok"):
    """A request that raises *errors* one per attempt, then returns *then*; it counts attempts."""
    attempts = []

    def request(client):
        attempts.append(1)
        if len(attempts) <= len(errors):
            raise errors[len(attempts) - 1]
        return then

    request.attempts = attempts  # type: ignore[attr-defined]
    return request


@pytest.fixture
def storage(namespace):
    return ValueRedis(client=fakeredis.FakeRedis(), namespace=namespace, failover_wait=2.0)


RECONFIGURING = [
    rx.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
    rx.ClusterDownError("CLUSTERDOWN The cluster is down"),
    rx.MasterDownError("MASTERDOWN Link with MASTER is down"),
    rx.MovedError("3999 127.0.0.1:6381"),
    rx.AskError("3999 127.0.0.1:6381"),
    rx.ReadOnlyError("READONLY You can't write against a read only replica."),
    rx.BusyLoadingError("LOADING Redis is loading the dataset in memory"),
    rx.ClusterError("TTL exhausted."),
    rx.SlotNotCoveredError("Slot 12 is not covered by the cluster."),
    rx.ResponseError("TRYAGAIN as a plain reply"),
]


@pytest.mark.parametrize("error", RECONFIGURING, ids=lambda e: type(e).__name__)
def test_what_a_failover_or_migration_replies_passes_anywhere(error):
    assert passing(error, fails_over=False) and passing(error, fails_over=True)


@pytest.mark.parametrize(
    "error", [redis.ConnectionError("refused"), redis.TimeoutError("timed out")]
)
def test_a_lost_connection_passes_only_where_another_server_takes_over(error):
    assert passing(error, fails_over=True)
    assert not passing(error, fails_over=False)  # a single server: an outage, for the breaker


@pytest.mark.parametrize(
    "error",
    [
        rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        rx.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."),
        rx.NoPermissionError("NOPERM no permissions"),
        rx.AuthenticationError("WRONGPASS invalid username-password pair"),
        rx.MaxConnectionsError("Too many connections"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_refusals_and_local_errors_never_pass(error):
    assert not passing(error, fails_over=True)


def test_a_migration_is_ridden_through_without_an_error(storage, clock):
    request = failing(*RECONFIGURING[:3])
    assert storage.channel.run("put", request) == "ok"
    counts = storage.channel.metrics
    assert len(request.attempts) == 4 and counts.retries == 3 and counts.errors == 0
    assert storage.channel.breaker.failures == 0
    # Backing off: growing pauses, jittered, each within its cap.
    assert all(0 < p <= 0.5 for p in clock.pauses) and len(clock.pauses) == 3


def test_a_commit_refused_after_a_failover_counts_as_an_error(storage, clock):
    """The ride ends with a commit too few replicas acknowledged: it is raised and counted,
    as on a first attempt (a worker counts its refused commits by ``metrics.errors``; on
    redis-py 5 a failover test found one refusal not counted)."""
    refused = NotReplicated("acknowledged by 0 of 1", acknowledged=0, wanted=1, server="s")
    request = failing(RECONFIGURING[1], refused)
    with pytest.raises(NotReplicated):
        storage.channel.run("put", request)
    counts = storage.channel.metrics
    assert len(request.attempts) == 2 and counts.retries == 1 and counts.errors == 1
    assert storage.channel.breaker.failures == 0


def test_backoff_doubles_to_its_cap_and_ends_with_the_wait(clock):
    backoff = Backoff(wait=3.0, first=0.02, cap=0.5)
    pauses = []
    while (pause := backoff.next()) is not None:
        pauses.append(pause)
        clock.sleep(pause)
    assert pauses[0] <= 0.02 and max(pauses) <= 0.5 and max(pauses) > 0.25
    assert 2.5 < sum(pauses) <= 3.0


def test_past_the_wait_the_error_policy_applies_and_the_breaker_opens(storage, clock):
    request = failing(*[rx.ClusterDownError("CLUSTERDOWN The cluster is down")] * 1000)
    started = clock.now
    with pytest.raises(StorageUnavailable, match="CLUSTERDOWN"):
        storage.channel.run("get", request)
    assert clock.now - started <= 2.0
    assert storage.channel.metrics.retries == len(request.attempts) - 1 > 3
    assert storage.channel.breaker.state == "open"  # a whole wait of failures: open at once
    assert storage.channel.metrics.errors == 1


@pytest.mark.parametrize("operation", ["get", "put"])
def test_failing_open_past_the_wait(namespace, clock, operation):
    storage = ValueRedis(
        client=fakeredis.FakeRedis(), namespace=namespace, failover_wait=1.0, on_error="miss"
    )
    request = failing(*[rx.TryAgainError("TRYAGAIN")] * 1000)
    expected = SaveRefused if operation in WRITES else UnavailableMiss
    with pytest.raises(expected):
        storage.channel.run(operation, request)
    # A refusal that is not a lost connection does not count towards the breaker.
    assert storage.channel.breaker.state == "closed"


def test_operations_not_known_to_be_repeatable_are_not_retried(storage, clock):
    request = failing(rx.TryAgainError("TRYAGAIN"))
    assert "increment" not in REPEATABLE
    with pytest.raises(RedisStorageError):
        storage.channel.run("increment", request)
    assert len(request.attempts) == 1 and clock.pauses == []


def test_zero_turns_riding_off(namespace, clock):
    storage = ValueRedis(client=fakeredis.FakeRedis(), namespace=namespace, failover_wait=0)
    request = failing(rx.TryAgainError("TRYAGAIN"))
    with pytest.raises(RedisStorageError):
        storage.channel.run("get", request)
    assert len(request.attempts) == 1


def test_a_lost_connection_to_a_single_server_is_not_ridden(storage, clock):
    request = failing(redis.ConnectionError("Connection refused"))
    with pytest.raises(StorageUnavailable):
        storage.channel.run("get", request)
    assert len(request.attempts) == 1
    assert storage.channel.breaker.state == "closed"  # one failure of three


def test_every_channel_operation_is_repeatable():
    """Operations sent through a Channel; a new one must be judged and listed in REPEATABLE."""
    import pathlib
    import re

    root = pathlib.Path(__file__).parents[2] / "fleche_redis"
    used = set()
    for path in root.rglob("*.py"):
        text = path.read_text()
        used |= set(re.findall(r"channel\.run\(\s*\"(\w+)\"", text))
        used |= set(re.findall(r"\.failed\(\s*\"(\w+)\"", text))
    assert used and used <= REPEATABLE, used - REPEATABLE


def test_failover_wait_is_configuration(namespace):
    storage = ValueRedis(url="redis://localhost:1/0", namespace=namespace, failover_wait=12.5)
    assert storage.to_config()["failover_wait"] == 12.5
    assert "failover_wait" not in ValueRedis(url="redis://localhost:1/0").to_config()
    with pytest.raises(ValueError, match="failover_wait"):
        ValueRedis(url="redis://localhost:1/0", failover_wait=-1)
