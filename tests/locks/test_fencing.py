"""Fenced record writes: the record remembers the highest fencing token that wrote it (issue #15).

The script on fakeredis and a real server; the mixins' side (which writes
carry which token, what a stale holder sees, what it costs) in one process.
The same race across real processes, with SIGSTOP: ``tests/integration/test_fencing.py``.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from fleche import fleche as memoize
from fleche import state
from fleche.caches import Cache, Rejected
from redis.exceptions import ResponseError

from fleche_redis import CallRedis, LockLost, Redlock, ValueRedis, lock_key
from fleche_redis.storage.calls import write_fences
from fleche_redis.testing.roundtrips import RoundTrips

from .lockworkers import (
    LockedCache,
    LockedCallRedis,
    UnfencedCallRedis,
    report_fences,
    save_record,
)

DIGEST = "3f" + "a9" * 31
FORK = multiprocessing.get_context("fork")


def _put(calls, value, fence):
    """``calls.put(value, DIGEST)`` as a holder of *fence* would write it (``None``: no lock)."""
    if fence is not None:
        write_fences().held[DIGEST] = fence
    try:
        calls.put(value, DIGEST)
    finally:
        write_fences().held.pop(DIGEST, None)


def _fence_of(calls, key=DIGEST):
    seen = calls.redis().hget(calls.layout.data(key), "f")
    return None if seen is None else int(seen)


def test_a_record_refuses_a_write_under_an_older_fence(connection):
    calls = CallRedis(**connection)
    _put(calls, {"by": 10}, 10)
    with pytest.raises(LockLost, match="FENCED .* token 10, above this write of token 9"):
        _put(calls, {"by": 9}, 9)
    assert calls.load(DIGEST) == {"by": 10} and _fence_of(calls) == 10
    # Not a failure of Redis: nothing counted against the breaker.
    assert calls.channel.breaker.failures == 0 and calls.metrics()["errors"] == 0
    _put(calls, {"by": "10 again"}, 10)  # the same holder (or a resent request)
    _put(calls, {"by": 11}, 11)
    _put(calls, {"by": "nobody"}, None)  # a writer without a lock keeps the fence
    assert calls.load(DIGEST) == {"by": "nobody"} and _fence_of(calls) == 11
    with pytest.raises(LockLost):
        _put(calls, {"by": 10}, 10)
    calls.evict(DIGEST)  # an evicted record forgets its fence with everything else
    _put(calls, {"by": 5}, 5)
    assert calls.load(DIGEST) == {"by": 5} and _fence_of(calls) == 5


def test_fences_compare_as_numbers_not_strings(connection):
    """Tokens start from the server clock in microseconds: 16 digits, compared numerically."""
    calls = CallRedis(**connection)
    _put(calls, {"by": "big"}, 1_764_000_000_000_001)
    with pytest.raises(LockLost):
        _put(calls, {"by": "9"}, 999_999_999_999_999)
    _put(calls, {"by": "bigger"}, 1_764_000_000_000_002)
    assert _fence_of(calls) == 1_764_000_000_000_002


def test_a_record_written_without_a_lock_carries_no_fence(connection):
    calls = CallRedis(**connection)
    calls.put({"plain": True}, DIGEST)
    assert _fence_of(calls) is None
    locked = LockedCallRedis(**connection)
    with locked._operation_context(DIGEST):
        pass  # a fence is drawn and dropped: the next unlocked write carries none
    calls.put({"plain": "again"}, DIGEST)
    assert _fence_of(calls) is None


@memoize
def _double(x):
    return 2 * x


def _record(url, namespace):
    calls = CallRedis(url=url, namespace=namespace)
    with state.cache(Cache(values=ValueRedis(url=url, namespace=namespace), calls=calls)):
        _double(21)
    key = next(iter(calls.list()))
    record = calls.load(key)
    calls.evict(key)
    return key, record


def _newer_holder_writes(storage, record, writer):
    """Another process takes the record's lock (queued behind nobody) and saves *record*."""
    record.metadata["writer"] = writer
    results = FORK.Queue()
    p = FORK.Process(target=save_record, args=(storage, record, results))
    p.start()
    p.join(20)
    assert results.get(timeout=5) == ("saved", None)


