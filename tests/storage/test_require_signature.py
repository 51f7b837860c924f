"""``require_signature``: no start without a key, and no unsigned entry unpickled on any read path.

Each read test plants a pickle that creates a file (see :mod:`.planted`) in
an entry's Redis key, bare, compressed and framed, and checks that reading
it is a miss, counted as ``unsigned_refused`` (apart from badly signed
entries), logged once, and that the file never appears.
"""

from __future__ import annotations

import logging

import fleche
import fleche.config
import pytest
from fleche.call import Call, QueryCall

from fleche_redis import CallRedis, RedisCache, UndecodableEntry, ValueRedis, redis_cache
from fleche_redis.storage import codec, trust

from .planted import plant_in_cache, plant_record, plant_value, unsigned_forms

KEY = b"k" * 32


@fleche.fleche
def triple(x: int) -> dict:
    return {"x": x, "triple": 3 * x}


@pytest.fixture(autouse=True)
def _no_switch_from_the_shell(monkeypatch):
    monkeypatch.delenv(trust.ENVIRONMENT, raising=False)


@pytest.fixture(params=["bare", "compressed", "framed"])
def planted(request, tmp_path):
    """``(marker, data)``: unpickling *data* would create *marker*."""
    marker = tmp_path / "planted-pickle-ran"
    return marker, unsigned_forms(marker)[request.param]


# -- starting -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [ValueRedis, CallRedis])
def test_a_storage_that_requires_signatures_refuses_to_start_without_a_key(kind, fake_client):
    with pytest.raises(ValueError, match="require_signature=True.*FLECHE_SECRET_KEY.*keygen"):
        kind(client=fake_client, require_signature=True)
    assert kind(client=fake_client, require_signature=True, secret_key=KEY).codec.secret_key


def test_the_cache_and_its_builder_take_the_keyword(fake_client):
    with pytest.raises(ValueError, match="no secret key"):
        redis_cache("redis://127.0.0.1:1/0", require_signature=True)
    unsigned = ValueRedis(client=fake_client), CallRedis(client=fake_client)
    with pytest.raises(ValueError, match="no secret key"):
        RedisCache(*unsigned, require_signature=True)
    signed = (
        ValueRedis(client=fake_client, secret_key=KEY),
        CallRedis(client=fake_client, secret_key=KEY),
    )
    cache = RedisCache(*signed, require_signature=True)
    assert cache.values.require_signature and cache.calls.require_signature
    assert redis_cache(
        "redis://127.0.0.1:1/0", secret_key=KEY, require_signature=True
    ).calls.require_signature


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_the_environment_switch_turns_it_on_and_configuration_cannot_turn_it_off(
    value, monkeypatch, fake_client
):
    monkeypatch.setenv(trust.ENVIRONMENT, value)
    with pytest.raises(ValueError, match=f"{trust.ENVIRONMENT} is set.*FLECHE_SECRET_KEY"):
        ValueRedis(client=fake_client, require_signature=False)
    storage = ValueRedis(client=fake_client, secret_key=KEY)
    assert "require_signature" not in storage.replaced(url="redis://h/0").to_config()


@pytest.mark.parametrize("value", ["", "0", "false", "No", "off"])
def test_the_environment_switch_off(value, monkeypatch, fake_client):
    monkeypatch.setenv(trust.ENVIRONMENT, value)
    assert not ValueRedis(client=fake_client).codec.secret_key


def test_anything_else_in_the_environment_is_a_clear_error(monkeypatch, fake_client):
    monkeypatch.setenv(trust.ENVIRONMENT, "sometimes")
    with pytest.raises(ValueError, match=rf"{trust.ENVIRONMENT}='sometimes' is neither on"):
        ValueRedis(client=fake_client, secret_key=KEY)


def test_the_config_key_round_trips():
    storage = ValueRedis(url="redis://10.9.8.7:6379/0", secret_key=KEY, require_signature=True)
    written = storage.to_config()
    assert written["require_signature"] is True
    again = fleche.config.storage_from_config(written, "value")
    assert again == storage and again.require_signature
    assert "require_signature" not in ValueRedis(url="redis://10.9.8.7:6379/0").to_config()


# -- reading --------------------------------------------------------------------------------


def signed(kind, connection, **options):
    return kind(**connection, secret_key=KEY, require_signature=True, **options)


