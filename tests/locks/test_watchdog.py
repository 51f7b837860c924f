"""The shared renewer's schedule, driven by hand with a fake clock."""

from __future__ import annotations

import threading

from fleche_redis.locks import watchdog


class Renewable:
    def __init__(self, every: float | None = 1.0) -> None:
        self.every = every
        self.renewals = 0

    def _renew(self) -> float | None:
        self.renewals += 1
        return self.every


def test_renews_when_due_and_as_often_as_asked(clock, manual_watchdog):
    lock = Renewable(every=2.0)
    manual_watchdog.watch(lock, 1.0)
    assert manual_watchdog.tick() == 0
    clock.advance(1.0)
    assert manual_watchdog.tick() == 1
    assert manual_watchdog.next_due() == clock.now + 2.0
    clock.advance(1.9)
    assert manual_watchdog.tick() == 0
    clock.advance(0.1)
    assert manual_watchdog.tick() == 1
    assert lock.renewals == 2


def test_a_lock_that_says_stop_is_dropped(clock, manual_watchdog):
    lock = Renewable(every=None)
    manual_watchdog.watch(lock, 1.0)
    clock.advance(1.0)
    manual_watchdog.tick()
    assert not manual_watchdog.watching(lock) and manual_watchdog.next_due() is None


def test_holds_of_the_same_lock_leave_no_extra_renewals(clock, manual_watchdog):
    """Watched and unwatched many times (a busy lock): only the live hold is renewed, once."""
    lock = Renewable()
    for _ in range(50):
        manual_watchdog.watch(lock, 1.0)
        manual_watchdog.unwatch(lock)
        clock.advance(0.001)
    manual_watchdog.watch(lock, 1.0)
    clock.advance(1.0)
    assert manual_watchdog.tick() == 1
    assert lock.renewals == 1
    manual_watchdog.unwatch(lock)
    clock.advance(5)
    assert manual_watchdog.tick() == 0


def test_a_hold_taken_again_during_its_renewal_keeps_its_schedule(clock, manual_watchdog):
    """The old hold's renewal says stop; the new hold (same object) must still be renewed."""

    class Racing(Renewable):
        def _renew(self):
            manual_watchdog.unwatch(self)  # released ...
            manual_watchdog.watch(self, 1.0)  # ... and taken again meanwhile
            self.renewals += 1
            return None  # the renewal of the *old* hold found it released

    lock = Racing()
    manual_watchdog.watch(lock, 1.0)
    clock.advance(1.0)
    manual_watchdog.tick()
    assert manual_watchdog.watching(lock)
    clock.advance(1.0)
    assert manual_watchdog.tick() == 1


def _renewer_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "fleche-redis-watchdog")


def test_one_thread_serves_every_lock():
    before = _renewer_threads()
    dog = watchdog.Watchdog()
    locks = [Renewable(every=30.0) for _ in range(100)]
    for lock in locks:
        dog.watch(lock, 30.0)
    assert _renewer_threads() == before + 1 and dog._thread.daemon
    assert len(dog) == 100
    for lock in locks:
        dog.unwatch(lock)
    assert len(dog) == 0


class PublicRenewable:
    """The current protocol: a public ``renew``; ``_renew`` must not be the one called."""

    def __init__(self) -> None:
        self.renewals = 0

    def renew(self) -> float | None:
        self.renewals += 1
        return 1.0

    def _renew(self) -> float | None:
        raise AssertionError("the watchdog called the former hook of a lock that has renew()")


def test_renews_through_the_public_hook_and_still_the_former_one(clock, manual_watchdog):
    public, former = PublicRenewable(), Renewable(every=1.0)
    manual_watchdog.watch(public, 1.0)
    manual_watchdog.watch(former, 1.0)
    clock.advance(1.0)
    assert manual_watchdog.tick() == 2
    assert (public.renewals, former.renewals) == (1, 1)
    assert manual_watchdog.watching(public) and manual_watchdog.watching(former)
