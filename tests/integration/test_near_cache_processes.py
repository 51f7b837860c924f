"""A near-cached record changes in another process: the watching process sees it once Redis says so.

Process A (a spawned worker) hits a memoized call from its near cache in a
loop; this process (B) changes the call's record; A's loop stops at the first
call that sees the change.  The delay printed is from just before B's change
to A's first call that saw it (monotonic clocks, shared by the processes).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import subprocess
import sys
import time

import pytest
from fleche.call import DigestedCall

from fleche_redis import CallRedis, ValueRedis, redis_cache

from . import nearworkers

CHANGES = ["evict", "rerun", "expire", "delete-then-repair", "cli-evict"]


def change(how: str, cache, key: str, url: str, client) -> None:
    calls, values = cache.calls, cache.values
    if how == "evict":
        calls.evict(key)
    elif how == "rerun":
        # What a rerun stores: the same call, a new result.
        record = calls.load(key)
        new = values.save({"rerun": True})
        calls.put(dataclasses.replace(record, result=new), key)
    elif how == "expire":
        client.pexpire(calls.layout.data(key), 1)  # Redis itself drops it
    elif how == "delete-then-repair":
        client.delete(calls.layout.data(key))  # as maxmemory eviction would
        # The watcher may have computed it again already: whatever repair finds, it fixes.
        calls.repair()
        assert calls.verify().ok
    elif how == "cli-evict":
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fleche_redis",
                "evict",
                key,
                "--url",
                url,
                "--namespace",
                calls.namespace,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    else:  # pragma: no cover
        raise ValueError(how)


@pytest.mark.parametrize("how", CHANGES)
def test_a_change_elsewhere_reaches_the_near_cache(how, redis_server, namespace):
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    watcher = ctx.Process(
        target=nearworkers.watch, args=(redis_server.url, namespace, 7, send), daemon=True
    )
    watcher.start()
    try:
        assert receive.poll(60), "the watcher never got ready"
        ready = receive.recv()
        assert ready[0] == "ready", ready
        _, first, key = ready
        cache = redis_cache(redis_server.url, namespace)
        client = redis_server.client()
        cache.calls.contains(key)  # connected before the clock starts
        client.ping()
        start = time.monotonic()
        change(how, cache, key, redis_server.url, client)
        done = time.monotonic()
        assert receive.poll(30), "the watcher never saw the change"
        report = receive.recv()
        assert report[0] == "changed", report
        _, seen, result, near_hits, invalidations = report
        assert result != first
        # It was served from its near cache until the invalidation dropped the record.
        assert near_hits >= 1 and invalidations >= 1
        delay = seen - start
        print(
            f"\n{how}: seen by the other process {delay * 1e3:.2f} ms after the change began "
            f"({(seen - done) * 1e3:+.2f} ms after it returned), after {near_hits} near hits"
        )
        assert delay < 1.0 or how == "cli-evict"  # the CLI's own start-up is in its delay
        assert seen - done < 1.0
    finally:
        watcher.join(10)
        if watcher.is_alive():
            watcher.kill()


# -- topologies ---------------------------------------------------------------------------


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_on_cluster_values_are_near_cached_and_records_are_not(redis_cluster, namespace):
    values = ValueRedis(url=redis_cluster.url, namespace=namespace)
    calls = CallRedis(url=redis_cluster.url, namespace=namespace)
    key = values.save([1.0] * 10)
    values.load(key)
    assert values.near.get(key) is not None
    record = calls.save(DigestedCall(name="f", arguments={}, result=key))
    calls.load(record)
    calls.load(record)
    assert calls.metrics()["near_records"] == "untracked"
    assert calls.near.get(record) is None


def test_tracking_follows_a_sentinel_failover(fresh_sentinel, namespace):
    calls = CallRedis(url=fresh_sentinel.url, namespace=namespace)
    key = calls.save(DigestedCall(name="f", arguments={}))
    calls.near.began()
    wait_for(lambda: calls.near.live)
    wait_for(lambda: calls.load(key) is not None and calls.near.get(key) is not None)
    replica = fresh_sentinel.replica.client()
    wait_for(lambda: replica.exists(calls.layout.data(key)))
    fresh_sentinel.failover()
    # The old primary's connection dropped: emptied; then tracking on the new primary.
    wait_for(lambda: calls.near.get(key) is None, timeout=30)
    wait_for(lambda: calls.near.live, timeout=30)
    wait_for(lambda: calls.load(key) is not None and calls.near.get(key) is not None, timeout=30)
    replica.delete(calls.layout.data(key))  # the replica is the primary now
    wait_for(lambda: calls.near.get(key) is None)
