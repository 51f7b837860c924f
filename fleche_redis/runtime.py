"""Process-wide state, in one place: the fork generation, per-process singletons, per-thread state, the clock.

A forked child must never use its parent's sockets, locks or renewals; one
fork hook here bumps :func:`fork_generation` and drops every
:func:`per_process` object, and everything process-local is either built by
:func:`per_process` or checks the generation.  Timeouts, leases and
cool-downs read :data:`clock` (and wait with :data:`sleep`) at call time, so
a test replaces one name to drive them all without sleeping.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["clock", "sleep", "fork_generation", "per_process", "thread"]

T = TypeVar("T")

clock: Callable[[], float] = time.monotonic
"""Monotonic seconds for the package's deadlines; tests replace it (``monkeypatch.setattr``)."""

sleep: Callable[[float], None] = time.sleep
"""How the package waits when it has nothing to block on; tests replace it with :data:`clock`."""

_generation = 0
_objects: dict[str, Any] = {}
_objects_lock = threading.Lock()


def fork_generation() -> int:
    """A number that changes in a child process after every ``fork()``.

    Cheaper than ``os.getpid()`` on every operation, and unlike a pid it
    cannot be recycled.
    """
    return _generation


def per_process(name: str, factory: Callable[[], T]) -> T:
    """This process's object called *name*, built by *factory* on first use and again after a fork."""
    obj = _objects.get(name)
    if obj is None:
        with _objects_lock:
            obj = _objects.get(name)
            if obj is None:
                obj = _objects[name] = factory()
    return obj


class PerThread(threading.local):
    """One thread's state: the transport's kept connections and posted requests, the cache's claims."""

    def __init__(self) -> None:
        # transport.wire: the kept connection used last, and every one by pool.
        self.pool: Any = None
        self.kept: Any = None
        self.generation = -1
        self.held: Any = None
        # transport.wire: kept connections owing replies to posted requests.
        self.owing: list[Any] = []
        self.owing_generation = -1
        # cache: claims a load() took for the prepare() that follows it, and
        # write-behind failures kept for the next flush().
        self.claims: dict[tuple[int, str], Any] = {}
        self.failures: list[tuple[Any, BaseException]] = []


thread = PerThread()
"""This thread's :class:`PerThread` state."""


def _after_fork_in_child() -> None:
    global _generation, _objects, _objects_lock
    _generation += 1
    # The parent's objects (threads, locks held by other threads, clients)
    # mean nothing here; drop them without closing anything the parent uses.
    _objects, _objects_lock = {}, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
