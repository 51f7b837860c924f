"""Per-storage counters, their export hook and the Prometheus adapter, against real servers."""

from __future__ import annotations

import logging
import pickle
import threading
import time
from dataclasses import dataclass

import fleche
import pytest
from fleche.caches import Cache

from fleche_redis import (
    CallRedis,
    PerKeyLockMixin,
    Redlock,
    StorageUnavailable,
    ValueRedis,
    metrics,
    runtime,
)


@fleche.fleche
def square(x: int) -> int:
    return x * x


def _cache(url, namespace, **options):
    return Cache(
        values=ValueRedis(url=url, namespace=namespace, **options),
        calls=CallRedis(url=url, namespace=namespace, **options),
    )


def test_hits_misses_saves_and_bytes_of_memoized_calls(redis_server, namespace):
    cache = _cache(redis_server.url, namespace)
    with fleche.cache(cache):
        assert square(3) == 9  # miss: computes, stores argument, result and record
        assert square(3) == 9  # hit
    calls, values = cache.calls.metrics(), cache.values.metrics()
    assert (calls["hits"], calls["misses"], calls["saves"]) == (1, 1, 1)
    assert (values["hits"], values["misses"], values["saves"]) == (1, 0, 2)
    stored = redis_server.client()
    record_key = next(iter(cache.calls.list()))
    record_bytes = len(stored.hget(cache.calls.layout.data(record_key), "v"))
    assert calls["bytes_out"] == record_bytes and calls["bytes_in"] == record_bytes
    assert values["bytes_in"] > 0 and values["bytes_out"] > values["bytes_in"]
    # Every request went through the storage: the miss GET, the save and the hit GET.
    assert calls["requests"] == 3 and calls["errors"] == 0
    assert calls["breaker_state"] == "closed"
    assert calls["storage"] == "CallRedis" and calls["namespace"] == namespace
    assert calls["server"] == redis_server.url


def test_failures_open_the_breaker_and_are_counted(fresh_server, namespace, monkeypatch):
    storage = ValueRedis(
        url=fresh_server.url,
        namespace=namespace,
        breaker_threshold=2,
        retries=0,
        connect_timeout=0.2,
    )
    key = storage.save(1)
    fresh_server.kill()
    for _ in range(2):
        with pytest.raises(StorageUnavailable):
            storage.load(key)
    snap = storage.metrics()
    assert snap["errors"] == 2 and snap["breaker_state"] == "open" and snap["breaker_opened"] == 1
    with pytest.raises(StorageUnavailable):
        storage.load(key)  # refused without touching the network
    snap = storage.metrics()
    assert snap["short_circuited"] == 1 and snap["errors"] == 2
    fresh_server.restart()
    now = runtime.clock()
    monkeypatch.setattr(runtime, "clock", lambda: now + 60)  # past the cool-down
    with pytest.raises(KeyError):
        storage.load(key)  # the restarted server is empty
    snap = storage.metrics()
    assert snap["breaker_state"] == "closed" and snap["misses"] == 1


@dataclass(frozen=True)
class LockedCallRedis(PerKeyLockMixin, CallRedis): ...


def test_lock_waits_are_counted_with_their_time(redis_server, namespace):
    from fleche.call import DigestedCall

    storage = LockedCallRedis(url=redis_server.url, namespace=namespace, lock_timeout=10)
    record = DigestedCall(name="f", arguments={})
    key = record.to_lookup_key()
    storage.save(record)
    snap = storage.metrics()
    assert (snap["lock_acquires"], snap["lock_waits"]) == (1, 0)

    # Another holder (as another process would be) keeps the entry's lock for a while.
    other = Redlock(storage.layout.key(key, "lock"), [redis_server.url], ttl=10)
    other.acquire()
    saver = threading.Thread(target=storage.save, args=(record,))
    saver.start()
    time.sleep(0.3)
    other.release()
    saver.join(10)
    snap = storage.metrics()
    assert (snap["lock_acquires"], snap["lock_waits"], snap["lock_failures"]) == (2, 1, 0)
    assert 0.25 < snap["lock_wait_seconds"] < 5
    # The lock counters are the storage's own counters, not a second set.
    assert snap["saves"] == 2


