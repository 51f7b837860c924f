"""Signing keys as a user gives them: a bad one is named (never quoted), a short one is warned about."""

from __future__ import annotations

import logging

import fakeredis
import pytest

from fleche_redis import CallRedis, ValueRedis, runtime
from fleche_redis.storage.signing import MIN_KEY_BYTES, signing_keys


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test starts as a new process would: nothing warned yet."""
    monkeypatch.setattr(runtime, "per_process", _fresh(runtime.per_process))


def _fresh(per_process):
    mine: dict[str, object] = {}

    def lookup(name, factory):
        if name.startswith("signing."):
            return mine.setdefault(name, factory())
        return per_process(name, factory)

    return lookup


@pytest.mark.parametrize("cls", [ValueRedis, CallRedis])
@pytest.mark.parametrize("key", ["not-hex-at-all", ["ab", "zz"], 5])
def test_a_key_that_is_not_one_is_refused_at_construction(cls, key):
    with pytest.raises(ValueError, match="secret_key is not a signing key") as raised:
        cls(client=fakeredis.FakeRedis(), secret_key=key)
    assert "keygen" in str(raised.value)


def test_a_bad_key_in_the_environment_names_the_variable_not_its_value(monkeypatch):
    monkeypatch.setenv("FLECHE_SECRET_KEY", "hunter2-is-my-key")
    with pytest.raises(ValueError, match="FLECHE_SECRET_KEY is not a signing key") as raised:
        ValueRedis(client=fakeredis.FakeRedis())
    assert "hunter2" not in str(raised.value)


def test_a_short_key_is_warned_about_once_per_process(caplog, monkeypatch):
    monkeypatch.setenv("FLECHE_SECRET_KEY", "abcd")
    with caplog.at_level(logging.WARNING, logger="fleche_redis.security"):
        for _ in range(3):
            storage = ValueRedis(client=fakeredis.FakeRedis())
    assert storage.secret_key == (b"\xab\xcd",)  # still used: fleche accepts it
    warnings = [r.getMessage() for r in caplog.records if "short enough to guess" in r.getMessage()]
    assert warnings == [
        "fleche-redis: FLECHE_SECRET_KEY holds a key of 2 bytes, short enough to guess; "
        "use 32 random bytes (`fleche-redis keygen`)"
    ]


def test_keys_of_full_length_pass_quietly(caplog):
    strong = "ab" * 32
    with caplog.at_level(logging.WARNING, logger="fleche_redis.security"):
        assert signing_keys(f"{strong}:{'cd' * MIN_KEY_BYTES}") == (
            bytes.fromhex(strong),
            bytes.fromhex("cd" * MIN_KEY_BYTES),
        )
        assert signing_keys(b"k" * 32) == (b"k" * 32,)
    assert caplog.records == []


def test_no_key_is_no_key(monkeypatch):
    monkeypatch.delenv("FLECHE_SECRET_KEY", raising=False)
    assert signing_keys(()) == () and signing_keys(b"") == ()


@pytest.mark.parametrize(
    "option, value",
    [("socket_timeout", 0), ("socket_timeout", -1.5), ("connect_timeout", 0)],
)
def test_timeouts_must_be_positive(option, value):
    with pytest.raises(ValueError, match=f"{option} must be a positive number of seconds"):
        ValueRedis(url="redis://localhost:6379/0", **{option: value})


def test_a_url_that_is_not_a_string_is_named():
    with pytest.raises(TypeError, match="url must be a string such as 'redis://host:6379/0'"):
        ValueRedis(url=None)
