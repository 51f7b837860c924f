"""Worker processes and storage compositions for the lock tests.

A module of its own (not a test module) so that ``spawn`` children can
import the functions and classes by name.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import redis
from fleche.caches import Cache, Rejected
from fleche.storage import ValuePickleFile

from fleche_redis import CallRedis, PerKeyLockMixin, Redlock, SerializingMixin, ValueRedis

KEY = "ab" * 32  # a digest every worker contends on


@dataclass(frozen=True)
class LockedValueRedis(PerKeyLockMixin, ValueRedis): ...


@dataclass(frozen=True)
class LockedCallRedis(PerKeyLockMixin, CallRedis): ...


@dataclass(frozen=True)
class SerialValueRedis(SerializingMixin, ValueRedis): ...


@dataclass(frozen=True)
class SerialCallRedis(SerializingMixin, CallRedis): ...


@dataclass(frozen=True)
class LockedPickle(PerKeyLockMixin, ValuePickleFile): ...


@dataclass(frozen=True)
class SerialPickle(SerializingMixin, ValuePickleFile): ...


@dataclass(frozen=True)
class LockedCache(PerKeyLockMixin, Cache): ...


@dataclass(frozen=True)
class UnfencedCallRedis(PerKeyLockMixin, CallRedis):
    """The control of the fencing tests: locked as usual, but its records carry no fence."""

    _fences_records = False


class StopOnPickle:
    """Metadata of a record that stops its process (SIGSTOP) while the record is encoded.

    ``CallRedis.save`` encodes the record after taking the lock and before
    writing it, so the pause falls between the acquisition and the write.
    Armed in the one process that should stop (a class attribute, set there).
    """

    armed = False

    def __reduce__(self):
        if StopOnPickle.armed:
            StopOnPickle.armed = False
            os.kill(os.getpid(), signal.SIGSTOP)
        return (StopOnPickle, ())

    def __eq__(self, other):
        return isinstance(other, StopOnPickle)


def report_fences(results) -> None:
    """Report the fences this process's writes would carry."""
    from fleche_redis.storage.calls import write_fences

    results.put(dict(write_fences().held))


def save_record(storage, record, results, stop: bool = False) -> None:
    """Save *record* through *storage* (stopping before the write if *stop*); report the outcome."""
    StopOnPickle.armed = stop
    try:
        storage.save(record)
        results.put(("saved", None))
    except Rejected as e:  # the lock's refusal, with the lock error as its cause
        results.put(("rejected", repr(e.__cause__)))
    except Exception as e:  # anything else is reported to the test, which shows it
        results.put(("error", repr(e)))


def increment(storage, url: str, counter: str, n: int, barrier, pause: float = 0.0) -> None:
    """*n* non-atomic read-modify-write increments of *counter*, each under the storage's lock."""
    r = redis.Redis.from_url(url)
    barrier.wait()
    for _ in range(n):
        with storage._operation_context(KEY):
            value = int(r.get(counter) or 0)
            if pause:
                time.sleep(pause)
            r.set(counter, value + 1)


def increment_unlocked(url: str, counter: str, n: int, barrier, pause: float) -> None:
    """The same loop without a lock: the control that shows the test can fail."""
    r = redis.Redis.from_url(url)
    barrier.wait()
    for _ in range(n):
        value = int(r.get(counter) or 0)
        time.sleep(pause)
        r.set(counter, value + 1)


def contend(name: str, masters, seconds: float, barrier, results, log: str | None = None) -> None:
    """Zero-hold acquire/release for *seconds*; report (pid, count).

    With *log*, every holder appends its fencing token to that list while
    holding the lock, so the list is the order of holders.
    """
    lock = Redlock(name, masters, ttl=5)
    r = redis.Redis.from_url(masters[0]) if log else None
    barrier.wait()
    count = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        lock.acquire(timeout=30)
        if r is not None:
            r.rpush(log, lock.fencing_token)
        count += 1
        lock.release()
    results.put((os.getpid(), count))


def hold_forever(name: str, masters, ttl: float, ready) -> None:
    """Take the lock and keep it (renewed by the watchdog) until killed."""
    lock = Redlock(name, masters, ttl=ttl)
    lock.acquire(timeout=10)
    ready.set()
    while True:
        time.sleep(1)


def kill(process) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.join(5)


def use_storage(storage, results) -> None:
    """Save and load through a storage that crossed a process boundary, under contention."""
    try:
        key = storage.save({"pid": os.getpid()})
        with storage._operation_context(key):
            loaded = storage.load(key)
        results.put(("ok", loaded == {"pid": os.getpid()}))
    except Exception as e:  # reported to the test, which shows it
        results.put(("error", repr(e)))
