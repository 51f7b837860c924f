"""Every command of ``fleche-redis`` and every error path, against servers the tests start."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import fakeredis
import fleche
import pytest
from fleche.call import DigestedCall
from fleche.digest import Digest

from fleche_redis import CallRedis, RedisCache, ValueRedis, cli
from fleche_redis.admin.progress import ProgressBar
from fleche_redis.cli import connect
from fleche_redis.testing import RedisServer

from ..older_server import older_server


@fleche.fleche
def area(width: int, height: int) -> int:
    return width * height


@fleche.fleche
def perimeter(width: int, height: int) -> int:
    return 2 * (width + height)


@pytest.fixture
def filled(redis_server, namespace):
    """A namespace with 6 memoized calls of two functions."""
    cache = RedisCache(
        values=ValueRedis(url=redis_server.url, namespace=namespace),
        calls=CallRedis(url=redis_server.url, namespace=namespace),
    )
    with fleche.cache(cache):
        for w in range(1, 4):
            area(w, 2)
            perimeter(w, 2)
    return cache


def run(capsys, cache_or_url, *argv, namespace=None):
    if isinstance(cache_or_url, str):
        where = ["--url", cache_or_url]
    else:
        where = ["--url", cache_or_url.calls.url, "--namespace", cache_or_url.calls.namespace]
    if namespace is not None:
        where += ["--namespace", namespace]
    code = cli.main([*argv, *where])
    out, err = capsys.readouterr()
    return code, out, err


# -- info ---------------------------------------------------------------------------------


def test_info_counts_entries_and_memory(capsys, filled):
    code, out, err = run(capsys, filled, "info")
    assert code == 0, err
    assert "Redis 7." in out and f"namespace  {filled.calls.namespace}" in out
    assert re.search(r"call records +6 +memory ~", out) and re.search(r"values +7 +memory ~", out)
    assert "index health ok" in out and "not running" in out

    code, out, _ = run(capsys, filled, "info", "--json")
    assert json.loads(out)["server"]["below_floor"] is False
    (report,) = json.loads(out)["namespaces"]
    assert report["calls"]["entries"] == 6
    assert report["values"]["entries"] == 7  # 1, 2, 3 and the results 4, 6, 8, 10
    assert report["calls"]["data_bytes_estimate"] > 0 and report["calls"]["index_bytes"] > 0
    assert report["index_healthy"] and not report["gc_running"]


def test_info_warns_of_a_server_below_the_floor(capsys, monkeypatch, namespace):
    server = older_server(monkeypatch, (6, 0, 9))
    values, calls = (
        kind(client=fakeredis.FakeRedis(server=server), namespace=namespace)
        for kind in (ValueRedis, CallRedis)
    )
    with fleche.cache(RedisCache(values=values, calls=calls)):
        area(1, 2)
    monkeypatch.setattr(connect, "storages", lambda url, ns, **_: (values, calls))
    code, out, err = run(capsys, "redis://localhost:1/0", "info", namespace=namespace)
    assert code == 0, err
    assert "Redis 6.0.9" in out and "WARNING    Redis 6.0.9 is older than 6.2" in out
    code, out, _ = run(capsys, "redis://localhost:1/0", "info", "--json", namespace=namespace)
    assert json.loads(out)["server"]["below_floor"] is True


def test_info_sees_dangling_index_entries(capsys, filled, redis_server):
    key = next(iter(filled.values.list()))
    redis_server.client().delete(filled.values.layout.data(key))
    code, out, _ = run(capsys, filled, "info")
    assert code == 0 and "index health 1 of 13 sampled entries are gone" in out


def test_info_all_lists_every_namespace(capsys, filled, redis_server, namespace):
    other = ValueRedis(url=redis_server.url, namespace=f"{namespace}-other")
    other.save("something")
    code, out, _ = run(capsys, redis_server.url, "info", "--all", "--json")
    names = [r["namespace"] for r in json.loads(out)["namespaces"]]
    assert code == 0 and {namespace, f"{namespace}-other"} <= set(names)


# -- ls -----------------------------------------------------------------------------------


def test_ls_shows_short_digests_as_fleche_table_does(capsys, filled):
    table = filled.table()
    code, out, err = run(capsys, filled, "ls", "--json")
    rows = json.loads(out)
    assert code == 0
    assert sorted(r["key"] for r in rows) == sorted(table.index)
    assert all(r["digest"].startswith(r["key"]) for r in rows)
    code, out, err = run(capsys, filled, "ls")
    lines = out.splitlines()
    assert lines[0].split() == ["KEY", "NAME", "MODULE", "STARTED", "SECONDS"]
    assert {line.split()[0] for line in lines[1:]} == set(table.index)
    assert err.strip() == "6 call records"


@pytest.mark.parametrize(
    "name", ["area", f"{__name__}.area", "are*", f"{__name__.split('.')[0]}.*.area"]
)
def test_ls_filters_by_function_name(capsys, filled, name):
    code, out, _ = run(capsys, filled, "ls", name, "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 3 and {r["name"] for r in rows} == {"area"}


def test_ls_of_nothing_exits_1(capsys, filled):
    code, out, err = run(capsys, filled, "ls", "volume")
    assert code == 1 and out == "" and "0 call records of volume" in err


def test_ls_limit(capsys, filled):
    code, out, _ = run(capsys, filled, "ls", "--limit", "2", "--json")
    assert code == 0 and len(json.loads(out)) == 2


# -- show ---------------------------------------------------------------------------------


def test_show_a_call_record_by_prefix(capsys, filled):
    key = next(iter(filled.calls.list()))
    record = filled.calls.load(key)
    code, out, _ = run(capsys, filled, "show", key[:8])
    assert code == 0
    assert out.startswith(f"call record {key} (short ")
    assert f"function    {record.name} (module {__name__}" in out
    assert "  width   " in out and "result " in out and "runtime:" in out

    code, out, _ = run(capsys, filled, "show", key, "--json")
    shown = json.loads(out)
    assert shown["kind"] == "call" and shown["digest"] == key
    width = filled.values.load(record.arguments["width"])
    assert shown["arguments"]["width"]["repr"] == repr(width)
    assert shown["result"]["repr"] == repr(filled.values.load(record.result))


def test_show_a_value(capsys, filled):
    key = filled.values.save(["a", "list"])
    code, out, _ = run(capsys, filled, "show", key[:10])
    assert code == 0 and out.splitlines() == [f"value {key} (list)", "['a', 'list']"]


def test_show_shortens_long_values_unless_full(capsys, filled):
    key = filled.values.save("x" * 1000)
    _, out, _ = run(capsys, filled, "show", key)
    assert out.splitlines()[1].endswith("...") and len(out.splitlines()[1]) == 200
    _, out, _ = run(capsys, filled, "show", key, "--full")
    assert len(out.splitlines()[1]) == 1002


def test_show_unknown_key_exits_1(capsys, filled):
    code, out, err = run(capsys, filled, "show", "0000000")
    assert code == 1 and out == ""
    assert (
        err
        == f"fleche-redis: no call record or value 0000000 in namespace {filled.calls.namespace!r}\n"
    )


@pytest.mark.parametrize(
    "key, message",
    [("12", "is too short: give at least 4 characters"), ("XYZ1", "is not a digest")],
)
def test_show_refuses_bad_keys(capsys, filled, key, message):
    code, _, err = run(capsys, filled, "show", key)
    assert code == 2 and message in err


def test_a_prefix_names_a_call_record_first_and_lists_ambiguous_candidates(capsys, filled):
    a, b = Digest("abcd" + "0" * 60), Digest("abcd" + "1" * 60)
    filled.values.save(1, key=a)
    filled.values.save(2, key=b)
    c = Digest("abcd" + "2" * 60)
    filled.calls.put(DigestedCall(name="crafted", arguments={}), c)
    # One record starts so: it is the one meant (values that share the prefix don't matter).
    code, out, _ = run(capsys, filled, "show", "abcd")
    assert code == 0 and f"call record {c}" in out
    code, out, _ = run(capsys, filled, "evict", "abcd", "--dry-run")
    assert code == 0 and f"would evict {c}" in out
    # No record starts so: the values are looked at.
    code, out, _ = run(capsys, filled, "show", "abcd0")
    assert code == 0 and f"value {a}" in out
    # Two records: ambiguous, and the error lists them.
    d = Digest("abcd" + "3" * 60)
    filled.calls.put(DigestedCall(name="crafted", arguments={"x": 1}), d)
    code, out, err = run(capsys, filled, "show", "abcd")
    assert code == 2 and out == ""
    assert err.startswith("fleche-redis: ambiguous prefix abcd: matches ")
    assert f"call {c}" in err and f"call {d}" in err
    # Two values and no record: ambiguous among the values.
    e, f = Digest("eeee" + "0" * 60), Digest("eeee" + "1" * 60)
    filled.values.save(3, key=e)
    filled.values.save(4, key=f)
    code, _, err = run(capsys, filled, "show", "eeee")
    assert code == 2 and f"value {e}" in err and f"value {f}" in err


# -- evict --------------------------------------------------------------------------------


def test_evict_by_key_and_by_name(capsys, filled):
    key = next(iter(filled.calls.list()))
    code, out, _ = run(capsys, filled, "evict", key[:8], "--dry-run")
    assert code == 0 and out.startswith(f"would evict {key}") and filled.calls.contains(key)
    code, out, _ = run(capsys, filled, "evict", key[:8])
    assert code == 0 and out.startswith(f"evicted {key}") and not filled.calls.contains(key)
    code, out, _ = run(capsys, filled, "evict", "--name", "perimeter", "--json")
    gone = json.loads(out)["evicted"]
    assert code == 0 and len(gone) in (2, 3)
    assert not any(filled.calls.contains(k) for k in gone)
    assert {r.name for r in filled.calls.query(DigestedCall(name=None, arguments=None))} <= {"area"}


def test_evict_refuses_values_and_unknown_keys(capsys, filled):
    value = filled.values.save("v")
    code, _, err = run(capsys, filled, "evict", value)
    assert code == 2 and "is a value, not a call record" in err and filled.values.contains(value)
    code, _, err = run(capsys, filled, "evict", "0000000")
    assert code == 1 and "no call record or value 0000000" in err
    code, out, _ = run(capsys, filled, "evict", "--name", "nothing.like.this")
    assert code == 1 and "no call records matched" in out
    code, _, err = run(capsys, filled, "evict")
    assert code == 2 and "KEY... or --name" in err


# -- gc, verify, repair -------------------------------------------------------------------


def test_gc_evicts_values_no_record_uses(capsys, filled):
    orphan = filled.values.save("nobody uses me")
    code, out, _ = run(capsys, filled, "gc", "--json")
    assert code == 0 and json.loads(out)["evicted"] == 1
    assert not filled.values.contains(orphan)
    code, out, _ = run(capsys, filled, "gc")
    assert code == 0 and out.startswith("evicted 0 value(s)")


def test_gc_already_running_exits_1(capsys, filled, redis_server):
    flag = filled.values.layout.gc_flag("00")
    redis_server.client().set(flag, "someone-else", ex=60)
    try:
        code, _, err = run(capsys, filled, "gc")
    finally:
        redis_server.client().delete(flag)
    assert code == 1 and "already running" in err


def test_verify_finds_and_repair_fixes(capsys, filled, redis_server):
    code, out, _ = run(capsys, filled, "verify")
    assert code == 0 and out.count(": ok,") == 2
    key = next(iter(filled.values.list()))
    redis_server.client().delete(filled.values.layout.data(key))
    code, out, _ = run(capsys, filled, "verify")
    assert code == 1 and "found 1 dangling_index" in out and key in out
    assert "run `fleche-redis repair`" in out
    code, out, _ = run(capsys, filled, "verify", "--json")
    data = json.loads(out)  # stdout is nothing but the JSON
    assert code == 1 and data["ok"] is False
    assert data["reports"][1]["dangling_index"] == 1
    code, out, _ = run(capsys, filled, "repair")
    assert code == 0 and "fixed 1 dangling_index" in out
    code, out, _ = run(capsys, filled, "verify", "--json")
    assert code == 0 and json.loads(out)["ok"] is True


def test_resign_after_a_rotation(capsys, redis_server, namespace, monkeypatch):
    old, new = "0a" * 32, "0b" * 32
    where = {"url": redis_server.url, "namespace": namespace, "secret_key": old}
    cache = RedisCache(values=ValueRedis(**where), calls=CallRedis(**where))
    with fleche.cache(cache):
        area(2, 3)
    monkeypatch.setenv("FLECHE_SECRET_KEY", f"{new}:{old}")
    code, out, _ = run(capsys, cache, "verify")
    assert code == 0 and "1 call record(s) signed by an old key" in out
    code, out, _ = run(capsys, cache, "resign", "--dry-run")
    assert code == 1 and out.count("signed by an old key") == 2 and "keep the old key" in out
    code, out, _ = run(capsys, cache, "resign")
    assert code == 0 and "1 signed by an old key, 1 re-signed" in out
    code, out, _ = run(capsys, cache, "resign", "--dry-run")
    assert code == 0 and "the old key(s) can be dropped" in out
    monkeypatch.delenv("FLECHE_SECRET_KEY")
    code, _, err = run(capsys, cache, "resign")
    assert code == 2 and "no secret key" in err


def test_progress_bars_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    with ProgressBar(screen) as bar:
        bar("index", 50, 100)
        bar("index", 100, 100)
        bar("data", 7, None)
    drawn = screen.getvalue()
    assert "\rindex      [###############---------------]  50% 50/100" in drawn
    assert "[##############################] 100% 100/100" in drawn
    assert "\rdata       7 " in drawn and drawn.endswith("\n")
    quiet = io.StringIO()
    with ProgressBar(quiet) as bar:
        bar("index", 1, 2)
    assert quiet.getvalue() == ""


# -- errors a person understands ----------------------------------------------------------


@pytest.mark.parametrize("command", ["info", "ls", "verify", "gc", "demo"])
def test_server_down(capsys, fresh_server, command):
    url = fresh_server.url
    fresh_server.kill()
    code, out, err = run(capsys, url, command)
    assert code == 2 and out == ""
    assert err.startswith(f"fleche-redis: cannot connect to Redis at {url} (ConnectionError:")
    assert "is it running?" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://localhost:6379/0", "invalid Redis URL 'http://localhost:6379/0'"),
        ("redis+cluster://", "invalid Redis URL 'redis+cluster://': cluster URL names no nodes"),
        ("redis+sentinel://127.0.0.1:1", "sentinel URL names no service"),
    ],
)
def test_bad_url(capsys, url, message):
    code, out, err = run(capsys, url, "info")
    assert code == 2 and out == "" and message in err
    assert "redis://, rediss://, unix://, redis+cluster://, redis+sentinel://" in err


@pytest.fixture(scope="module")
def password_server():
    with RedisServer.start(["--requirepass", "s3cret"]) as server:
        yield server


def test_wrong_password(capsys, password_server):
    url = f"redis://:wrong@127.0.0.1:{password_server.port}/0"
    code, _, err = run(capsys, url, "info")
    assert code == 2
    assert err.startswith(
        f"fleche-redis: authentication failed at redis://:***@127.0.0.1:{password_server.port}/0: "
        "wrong user name or password"
    )
    assert "wrong@" not in err


def test_missing_password(capsys, password_server):
    code, _, err = run(capsys, password_server.url, "ls")
    assert code == 2 and f"Redis at {password_server.url} requires a password" in err


def test_right_password_works(capsys, password_server):
    url = f"redis://:s3cret@127.0.0.1:{password_server.port}/0"
    CallRedis(url=url, namespace="fleche").save(DigestedCall(name="f", arguments={}))
    code, out, _ = run(capsys, url, "verify")
    assert code == 0 and "s3cret" not in out and "redis://:***@" in out


def test_missing_permission(capsys, redis_server, namespace):
    admin = redis_server.client()
    user = f"cli-{namespace}"[:40]
    # May read and write only another namespace's keys: PING works, reads are refused.
    admin.acl_setuser(
        user, enabled=True, passwords=["+pw"], keys=["elsewhere:*"], commands=["+@all"]
    )
    try:
        url = f"redis://{user}:pw@127.0.0.1:{redis_server.port}/0"
        code, _, err = run(capsys, url, "verify", namespace=namespace)
    finally:
        admin.acl_deluser(user)
    assert code == 2 and "the Redis user lacks a permission" in err and "NoPermissionError" in err


def test_bad_namespace(capsys, redis_server):
    code, _, err = run(capsys, redis_server.url, "info", namespace="a b")
    assert code == 2 and "invalid namespace 'a b'" in err


def test_environment_gives_url_and_namespace(capsys, filled, monkeypatch):
    monkeypatch.setenv("REDIS_URL", filled.calls.url)
    monkeypatch.setenv("FLECHE_REDIS_NAMESPACE", filled.calls.namespace)
    code = cli.main(["ls", "--json"])
    assert code == 0 and len(json.loads(capsys.readouterr().out)) == 6


def test_bench_outside_a_checkout(capsys, tmp_path):
    code = cli.main(["bench", "--dir", str(tmp_path)])
    assert code == 2 and "ships with the source" in capsys.readouterr().err


def test_console_script_and_module_entry_point(filled):
    script = Path(sys.executable).parent / "fleche-redis"
    where = ["--url", filled.calls.url, "--namespace", filled.calls.namespace]
    for command in ([str(script)], [sys.executable, "-m", "fleche_redis"]):
        done = subprocess.run(
            [*command, "ls", "area", "--json", *where], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert len(json.loads(done.stdout)) == 3


@pytest.mark.cluster
def test_info_verify_and_ls_on_a_cluster(capsys, redis_cluster, namespace):
    cache = RedisCache(
        values=ValueRedis(url=redis_cluster.url, namespace=namespace),
        calls=CallRedis(url=redis_cluster.url, namespace=namespace),
    )
    with fleche.cache(cache):
        for w in range(5):
            area(w, 3)
    code, out, err = run(capsys, cache, "info", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["server"]["nodes"] == 3 and info["namespaces"][0]["calls"]["entries"] == 5
    code, out, _ = run(capsys, cache, "verify")
    assert code == 0 and out.count(": ok,") == 2
    code, out, _ = run(capsys, cache, "ls", "area", "--json")
    assert code == 0 and len(json.loads(out)) == 5
