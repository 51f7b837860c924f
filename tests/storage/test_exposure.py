"""Unsigned on a network: one warning per process and server, and ``unsigned_network`` in metrics.

Building a storage connects to nothing, so these run without a server; the
addresses below are never reached.
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys

import pytest

from fleche_redis import CallRedis, ValueRedis, runtime
from fleche_redis.storage import exposure

KEY = "00" * 32


@pytest.fixture(autouse=True)
def _fresh_process_memory():
    runtime.per_process("exposure.warned", set).clear()


def warnings(caplog):
    return [r for r in caplog.records if r.name == "fleche_redis.security"]


@pytest.mark.parametrize(
    "url",
    [
        "redis://10.1.2.3:6379/0",
        "redis://:pw@cache-host:6379/0",
        "rediss://cache.example.org/1",
        "redis+cluster://127.0.0.1:7000,10.0.0.2:7001",
        "redis+sentinel://10.0.0.5:26379/mymaster/0",
    ],
)
def test_beyond_this_host_counts_as_a_network(url):
    assert exposure.on_network(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://localhost/0",
        "redis://[::1]:6379/0",
        "redis://127.0.0.2:7000/0",
        "unix:///run/redis.sock",
        "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
    ],
)
def test_loopback_and_sockets_do_not(url):
    assert not exposure.on_network(url)


def test_unsigned_on_a_network_warns_once_per_server_and_shows_in_metrics(caplog):
    caplog.set_level(logging.WARNING, "fleche_redis.security")
    values = ValueRedis(url="redis://:hunter2@10.1.2.3:6379/0", namespace="team-a")
    calls = CallRedis(url="redis://:hunter2@10.1.2.3:6379/0", namespace="team-a")
    (warning,) = warnings(caplog)
    text = warning.getMessage()
    assert "unsigned pickles" in text and "FLECHE_SECRET_KEY" in text and "keygen" in text
    assert "hunter2" not in text and "10.1.2.3" in text
    assert values.metrics()["unsigned_network"] and calls.metrics()["unsigned_network"]
    ValueRedis(url="redis://10.9.9.9:6379/0", namespace="team-a")
    assert len(warnings(caplog)) == 2  # another server: its own warning


def test_signed_or_on_this_host_stays_quiet(caplog, monkeypatch):
    caplog.set_level(logging.WARNING, "fleche_redis.security")
    signed = ValueRedis(url="redis://10.1.2.3:6379/0", namespace="a", secret_key=KEY)
    monkeypatch.setenv("FLECHE_SECRET_KEY", KEY)
    from_env = CallRedis(url="redis://10.1.2.3:6379/0", namespace="a")
    monkeypatch.delenv("FLECHE_SECRET_KEY")
    local = ValueRedis(url="redis://127.0.0.1:6379/0", namespace="a")
    assert warnings(caplog) == []
    assert not any(s.metrics()["unsigned_network"] for s in (signed, from_env, local))


def test_every_process_warns_once_for_itself():
    """A worker that unpickles the storage warns in its own log."""
    code = (
        "import logging, pickle, sys\n"
        "logging.basicConfig(level=logging.WARNING, stream=sys.stdout)\n"
        "storage = pickle.loads(sys.stdin.buffer.read())\n"
        "storage.metrics()\n"
        "pickle.loads(pickle.dumps(storage))\n"
    )
    storage = ValueRedis(url="redis://10.1.2.3:6379/0", namespace="team-a")
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=pickle.dumps(storage),
        capture_output=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout.decode()
    assert out.count("unsigned pickles") == 1
