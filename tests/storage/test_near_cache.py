"""The near cache: bounded in bytes, values always, call records only while Redis tracks their changes."""

from __future__ import annotations

import multiprocessing
import pickle
import random
import threading
import time
import tracemalloc

import fleche
import pytest
from fleche.caches import Cache

from fleche_redis import CallRedis, RedisCache, RedisStorageError, ValueRedis, redis_cache
from fleche_redis.storage.near import (
    DEFAULT_BYTES,
    ENTRY_OVERHEAD,
    NearCache,
    TrackedNearCache,
)
from fleche_redis.testing.roundtrips import RoundTrips
from fleche_redis.transport import tracking


@fleche.fleche
def triple(x: int) -> list[float]:
    return [float(x)] * 3


def digest(i: int) -> str:
    return f"{i:064x}"


def wait_for(predicate, timeout: float = 5.0) -> float:
    """Seconds until *predicate()* held; fails after *timeout*."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.001)
    return time.monotonic() - start


def tracked(storage: CallRedis) -> CallRedis:
    storage.near.began()  # subscribes
    wait_for(lambda: storage.near.live)
    return storage


# -- the bounded cache --------------------------------------------------------------------


def test_lru_by_bytes_and_exact_accounting():
    entry = ENTRY_OVERHEAD + 40
    near = NearCache(2 * entry + 20)
    near.keep(digest(1), b"a" * 40)
    near.keep(digest(2), b"b" * 40)
    assert near.get(digest(1)) == b"a" * 40  # 1 is now the most recently used
    near.keep(digest(3), b"c" * 40)  # over the bound: the least recently used goes
    assert near.get(digest(2)) is None and near.size == 2 * entry and len(near) == 2
    near.keep(digest(3), b"d" * 10)  # replacing an entry counts its new size only
    assert near.size == entry + ENTRY_OVERHEAD + 10
    near.keep(digest(4), bytes(near.capacity))  # larger than the whole bound: never kept
    assert near.get(digest(4)) is None and near.size == entry + ENTRY_OVERHEAD + 10
    assert near.stats()["near_evictions"] == 1


def _held_here() -> int:
    """Memory traced now, leaving out what other threads allocate meanwhile: the tracking
    listeners of earlier tests' storages, reconnecting to servers long gone."""
    others = ["*redis*", "*/socket.py", "*/threading.py", "*/selectors.py", "*/transport/*"]
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, pattern) for pattern in others]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


@pytest.mark.parametrize("largest", [50, 400, 5000])
def test_the_bound_holds_for_the_memory_the_process_uses(largest):
    bound = 2 * 2**20
    near = NearCache(bound)
    tracemalloc.start()
    try:
        before = _held_here()
        rng = random.Random(3)
        for i in range(40_000):  # small entries are where per-entry costs weigh most
            near.keep(digest(i), rng.randbytes(rng.randrange(1, largest)))
        used = _held_here() - before
    finally:
        tracemalloc.stop()
    assert near.size <= bound and near.stats()["near_evictions"] > 0
    # Within 5%: the allocator's rounding and the table's growth are not per entry.
    assert used <= bound * 1.05, f"{used:,} bytes held for a bound of {bound:,}"


def test_memory_stays_within_the_bound_under_random_use():
    bound = 10_000
    near = NearCache(bound)
    rng = random.Random(7)
    errors: list[BaseException] = []

    def hammer(seed: int) -> None:
        r = random.Random(seed)
        try:
            for _ in range(3000):
                key = digest(r.randrange(200))
                if r.random() < 0.6:
                    near.keep(key, bytes(r.randrange(1, 3000)))
                elif r.random() < 0.9:
                    near.get(key)
                else:
                    near.drop([key])
                assert near.size <= bound
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(rng.random(),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    held = list(near._entries.values())
    assert near.size == sum(len(d) + ENTRY_OVERHEAD for d in held) <= bound


def test_zero_turns_it_off():
    near = NearCache(0)
    near.keep(digest(1), b"x")
    assert near.get(digest(1)) is None and near.size == 0
    with pytest.raises(ValueError, match="near_cache_bytes"):
        NearCache(-1)


def _child_view(near: NearCache, conn) -> None:
    conn.send((near.get(digest(1)), near.size))


def test_a_forked_child_starts_empty():
    near = NearCache(1000)
    near.keep(digest(1), b"parent's")
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    # Held while forking, as by a thread of the parent: the child must not wait for it.
    with near._locked():
        child = ctx.Process(target=_child_view, args=(near, send))
        child.start()
    assert receive.poll(10), "the child is stuck on its parent's lock"
    assert receive.recv() == (None, 0)
    child.join(10)
    assert near.get(digest(1)) == b"parent's"  # the parent's own stays


def _child_tracks_its_own(calls: CallRedis, key: str, conn) -> None:
    try:
        held = calls.near.get(key)
        tracked(calls)
        calls.load(key)
        conn.send((held, calls.near.get(key) is not None))
    except BaseException as e:  # surfaced in the parent
        conn.send(e)


def test_a_forked_child_tracks_records_itself(cache):
    key = near_record(cache)
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_tracks_its_own, args=(cache.calls, key, send))
    child.start()
    assert receive.poll(20)
    reply = receive.recv()
    child.join(10)
    assert reply == (None, True)  # empty at first, then kept under its own listener


