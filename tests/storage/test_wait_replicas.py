"""``wait_replicas`` and ``wait_replicas_timeout``: validation, configuration, and the request's shape.

fakeredis has no replicas and no ``WAIT`` command, so what ``WAIT`` answers
is tested on a real primary and replica (tests/integration/test_wait_replicas.py);
here: the options' ranges, their round trip through fleche's configuration
(and TOML), and that a server which does not know ``WAIT`` makes a durable
save fail loudly rather than succeed unacknowledged.
"""

from __future__ import annotations

import json
import tomllib

import fakeredis
import fleche.config
import pytest

from fleche_redis import (
    CallRedis,
    NotReplicated,
    RedisCache,
    RedisStorageError,
    ValueRedis,
    redis_cache,
)
from fleche_redis.errors import FlecheRedisError, SaveError, SaveRefused
from fleche_redis.transport.replicas import DEFAULT_TIMEOUT, Replicas
from fleche_redis.transport.request import _shape

DIGEST = "ab" * 32


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"wait_replicas": -1}, "wait_replicas must be an integer >= 0, not -1"),
        ({"wait_replicas": 1.5}, "wait_replicas must be an integer >= 0"),
        ({"wait_replicas": True}, "wait_replicas must be an integer >= 0"),
        ({"wait_replicas_timeout": 0}, "wait_replicas_timeout must be > 0 seconds, not 0"),
        ({"wait_replicas_timeout": -1.0}, "wait_replicas_timeout must be > 0 seconds"),
        (
            {"wait_replicas": 1, "wait_replicas_timeout": 2.0},
            r"wait_replicas_timeout \(2 s\) must be shorter than socket_timeout \(2 s\)",
        ),
    ],
)
def test_out_of_range_options_are_refused(fake_client, options, message):
    with pytest.raises(ValueError, match=message):
        ValueRedis(client=fake_client, **options)
    with pytest.raises(ValueError, match=message):
        redis_cache(client=fake_client, **options)


def test_a_long_wait_needs_a_longer_socket_timeout(fake_client):
    storage = ValueRedis(
        client=fake_client, wait_replicas=1, wait_replicas_timeout=5.0, socket_timeout=6.0
    )
    assert storage.channel.replicas == Replicas(1, 5.0)
    assert ValueRedis(client=fake_client, socket_timeout=None, wait_replicas=1).wait_replicas == 1


def test_the_cache_checks_its_own_settings(fake_client):
    values, calls = ValueRedis(client=fake_client), CallRedis(client=fake_client)
    with pytest.raises(ValueError, match="wait_replicas must be an integer >= 0, not -2"):
        RedisCache(values, calls, wait_replicas=-2)
    with pytest.raises(ValueError, match="wait_replicas_timeout must be > 0 seconds, not 0"):
        RedisCache(values, calls, wait_replicas=1, wait_replicas_timeout=0)
    cache = RedisCache(values, calls, wait_replicas=1, wait_replicas_timeout=0.25)
    assert cache.values.channel.replicas == cache.calls.channel.replicas == Replicas(1, 0.25)
    assert values.channel.replicas is None  # the storages passed in are unchanged (frozen)


def test_the_default_waits_for_nothing(fake_client):
    storage = ValueRedis(client=fake_client)
    assert (storage.wait_replicas, storage.wait_replicas_timeout) == (0, DEFAULT_TIMEOUT)
    assert storage.channel.replicas is None
    storage.save([1, 2], DIGEST)  # fakeredis has no WAIT: none was sent
    assert storage.load(DIGEST) == [1, 2]


def test_a_server_without_wait_fails_a_durable_save_loudly(fake_client):
    storage = ValueRedis(client=fake_client, wait_replicas=1)
    with pytest.raises(RedisStorageError, match="unknown command 'wait'"):
        storage.save([1, 2], DIGEST)
    failing_open = CallRedis(client=fake_client, wait_replicas=1, on_error="miss")
    with pytest.raises(SaveRefused):  # refused, never filed as if acknowledged
        failing_open.put({"a": 1}, DIGEST)


def test_wait_follows_exec_in_the_same_request():
    command = ("EVALSHA", "0" * 40, 1, "k", "v")
    sent, _, atomic = _shape([("SET", "k:w", b"x"), command], [], True, False, Replicas(2, 0.25))
    assert atomic and sent == [
        ("MULTI",),
        ("SET", "k:w", b"x"),
        command,
        ("EXEC",),
        ("WAIT", 2, 250),
    ]
    # WAIT's 0 means forever: the shortest wait is a millisecond.
    assert Replicas(1, 0.0001).command() == ("WAIT", 1, 1)


def test_not_replicated_is_a_refused_save_of_ours_that_fleche_does_not_swallow():
    error = Replicas(2, 0.5).refusal(1, "h:1")
    assert isinstance(error, NotReplicated) and isinstance(error, SaveError)
    assert isinstance(error, FlecheRedisError) and not isinstance(error, SaveRefused)
    assert (error.acknowledged, error.wanted, error.server) == (1, 2, "h:1")
    assert Replicas(2, 0.5).refusal(2, "h:1") is None
    assert Replicas(2, 0.5).refusal(3, "h:1") is None


def test_config_round_trip_is_toml_safe(redis_server, namespace):
    storage = CallRedis(
        url=redis_server.url, namespace=namespace, wait_replicas=1, wait_replicas_timeout=0.25
    )
    written = storage.to_config()
    assert (written["wait_replicas"], written["wait_replicas_timeout"]) == (1, 0.25)
    # JSON's forms of strings, numbers, booleans and arrays are TOML's too.
    toml = "\n".join(f"{k} = {json.dumps(v)}" for k, v in written.items())
    again = fleche.config.storage_from_config(tomllib.loads(toml), "call")
    assert again == storage and again.channel.replicas == Replicas(1, 0.25)
    default = CallRedis(url=redis_server.url, namespace=namespace).to_config()
    assert "wait_replicas" not in default and "wait_replicas_timeout" not in default


def test_fakeredis_server_has_no_wait():
    """If fakeredis learns WAIT, the tests above can run there too: this says so."""
    with pytest.raises(Exception, match="unknown command"):
        fakeredis.FakeRedis().execute_command("WAIT", 0, 1)
