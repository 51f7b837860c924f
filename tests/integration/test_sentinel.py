"""The storages through Sentinel, against a local primary/replica pair the tests start."""

import time

import pytest
from fleche.call import DigestedCall, QueryCall
from fleche.digest import digest

from fleche_redis import CallRedis, StorageUnavailable, ValueRedis
from fleche_redis.testing.conformance import CallStorageConformance, ValueStorageConformance
from fleche_redis.transport.connection import parse_sentinel_url, url_from_client


class TestValueRedisThroughSentinel(ValueStorageConformance):
    @pytest.fixture
    def make_storage(self, redis_sentinel, namespace):
        return lambda **kw: ValueRedis(**{"url": redis_sentinel.url, "namespace": namespace, **kw})


class TestCallRedisThroughSentinel(CallStorageConformance):
    @pytest.fixture
    def make_storage(self, redis_sentinel, namespace):
        return lambda **kw: CallRedis(**{"url": redis_sentinel.url, "namespace": namespace, **kw})


def test_sentinel_url_parsing():
    nodes, service, options, sentinel_options = parse_sentinel_url(
        "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26380/cache/3?sentinel_password=spw&socket_timeout=1"
    )
    assert nodes == [("10.0.0.1", 26379), ("10.0.0.2", 26380)] and service == "cache"
    assert options["db"] == 3 and options["password"] == "pw" and options["socket_timeout"] == 1.0
    assert sentinel_options == {"password": "spw"}
    with pytest.raises(ValueError, match="no service"):
        parse_sentinel_url("redis+sentinel://h:1")


def test_client_built_by_sentinel_pickles_by_sentinel_url(redis_sentinel):
    from redis.sentinel import Sentinel

    client = Sentinel([(s.host, s.port) for s in redis_sentinel.sentinels]).master_for(
        redis_sentinel.service
    )
    assert url_from_client(client) == redis_sentinel.url


def test_storage_follows_a_failover(fresh_sentinel, namespace):
    calls = CallRedis(url=fresh_sentinel.url, namespace=namespace)
    record = DigestedCall(name="f", arguments={"x": digest(1)}, result=digest(2))
    key = calls.save(record)
    replica = fresh_sentinel.replica.client()
    deadline = time.monotonic() + 10
    while not replica.exists(calls.layout.data(key)) and time.monotonic() < deadline:
        time.sleep(0.05)
    fresh_sentinel.failover()
    deadline = time.monotonic() + 15
    while True:
        try:
            assert calls.load(key) == record
            break
        except StorageUnavailable:
            assert time.monotonic() < deadline, "storage did not reconnect to the promoted replica"
            time.sleep(0.1)
    assert calls.redis().connection_pool.get_master_address()[1] == fresh_sentinel.replica.port
    calls.save(DigestedCall(name="g", arguments={}))
    assert {c.name for c in calls.query(QueryCall())} == {"f", "g"}