# -- coherence: the race of a read and an invalidation --------------------------------------


class Always:
    """A listener stand-in: tracking starts when asked."""

    def __call__(self, near: TrackedNearCache) -> bool:
        near.tracking_started()
        return True


def tracked_near(capacity: int = 1000) -> TrackedNearCache:
    near = TrackedNearCache(capacity, Always(), lambda name: name.decode()[-64:])
    near.began()
    return near


def test_nothing_is_kept_before_tracking_runs():
    near = TrackedNearCache(1000, lambda near: True, lambda name: None)
    since = near.began()
    near.keep(digest(1), b"x", since)
    assert near.get(digest(1)) is None and near.state == "waiting"
    near.tracking_started()
    near.keep(digest(1), b"x", since)  # began before tracking ran: refused
    assert near.get(digest(1)) is None
    near.keep(digest(1), b"x", near.began())
    assert near.get(digest(1)) == b"x" and near.state == "tracked"


def test_a_read_that_raced_an_invalidation_is_not_kept():
    near = tracked_near()
    since = near.began()  # a read begins...
    near.invalidated([b"ns:{c.00}:" + digest(1).encode()])  # ...the key changes meanwhile
    near.keep(digest(1), b"old", since)  # ...the reply (maybe the old bytes) arrives
    assert near.get(digest(1)) is None
    near.keep(digest(2), b"other", since)  # another key's read is not affected
    assert near.get(digest(2)) == b"other"
    near.keep(digest(1), b"new", near.began())  # a read begun after the change is kept
    assert near.get(digest(1)) == b"new"


def test_a_local_change_refuses_racing_reads_too():
    near = tracked_near()
    since = near.began()
    near.drop([digest(1)])  # this process evicts or overwrites it
    near.keep(digest(1), b"old", since)
    assert near.get(digest(1)) is None


def test_forgotten_invalidations_refuse_older_reads():
    near = tracked_near()
    since = near.began()
    for i in range(TrackedNearCache.RECENT + 10):  # more than it remembers
        near.invalidated([digest(10_000 + i).encode()])
    near.keep(digest(1), b"x", since)  # cannot tell whether key 1 changed: refused
    assert near.get(digest(1)) is None


def test_flushall_and_a_lost_connection_forget_everything():
    near = tracked_near()
    near.keep(digest(1), b"x", near.began())
    since = near.began()
    near.invalidated(None)  # FLUSHALL
    assert near.get(digest(1)) is None
    near.keep(digest(1), b"x", since)
    assert near.get(digest(1)) is None
    near.keep(digest(1), b"x", near.began())
    near.tracking_stopped()
    assert near.get(digest(1)) is None and near.size == 0 and near.state == "waiting"
    near.keep(digest(1), b"x", near.began())  # nothing is kept while nothing is tracked
    assert near.get(digest(1)) is None


# -- storages -------------------------------------------------------------------------------


def test_fakeredis_near_caches_values_not_records(fake_client, namespace):
    values = ValueRedis(client=fake_client, namespace=namespace)
    calls = CallRedis(client=fake_client, namespace=namespace)
    cache = RedisCache(values, calls)
    with fleche.cache(cache):
        triple(1)
        triple(1)
        with RoundTrips() as trips:
            assert triple(1) == [1.0, 1.0, 1.0]
    # The record is read again (nobody tracks its changes), its small result
    # with it in the same request; the result is kept near all the same.
    assert trips.count == 1
    assert values.metrics()["near_entries"] >= 1 and values.metrics()["near_records"] == "values"
    assert calls.metrics()["near_records"] == "untracked"
    assert calls.metrics()["near_entries"] == 0


