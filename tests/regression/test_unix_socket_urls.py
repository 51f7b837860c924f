"""``unix:///path/to.sock`` URLs never reached the server: rebuilding the URL without
its ``decode_responses`` option wrote it back as ``unix:/path/to.sock``, which
redis-py refuses ("must specify one of the following schemes").  Odd URLs got
odd words too: ``host:port`` (no scheme) was "database 'host:port' is not a
number", and the command line said "invalid Redis URL" twice.
"""

from __future__ import annotations

import pytest

from fleche_redis import CallRedis, ValueRedis, cli
from fleche_redis.testing.process import RedisServer
from fleche_redis.transport.connection import client_from_url


@pytest.fixture(scope="module")
def socket_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("sock") / "redis.sock"
    with RedisServer.start(["--unixsocket", str(path), "--unixsocketperm", "700"]):
        yield path


@pytest.mark.parametrize("query", ["", "?db=2", "?db=2&decode_responses=True"])
def test_storages_reach_a_server_on_a_unix_socket(socket_path, namespace, query):
    url = f"unix://{socket_path}{query}"
    values = ValueRedis(url=url, namespace=namespace)
    assert values.load(values.save({"on": "a socket"})) == {"on": "a socket"}
    assert CallRedis(url=url, namespace=namespace).count() == 0
    client = client_from_url(url)
    pool = client.connection_pool.connection_kwargs
    assert pool["path"] == str(socket_path) and pool["decode_responses"] is False
    assert pool.get("db", 0) == (2 if query else 0)


def test_the_command_line_reads_a_unix_socket_url(capsys, socket_path, namespace):
    ValueRedis(url=f"unix://{socket_path}", namespace=namespace).save(1)
    assert cli.main(["--url", f"unix://{socket_path}", "--namespace", namespace, "info"]) == 0
    assert f"unix://{socket_path}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "url, says",
    [
        ("127.0.0.1:6380", "it has no scheme (did you mean 'redis://127.0.0.1:6380/0'?"),
        ("cache-host", "it has no scheme (did you mean 'redis://cache-host/0'?"),
        ("http://cache-host:6379/0", "unknown scheme 'http'"),
        ("valkey://cache-host:6379/0", "unknown scheme 'valkey'"),
    ],
)
def test_a_url_without_a_known_scheme_is_named_at_construction(url, says):
    with pytest.raises(ValueError, match="redis\\+sentinel://") as raised:
        ValueRedis(url=url)
    assert says in str(raised.value)


@pytest.mark.parametrize("command", [["info"], ["acl", "--namespace", "team-a"]])
def test_the_command_line_says_it_once(capsys, command):
    assert cli.main(["--url", "cache-host:6379", *command]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("invalid Redis URL") == 1 and "it has no scheme" in captured.err
