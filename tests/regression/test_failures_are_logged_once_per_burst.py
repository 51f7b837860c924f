"""With ``on_error="miss"`` every failed call logged a warning (1,147 lines for 400 calls under OOM).

The breaker logged a failure as "the first of a burst" whenever no
*connection* failure preceded it, so refused writes (``OOM``, ``WRONGTYPE``)
warned on every call, and a long outage warned at every re-opening of the
circuit.  Now each kind of failure warns once per burst (then a reminder at
most every few minutes), whatever succeeds in between.
"""

from __future__ import annotations

import logging

import fleche
import pytest

from fleche_redis import redis_cache
from fleche_redis.testing import RedisServer


@fleche.fleche
def tenfold(x: int) -> list[int]:
    return [x] * 10


def warnings_of_fleche_redis(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("fleche_redis")
    ]


@pytest.fixture
def oom_server():
    with RedisServer.start(["--maxmemory-policy", "noeviction"]) as server:
        client = server.client()
        client.set("ballast", b"x" * 2_000_000)
        client.config_set("maxmemory", "1mb")  # every write is refused from now on
        yield server


def test_refused_writes_warn_once(oom_server, namespace, caplog):
    cache = redis_cache(url=oom_server.url, namespace=namespace, on_error="miss")
    with caplog.at_level(logging.DEBUG), fleche.cache(cache):
        for i in range(200):
            assert tenfold(i) == [i] * 10  # computed, returned uncached
    warned = warnings_of_fleche_redis(caplog)
    assert len(warned) == 1, warned
    assert "OutOfMemoryError" in warned[0]
    assert cache.calls.metrics()["errors"] + cache.values.metrics()["errors"] >= 200


def test_a_wrong_type_warns_once(redis_server, namespace, caplog):
    cache = redis_cache(url=redis_server.url, namespace=namespace, on_error="miss")
    client = redis_server.client()
    for shard in range(256):  # every record's index shard holds a string
        client.set(f"{namespace}:{{c.{shard:02x}}}:index", b"garbage")
    with caplog.at_level(logging.DEBUG), fleche.cache(cache):
        for i in range(100):
            assert tenfold(i) == [i] * 10
    warned = warnings_of_fleche_redis(caplog)
    assert len(warned) == 1 and "WRONGTYPE" in warned[0], warned


def test_a_long_outage_warns_once_however_often_the_circuit_opens(
    fresh_server, namespace, caplog, monkeypatch
):
    from fleche_redis import runtime

    now = [1000.0]
    monkeypatch.setattr(runtime, "clock", lambda: now[0])
    cache = redis_cache(url=fresh_server.url, namespace=namespace, on_error="miss", retries=0)
    fresh_server.kill()
    with caplog.at_level(logging.DEBUG), fleche.cache(cache):
        for i in range(40):
            now[0] += 1.0  # past every 5 s cool-down: the circuit re-opens again and again
            assert tenfold(i) == [i] * 10
    warned = warnings_of_fleche_redis(caplog)
    assert len(warned) == 2, warned  # the first failure, the circuit's first opening
    assert "circuit open" in warned[1]


def test_timeouts_warn_once(fresh_server, namespace, caplog, monkeypatch):
    from fleche_redis import runtime

    now = [1000.0]
    monkeypatch.setattr(runtime, "clock", lambda: now[0])
    cache = redis_cache(
        url=fresh_server.url, namespace=namespace, on_error="miss", retries=0, socket_timeout=0.1
    )
    with fleche.cache(cache):
        assert tenfold(0) == [0] * 10  # connected before the server hangs
    fresh_server.pause()
    try:
        with caplog.at_level(logging.DEBUG), fleche.cache(cache):
            for i in range(1, 30):
                now[0] += 1.0  # past every cool-down: the circuit opens again and again
                assert tenfold(i) == [i] * 10
    finally:
        fresh_server.resume()
    warned = warnings_of_fleche_redis(caplog)
    assert len(warned) == 2, warned  # the first timeout, the circuit's first opening
    assert "Timeout" in warned[0] and "circuit open" in warned[1]
