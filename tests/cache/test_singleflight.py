"""Single flight across processes: eight workers ask for the same missing result, it runs once."""

import logging
import multiprocessing
import queue
import time
from concurrent.futures import ProcessPoolExecutor

import fleche
import pytest
from fleche.caches import Cache, CacheStack, RefreshingCache
from fleche.storage import CallMemory, ValueMemory

from fleche_redis import RedisCache, redis_cache
from fleche_redis.testing.roundtrips import RoundTrips

from . import sfworkers

FORK = multiprocessing.get_context("fork")


@pytest.fixture
def counter(redis_server, namespace, monkeypatch):
    key = f"{namespace}:executions"
    monkeypatch.setenv("FLECHE_REDIS_TEST_COUNTER", f"{redis_server.url} {key}")
    client = redis_server.client()
    return lambda: int(client.get(key) or 0)


def bound(cache, func=sfworkers.compute):
    with fleche.cache(cache), fleche.meta():
        return fleche.BoundWrapper.bind(func)


def race(cache, args, workers=8, timeout=60):
    """*workers* processes call the memoized function with *args* at the same moment."""
    barrier, results = FORK.Barrier(workers), FORK.Queue()
    task = bound(cache)
    procs = [
        FORK.Process(target=sfworkers.run, args=(task, args, barrier, results))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < workers and time.monotonic() < deadline:
        try:
            out.append(results.get(timeout=1))
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                break
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
    return out, procs


def test_eight_workers_one_execution(redis_server, namespace, counter):
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    out, _ = race(cache, (3, "ok", 0.5))
    assert [status for status, *_ in out] == ["ok"] * 8
    assert all(value == {"x": 3, "square": 9, "execution": 1} for _, value, _ in out)
    assert counter() == 1
    out, _ = race(cache, (3, "ok", 0.5))  # a second round is all hits
    assert counter() == 1 and len(out) == 8


@pytest.mark.parametrize(
    "behaviour, expected",
    [
        ("nested", {"x": 2, "parts": [2, [2, 4]], "execution": 1}),
        ("big", {"x": 2, "blob": b"b" * 100_000, "execution": 1}),
    ],
)
def test_waiters_get_results_that_are_not_pushed_whole(
    redis_server, namespace, counter, behaviour, expected
):
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    out, _ = race(cache, (2, behaviour, 0.3))
    assert [value for _, value, _ in out] == [expected] * 8
    assert counter() == 1


@pytest.mark.parametrize("behaviour", ["raise", "none"])
def test_a_failed_computation_lets_every_waiter_compute(
    redis_server, namespace, counter, behaviour
):
    # Nothing was stored for the waiters to wait for: they compute at once, side by side.
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    out, _ = race(cache, (4, behaviour, 0.3))
    statuses = sorted(status for status, *_ in out)
    if behaviour == "raise":
        assert statuses == ["error"] + ["ok"] * 7  # the first execution's caller sees its exception
    else:
        assert statuses == ["ok"] * 8
    good = [value for status, value, _ in out if status == "ok" and value is not None]
    assert len(good) == 7 and all(v["x"] == 4 and v["square"] == 16 for v in good)
    assert sorted(v["execution"] for v in good) == list(range(2, 9))
    assert counter() == 8


def test_a_dead_worker_is_replaced_when_its_lease_runs_out(redis_server, namespace, counter):
    cache = redis_cache(url=redis_server.url, namespace=namespace, lease_ttl=1.0)
    started = time.monotonic()
    out, procs = race(cache, (5, "die", 0.2), workers=4)
    assert sorted(p.exitcode for p in procs) == [-9, 0, 0, 0]
    assert len(out) == 3 and all(value["execution"] == 2 for _, value, _ in out)
    assert counter() == 2
    assert max(t for *_, t in out) - started < 1.0 + 0.2 + 3.0  # lease + work + generous slack


def test_a_long_computation_keeps_its_lease(redis_server, namespace, counter):
    cache = redis_cache(url=redis_server.url, namespace=namespace, lease_ttl=0.5)
    out, _ = race(cache, (6, "ok", 1.6), workers=3)  # runs for 3 x lease_ttl
    assert counter() == 1 and all(v["execution"] == 1 for _, v, _ in out)


def test_a_computation_outliving_its_claim_keeps_the_lease(redis_server, namespace, counter):
    # The claim lives 0.3 s; the watchdog must make it a lease before then.
    cache = redis_cache(url=redis_server.url, namespace=namespace, claim_ttl=0.3, lease_ttl=0.6)
    out, _ = race(cache, (13, "ok", 1.5), workers=3)
    assert counter() == 1 and all(v["execution"] == 1 for _, v, _ in out)


def test_prepare_then_abandon_stores_the_arguments(redis_server, namespace):
    # fleche's contract (fleche.remote stores values this way): what prepare
    # admitted is stored even when the call is abandoned.
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    with fleche.cache(cache), fleche.meta():
        call = double.fleche.call(21, [4, 5])
        prepared = cache.prepare(call)
        assert [cache.values.contains(d) for d in prepared.digested.arguments.values()] == [
            False,
            False,
        ]
        prepared.abandon()
        assert [cache.load_value(d) for d in prepared.digested.arguments.values()] == [21, [4, 5]]


def test_an_abandoned_computation_releases_its_lease_with_its_arguments(redis_server, namespace):
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    with fleche.cache(cache), fleche.meta():
        call = double.fleche.call(22, [1])
        key = call.to_lookup_key()
        with pytest.raises(KeyError):
            cache.load(key)  # claims the lease
        prepared = cache.prepare(call)
        lease = redis_server.client().get(cache.calls.layout.key(key, "lease"))
        assert lease is not None
        with RoundTrips() as trips:
            prepared.abandon()
    assert trips.count == 1, trips.commands  # arguments and the release together
    assert redis_server.client().get(cache.calls.layout.key(key, "lease")) is None
    assert cache.load_value(prepared.digested.arguments["x"]) == 22


def test_waiting_is_bounded(redis_server, namespace, counter, caplog):
    slow_cache = redis_cache(url=redis_server.url, namespace=namespace, wait_timeout=0.3)
    with caplog.at_level(logging.WARNING, logger="fleche_redis.caches"):
        out, _ = race(slow_cache, (7, "ok", 1.5), workers=2)
    assert counter() == 2  # the waiter gave up and computed itself
    assert sorted(v["execution"] for _, v, _ in out) == [1, 2]


def test_a_load_that_computes_nothing_holds_others_up_briefly(redis_server, namespace, counter):
    cache = redis_cache(url=redis_server.url, namespace=namespace, claim_ttl=0.3)
    with fleche.cache(cache), fleche.meta():
        call = sfworkers.compute.fleche.call(8)
        with pytest.raises(KeyError):
            cache.load(call.to_lookup_key())  # claims, then never prepares
        start = time.monotonic()
        assert sfworkers.compute(8, "ok", 0.0)["execution"] == 1
    assert time.monotonic() - start < 0.3 + 1.0


@fleche.fleche
def double(x: int, y: list) -> dict:
    return {"x": 2 * x, "y": sum(y)}


@fleche.fleche
def nested(x: int) -> dict:
    return {"x": x, "parts": [x, [x, x + 1]]}


def test_round_trips(redis_server, namespace):
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    with fleche.cache(cache), fleche.meta():
        double(0, [0])  # connects and loads the scripts on the server
        with RoundTrips() as miss:
            assert double(1, [1, 2]) == {"x": 2, "y": 3}
        with RoundTrips() as hit:
            assert double(1, [1, 2]) == {"x": 2, "y": 3}
        nested(0)
        with RoundTrips() as nested_hit:
            assert nested(1) == {"x": 1, "parts": [1, [1, 2]]}
            assert nested(1) == {"x": 1, "parts": [1, [1, 2]]}
    # look up or claim; then arguments, result, record and the lease's release in one request
    assert miss.count == 2, miss.commands
    # the record and its result come back from one script
    assert hit.count == 1, hit.commands
    # a miss, then a hit whose destructured result is the value storage's to
    # mend: its container came with the record (and is kept near), then one
    # more request per level of nesting, not per part
    assert nested_hit.count == 2 + (1 + 2), nested_hit.commands


def test_process_pool_with_wrap_executor(redis_server, namespace, counter):
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    with fleche.cache(cache), fleche.meta():
        with ProcessPoolExecutor(4, mp_context=FORK) as pool:
            fleche.wrap_executor(pool)
            futures = [pool.submit(sfworkers.compute, 9, "ok", 0.3) for _ in range(8)]
            values = [f.result() for f in futures]
            # submitted again: answered from the cache without running anything
            again = [pool.submit(sfworkers.compute, 9, "ok", 0.3).result() for _ in range(3)]
    assert counter() == 1 and all(v["execution"] == 1 for v in values + again)


def test_memory_cache_in_front_of_redis(redis_server, namespace, counter):
    shared = redis_cache(url=redis_server.url, namespace=namespace)
    with fleche.cache(shared), fleche.meta():
        sfworkers.compute(10, "ok", 0.0)  # computed once, into Redis
    stack = CacheStack((Cache(ValueMemory({}), CallMemory({})), shared))
    with fleche.cache(stack), fleche.meta():
        assert sfworkers.compute(10, "ok", 0.0)["execution"] == 1  # read through Redis
        assert sfworkers.compute(10, "ok", 0.0)["execution"] == 1  # now from memory
        assert sfworkers.compute(11, "ok", 0.0)["execution"] == 2  # a miss: computed locally
    assert counter() == 2


def test_rerun_recomputes_and_replaces(redis_server, namespace, counter):
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    with fleche.cache(cache), fleche.meta():
        assert sfworkers.compute(12, "ok", 0.0)["execution"] == 1
        assert sfworkers.compute.fleche.rerun(12, "ok", 0.0)["execution"] == 2
        assert sfworkers.compute(12, "ok", 0.0)["execution"] == 2
    with fleche.cache(RefreshingCache(cache)), fleche.meta():
        assert sfworkers.compute(12, "ok", 0.0)["execution"] == 3


def test_redis_cache_pickles_as_configuration(redis_server, namespace):
    import pickle

    cache = redis_cache(url=redis_server.url, namespace=namespace, lease_ttl=7.0)
    clone = pickle.loads(pickle.dumps(cache))
    assert isinstance(clone, RedisCache) and clone.lease_ttl == 7.0 and clone == cache


@pytest.mark.parametrize("topology", ["redis_cluster", "redis_sentinel"])
def test_single_flight_on_a_cluster_and_through_sentinel(request, topology, namespace, counter):
    url = request.getfixturevalue(topology).url
    cache = redis_cache(url=url, namespace=namespace)
    out, _ = race(cache, (13, "ok", 0.3), workers=4)
    assert [value for _, value, _ in out] == [{"x": 13, "square": 169, "execution": 1}] * 4
    assert counter() == 1
    with fleche.cache(cache), fleche.meta():
        assert double(3, [1]) == {"x": 6, "y": 1}
        assert double(3, [1]) == {"x": 6, "y": 1}
        assert cache.calls.verify().ok and cache.values.verify().ok


def test_a_waiter_that_gives_up_says_so(redis_server, namespace, caplog):
    """Threads of one process, so the waiter's warning reaches caplog."""
    import threading

    started = threading.Event()

    @fleche.fleche
    def slow(x):
        started.set()
        time.sleep(1.0)
        return {"x": x, "thread": threading.get_ident()}

    computing = redis_cache(url=redis_server.url, namespace=namespace)
    impatient = redis_cache(url=redis_server.url, namespace=namespace, wait_timeout=0.2)
    results = {}

    def run(name, cache):
        with fleche.cache(cache), fleche.meta():
            results[name] = slow(1)

    first = threading.Thread(target=run, args=("first", computing))
    first.start()
    assert started.wait(5)
    with caplog.at_level(logging.WARNING, logger="fleche_redis.caches"):
        run("impatient", impatient)
    first.join(5)
    assert results["impatient"]["thread"] == threading.get_ident()  # computed itself
    assert "computing it here" in caplog.text and "waited 0.2 s" in caplog.text


def test_lookup_tokens_differ_across_forked_processes():
    from fleche_redis.cache import singleflight

    parent = {singleflight.new_token() for _ in range(3)}
    with ProcessPoolExecutor(2, mp_context=FORK) as pool:
        children = [pool.submit(singleflight.new_token).result() for _ in range(4)]
    assert len(parent) == 3 and not parent & set(children)
    assert len(set(children)) == 4  # per child, a fresh prefix; within one, a counter