@pytest.mark.parametrize("composition", ["LockedCallRedis", "lock_urls", "LockedCache"])
def test_a_stale_holder_is_rejected_and_the_newer_record_stays(
    redis_server, fresh_server, namespace, composition
):
    """Our lock expires while held (deleted here), another process takes it and writes; our save is rejected."""
    url, r = redis_server.url, redis_server.client()
    key, record = _record(url, namespace)
    calls = CallRedis(url=url, namespace=namespace)
    if composition == "LockedCache":
        storage = LockedCache(
            ValueRedis(url=url, namespace=namespace),
            calls,
            lock_urls=(fresh_server.url,),
            lock_namespace=namespace,
        )
    else:
        lock_urls = (fresh_server.url,) if composition == "lock_urls" else ()
        storage = LockedCallRedis(url=url, namespace=namespace, lock_urls=lock_urls)
    lock_server = r if composition == "LockedCallRedis" else fresh_server.client()
    with pytest.raises(Rejected), storage._operation_context(key):  # our release finds it lost
        ours = write_fences().held[key]
        lock_server.delete(storage._lock_name(key))  # our lease ran out
        _newer_holder_writes(storage, record, "newer")
        record.metadata["writer"] = "stale"
        with pytest.raises(Rejected) as err:
            storage.save(record)
    assert isinstance(err.value.__cause__, LockLost)
    assert "FENCED" in str(err.value.__cause__)
    assert err.value.__cause__.name == key  # the record, whichever lock it was written under
    assert calls.load(key).metadata["writer"] == "newer"
    assert _fence_of(calls, key) > ours
    assert key not in write_fences().held  # released: this thread's writes carry no fence


@pytest.mark.parametrize("locks_on", ["own", "other"])
def test_fencing_costs_no_round_trip(redis_server, fresh_server, namespace, locks_on):
    """A fenced locked save sends what an unfenced one sends: the token rides in the write."""
    lock_urls = (fresh_server.url,) if locks_on == "other" else ()
    key, record = _record(redis_server.url, namespace)
    counts = {}
    for cls in (LockedCallRedis, UnfencedCallRedis):
        storage = cls(url=redis_server.url, namespace=namespace, lock_urls=lock_urls)
        storage.save(record)  # connect and load the scripts outside the count
        with RoundTrips() as trips:
            storage.save(record)
        counts[cls.__name__] = (trips.count, trips.commands)
    assert counts["LockedCallRedis"] == counts["UnfencedCallRedis"]
    # acquire, then write + release (own Redis) or write, release (other servers)
    assert counts["LockedCallRedis"][0] == (2 if locks_on == "own" else 3), counts


def test_the_fence_of_a_lock_nested_in_another_is_put_back_after_it(redis_server, namespace):
    """A locked call storage inside a locked cache: the inner lock's fence while it is held."""
    url = redis_server.url
    calls = LockedCallRedis(url=url, namespace=namespace)
    cache = LockedCache(
        ValueRedis(url=url, namespace=namespace), calls, lock_urls=(url,), lock_namespace=namespace
    )
    with cache._operation_context(DIGEST):
        outer = write_fences().held[DIGEST]
        with calls._operation_context(DIGEST):
            inner = write_fences().held[DIGEST]
            assert inner != outer
        assert write_fences().held[DIGEST] == outer
    assert DIGEST not in write_fences().held
    with Redlock(calls._lock_name(DIGEST), [url]) as lock:
        assert lock.fencing_token > inner  # one counter per slot: strictly increasing


def _documented_counter_script():
    """The fenced counter of docs/locks.md (Fencing), so the documented pattern is the tested one."""
    text = (Path(__file__).parents[2] / "docs" / "locks.md").read_text()
    section = text.split("### Fencing", 1)[1]
    return section.split("```lua\n", 1)[1].split("```", 1)[0]


def test_the_documented_fenced_counter_refuses_a_stale_holder(redis_server, namespace):
    """The counter variant, with Redlock's own fencing tokens: A's lease runs out, B increments."""
    r = redis_server.client()
    incr = r.register_script(_documented_counter_script())
    name, counter = lock_key("counter", namespace), f"{namespace}:{{counter}}:n"
    a, b = Redlock(name, [redis_server.url], ttl=30), Redlock(name, [redis_server.url], ttl=30)
    a.acquire()
    r.delete(name)  # A's lease ran out while it was paused
    with b:
        newer = b.fencing_token
        assert newer > a.fencing_token
        assert incr(keys=[counter], args=[newer]) == 1
    with pytest.raises(ResponseError, match="FENCED"):
        incr(keys=[counter], args=[a.fencing_token])  # A resumes and increments
    with pytest.raises(LockLost):
        a.release()
    assert int(r.hget(counter, "n")) == 1
    assert int(r.hget(counter, "fence")) == newer


def test_a_forked_child_writes_without_its_parents_fences(redis_server, namespace):
    """A child never holds its parent's locks (the registry starts empty there), nor their fences."""
    calls = LockedCallRedis(url=redis_server.url, namespace=namespace)
    results = FORK.Queue()
    with calls._operation_context(DIGEST):
        assert DIGEST in write_fences().held
        child = FORK.Process(target=report_fences, args=(results,))
        child.start()
        child.join(20)
    assert results.get(timeout=5) == {}
