"""transport.request.send and post: one request for a group of commands, on every kind of client."""

import pytest
import redis

from fleche_redis.testing.roundtrips import RoundTrips
from fleche_redis.transport import wire
from fleche_redis.transport.connection import client_from_url
from fleche_redis.transport.request import post, send
from fleche_redis.transport.scripts import LuaScript

ECHO = LuaScript("return {KEYS[1], ARGV[1]}")
INCR = LuaScript("return redis.call('INCRBY', KEYS[1], ARGV[1])")


def connected(url):
    """A client whose kept connection is open, so round trips count requests alone."""
    c = redis.Redis.from_url(url)
    send(c, [("PING",)])
    c.ping()  # and one in the pool, for redis-py's own commands (SCRIPT LOAD)
    return c


@pytest.fixture
def client(redis_server):
    c = connected(redis_server.url)
    yield c
    c.close()


@pytest.fixture(params=["fakeredis", "redis-server"])
def any_client(request):
    if request.param == "fakeredis":
        fake = request.getfixturevalue("fake_client")
        send(fake, [("PING",)])
        fake.ping()
        return fake
    return request.getfixturevalue("client")


def test_replies_come_raw_and_in_order_in_one_round_trip(any_client, namespace):
    k = f"{namespace}:k"
    with RoundTrips() as trips:
        replies = send(any_client, [("SET", k, "1"), ("INCR", k), ("GET", k), ("EXISTS", k)])
    assert replies == [b"OK", 2, b"2", 1]
    assert trips.count == 1, trips.commands
    assert send(any_client, []) == []


def test_the_first_error_reply_is_raised_after_every_command_ran(any_client, namespace):
    k = f"{namespace}:k"
    with pytest.raises(redis.ResponseError, match="not an integer"):
        send(any_client, [("SET", k, "x"), ("INCR", k), ("SET", f"{k}2", "y")])
    assert send(any_client, [("GET", f"{k}2")]) == [b"y"]  # ran; the connection is in step


def test_atomic_returns_execs_replies(any_client, namespace):
    k = f"{namespace}:k"
    with RoundTrips() as trips:
        assert send(any_client, [("SET", k, "1"), ("INCR", k)], atomic=True) == [b"OK", 2]
    assert trips.count == 1, trips.commands


def test_an_atomic_request_refused_while_queued_stores_nothing(fresh_server):
    c = connected(fresh_server.url)
    raw = fresh_server.client()
    raw.config_set("maxmemory-policy", "noeviction")
    raw.config_set("maxmemory", raw.info("memory")["used_memory"] + 1024)
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            send(c, [("DEL", "a"), ("SET", "b", "y" * 200_000)], atomic=True)
    finally:
        raw.config_set("maxmemory", 0)
    assert raw.exists("b") == 0
    with pytest.raises(redis.ResponseError, match="EXECABORT|unknown command"):
        send(c, [("SET", "a", "1"), ("NOSUCHCOMMAND",)], atomic=True)
    assert raw.exists("a") == 0  # refused while queued: none of it ran
    c.close()


def test_noscript_loads_the_scripts_and_sends_again(fresh_server):
    c = connected(fresh_server.url)
    command = ("EVALSHA", INCR.sha, 1, "n", 5)
    with RoundTrips() as trips:
        assert send(c, [command, ("GET", "n")], scripts=(INCR,)) == [5, b"5"]
    assert trips.commands == [b"EVALSHA", b"SCRIPT", b"EVALSHA"]
    with RoundTrips() as trips:
        assert send(c, [command], scripts=(INCR,)) == [10]
    assert trips.count == 1
    with pytest.raises(redis.exceptions.NoScriptError):
        send(c, [("EVALSHA", ECHO.sha, 1, "k", "v")])  # no scripts given: nothing to load
    c.close()


def test_noscript_with_eval_sends_the_source_instead(fresh_server):
    c = connected(fresh_server.url)
    with RoundTrips() as trips:
        assert ECHO(c, ["k"], ["v"]) == [b"k", b"v"]
    assert trips.commands == [b"EVALSHA", b"EVAL"]  # EVAL also caches it
    with RoundTrips() as trips:
        assert ECHO(c, ["k"], ["w"]) == [b"k", b"w"]
    assert trips.commands == [b"EVALSHA"]
    c.close()


def test_bundled_scripts_run_as_one_script_after_the_plain_commands(any_client, namespace):
    n = f"{namespace}:n"
    commands = [
        ("EVALSHA", INCR.sha, 1, n, 2),
        ("SET", f"{namespace}:plain", "p"),
        ("EVALSHA", INCR.sha, 1, n, 3),
        ("EVALSHA", ECHO.sha, 1, "k", "v"),
    ]
    with RoundTrips() as trips:
        replies = send(any_client, commands, scripts=(INCR, ECHO), bundled=True)
    assert replies == [b"OK", [2, 5, [b"k", b"v"]]]  # MULTI/EXEC: SET, then the bundle
    assert trips.commands in ([b"MULTI"], [b"MULTI", b"SCRIPT", b"MULTI"]), trips.commands
    assert send(any_client, [("GET", f"{namespace}:plain")]) == [b"p"]


def test_cluster_pipelines_or_orders_and_reloads_by_eval(redis_cluster, namespace):
    c = client_from_url(redis_cluster.url)
    try:
        keys = [f"{namespace}:{i}" for i in range(6)]  # spread over the nodes
        assert send(c, [("SET", k, i) for i, k in enumerate(keys)]) == [True] * 6
        assert send(c, [("GET", k) for k in keys], ordered=True) == [b"%d" % i for i in range(6)]
        c.script_flush()
        assert send(c, [("EVALSHA", ECHO.sha, 1, keys[0], "v")], scripts=(ECHO,)) == [
            [keys[0].encode(), b"v"]
        ]
        # A batch's writes: one by one in order, scripts loaded on a NOSCRIPT.
        c.script_flush()
        assert send(c, [("EVALSHA", INCR.sha, 1, keys[1], 1)], scripts=(INCR,), bundled=True) == [2]
    finally:
        c.close()


def test_posted_requests_are_settled_before_the_threads_next_request(client, namespace):
    k = f"{namespace}:posted"
    outcomes = []
    with RoundTrips() as trips:
        assert post(client, [("SET", k, "1"), ("INCR", k)], outcomes.append, atomic=True)
        assert outcomes == []  # written, not read
        assert wire.owing()
        assert send(client, [("GET", k)]) == [b"2"]  # reads the posted reply first
    assert outcomes == [[b"OK", 2]]
    assert trips.count == 2
    wire.settle()
    assert outcomes == [[b"OK", 2]]  # settled once only
    assert post(client, [("INCR", f"{k}:x"), ("SET", f"{k}:y", "1")], outcomes.append)
    wire.settle()
    assert outcomes[-1] == [1, b"OK"]


def test_posted_error_replies_reach_settle_as_exceptions(client, namespace):
    k = f"{namespace}:bad"
    outcomes = []
    assert post(client, [("SET", k, "x"), ("INCR", k)], outcomes.append)
    wire.settle()
    ok, error = outcomes[0]
    assert ok == b"OK" and isinstance(error, redis.ResponseError)


def test_nothing_is_posted_on_cluster(redis_cluster):
    c = client_from_url(redis_cluster.url)
    try:
        assert post(c, [("SET", "x", "1")], lambda outcome: None) is False
    finally:
        c.close()