def test_values_are_served_locally_and_decoded_afresh(fake_client, namespace):
    values = ValueRedis(client=fake_client, namespace=namespace)
    key = values.save([1, 2, 3])
    first = values.load(key)
    with RoundTrips() as trips:
        second = values.load(key)
    assert trips.count == 0 and second == first and second is not first
    second.append(4)
    assert values.load(key) == [1, 2, 3]  # callers never share a mutable object
    snap = values.metrics()
    held = len(values.codec.encode([1, 2, 3])) + ENTRY_OVERHEAD
    assert snap["near_hits"] == 2 and snap["near_bytes"] == held


def test_a_storage_holds_no_more_than_its_bound(fake_client, namespace):
    values = ValueRedis(client=fake_client, namespace=namespace, near_cache_bytes=20_000)
    keys = [values.save(bytes(1000) + i.to_bytes(4, "big")) for i in range(100)]
    for key in keys:
        values.load(key)
    snap = values.metrics()
    assert 0 < snap["near_bytes"] <= 20_000 and snap["near_evictions"] > 0
    assert snap["near_entries"] < len(keys)


def test_the_setting_is_configuration(redis_server, namespace):
    default = ValueRedis(url=redis_server.url, namespace=namespace)
    assert default.near_cache_bytes == DEFAULT_BYTES
    assert "near_cache_bytes" not in default.to_config()
    off = CallRedis(url=redis_server.url, namespace=namespace, near_cache_bytes=0)
    assert off.to_config()["near_cache_bytes"] == 0
    config = {k: v for k, v in off.to_config().items() if k != "type"}
    assert CallRedis(**config).near_cache_bytes == 0  # as fleche builds it from fleche.toml
    assert pickle.loads(pickle.dumps(off)).near_cache_bytes == 0
    assert off.metrics()["near_records"] == "off"
    with pytest.raises(ValueError, match="near_cache_bytes"):
        ValueRedis(url=redis_server.url, namespace=namespace, near_cache_bytes=-5)


def test_redis_cache_gives_its_setting_to_its_storages(redis_server, namespace):
    cache = redis_cache(redis_server.url, namespace, near_cache_bytes=1234)
    assert cache.near_cache_bytes == 1234
    assert cache.values.near.capacity == cache.calls.near.capacity == 1234
    values = ValueRedis(url=redis_server.url, namespace=namespace)
    calls = CallRedis(url=redis_server.url, namespace=namespace)
    assert RedisCache(values, calls).values is values  # None: the storages' own
    off = RedisCache(values, calls, near_cache_bytes=0)
    assert off.values.near_cache_bytes == off.calls.near_cache_bytes == 0
    assert off.values.namespace == namespace and off.values.url == values.url
    assert pickle.loads(pickle.dumps(off)).calls.near_cache_bytes == 0


# -- records, tracked on a real server --------------------------------------------------------


@pytest.fixture
def cache(redis_server, namespace):
    return redis_cache(redis_server.url, namespace)


def test_a_repeated_hit_sends_nothing(cache):
    tracked(cache.calls)
    with fleche.cache(cache):
        triple(2)  # the miss
        key = next(iter(cache.calls.list()))
        # The first hit reads the record and the result (and keeps them, once
        # the invalidation of our own save has arrived).
        wait_for(lambda: triple(2) and cache.calls.near.get(key) is not None)
        with RoundTrips() as trips:
            assert triple(2) == [2.0, 2.0, 2.0]
    assert trips.count == 0, trips.commands
    assert cache.calls.metrics()["near_records"] == "tracked"


def near_record(cache: RedisCache) -> str:
    """Make triple(3)'s record near-cached; its key."""
    tracked(cache.calls)
    with fleche.cache(cache):
        triple(3)
        key = next(iter(cache.calls.list()))
        # A hit that began before our own save's invalidation arrived keeps nothing.
        wait_for(lambda: triple(3) and cache.calls.near.get(key) is not None)
    return key


def test_another_clients_write_invalidates(cache, redis_server):
    key = near_record(cache)
    other = redis_server.client()
    other.delete(cache.calls.layout.data(key))
    delay = wait_for(lambda: cache.calls.near.get(key) is None)
    print(f"invalidation arrived after {delay * 1e3:.2f} ms")
    with pytest.raises(KeyError):
        cache.calls.load(key)


def test_own_evict_is_seen_at_once(cache):
    key = near_record(cache)
    cache.calls.evict(key)
    assert cache.calls.near.get(key) is None  # no wait for the invalidation
    with pytest.raises(KeyError):
        cache.calls.load(key)


def test_flushall_empties_the_record_cache(cache, redis_server):
    key = near_record(cache)
    redis_server.client().flushall()
    wait_for(lambda: cache.calls.near.get(key) is None)
    assert cache.calls.metrics()["near_entries"] == 0


