"""One background thread per process that keeps held locks alive.

A short ``ttl`` bounds what a crashed holder costs; the watchdog renews
every held :class:`Renewable` (weakly referenced) before its lease runs out,
so a slow holder keeps its lock.  A forked child gets a fresh watchdog.
:meth:`Watchdog.tick` runs one round by hand for tests; see ``docs/locks.md``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from .. import runtime

logger = logging.getLogger("fleche_redis.watchdog")

__all__ = ["Watchdog", "Renewable", "LegacyRenewable", "renew", "shared"]


class Renewable(Protocol):
    """What the watchdog renews (:class:`~fleche_redis.Redlock` is one)."""

    def renew(self) -> float | None:
        """Extend the lock now; return seconds until the next renewal, or ``None`` to stop."""


class LegacyRenewable(Protocol):
    """The former protocol, still accepted: ``_renew`` instead of ``renew``."""

    def _renew(self) -> float | None: ...


Watched = Renewable | LegacyRenewable


def renew(lock: Watched) -> float | None:
    """Call *lock*'s renewal: ``renew()``, or ``_renew()`` on an object of the former protocol."""
    method = getattr(lock, "renew", None)
    if method is None:
        method = lock._renew  # type: ignore[union-attr]
    return method()


class Watchdog:
    """A schedule of locks to renew and the thread that works through it.

    ``autostart=False`` never starts the thread: someone calls :meth:`tick`
    (tests, with a fake clock).
    """

    def __init__(
        self, *, autostart: bool = True, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._autostart = autostart
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, int]] = []
        # id(lock) -> (weak reference, sequence number of its live heap entry);
        # heap entries with another number are left over from earlier holds.
        self._locks: dict[int, tuple[weakref.ref[Watched], int]] = {}
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._wake_at = float("-inf")  # when the sleeping thread will look again (-inf: awake)

    def watch(self, lock: Watched, delay: float) -> None:
        """Renew *lock* in *delay* seconds, and then as often as it asks."""
        key = id(lock)
        due = self._clock() + delay
        with self._cond:
            seq = next(self._seq)
            self._locks[key] = (weakref.ref(lock), seq)
            heapq.heappush(self._heap, (due, seq, key))
            if self._autostart and self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="fleche-redis-watchdog", daemon=True
                )
                self._thread.start()
            elif due < self._wake_at:
                # Only when the thread would look too late: a short hold
                # (watched and unwatched before it is due) costs no thread switch.
                self._cond.notify()

    def unwatch(self, lock: Watched) -> None:
        """Stop renewing *lock* (its heap entries are skipped when they come due)."""
        with self._cond:
            entry = self._locks.get(id(lock))
            if entry is not None and entry[0]() is lock:
                del self._locks[id(lock)]

    def watching(self, lock: Watched) -> bool:
        with self._cond:
            entry = self._locks.get(id(lock))
            return entry is not None and entry[0]() is lock

    def __len__(self) -> int:
        with self._cond:
            return len(self._locks)

    def next_due(self) -> float | None:
        """Clock time of the earliest scheduled renewal, or ``None``."""
        with self._cond:
            self._drop_stale()
            return self._heap[0][0] if self._heap else None

    def _drop_stale(self) -> None:
        # Entries of unwatched or collected locks stay in the heap until
        # they reach the top; removing them from the middle would cost O(n).
        while self._heap:
            _, seq, key = self._heap[0]
            entry = self._locks.get(key)
            if entry is not None and entry[1] == seq:
                if entry[0]() is not None:
                    return
                del self._locks[key]  # the lock object was dropped while held
            heapq.heappop(self._heap)

    def tick(self) -> int:
        """Renew every lock that is due now; return how many were renewed.

        The network calls run outside the schedule's lock so ``watch`` and
        ``unwatch`` never wait for Redis.
        """
        due: list[tuple[int, int, Watched]] = []
        now = self._clock()
        with self._cond:
            while self._heap:
                self._drop_stale()
                if not self._heap or self._heap[0][0] > now:
                    break
                _, seq, key = heapq.heappop(self._heap)
                lock = self._locks[key][0]()
                if lock is not None:
                    due.append((key, seq, lock))
        for key, seq, lock in due:
            try:
                delay = renew(lock)
            except Exception:  # a bug in one lock must not stop renewing the others
                logger.exception("renewing %r failed", lock)
                delay = None
            with self._cond:
                entry = self._locks.get(key)
                if entry is None or entry[1] != seq:
                    continue  # released (and maybe taken again) while we were renewing it
                if delay is None:
                    del self._locks[key]
                else:
                    seq = next(self._seq)
                    self._locks[key] = (entry[0], seq)
                    heapq.heappush(self._heap, (self._clock() + delay, seq, key))
        return len(due)

    IDLE: float = 1.0
    """Seconds the thread sleeps when nothing is due (so new locks rarely need a wake-up)."""

    def _run(self) -> None:
        while True:
            with self._cond:
                due = self.next_due_locked()
                now = self._clock()
                if due is None or due > now:
                    # Bounded, so a replaced clock cannot park the thread for long.
                    self._wake_at = now + self.IDLE if due is None else min(due, now + 5.0)
                    self._cond.wait(self._wake_at - now)
                    self._wake_at = float("-inf")
                    continue
            self.tick()

    def next_due_locked(self) -> float | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None


def shared() -> Watchdog:
    """This process's watchdog (a new one in a forked child)."""
    return runtime.per_process("watchdog", Watchdog)
