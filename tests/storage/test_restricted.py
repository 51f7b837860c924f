"""The restricted reader: an allow-list unpickler for deployments that cannot share a key.

What it must let through (numpy arrays framed with their buffers, call
records, destructured containers, cloudpickle's plain data), what it must
refuse (any callable off the list, ``numpyevil``, a module reached through
an allowed one), and that a planted pickle stays a miss on every read path.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import logging
import pickle
import sys
import types
import uuid

import fleche
import fleche.config
import numpy as np
import pytest
from fleche.call import Call, QueryCall

from fleche_redis import CallRedis, RedisCache, UndecodableEntry, ValueRedis
from fleche_redis.storage import codec as codec_module
from fleche_redis.storage.codec import Codec
from fleche_redis.storage.trust import Allowed

from .planted import CreatesFile, plant_in_cache, plant_record, plant_value, unsigned_forms


@fleche.fleche
def stats(n: int) -> dict:
    return {"n": n, "mean": np.arange(n, dtype=float).mean(), "when": datetime.date(2026, 1, 2)}


def restricted(modules=()):
    return Codec("cloudpickle", allowed=Allowed(tuple(modules)))


def refused(codec, data):
    with pytest.raises(UndecodableEntry) as caught:
        codec.decode(data, key="k")
    assert caught.value.args == ("k", codec_module.RESTRICTED)


# -- what it reads ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, 2.5, "s", b"b", None, True], "t": (1,), "s": {1}, "f": frozenset({2})},
        1 + 2j,
        bytearray(b"x"),
        range(3),
        collections.OrderedDict(a=1),
        collections.defaultdict(list, a=[1]),
        collections.Counter("abca"),
        datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.UTC),
        decimal.Decimal("1.5"),
        uuid.UUID(int=5),
        np.float64(1.5),
        np.arange(12).reshape(3, 4).T,  # not contiguous: numpy's _reconstruct
        np.zeros(3, dtype=[("a", "f8"), ("b", "i4")]),
    ],
    ids=lambda v: type(v).__name__,
)
def test_plain_data_and_numpy_round_trip(value):
    for codec in (
        restricted(),
        Codec("pickle", allowed=Allowed()),
        Codec(compress=True, allowed=Allowed()),
    ):
        got = codec.decode(bytes(codec.encode(value)))
        if isinstance(value, np.ndarray):
            assert np.array_equal(got, value) and got.dtype == value.dtype
        else:
            assert got == value and type(got) is type(value)


def test_a_framed_array_keeps_its_out_of_band_buffers():
    codec = restricted()
    value = {"big": np.arange(50_000, dtype=np.float64), "small": np.arange(3)}
    encoded = codec.encode(value)
    assert not isinstance(encoded, bytes) and bytes(encoded)[:2] == codec_module.FRAMED
    got = codec.decode(bytearray(bytes(encoded)))
    assert np.array_equal(got["big"], value["big"]) and got["big"].flags.writeable


def test_signature_first_then_the_restricted_load(tmp_path):
    codec = Codec(secret_key=(b"k",), allowed=Allowed())
    assert codec.decode(codec.encode([1, 2])) == [1, 2]
    marker = tmp_path / "ran"
    signed_but_evil = Codec("pickle", secret_key=(b"k",)).encode(CreatesFile(marker))
    refused(codec, signed_but_evil)  # a key holder's pickle is still read restricted
    with pytest.raises(UndecodableEntry) as caught:
        codec.decode(pickle.dumps(CreatesFile(marker)))
    assert caught.value.args[1] == codec_module.UNSIGNED
    assert not marker.exists()


# -- what it refuses --------------------------------------------------------------------------


def global_pickle(module: str, name: str, *args) -> bytes:
    """A protocol-5 pickle that calls ``module.name(*args)``."""
    body = pickle.dumps(args, protocol=5)[2:-1]  # the tuple, without PROTO/FRAME... and STOP
    head = pickle.PROTO + b"\x05"
    ref = pickle.SHORT_BINUNICODE + bytes([len(module)]) + module.encode()
    ref += pickle.SHORT_BINUNICODE + bytes([len(name)]) + name.encode() + pickle.STACK_GLOBAL
    return head + ref + body + pickle.REDUCE + pickle.STOP


@pytest.mark.parametrize(
    "module, name",
    [
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("builtins", "open"),
        ("builtins", "__import__"),
        ("builtins", "getattr"),
        ("builtins", "compile"),
        ("builtins", "object.__subclasses__"),
        ("io", "open"),
        ("os", "system"),
        ("subprocess", "run"),
        ("numpy.testing._private.utils", "runstring"),  # exec inside numpy: not on the list
        ("numpy", "load"),
        ("cloudpickle.cloudpickle", "_make_function"),
        ("fleche.call", "Call.__init__"),
    ],
)
def test_every_callable_off_the_list_is_refused(module, name, caplog):
    data = global_pickle(module, name, "1")
    with caplog.at_level(logging.WARNING, logger="fleche_redis.codec"):
        refused(restricted(), data)
    assert f"{module}.{name} is not allowed" in caplog.text


def test_the_global_pickle_helper_does_call_what_it_names():
    """So the refusals above are of pickles that would run."""
    assert pickle.loads(global_pickle("builtins", "int", "7")) == 7


def test_a_module_allows_its_submodules_not_its_namesakes(monkeypatch):
    evil = types.ModuleType("numpyevil")
    evil.run = lambda *a: pytest.fail("numpyevil ran")
    evil.run.__module__ = "numpyevil"  # defined there, as far as the reader can tell
    monkeypatch.setitem(sys.modules, "numpyevil", evil)
    codec = restricted(["numpy"])
    refused(codec, global_pickle("numpyevil", "run", "x"))
    assert codec.decode(global_pickle("numpy.linalg", "norm", [3.0, 4.0])) == 5.0


def test_a_name_reached_through_an_allowed_module_is_refused(monkeypatch):
    import os

    pkg = types.ModuleType("mypkg")
    pkg.os = os  # ``import os`` in an allowed module
    monkeypatch.setitem(sys.modules, "mypkg", pkg)
    pkg.Helper = type("Helper", (), {"__init__": lambda self: None, "__module__": "mypkg"})
    pkg.Helper.__init__.__module__ = "mypkg"
    codec = restricted(["mypkg"])
    refused(codec, global_pickle("mypkg", "os.system", "true"))
    # Internals are out of bounds even where what they lead to was defined there.
    refused(codec, global_pickle("mypkg", "Helper.__init__"))


def test_cloudpickle_s_by_value_functions_are_refused():
    codec = restricted()
    refused(codec, codec.encode(lambda x: x + 1))


@pytest.mark.parametrize(
    "modules", [["builtins"], ["builtins.x"], ["__builtin__"], [""], [".x"], [3]]
)
def test_bad_allowed_modules_are_clear_errors(modules):
    with pytest.raises(ValueError, match="allowed_modules"):
        Allowed(tuple(modules))


def test_allowed_modules_needs_restricted(fake_client):
    with pytest.raises(ValueError, match="restricted=True"):
        ValueRedis(client=fake_client, allowed_modules=["mypkg"])
    with pytest.raises(ValueError, match="a list of module names"):
        ValueRedis(client=fake_client, restricted=True, allowed_modules="mypkg")


def test_the_config_keys_round_trip():
    storage = ValueRedis(url="redis://10.9.8.7:6379/0", restricted=True, allowed_modules=["pandas"])
    written = storage.to_config()
    assert written["restricted"] is True and written["allowed_modules"] == ["pandas"]
    again = fleche.config.storage_from_config(written, "value")
    assert again == storage and again.allowed_modules == ("pandas",)
    assert "restricted" not in ValueRedis(url="redis://10.9.8.7:6379/0").to_config()


def test_the_network_warning_says_what_the_reader_limits(caplog):
    from fleche_redis import runtime

    runtime.per_process("exposure.warned", set).clear()
    with caplog.at_level(logging.WARNING, logger="fleche_redis.security"):
        ValueRedis(url="redis://10.9.8.7:6379/0", restricted=True)
    assert "can change the results" in caplog.text and "restricted reader limits" in caplog.text
    assert "can run code" not in caplog.text


# -- every read path ----------------------------------------------------------------------------


@pytest.fixture(params=["bare", "compressed", "framed"])
def planted(request, tmp_path):
    marker = tmp_path / "planted-pickle-ran"
    return marker, unsigned_forms(marker)[request.param]


def test_a_planted_value_is_a_miss_on_every_read_path(connection, planted, caplog):
    marker, data = planted
    values = ValueRedis(**connection, restricted=True)
    key = values.save({"an": "honest value", "array": np.arange(5)})
    plant_value(values, key, data)
    reader = ValueRedis(**connection, restricted=True)
    with caplog.at_level(logging.WARNING, logger="fleche_redis.codec"):
        for read in (reader.get, reader.load, lambda k: reader.load(k[:10])):
            with pytest.raises(KeyError):
                read(key)
    assert not marker.exists()
    counts = reader.metrics()
    assert counts["restricted_refused"] == 3 and counts["near_entries"] == 0
    assert len([r for r in caplog.records if key in r.getMessage()]) == 1


def test_a_planted_record_is_a_miss_on_every_read_path(connection, planted):
    marker, data = planted
    cache = fleche.caches.Cache(ValueRedis(**connection), CallRedis(**connection, restricted=True))
    key = cache.save(Call("planted", {"x": np.arange(3)}, result={"r": 2}))
    assert cache.calls.load(key).name == "planted"  # a real record reads restricted
    plant_record(cache.calls, key, data)
    reader = CallRedis(**connection, restricted=True)
    for read in (reader.load, lambda k: reader.load(k[:10])):
        with pytest.raises(KeyError):
            read(key)
    assert list(reader.query(QueryCall(name="planted"))) == []
    assert not marker.exists()
    assert reader.metrics()["restricted_refused"] == 3


@pytest.mark.parametrize("what", ["record", "result"])
def test_a_redis_cache_reads_restricted_and_computes_again(connection, planted, what):
    marker, data = planted

    def cache():
        options = {**connection, "restricted": True}
        return RedisCache(ValueRedis(**options), CallRedis(**options))

    with fleche.cache(first := cache()):
        assert stats(4)["mean"] == 1.5
    plant_in_cache(first, what, data)
    refusals = []
    for _ in range(2):
        with fleche.cache(again := cache()):
            assert stats(4) == {"n": 4, "mean": 1.5, "when": datetime.date(2026, 1, 2)}
        counts = (again.calls.metrics(), again.values.metrics())
        refusals.append(sum(c["restricted_refused"] for c in counts))
    assert refusals == [1, 0]
    assert not marker.exists()


def test_the_options_travel_to_worker_processes():
    storage = ValueRedis(
        url="redis://127.0.0.1:1/0",
        secret_key=b"k" * 32,
        require_signature=True,
        restricted=True,
        allowed_modules=["mypkg"],
    )
    again = pickle.loads(pickle.dumps(storage))
    assert (again.require_signature, again.restricted, again.allowed_modules) == (
        True,
        True,
        ("mypkg",),
    )
    assert again.codec.allowed == Allowed(("mypkg",))
