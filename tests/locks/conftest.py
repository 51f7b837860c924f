"""Fixtures of the lock tests: a fake clock and groups of private masters."""

from __future__ import annotations

import pytest

from fleche_redis import runtime
from fleche_redis.locks import watchdog
from fleche_redis.testing import RedisServer


class FakeClock:
    """A monotonic clock that moves only when told (or by ``step`` on every read)."""

    def __init__(self, start: float = 1000.0, step: float = 0.0) -> None:
        self.now = start
        self.step = step
        self.slept: list[float] = []

    def __call__(self) -> float:
        now = self.now
        self.now += self.step
        return now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    """Replace the lock primitive's clock (redis-py ``lock.py`` style)."""
    fake = FakeClock()
    monkeypatch.setattr(runtime, "clock", fake)
    monkeypatch.setattr(runtime, "sleep", fake.sleep)
    return fake


@pytest.fixture
def manual_watchdog(clock):
    """A watchdog on the fake clock, without a thread: the test calls ``tick()``."""
    return watchdog.Watchdog(autostart=False, clock=clock)


@pytest.fixture
def three_masters():
    """Three independent private servers (a Redlock quorum), stopped by the test at will."""
    servers = [RedisServer.start() for _ in range(3)]
    try:
        yield servers
    finally:
        for s in servers:
            s.close()
