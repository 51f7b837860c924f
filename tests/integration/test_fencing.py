"""Fencing end to end (issue #15, item 5): a holder paused past its lock's ttl cannot overwrite.

Process A takes the per-key lock of a call record in ``save`` and stops
(SIGSTOP, from inside the record's encoding: after the acquisition, before
the write) for longer than ``lock_ttl``; its watchdog stops with it, so its
lease runs out.  Process B then takes the lock and writes its record.  A is
continued and writes: the server refuses the write because the record was
written under a newer fencing token, and A's save is rejected.  The control
(records that carry no fence) shows that without fencing A's late write
replaces B's.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
from fleche import fleche as memoize
from fleche import state
from fleche.caches import Cache

from fleche_redis import CallRedis, ValueRedis

from ..locks import lockworkers

FORK = multiprocessing.get_context("fork")
TTL = 0.5


@memoize
def _triple(x):
    return 3 * x


def _records(url, namespace):
    """Two records of one call (one lookup key), told apart by their ``writer`` metadata."""
    calls = CallRedis(url=url, namespace=namespace)
    with state.cache(Cache(values=ValueRedis(url=url, namespace=namespace), calls=calls)):
        _triple(7)
    key = next(iter(calls.list()))
    a, b = calls.load(key), calls.load(key)
    calls.evict(key)
    a.metadata["writer"] = "A"
    a.metadata["pause"] = {"v": lockworkers.StopOnPickle()}
    b.metadata["writer"] = "B"
    return key, a, b


def _wait_until_stopped(pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop")


def _run(process, results, timeout=20.0):
    process.join(timeout)
    if process.is_alive():
        process.kill()
        raise AssertionError("worker did not finish")
    return results.get(timeout=5)


def _stale_holder_race(storage, a, b):
    """A stops holding the lock, B saves after A's lease ran out, A goes on: (A's, B's outcome)."""
    results_a, results_b = FORK.Queue(), FORK.Queue()
    pa = FORK.Process(target=lockworkers.save_record, args=(storage, a, results_a, True))
    pa.start()
    try:
        _wait_until_stopped(pa.pid)
        stopped = time.monotonic()
        pb = FORK.Process(target=lockworkers.save_record, args=(storage, b, results_b))
        pb.start()
        b_outcome = _run(pb, results_b)
        # B could only write once A's lease ran out: it waited for the ttl.
        assert time.monotonic() - stopped >= TTL * 0.9
    finally:
        os.kill(pa.pid, signal.SIGCONT)
    return _run(pa, results_a), b_outcome


@pytest.mark.parametrize("locks_on", ["the storage's Redis", "other servers"])
def test_a_holder_resumed_after_its_ttl_cannot_overwrite_the_newer_record(
    redis_server, fresh_server, namespace, locks_on
):
    lock_urls = (fresh_server.url,) if locks_on == "other servers" else ()
    storage = lockworkers.LockedCallRedis(
        url=redis_server.url, namespace=namespace, lock_ttl=TTL, lock_urls=lock_urls
    )
    key, a, b = _records(redis_server.url, namespace)
    a_outcome, b_outcome = _stale_holder_race(storage, a, b)
    assert b_outcome == ("saved", None)
    assert a_outcome[0] == "rejected", a_outcome
    assert "LockLost" in a_outcome[1] and "FENCED" in a_outcome[1], a_outcome
    assert CallRedis(url=redis_server.url, namespace=namespace).load(key).metadata["writer"] == "B"
    # The record remembers the fence of B, the newer holder.
    assert int(redis_server.client().hget(storage.layout.data(key), "f")) > 0


def test_without_fencing_the_resumed_holder_overwrites(redis_server, namespace):
    """The control: the same race with records that carry no fence loses B's write."""
    storage = lockworkers.UnfencedCallRedis(url=redis_server.url, namespace=namespace, lock_ttl=TTL)
    key, a, b = _records(redis_server.url, namespace)
    a_outcome, b_outcome = _stale_holder_race(storage, a, b)
    assert b_outcome == ("saved", None)
    # A is told its lock was lost (the release found it gone), but only after its write ran.
    assert a_outcome[0] == "rejected" and "FENCED" not in a_outcome[1], a_outcome
    assert CallRedis(url=redis_server.url, namespace=namespace).load(key).metadata["writer"] == "A"
