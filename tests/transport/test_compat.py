"""A server older than Redis 6.2 gets ServerTooOld naming its version, the command and the one it needs.

The older servers are fakeredis answering as Redis 6.0.9 and 5.0.14
(``tests/older_server.py``); a real ``redis-server`` checks what does not
change on a supported one.
"""

from __future__ import annotations

import pickle

import fakeredis
import fleche
import pytest
import redis
from fleche.call import QueryCall

from fleche_redis import CallRedis, RedisStorageError, ServerTooOld, ValueRedis, maintenance
from fleche_redis.cache.caches import RedisCache
from fleche_redis.cli import acl
from fleche_redis.transport import compat
from fleche_redis.transport.request import send

from ..older_server import older_server


@fleche.fleche
def area(width: int, height: int) -> int:
    return width * height


def _cache(server, namespace, **options):
    return RedisCache(
        values=ValueRedis(
            client=fakeredis.FakeRedis(server=server), namespace=namespace, **options
        ),
        calls=CallRedis(client=fakeredis.FakeRedis(server=server), namespace=namespace, **options),
    )


def test_gc_on_redis_6_0_names_the_version_the_command_and_the_floor(monkeypatch, namespace):
    cache = _cache(older_server(monkeypatch, (6, 0, 9)), namespace)
    with fleche.cache(cache):
        assert [area(w, 2) for w in range(3)] == [0, 2, 4]  # storing and hitting work on 6.0
        assert [area(w, 2) for w in range(3)] == [0, 2, 4]
    with pytest.raises(ServerTooOld) as info:
        maintenance.gc(cache)
    error = info.value
    assert (error.version, error.command, error.needed) == ("6.0.9", "SMISMEMBER", "6.2")
    assert "Redis 6.0.9" in str(error) and "SMISMEMBER" in str(error)
    assert "needs Redis >= 6.2" in str(error)
    assert isinstance(error, RedisStorageError) and isinstance(error.__cause__, redis.ResponseError)
    back = pickle.loads(pickle.dumps(error))  # worker processes send it back
    assert type(back) is ServerTooOld and back.version == "6.0.9" and str(back) == str(error)


def test_a_query_is_refused_not_a_miss_whatever_on_error_says(monkeypatch, namespace):
    cache = _cache(older_server(monkeypatch, (6, 0, 9)), namespace, on_error="miss")
    with fleche.cache(cache):
        area(3, 4)
    template = QueryCall(name=area.__qualname__, arguments={"width": 3, "height": 4})
    with pytest.raises(
        ServerTooOld, match=r"Redis 6\.0\.9 .*: ZMSCORE, used by .* needs Redis >= 6\.2"
    ):
        list(cache.calls.query(template))
    assert cache.calls.channel.metrics.errors == 1 and cache.calls.channel.breaker.failures == 0


def test_redis_5_is_named_for_what_it_lacks_first(monkeypatch):
    # RESP2: a client that opens with HELLO 3 cannot talk to Redis 5 at all.
    client = fakeredis.FakeRedis(server=older_server(monkeypatch, (5, 0, 14)), protocol=2)
    with pytest.raises(ServerTooOld) as info:
        send(client, [("CLIENT", "TRACKING", "ON")])
    assert info.value.version == "5.0.14" and info.value.command == "CLIENT TRACKING"
    assert "needs Redis >= 6.0" in str(info.value)


def test_a_supported_server_keeps_its_own_reply(monkeypatch):
    """On 6.2 and later an unknown command is no question of version (rename-command)."""
    client = fakeredis.FakeRedis(server=older_server(monkeypatch, (6, 2, 0)))
    assert send(client, [("SMISMEMBER", "s", "a")]) == [[0]]
    with pytest.raises(redis.ResponseError) as info:
        send(client, [("NOSUCHCOMMAND", "x")])
    assert not isinstance(info.value, ServerTooOld)


def test_other_refusals_stay_as_they_were_and_ask_nothing(monkeypatch):
    client = fakeredis.FakeRedis(server=older_server(monkeypatch, (6, 0, 9)))
    client.set("s", "a string")
    asked = []
    monkeypatch.setattr(compat, "server_version", lambda c: asked.append(c) or "6.0.9")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE") as info:
        send(client, [("SADD", "s", "x")])
    assert not isinstance(info.value, ServerTooOld) and asked == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("6.0.9", (6, 0, 9)),
        ("7.2.4", (7, 2, 4)),
        ("older than 6.0", (5,)),
        ("unstable", None),
        (None, None),
    ],
)
def test_versions_read(text, expected):
    assert compat.parse_version(text) == expected
    assert compat.below_floor(text) == (None if expected is None else expected < (6, 2))


def test_the_version_of_a_user_without_info_comes_from_hello(redis_server, namespace):
    """``INFO`` is ``@dangerous``: a confined user (``fleche-redis acl``) learns it from ``HELLO``."""
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", namespace, *acl.rules(namespace, "secret"))
    user = redis.Redis(
        host="127.0.0.1", port=redis_server.port, username=namespace, password="secret"
    )
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.info("server")
        expected = admin.info("server")["redis_version"]
        assert compat.server_version(user) == expected
        assert compat.below_floor(expected) is False
    finally:
        user.close()
        admin.execute_command("ACL", "DELUSER", namespace)


@pytest.mark.parametrize(
    ("reply", "sent", "named", "needed"),
    [
        # Redis 6.0's wording, with backticks
        (
            "unknown command `SMISMEMBER`, with args beginning with: `k`, ",
            None,
            "SMISMEMBER",
            "6.2",
        ),
        # Redis 5.0's CLIENT TRACKING
        (
            "Unknown subcommand or wrong number of arguments for 'TRACKING'. Try CLIENT HELP",
            "CLIENT",
            "TRACKING",
            "6.0",
        ),
        # redis-py's pipeline wording around the reply
        (
            "Command # 1 (ZMSCORE k a) of pipeline caused error: unknown command 'ZMSCORE'",
            None,
            "ZMSCORE",
            "6.2",
        ),
        # Redis 6.0 refusing a channel rule: the reply names no command, the request does
        ("Error in ACL SETUSER modifier '&ns:*': Syntax error", "ACL", "ACL", "6.2"),
        ("timeout is not an integer or out of range", "BLPOP", "BLPOP", "6.0"),
    ],
)
def test_refusals_in_each_wording_are_translated(monkeypatch, reply, sent, named, needed):
    monkeypatch.setattr(compat, "server_version", lambda client: "5.0.14")
    error = compat.explained(fakeredis.FakeRedis(), redis.ResponseError(reply), sent)
    assert isinstance(error, ServerTooOld)
    assert (error.version, error.command, error.needed) == ("5.0.14", named, needed)
    monkeypatch.setattr(compat, "server_version", lambda client: "6.2.0")
    assert not isinstance(
        compat.explained(fakeredis.FakeRedis(), redis.ResponseError(reply)), ServerTooOld
    )
