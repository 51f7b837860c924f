"""fanout.run_script over several servers, and write_batch's one request per batch."""

import pytest
import redis
from fleche.digest import digest

from fleche_redis import CallRedis, RedisStorageError, ValueRedis
from fleche_redis.testing.roundtrips import RoundTrips
from fleche_redis.transport import wire
from fleche_redis.transport.batch import active_batch, write_batch
from fleche_redis.transport.connection import ClientSlot
from fleche_redis.transport.fanout import run_script
from fleche_redis.transport.scripts import LuaScript, bundle

SETGET = LuaScript("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])")


def test_run_script_asks_every_server_in_one_round_trip(redis_server, fresh_server, namespace):
    clients = [redis.Redis.from_url(s.url) for s in (redis_server, fresh_server)]
    slots = {i: ClientSlot(lambda c=c: c, given=c) for i, c in enumerate(clients)}
    key = f"{namespace}:k"
    for c in clients:
        wire.call(c, "PING")  # connected, so only requests are counted
        c.script_flush()
    with RoundTrips() as trips:
        out = run_script(slots, SETGET, [key], ["v"])
    assert out == {0: b"v", 1: b"v"}
    # Both written before either is read; both lacked the script: one EVAL each.
    assert trips.commands == [b"EVALSHA", b"EVALSHA", b"EVAL", b"EVAL"]
    with RoundTrips() as trips:
        assert run_script(slots, SETGET, [key], ["w"]) == {0: b"w", 1: b"w"}
    assert trips.count == 2
    for c in clients:
        c.close()


def test_run_script_reports_a_dead_server_and_an_error_reply_per_server(redis_server, fresh_server):
    alive = redis.Redis.from_url(redis_server.url)
    dead_url = fresh_server.url
    fresh_server.stop()
    dead = redis.Redis.from_url(dead_url, socket_connect_timeout=0.5)
    slots = {0: ClientSlot(lambda: alive, given=alive), 7: ClientSlot(lambda: dead, given=dead)}
    out = run_script(slots, LuaScript("return redis.error_reply('nope')"), [], [])
    assert isinstance(out[0], redis.ResponseError) and "nope" in str(out[0])
    assert isinstance(out[7], redis.ConnectionError)
    alive.close()


def test_bundle_runs_calls_in_order_as_one_script(redis_server, namespace):
    c = redis.Redis.from_url(redis_server.url)
    incr = LuaScript("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    nothing = LuaScript("redis.call('SET', KEYS[1], ARGV[1])")
    k = f"{namespace}:n"
    script, keys, args = bundle([(incr, [k], [2]), (nothing, [f"{k}2"], ["x"]), (incr, [k], [3])])
    assert script(c, keys, args) == [2, None, 5]  # false (a script's nil) comes back as None
    assert c.get(f"{k}2") == b"x"
    c.close()


@pytest.fixture
def storages(connection):
    values, calls = ValueRedis(**connection), CallRedis(**connection)
    yield values, calls
    values.close()
    calls.close()


def test_a_batch_sends_its_writes_in_one_request_when_it_ends(storages):
    values, calls = storages
    with write_batch():  # the same shape once: connected, bundled script loaded
        values.save("warm")
        values.save("up")
        calls.put(b"warm", digest("warm"))
    with RoundTrips() as trips, write_batch() as batch:
        assert active_batch() is batch
        a, b = values.save([1, 2]), values.save({"x": 3})
        assert trips.count == 0  # queued, not sent
        with write_batch() as inner:
            assert inner is batch  # nested blocks join the outer batch
            calls_key = digest("a call stands in")
            calls.put(b"not a call", calls_key)
    assert active_batch() is None
    assert trips.count == 1, trips.commands
    assert values.load(a) == [1, 2] and values.load(b) == {"x": 3}
    assert calls.load(calls_key) == b"not a call"


def test_a_block_that_raises_sends_nothing(storages):
    values, _ = storages
    values.save("warm up")
    with RoundTrips() as trips, pytest.raises(ZeroDivisionError), write_batch():
        key = values.save("never")
        1 / 0  # noqa: B018
    assert trips.count == 0
    assert not values.contains(key)


def test_a_refused_batch_raises_the_storages_error_when_it_ends(fresh_server, namespace):
    values = ValueRedis(url=fresh_server.url, namespace=namespace)
    values.save("warm up")
    raw = fresh_server.client()
    raw.config_set("maxmemory-policy", "noeviction")
    raw.config_set("maxmemory", raw.info("memory")["used_memory"] + 1024)
    try:
        with pytest.raises(RedisStorageError, match="OutOfMemory"), write_batch():
            values.save("a" * 10_000)
            values.save("b" * 200_000)
    finally:
        raw.config_set("maxmemory", 0)
    values.close()