def test_lock_timeouts_are_counted(redis_server, namespace):
    from fleche.caches import Rejected
    from fleche.call import DigestedCall

    storage = LockedCallRedis(url=redis_server.url, namespace=namespace, lock_timeout=0.2)
    record = DigestedCall(name="g", arguments={})
    other = Redlock(storage.layout.key(record.to_lookup_key(), "lock"), [redis_server.url], ttl=10)
    with other, pytest.raises(Rejected):
        storage.save(record)
    assert storage.metrics()["lock_failures"] == 1


def test_counters_stay_in_their_process(fake_client, redis_server, namespace):
    storage = ValueRedis(url=redis_server.url, namespace=namespace)
    storage.save("x")
    clone = pickle.loads(pickle.dumps(storage))
    assert storage.metrics()["saves"] == 1
    assert clone.metrics()["saves"] == 0


def test_exporters_get_snapshots_periodically_and_on_demand(fake_client, namespace, monkeypatch):
    storage = ValueRedis(client=fake_client, namespace=namespace)
    seen: list[dict] = []
    metrics.add_exporter(seen.append)
    try:
        monkeypatch.setattr(metrics, "interval", 0.0)
        for i in range(metrics.CHECK_EVERY + 1):
            storage.save(i)
        mine = [s for s in seen if s["namespace"] == namespace]
        assert len(mine) == 1 and mine[0]["requests"] == metrics.CHECK_EVERY
        seen.clear()
        exported = metrics.export()
        assert any(s["namespace"] == namespace and s["saves"] == i + 1 for s in exported)
        assert [s for s in seen if s["namespace"] == namespace] == [
            s for s in exported if s["namespace"] == namespace
        ]
    finally:
        metrics.remove_exporter(seen.append)


def test_a_failing_exporter_never_fails_the_cache(fake_client, namespace, monkeypatch, caplog):
    def broken(snapshot):
        raise RuntimeError("exporter down")

    storage = ValueRedis(client=fake_client, namespace=namespace)
    metrics.add_exporter(broken)
    try:
        monkeypatch.setattr(metrics, "interval", 0.0)
        with caplog.at_level(logging.WARNING, logger="fleche_redis.metrics"):
            for i in range(metrics.CHECK_EVERY + 1):
                storage.save(i)
        assert storage.load(storage.save("still works")) == "still works"
        assert "metrics exporter" in caplog.text
    finally:
        metrics.remove_exporter(broken)


def test_debug_log_line_only_when_debug_is_on(fake_client, namespace, monkeypatch, caplog):
    storage = ValueRedis(client=fake_client, namespace=namespace)
    monkeypatch.setattr(metrics, "interval", 0.0)
    with caplog.at_level(logging.INFO, logger="fleche_redis.metrics"):
        for i in range(metrics.CHECK_EVERY + 1):
            storage.save(i)
    assert not [r for r in caplog.records if r.name == "fleche_redis.metrics"]
    with caplog.at_level(logging.DEBUG, logger="fleche_redis.metrics"):
        for i in range(metrics.CHECK_EVERY):
            storage.save(i)
    lines = [r.getMessage() for r in caplog.records if r.name == "fleche_redis.metrics"]
    assert any(f"'namespace': '{namespace}'" in line and "'saves':" in line for line in lines)


def test_prometheus_collector_exposes_every_live_storage(fake_client, namespace):
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    registry.register(metrics.prometheus_collector())
    storage = ValueRedis(client=fake_client, namespace=namespace)
    storage.load(storage.save([1, 2, 3]))
    labels = {"storage": "ValueRedis", "server": storage.server, "namespace": namespace}
    assert registry.get_sample_value("fleche_redis_hits_total", labels) == 1
    assert registry.get_sample_value("fleche_redis_saves_total", labels) == 1
    assert registry.get_sample_value("fleche_redis_breaker_open", labels) == 0
    text = prometheus_client.generate_latest(registry).decode()
    assert f'fleche_redis_bytes_out_total{{namespace="{namespace}"' in text
