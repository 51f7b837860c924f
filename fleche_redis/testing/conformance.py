"""The storage conformance suite, shipped so every storage variant proves itself.

Subclass a suite in a test module and provide one fixture, ``make_storage``
(a callable that builds a fresh, empty storage); see docs/testing.md.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fleche.call import Call, DigestedCall
from fleche.digest import Digest, digest
from hypothesis import HealthCheck, given, settings

from .roundtrips import RoundTrips
from .storage_suite import (
    INVALID_KEYS,  # noqa: F401 (importable from here, as before the split)
    StorageConformance,
    scalars,  # noqa: F401 (importable from here, as before the split)
    values,
)

__all__ = ["StorageConformance", "ValueStorageConformance", "CallStorageConformance"]


class ValueStorageConformance(StorageConformance):
    """Value storage: content-addressed, destructuring, any picklable value."""

    def entry(self, i: int) -> Any:
        return {"entry": i, "name": f"n{i}"}  # flat: one stored entry

    def store(self, storage, i: int, key: Digest | None = None) -> Digest:
        if key is None:
            return storage.save(self.entry(i))
        return storage.put(self.entry(i), key)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(value=values)
    def test_round_trip_any_value(self, storage, value):
        key = storage.save(value)
        assert key == digest(value)
        assert storage.load(key) == value

    def test_round_trip_numpy(self, storage):
        np = pytest.importorskip("numpy")
        array = np.linspace(0, 1, 1000).reshape(10, 100)
        key = storage.save(array)
        assert np.array_equal(storage.load(key), array)

    def test_destructuring_shares_sub_values(self, storage):
        shared = list(range(10))
        a = storage.save([1, shared])
        b = storage.save([2, shared])
        assert storage.load(a) == [1, shared] and storage.load(b) == [2, shared]
        assert storage.count() == 3  # two outer lists and one shared inner list
        assert storage.count_reuses()[digest(shared)] == 2

    def test_remaining_depth_zero_stores_every_level(self, make_storage):
        storage = make_storage(remaining_depth=0)
        key = storage.save([1, [2, 3]])
        assert storage.load(key) == [1, [2, 3]]
        assert storage.count() == 5  # 1, 2, 3, [2, 3] and the outer list

    def test_big_values_are_chunked_and_reassembled(self, make_storage):
        storage = make_storage(chunk_size=1000)
        value = bytes(range(256)) * 40  # ~10 kB: eleven chunks
        key = storage.save(value)
        raw = storage.redis()
        chunk_keys = {k.decode() for k in raw.scan_iter(match=storage.layout.data(key) + ":*")}
        assert len(chunk_keys) == 11
        assert storage.load(key) == value and storage.load(key[:10]) == value
        storage.evict(key)
        assert not storage.contains(key)
        assert not any(raw.exists(k) for k in chunk_keys)

    def test_a_lost_chunk_is_a_miss(self, make_storage, caplog):
        storage = make_storage(chunk_size=1000)
        key = storage.save(b"x" * 5000)
        storage.redis().delete(storage.layout.data(key) + ":2")
        with caplog.at_level(logging.WARNING):
            with pytest.raises(KeyError):
                storage.load(key)
        assert "lost chunk 2" in caplog.text

    def test_a_changed_chunk_is_a_miss(self, make_storage):
        storage = make_storage(chunk_size=1000)
        key = storage.save(b"x" * 5000)
        storage.redis().set(storage.layout.data(key) + ":1", b"y" * 1000)
        with pytest.raises(KeyError):
            storage.load(key)

    def test_remaining_depth_in_config(self, make_storage):
        storage = make_storage(remaining_depth=3)
        if storage.url != "client://":
            assert storage.to_config()["remaining_depth"] == 3


class CallStorageConformance(StorageConformance):
    """Call-record storage: ``DigestedCall`` records keyed by lookup digest."""

    def entry(self, i: int) -> DigestedCall:
        return DigestedCall(
            name=f"module.func{i % 3}",
            arguments={"x": digest(i), "y": digest(str(i))},
            result=digest(i * 10),
            metadata={"Runtime": {"seconds": 0.5 + i}, "Tags": {"project": "p", "n": i}},
            module="module",
            version=i % 2,
            code_digest=digest("code"),
        )

    def store(self, storage, i: int, key: Digest | None = None) -> Digest:
        if key is None:
            return storage.save(self.entry(i))
        return storage.put(self.entry(i), key)

    def plant(self, storage, key: Digest, data: bytes) -> None:
        storage.redis().hset(storage.layout.data(key), "v", data)

    def stored(self, storage, key: Digest) -> bytes | None:
        return storage.redis().hget(storage.layout.data(key), "v")

    def test_save_uses_the_lookup_key(self, storage):
        call = self.entry(3)
        assert storage.save(call) == call.to_lookup_key()
        loaded = storage.load(call.to_lookup_key())
        assert loaded == call
        assert loaded.metadata == call.metadata
        assert isinstance(loaded.result, Digest)

    def test_save_overwrites_in_one_round_trip(self, storage):
        call = self.entry(3)
        storage.save(call)
        updated = DigestedCall(**{**call.__dict__, "metadata": {"Tags": {"run": 2}}})
        with RoundTrips() as trips:
            storage.save(updated)
        assert trips.count == 1
        assert storage.load(call.to_lookup_key()).metadata == {"Tags": {"run": 2}}
        assert storage.count() == 1

    def test_query_by_name(self, storage):
        for i in range(6):
            storage.save(self.entry(i))
        from fleche.call import QueryCall

        found = list(storage.query(QueryCall(name="module.func1")))
        assert sorted(c.metadata["Tags"]["n"] for c in found) == [1, 4]

    def test_cache_memoizes_through_redis(self, make_storage):
        from fleche.caches import Cache

        from ..storage.backend import ValueRedis

        calls = make_storage()
        values = ValueRedis(
            url=calls.url,
            client=calls.client,
            namespace=calls.namespace,
            secret_key=calls.secret_key or (),
        )
        cache = Cache(values=values, calls=calls)
        key = cache.save(Call("f", {"x": [1, 2]}, result={"ok": True}))
        hit = cache.load(key)
        assert hit.result == {"ok": True} and dict(hit.arguments) == {"x": [1, 2]}
        cache.evict(key)
        assert not cache.contains(key)
