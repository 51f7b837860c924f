"""``fleche-redis acl``: the user it makes passes the conformance suite and is refused elsewhere."""

from __future__ import annotations

import shlex

import pytest
import redis

from fleche_redis import CallRedis, ValueRedis, cli
from fleche_redis.testing.conformance import CallStorageConformance, ValueStorageConformance


def acl(capsys, *argv: str) -> list[str]:
    assert cli.main(["acl", *argv]) == 0
    return capsys.readouterr().out.splitlines()


@pytest.fixture
def users(fresh_server, capsys):
    """namespace -> the URL of its user, made by ``acl --apply`` with the administrator's URL."""
    made: dict[str, str] = {}

    def url_for(namespace: str) -> str:
        if namespace not in made:
            args = ("--url", fresh_server.url, "--namespace", namespace, "--apply")
            (made[namespace],) = acl(capsys, *args)
        return made[namespace]

    return url_for


@pytest.fixture
def user_url(users, namespace):
    return users(namespace)


def _as_user(storage_class, users, namespace):
    # Another namespace (the suite's isolation test) gets a user of its own.
    def make(**kw):
        kw.setdefault("namespace", namespace)
        return storage_class(url=users(kw["namespace"]), **kw)

    return make


class TestValueRedisAsTheAclUser(ValueStorageConformance):
    @pytest.fixture
    def make_storage(self, users, namespace):
        return _as_user(ValueRedis, users, namespace)


class TestCallRedisAsTheAclUser(CallStorageConformance):
    @pytest.fixture
    def make_storage(self, users, namespace):
        return _as_user(CallRedis, users, namespace)


def test_the_user_is_refused_outside_its_namespace(user_url, namespace, fresh_server):
    client = redis.Redis.from_url(user_url)
    client.set(f"{namespace}:mine", 1)
    for command in (
        ("SET", "other-team:x", 1),
        ("GET", f"{namespace}x"),  # the namespace's name is not a prefix of it: ':' is part of it
        ("FLUSHALL",),
        ("KEYS", "*"),
        ("CONFIG", "GET", "requirepass"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    assert fresh_server.client().get(f"{namespace}:mine") == b"1"


def test_without_apply_it_prints_the_acl_line_and_creates_nothing(fresh_server, capsys):
    setuser, url = acl(capsys, "--url", fresh_server.url, "--namespace", "team-a")
    words = shlex.split(setuser)
    assert words[:3] == ["ACL", "SETUSER", "team-a"] and "~team-a:*" in words
    password = next(w[1:] for w in words if w.startswith(">"))
    assert url == f"redis://team-a:{password}@127.0.0.1:{fresh_server.port}/0"
    users = fresh_server.client().execute_command("ACL", "USERS")
    assert b"team-a" not in users
    fresh_server.client().execute_command(*words)  # what an administrator runs
    assert redis.Redis.from_url(url).set("team-a:k", 1)


def test_each_run_makes_a_new_password(fresh_server, capsys):
    first = acl(capsys, "--url", fresh_server.url, "--namespace", "team-a")[1]
    second = acl(capsys, "--url", fresh_server.url, "--namespace", "team-a")[1]
    assert first != second
