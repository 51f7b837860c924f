"""The part of the conformance suite every fleche-redis storage passes, whatever it stores.

Keys, prefixes, eviction, isolation, configuration, pickling, round trips,
integrity and threads; :mod:`.conformance` adds the value and call suites.
"""

from __future__ import annotations

import logging
import pickle
import threading
from typing import Any

import pytest
from fleche.config import storage_from_config, storage_to_config
from fleche.digest import Digest, digest
from fleche.storage import AmbiguousDigestError
from hypothesis import strategies as st

from ..storage.backend import RedisBackend
from .roundtrips import RoundTrips

__all__ = ["StorageConformance", "INVALID_KEYS", "values"]

INVALID_KEYS = [
    "",
    "abc",
    "z" * 64,
    "A" * 64,
    "a" * 63 + "*",
    "*",
    "[ab]" + "0" * 60,
    "abc[",
    "é" * 64,
    "\xff" * 64,
    "0" * 65,
    "ab" + "\n" + "0" * 61,
    "ab*",
]


def _key(prefix: str, fill: str = "0") -> Digest:
    """A syntactically valid digest starting with *prefix*."""
    return Digest(prefix + fill * (64 - len(prefix)))


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.binary(max_size=50)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


class StorageConformance:
    """What every fleche-redis storage does, whatever it stores."""

    @pytest.fixture
    def storage(self, make_storage):
        return make_storage()

    def entry(self, i: int) -> Any:
        """A storable entry, distinct for every *i*."""
        raise NotImplementedError

    def store(self, storage, i: int, key: Digest | None = None) -> Digest:
        """Store entry *i* (under *key* if given) and return its key."""
        raise NotImplementedError

    def same(self, loaded: Any, i: int) -> bool:
        return loaded == self.entry(i)

    def plant(self, storage, key: Digest, data: bytes) -> None:
        """Overwrite the stored bytes of *key* behind the storage's back (an attacker, a bug)."""
        storage.redis().set(storage.layout.data(key), data)

    def stored(self, storage, key: Digest) -> bytes | None:
        """The bytes stored for *key* as they are in Redis (what :meth:`plant` overwrites)."""
        return storage.redis().get(storage.layout.data(key))

    # -- keys ---------------------------------------------------------------

    def test_missing_key_is_a_key_error(self, storage):
        with pytest.raises(KeyError):
            storage.load(_key("abcd"))
        assert not storage.contains(_key("abcd"))

    @pytest.mark.parametrize("bad", INVALID_KEYS)
    def test_invalid_keys_are_key_errors(self, storage, bad):
        self.store(storage, 1)
        with pytest.raises(KeyError):
            storage.load(bad)
        assert storage.contains(bad) is False
        with pytest.raises(KeyError):
            storage.evict(bad)
        with pytest.raises(KeyError):
            storage.expand(bad)
        with pytest.raises(KeyError):
            storage.put(self.entry(2), bad)

    def test_glob_characters_never_match_other_keys(self, storage):
        key = self.store(storage, 1)
        for pattern in (key[:4] + "*", key[:4] + "?", "[" + key[:3] + "]"):
            with pytest.raises(KeyError):
                storage.expand(pattern)
        assert storage.contains(key)

    def test_list_yields_every_key_once_in_order(self, storage):
        keys = {self.store(storage, i) for i in range(25)}
        listed = list(storage.list())
        assert sorted(listed) == listed
        assert set(listed) == keys and len(listed) == len(keys)
        assert all(isinstance(k, Digest) for k in listed)
        assert storage.count() == 25

    def test_list_streams_in_pages(self, storage, monkeypatch):
        monkeypatch.setattr(RedisBackend, "LIST_PAGE", 3)
        keys = sorted(self.store(storage, i, _key(f"00{i:02x}")) for i in range(10))
        assert storage.count() == 10  # pipelines connect apart from the kept connection (wire.py)
        it = iter(storage.list())
        with RoundTrips() as trips:
            first = next(it)
        # Only the first batch of shards was fetched, not the whole index.
        assert first == keys[0] and trips.count == 1
        assert [first, *it] == keys

    # -- prefixes -----------------------------------------------------------

    def test_expand_unique_prefix(self, storage):
        key = self.store(storage, 1, _key("abcd", "1"))
        self.store(storage, 2, _key("abce", "2"))
        assert storage.expand("abcd") == key
        assert storage.expand(key[:10]) == key
        assert isinstance(storage.expand("abcd"), Digest)

    def test_expand_ambiguous_prefix(self, storage):
        self.store(storage, 1, _key("abcd12", "1"))
        self.store(storage, 2, _key("abcd13", "2"))
        with pytest.raises(AmbiguousDigestError, match="need at least 6 characters"):
            storage.expand("abcd")
        assert storage.expand("abcd12") == _key("abcd12", "1")

    def test_expand_too_short_or_missing(self, storage):
        self.store(storage, 1, _key("abcd", "1"))
        with pytest.raises(KeyError):
            storage.expand("abc")
        with pytest.raises(KeyError):
            storage.expand("abce")
        with pytest.raises(KeyError):
            storage.expand("bbcd")

    def test_expand_full_length_is_identity(self, storage):
        assert storage.expand(_key("abcd")) == _key("abcd")

    def test_load_and_contains_by_prefix(self, storage):
        key = self.store(storage, 7)
        assert self.same(storage.load(key[:8]), 7)
        assert storage.contains(key[:8])

    def test_shrink(self, storage):
        a = self.store(storage, 1, _key("abcd12", "1"))
        b = self.store(storage, 2, _key("abcd13", "2"))
        c = self.store(storage, 3, _key("ffff", "3"))
        d = self.store(storage, 4, _key("abc0", "4"))
        assert storage.shrink(a) == "abcd12"
        assert storage.shrink(a, b, c, d) == ("abcd12", "abcd13", "ffff", "abc0")
        for k in (a, b, c, d):
            assert storage.expand(storage.shrink(k)) == k

    def test_shrink_missing_and_unshrinkable(self, storage):
        with pytest.raises(KeyError):
            storage.shrink(_key("abcd"))
        self.store(storage, 1, _key("abcd", "0"))
        self.store(storage, 2, Digest(_key("abcd", "0")[:-1] + "1"))
        with pytest.raises(AmbiguousDigestError):
            storage.shrink(_key("abcd", "0"))

    def test_shrink_matches_fleche_reference(self, storage):
        """Neighbours-in-shard gives the same answer as fleche's list-everything algorithm."""
        from fleche.storage.base import KeyManagement

        keys = [self.store(storage, i, Digest(digest(i)[:5] + "0" * 59)) for i in range(60)]
        keys += [
            self.store(storage, 100 + i, Digest(k[:7] + "1" * 57)) for i, k in enumerate(keys[:10])
        ]
        reference = KeyManagement._shrink(storage, *keys)
        assert storage.shrink(*keys) == reference

    # -- eviction -----------------------------------------------------------

    def test_evict(self, storage):
        key = self.store(storage, 1)
        storage.evict(key)
        assert not storage.contains(key)
        with pytest.raises(KeyError):
            storage.load(key)
        assert key not in set(storage.list())
        with pytest.raises(KeyError):
            storage.expand(key[:8])
        storage.evict(key)  # evicting an absent entry is a no-op

    def test_evict_by_prefix(self, storage):
        key = self.store(storage, 1, _key("abcd", "1"))
        other = self.store(storage, 2, _key("abce", "2"))
        storage.evict("abcd")
        assert not storage.contains(key)
        assert storage.contains(other)

    def test_evict_ambiguous_prefix_evicts_nothing(self, storage):
        a = self.store(storage, 1, _key("abcd1", "1"))
        b = self.store(storage, 2, _key("abcd2", "2"))
        with pytest.raises(AmbiguousDigestError):
            storage.evict("abcd")
        assert storage.contains(a) and storage.contains(b)

    # -- isolation, configuration, processes ----------------------------------

    def test_namespaces_are_isolated(self, make_storage, storage):
        other = make_storage(namespace=storage.namespace + "-other")
        key = self.store(storage, 1)
        assert not other.contains(key)
        assert list(other.list()) == []
        with pytest.raises(KeyError):
            other.expand(key[:6])
        self.store(other, 2, key)
        assert self.same(storage.load(key), 1)
        assert self.same(other.load(key), 2)
        other.evict(key)
        assert storage.contains(key)

    def test_every_key_is_in_the_namespace(self, storage):
        key = self.store(storage, 1)
        raw = storage.redis()
        written = {k.decode() for k in raw.scan_iter(match=f"{storage.namespace}:*")}
        layout = storage.layout
        assert {layout.data(key), layout.index_of(key)} <= written
        assert written <= {
            layout.data(key),
            layout.index_of(key),
            layout.terms_of(key),
            layout.references_of(key),
        }
        tag = layout.tag(key[:2])
        assert all(k.startswith(f"{storage.namespace}:{tag}:") for k in written)

    def test_config_round_trip(self, storage):
        if storage.client is not None and storage.url == "client://":
            with pytest.raises(TypeError, match="no address"):
                storage.to_config()
            return
        config = storage_to_config(storage)
        assert config["type"] == "redis"
        assert "secret_key" not in config
        kind = "value" if "remaining_depth" in config else "call"
        rebuilt = storage_from_config(config, kind)
        assert type(rebuilt) is type(storage)
        assert rebuilt.to_config() == config
        key = self.store(storage, 3)
        assert self.same(rebuilt.load(key), 3)

    def test_config_is_toml_safe(self, make_storage):
        import json
        import tomllib

        storage = make_storage(secret_key=[b"k" * 32], compress=True)
        if storage.url == "client://":
            pytest.skip("in-process client has no configuration")
        config = storage.to_config()
        # JSON scalars and string lists are valid TOML values.
        toml = "\n".join(f"{k} = {json.dumps(v)}" for k, v in config.items())
        assert tomllib.loads(toml) == config
        assert config["secret_key"] == [(b"k" * 32).hex()]

    def test_pickle_round_trip(self, storage):
        key = self.store(storage, 5)
        if storage.url == "client://":
            with pytest.raises(pickle.PicklingError, match="cannot cross processes"):
                pickle.dumps(storage)
            return
        data = pickle.dumps(storage)
        assert b"ConnectionPool" not in data and b"redis.connection" not in data
        clone = pickle.loads(data)
        assert clone == storage
        assert self.same(clone.load(key), 5)

    # -- round trips ----------------------------------------------------------

    def test_round_trips_per_operation(self, storage):
        keys = [self.store(storage, i) for i in range(20)]
        key = keys[0]
        storage.evict(self.store(storage, 99))  # load the scripts on the server
        storage.expand(key[:4])
        storage.shrink(key)  # pipelines connect apart from the kept connection (wire.py)
        for prefix in (key[:4], key[:5], key[:12]):
            with RoundTrips() as trips:
                assert storage.expand(prefix) == key
            assert trips.count == 1, trips.commands
        cases = {
            "put": lambda: storage.put(self.entry(0), key),
            "get": lambda: storage.get(key),
            "contains": lambda: storage.contains(key),
            "evict": lambda: storage.evict(keys[1]),
            "shrink": lambda: storage.shrink(*keys[2:]),
        }
        for name, op in cases.items():
            with RoundTrips() as trips:
                op()
            assert trips.count == 1, (name, trips.commands)

    def test_expand_round_trips_do_not_grow_with_the_store(self, storage):
        key = self.store(storage, 0, _key("abcd", "1"))
        storage.expand("abcd")
        storage.shrink(key)
        for i in range(1, 300):
            self.store(storage, i, _key(f"ab{i:03x}", "2"))
        with RoundTrips() as trips:
            assert storage.expand("abcd") == key
            storage.shrink(key)
        assert trips.count == 2

    # -- integrity ------------------------------------------------------------

    def test_signed_entries_round_trip(self, make_storage):
        storage = make_storage(secret_key=b"k" * 32)
        key = self.store(storage, 4)
        assert self.same(storage.load(key), 4)

    def test_tampered_entry_is_a_logged_miss_and_never_unpickled(
        self, make_storage, caplog, tmp_path
    ):
        storage = make_storage(secret_key=b"k" * 32)
        key = self.store(storage, 4)
        marker = tmp_path / "pwned"

        class Exploit:
            def __reduce__(self):
                return (open, (str(marker), "w"))

        self.plant(storage, key, pickle.dumps(Exploit()))
        with caplog.at_level(logging.WARNING), pytest.raises(KeyError):
            storage.load(key)
        assert not marker.exists()
        assert any("signature" in r.getMessage() for r in caplog.records)

    def test_entry_signed_with_another_key_is_a_miss(self, make_storage):
        writer = make_storage(secret_key=b"a" * 32)
        reader = make_storage(secret_key=b"b" * 32, namespace=writer.namespace)
        key = self.store(writer, 4)
        with pytest.raises(KeyError):
            reader.load(key)

    def test_key_rotation_reads_old_entries(self, make_storage):
        old, new = b"o" * 32, b"n" * 32
        writer = make_storage(secret_key=old)
        key = self.store(writer, 4)
        rotated = make_storage(secret_key=[new, old], namespace=writer.namespace)
        assert self.same(rotated.load(key), 4)

    def test_secret_from_environment_is_not_written_to_config(self, make_storage, monkeypatch):
        monkeypatch.setenv("FLECHE_SECRET_KEY", (b"e" * 32).hex())
        storage = make_storage()
        assert storage.secret_key == (b"e" * 32,)
        if storage.url != "client://":
            assert "secret_key" not in storage.to_config()
            assert "eeee" not in repr(storage)

    def test_undecodable_entry_is_a_logged_miss(self, storage, caplog):
        key = self.store(storage, 4)
        self.plant(storage, key, b"\x80\x05garbage")
        with caplog.at_level(logging.WARNING), pytest.raises(KeyError):
            storage.load(key)
        assert any("could not be deserialized" in r.getMessage() for r in caplog.records)

    def test_compressed_and_plain_entries_mix(self, make_storage):
        plain = make_storage()
        packed = make_storage(compress=True, compress_min_size=0, namespace=plain.namespace)
        a = self.store(plain, 1)
        b = self.store(packed, 2)
        assert self.same(packed.load(a), 1) and self.same(plain.load(b), 2)
        raw = self.stored(plain, b)
        assert raw[:1] == b"\x78"

    # -- threads --------------------------------------------------------------

    def test_concurrent_threads_on_the_same_keys(self, storage):
        keys = [_key(f"{i:04x}") for i in range(8)]
        churned = keys[-1]  # saved and evicted by every thread at once
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def work(t: int) -> None:
            try:
                barrier.wait()
                for _ in range(25):
                    for i, k in enumerate(keys[:-1]):
                        self.store(storage, i, k)
                        assert self.same(storage.load(k), i)
                        assert storage.contains(k)
                    self.store(storage, 7, churned)
                    try:
                        assert self.same(storage.load(churned), 7)
                    except KeyError:
                        pass  # another thread evicted it in between: a miss, never a wrong value
                    storage.evict(churned)
            except BaseException as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors[:3]
        self.store(storage, 7, keys[-1])
        assert sorted(storage.list()) == sorted(keys)
