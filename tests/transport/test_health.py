"""The error policy and the circuit breaker, against a server the test kills and restarts."""

import logging

import pytest
from fleche.call import DigestedCall, QueryCall
from fleche.digest import digest
from fleche.storage import SaveError

from fleche_redis import CallRedis, ValueRedis, runtime
from fleche_redis.errors import SaveRefused, StorageUnavailable, UnavailableMiss


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(runtime, "clock", fake)
    return fake


def counting_connections(storage):
    """Count how often the storage reaches for its client (i.e. tries the network)."""
    calls = []
    slot = storage.channel.slot

    class Counting:
        def get(self):
            calls.append(1)
            return slot.get()

    object.__setattr__(storage.channel, "slot", Counting())
    return calls


def test_fail_open_reads_miss_writes_are_refused(fresh_server, namespace, clock):
    values = ValueRedis(url=fresh_server.url, namespace=namespace, on_error="miss", retries=0)
    calls = CallRedis(url=fresh_server.url, namespace=namespace, on_error="miss", retries=0)
    key = values.save("kept")
    record = DigestedCall(name="f", arguments={"x": digest(1)})
    calls.save(record)
    fresh_server.kill()

    with pytest.raises(KeyError) as miss:
        values.load(key)
    assert isinstance(miss.value, UnavailableMiss)
    assert isinstance(miss.value.__cause__, StorageUnavailable)
    assert values.contains(key) is False
    with pytest.raises(SaveError) as refused:
        values.save("new")
    assert isinstance(refused.value, SaveRefused)
    values.evict(key)  # skipped, not raised
    assert list(values.list()) == [] and values.count() == 0
    assert list(calls.query(QueryCall(name="f"))) == []
    # a call record that cannot be filed is dropped, not raised after the function ran
    assert calls.save(record) == record.to_lookup_key()


def test_breaker_opens_then_costs_no_network(fresh_server, namespace, clock):
    storage = ValueRedis(
        url=fresh_server.url,
        namespace=namespace,
        retries=0,
        breaker_threshold=3,
        breaker_cooldown=5,
    )
    key = storage.save(1)
    fresh_server.kill()
    tries = counting_connections(storage)
    for _ in range(3):
        with pytest.raises(StorageUnavailable):
            storage.load(key)
    assert storage.channel.breaker.state == "open" and len(tries) == 3
    for _ in range(100):
        with pytest.raises(StorageUnavailable, match="circuit open"):
            storage.load(key)
    assert len(tries) == 3  # not one more attempt while open

    clock.now += 5.1  # cool-down over: half-open, one attempt goes through
    assert storage.channel.breaker.state == "half-open"
    with pytest.raises(StorageUnavailable):
        storage.load(key)
    assert len(tries) == 4 and storage.channel.breaker.state == "open"

    fresh_server.restart()
    clock.now += 5.1
    with pytest.raises(KeyError):  # the restarted server is empty: a plain miss
        storage.load(key)
    assert storage.channel.breaker.state == "closed" and storage.channel.breaker.opened == 2
    assert storage.load(storage.save(2)) == 2


def test_failures_are_logged_once_per_burst(fresh_server, namespace, clock, caplog):
    storage = ValueRedis(
        url=fresh_server.url, namespace=namespace, on_error="miss", retries=0, breaker_threshold=3
    )
    fresh_server.kill()
    with caplog.at_level(logging.DEBUG, logger="fleche_redis.health"):
        for _ in range(50):
            with pytest.raises(KeyError):
                storage.load(digest(1))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2  # the first failure of the burst, and the breaker opening
    assert "circuit open" in warnings[1].getMessage()
    fresh_server.restart()
    clock.now += 10
    with caplog.at_level(logging.INFO, logger="fleche_redis.health"):
        with pytest.raises(KeyError):
            storage.load(digest(1))
    assert "reachable again" in caplog.records[-1].getMessage()


def test_a_hung_server_times_out_quickly(fresh_server, namespace):
    import time

    storage = ValueRedis(url=fresh_server.url, namespace=namespace, socket_timeout=0.2, retries=0)
    storage.save(1)
    fresh_server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(StorageUnavailable, match="Timeout"):
            storage.load(digest(1))
        assert time.monotonic() - start < 2.0
    finally:
        fresh_server.resume()


def test_policy_is_validated_and_configured(redis_server):
    with pytest.raises(ValueError, match="on_error"):
        ValueRedis(url=redis_server.url, on_error="ignore")
    storage = ValueRedis(url=redis_server.url, on_error="miss", socket_timeout=0.5, ttl=60)
    config = storage.to_config()
    assert (config["on_error"], config["socket_timeout"], config["ttl"]) == ("miss", 0.5, 60)
    assert "retries" not in config  # defaults stay out
    from fleche.config import storage_from_config

    assert storage_from_config(config, "value") == storage