def test_a_killed_listener_empties_the_records_and_they_come_back(cache, redis_server):
    key = near_record(cache)
    admin = redis_server.client()
    names = {c["id"]: c["name"] for c in admin.client_list()}
    listener = next(
        lst for lst in tracking_listeners() if lst.prefix.startswith(cache.calls.namespace + ":")
    )
    killed = listener.connection_id
    assert names[str(killed)] == tracking.CLIENT_NAME
    admin.execute_command("CLIENT", "KILL", "ID", killed)
    wait_for(lambda: listener.connection_id != killed)
    # Emptied when it dropped; tracking again once it reconnected.
    wait_for(lambda: cache.calls.near.live and listener.connection_id is not None)
    assert cache.calls.near.get(key) is None
    with fleche.cache(cache):
        assert triple(3) == [3.0] * 3
    assert cache.calls.near.get(key) is not None  # refilled


def tracking_listeners() -> list[tracking.Listener]:
    from fleche_redis import runtime

    return list(runtime.per_process("tracking.listeners", dict).values())


def test_records_are_not_served_while_the_server_is_gone(fresh_server, namespace):
    cache = redis_cache(fresh_server.url, namespace)
    key = near_record(cache)
    fresh_server.kill()
    wait_for(lambda: not cache.calls.near.live)
    assert cache.calls.near.get(key) is None
    with pytest.raises(RedisStorageError):
        cache.calls.load(key)
    fresh_server.restart()
    wait_for(lambda: cache.calls.near.live, timeout=10)


def test_a_user_confined_to_its_namespace_is_tracked(redis_server, namespace):
    # The ACL of docs/security.md: keys and channels of the namespace only, nothing dangerous.
    user = f"u-{namespace}"[:60]
    redis_server.client().execute_command(
        "ACL", "SETUSER", user, "reset", "on", ">s3cret-pw",
        f"~{namespace}*", f"&{namespace}*", "+@all", "-@dangerous",
        "-keys", "-flushdb", "-flushall", "-config",
    )  # fmt: skip
    url = f"redis://{user}:s3cret-pw@127.0.0.1:{redis_server.port}/0"
    cache = redis_cache(url, namespace)
    key = near_record(cache)
    assert cache.calls.metrics()["near_records"] == "tracked"
    redis_server.client().delete(cache.calls.layout.data(key))
    wait_for(lambda: cache.calls.near.get(key) is None)


def test_a_destructured_value_is_served_part_by_part(fake_client, namespace):
    values = ValueRedis(client=fake_client, namespace=namespace)
    nested = {"a": [1.0, 2.0], "b": {"c": [3.0]}}
    key = values.save(nested)
    assert values.load(key) == nested
    with RoundTrips() as trips:
        assert values.load(key) == nested
    assert trips.count == 0
    assert values.metrics()["near_entries"] >= 2  # the container and its parts


def test_a_failure_to_track_is_no_failure_to_read():
    def broken(near):
        raise OSError("no listener today")

    near = TrackedNearCache(1000, broken, lambda name: None)
    assert near.began() == -1 and near.get(digest(1)) is None
    assert near.state == "untracked"


def test_the_plain_cache_repeats_hits_without_requests(redis_server, namespace):
    # What a fleche.toml section builds: fleche's own Cache over the storages.
    cache = Cache(
        ValueRedis(url=redis_server.url, namespace=namespace),
        CallRedis(url=redis_server.url, namespace=namespace),
    )
    tracked(cache.calls)
    with fleche.cache(cache):
        triple(4)
        key = next(iter(cache.calls.list()))
        wait_for(lambda: triple(4) and cache.calls.near.get(key) is not None)
        with RoundTrips() as trips:
            assert triple(4) == [4.0] * 3
    assert trips.count == 0, trips.commands


def test_prometheus_exports_the_near_cache(fake_client, namespace):
    prometheus = pytest.importorskip("prometheus_client")
    from fleche_redis.metrics import prometheus_collector

    values = ValueRedis(client=fake_client, namespace=namespace)
    key = values.save("x")
    values.load(key)
    values.load(key)
    registry = prometheus.CollectorRegistry()
    registry.register(prometheus_collector("t"))
    labels = {"storage": "ValueRedis", "server": values.server, "namespace": namespace}
    assert registry.get_sample_value("t_near_hits_total", labels) == 1
    assert registry.get_sample_value("t_near_bytes", labels) == values.metrics()["near_bytes"]
