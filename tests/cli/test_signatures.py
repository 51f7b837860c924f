"""Unsigned entries through the command line: ls and show never unpickle them, verify reports
them, ``repair --drop-unsigned`` deletes them (index and query terms with them); ``--restricted``.

The namespace is filled through a signed cache, then entries are planted as
someone who can write to the server would: pickles that create a file,
written bare, compressed, framed and in chunks, over a record and values.
"""

from __future__ import annotations

import json
import pickle

import fleche
import pytest

from fleche_redis import CallRedis, RedisCache, ValueRedis, cli
from fleche_redis.storage import chunks
from fleche_redis.storage.trust import ENVIRONMENT

from ..storage.planted import CreatesFile, plant_record, plant_value, unsigned_forms

KEY = b"s" * 32


@fleche.fleche
def cube(x: int) -> dict:
    return {"x": x, "cube": x**3}


@pytest.fixture
def planted(redis_server, namespace, tmp_path, monkeypatch):
    """A signed namespace of 6 calls with 5 unsigned values and 1 unsigned record planted.

    Returns ``(marker, cache, digests)``: what was planted where, by kind.
    """
    monkeypatch.setenv("FLECHE_SECRET_KEY", KEY.hex())
    monkeypatch.delenv(ENVIRONMENT, raising=False)
    options = {"url": redis_server.url, "namespace": namespace}
    cache = RedisCache(ValueRedis(**options), CallRedis(**options))
    with fleche.cache(cache):
        for x in range(6):
            cube(x)
    marker = tmp_path / "planted-pickle-ran"
    records = sorted(cache.calls.list())
    results = [cache.calls.load(k).result for k in records]
    plant_record(cache.calls, records[0], unsigned_forms(marker)["bare"])
    for key, data in zip(results[1:4], unsigned_forms(marker).values(), strict=True):
        plant_value(cache.values, key, data)
    # Unsigned in chunks, and signed by another key (not unsigned: left alone).
    padded = pickle.dumps({"pad": b"x" * 5000, "run": CreatesFile(marker)}, protocol=5)
    data_key = cache.values.layout.data(results[4])
    plant_value(
        cache.values, results[4], chunks.write(cache.values.redis(), data_key, padded, 1000, 0)
    )
    other = ValueRedis(**options, secret_key=b"o" * 32).save("signed by another deployment")
    planted = {"record": records[0], "values": results[1:5], "other": other}
    return marker, cache, planted


def run(capsys, cache, *argv):
    code = cli.main([*argv, "--url", cache.calls.url, "--namespace", cache.calls.namespace])
    out, err = capsys.readouterr()
    return code, out, err


def test_ls_and_show_never_unpickle_an_unsigned_entry(capsys, planted):
    marker, cache, where = planted
    code, out, err = run(capsys, cache, "ls", "--json")
    assert code == 0 and len(json.loads(out)) == 5  # the planted record is not listed
    code, out, err = run(capsys, cache, "show", where["record"])
    assert code == 1 and f"entry {where['record']} is not readable here: unsigned entry" in err
    for value in where["values"]:
        code, out, err = run(capsys, cache, "show", value[:12])
        assert code == 0 and "<missing>" in out
    assert not marker.exists()


def test_verify_reports_them_and_repair_drop_unsigned_deletes_them(capsys, planted):
    marker, cache, where = planted
    code, out, err = run(capsys, cache, "verify", "--json")
    assert code == 1, err
    calls, values = json.loads(out)["reports"]
    assert (calls["unsigned"], values["unsigned"]) == (1, 4)
    assert calls["examples"]["unsigned"] == [where["record"]]
    assert sorted(values["examples"]["unsigned"]) == sorted(where["values"])
    assert calls["undecodable"] == 0  # counted once, as unsigned

    code, out, err = run(capsys, cache, "verify")
    assert "1 unsigned entries" in out and "repair --drop-unsigned" in out

    code, out, err = run(capsys, cache, "repair")
    assert code == 0 and "4 unsigned entries" in out  # left in place without the flag
    assert set(where["values"]) <= set(cache.values.list())

    code, out, err = run(capsys, cache, "repair", "--drop-unsigned", "--json")
    assert code == 0, err
    calls, values = json.loads(out)["reports"]
    assert (calls["unsigned"], values["unsigned"]) == (1, 4)
    code, out, err = run(capsys, cache, "verify")
    assert code == 0 and out.count(": ok,") == 2, out
    assert cache.calls.count() == 5 and where["record"] not in set(cache.calls.list())
    assert not set(where["values"]) & set(cache.values.list())
    assert where["other"] in set(cache.values.list())  # badly signed is not unsigned
    assert not marker.exists()


def test_drop_unsigned_needs_the_key(capsys, planted, monkeypatch):
    marker, cache, _ = planted
    monkeypatch.delenv("FLECHE_SECRET_KEY")
    code, out, err = run(capsys, cache, "repair", "--drop-unsigned")
    assert code == 2 and "--drop-unsigned needs the secret key" in err
    assert cache.calls.count() == 6 and not marker.exists()


def test_the_environment_switch_without_a_key_stops_every_command(capsys, planted, monkeypatch):
    _, cache, _ = planted
    monkeypatch.delenv("FLECHE_SECRET_KEY")
    monkeypatch.setenv(ENVIRONMENT, "1")
    code, out, err = run(capsys, cache, "ls")
    assert code == 2 and "FLECHE_SECRET_KEY" in err and "keygen" in err


def test_restricted_show_refuses_what_the_reader_does_not_allow(
    capsys, redis_server, namespace, tmp_path
):
    marker = tmp_path / "planted-pickle-ran"
    options = {"url": redis_server.url, "namespace": namespace}
    cache = RedisCache(ValueRedis(**options), CallRedis(**options))
    with fleche.cache(cache):
        cube(2)
    (record,) = cache.calls.list()
    plant_record(cache.calls, record, unsigned_forms(marker)["framed"])
    code, out, err = run(capsys, cache, "show", record, "--restricted")
    assert code == 1 and "refused by the restricted reader" in err
    code, out, err = run(capsys, cache, "ls", "--restricted")
    assert code == 1  # nothing readable
    assert not marker.exists()
