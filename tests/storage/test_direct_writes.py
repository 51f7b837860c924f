"""Entries of DIRECT_WRITE_MIN bytes and more skip Lua: a plain SET and the INDEX script in one MULTI/EXEC.

Copying a big argument into a script and again into Redis cost the server
about 1.7 ms for 800 KB; a plain SET stores the bytes it read.  What must
hold is everything PUT promised: one round trip, the index and the gc mark
beside the bytes, all or nothing under ``OOM``, and a server without the
script (restart, ``SCRIPT FLUSH``) loaded and served.
"""

import fleche
import pytest
from fleche.digest import digest

from fleche_redis import RedisCache, RedisStorageError, ValueRedis
from fleche_redis.storage.backend import CallRedis
from fleche_redis.testing.roundtrips import RoundTrips
from fleche_redis.transport import wire

BIG = {"pad": "x" * 20_000}


def test_a_big_value_is_one_round_trip_and_fully_indexed(connection):
    storage = ValueRedis(**connection)
    storage.save({"warm": "up"})  # connected, PUT loaded
    storage.save({"warm": "x" * 20_000})  # INDEX loaded
    with RoundTrips() as trips:
        key = storage.save(BIG)
    assert trips.count == 1, trips.commands
    assert trips.commands == [b"MULTI"]  # MULTI, SET, EVALSHA, EXEC in one write
    assert storage.load(key) == BIG
    assert storage.expand(key[:6]) == key  # in the prefix index
    assert key in set(storage.list())


def test_the_bytes_skip_lua(redis_server, namespace):
    storage = ValueRedis(url=redis_server.url, namespace=namespace)
    storage.save(BIG | {"warm": 1})
    raw = redis_server.client()
    raw.config_resetstat()
    storage.save(BIG)
    stats = raw.info("commandstats")
    assert stats["cmdstat_set"]["calls"] == 1 and stats["cmdstat_exec"]["calls"] == 1
    small = ValueRedis(url=redis_server.url, namespace=namespace)
    raw.config_resetstat()
    small.save({"small": 1})  # below the threshold: PUT, whose SET runs inside Lua
    assert "cmdstat_exec" not in raw.info("commandstats")


def test_ttl_applies_to_directly_written_bytes(redis_server, namespace):
    storage = ValueRedis(url=redis_server.url, namespace=namespace, ttl=60)
    key = storage.save(BIG)
    assert 0 < redis_server.client().pttl(storage.layout.data(key)) <= 60_000


def test_a_refused_direct_write_leaves_nothing(fresh_server, namespace):
    storage = ValueRedis(url=fresh_server.url, namespace=namespace)
    storage.save({"warm": "up"})
    raw = fresh_server.client()
    raw.config_set("maxmemory-policy", "noeviction")
    raw.config_set("maxmemory", raw.info("memory")["used_memory"] + 1024)
    value = {"pad": "y" * 200_000}
    with pytest.raises(RedisStorageError, match="OutOfMemory"):
        storage.save(value)
    raw.config_set("maxmemory", 0)
    key = digest(value)
    assert not raw.exists(storage.layout.data(key))
    assert raw.zscore(storage.layout.index_of(key), key) is None


def test_a_server_without_the_script_is_served(fresh_server, namespace):
    storage = ValueRedis(url=fresh_server.url, namespace=namespace)
    storage.save(BIG | {"warm": 1})
    fresh_server.client().script_flush()
    key = storage.save(BIG)  # EXEC answers NOSCRIPT for the script: loaded, sent again
    assert storage.load(key) == BIG and storage.expand(key[:6]) == key


@fleche.fleche
def echo(x):
    return {"got": x}


@pytest.mark.parametrize("write_behind", [False, True])
def test_a_miss_with_a_big_argument_is_still_two_round_trips(connection, write_behind):
    cache = RedisCache(ValueRedis(**connection), CallRedis(**connection), write_behind=write_behind)
    with fleche.cache(cache):
        echo("w" * 20_000)  # warm: connections, scripts
        cache.flush()
        with RoundTrips() as trips:
            assert echo("z" * 20_000) == {"got": "z" * 20_000}
        cache.flush()
        assert echo("z" * 20_000) == {"got": "z" * 20_000}
    assert trips.count == 2, trips.commands
    assert not wire.owing()
    assert cache.calls.count() == 2