def test_a_planted_value_is_a_miss_on_every_read_path(connection, planted, caplog):
    marker, data = planted
    values = signed(ValueRedis, connection)
    key = values.save({"an": "honest value"})
    plant_value(values, key, data)
    reader = signed(ValueRedis, connection)  # nothing of it in its near cache
    with caplog.at_level(logging.WARNING, logger="fleche_redis.codec"):
        for read in (reader.get, reader.load, lambda k: reader.load(k[:10])):
            with pytest.raises(UndecodableEntry) as refused:
                read(key)
            assert refused.value.args == (key, codec.UNSIGNED)
    assert not marker.exists()
    counts = reader.metrics()
    assert counts["unsigned_refused"] == 3 and counts["near_entries"] == 0
    said = [r for r in caplog.records if key in r.getMessage()]
    assert len(said) == 1 and "no signature" in said[0].getMessage()  # once, not per read


def test_a_badly_signed_entry_is_not_counted_as_unsigned(connection):
    values = signed(ValueRedis, connection)
    key = values.save("honest")
    elsewhere = ValueRedis(**connection, secret_key=b"o" * 32)
    plant_value(values, key, bytes(elsewhere.codec.encode("signed with another key")))
    with pytest.raises(UndecodableEntry) as refused:
        signed(ValueRedis, connection).get(key)
    assert refused.value.args[1] == "signature verification failed"
    assert values.metrics()["unsigned_refused"] == 0


def test_a_planted_record_is_a_miss_on_every_read_path(connection, planted):
    marker, data = planted
    calls = signed(CallRedis, connection)
    cache = fleche.caches.Cache(signed(ValueRedis, connection), calls)
    key = cache.save(Call("planted", {"x": 1}, result=2))
    plant_record(calls, key, data)
    reader = signed(CallRedis, connection)
    for read in (reader.load, lambda k: reader.load(k[:10])):
        with pytest.raises(KeyError):
            read(key)
    assert list(reader.query(QueryCall(name="planted"))) == []
    assert list(reader.list()) == [key]  # listed, never read
    with pytest.raises(KeyError):
        fleche.caches.Cache(signed(ValueRedis, connection), reader).load(key)
    assert not marker.exists()
    assert reader.metrics()["unsigned_refused"] >= 4


@pytest.mark.parametrize("what", ["record", "result"])
def test_a_redis_cache_computes_again_instead_of_unpickling(connection, planted, what):
    """The one-request hit (LOOKUP brings record and result) and the near cache, too."""
    marker, data = planted

    def cache():
        return RedisCache(signed(ValueRedis, connection), signed(CallRedis, connection))

    with fleche.cache(first := cache()):
        assert triple(4)["triple"] == 12
    plant_in_cache(first, what, data)
    refusals = []
    for _ in range(2):
        with fleche.cache(again := cache()):
            assert triple(4) == {"x": 4, "triple": 12}
        counts = (again.calls.metrics(), again.values.metrics())
        refusals.append(sum(c["unsigned_refused"] for c in counts))
    assert refusals == [1, 0]  # refused once, computed again and stored signed: then a hit
    assert not marker.exists()


# -- verify and repair --------------------------------------------------------------------------


def test_verify_flags_no_signed_entry_of_any_format(connection):
    """Compressed, framed, a big stream sent beside its signature, chunked: none is unsigned."""
    import numpy as np

    for options in ({}, {"compress": True}, {"compress": "zlib", "chunk_size": 4096}):
        values = signed(ValueRedis, connection, **options)
        for value in ("small", "s" * 100_000, np.arange(30_000), b"b" * 70_000):
            values.save(value)
        report = values.verify()
        assert report.ok and report.unsigned == 0, report


def test_repair_drops_unsigned_values_and_records_and_leaves_the_rest(connection, planted):
    from fleche_redis import maintenance

    marker, data = planted
    cache = fleche.caches.Cache(signed(ValueRedis, connection), signed(CallRedis, connection))
    keys = [cache.save(Call("f", {"x": x}, result=x * 10)) for x in range(3)]
    plant_record(cache.calls, keys[0], data)
    value = cache.calls.load(keys[1]).result
    plant_value(cache.values, value, data)
    found = [maintenance.verify(s) for s in (cache.calls, cache.values)]
    assert [(r.unsigned, r.ok) for r in found] == [(1, False), (1, False)]
    assert cache.calls.repair().unsigned == 1  # counted, not dropped
    fixed = [s.repair(drop_unsigned=True) for s in (cache.calls, cache.values)]
    assert [r.unsigned for r in fixed] == [1, 1]
    assert all(s.verify().ok for s in (cache.calls, cache.values))
    assert sorted(cache.calls.list()) == sorted(keys[1:])
    assert list(cache.calls.query(QueryCall(name="f"))) and value not in set(cache.values.list())
    assert not marker.exists()


def test_drop_unsigned_without_a_key_is_refused(fake_client):
    with pytest.raises(ValueError, match="drop_unsigned needs the secret key"):
        ValueRedis(client=fake_client).repair(drop_unsigned=True)
