"""``fleche-redis serve`` and ``keygen``: a persistent Redis for a team or a job without one.

``serve`` runs ``redis-server DIR/redis.conf`` (the settings are in
:mod:`.served`), waits until it answers, prints the shell lines that point
fleche at it, and then either stays in the foreground until Ctrl-C / SIGTERM
(and stops it with ``SHUTDOWN``, which flushes the AOF) or, with
``--detach``, leaves it running; ``--stop`` stops a detached one.

Shell lines go to stdout and everything else to stderr, so
``eval "$(fleche-redis serve --dir DIR --detach)"`` sets the environment.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from ..testing.process import log_tail
from .errors import EXIT_FOUND, EXIT_OK, CliError
from .served import Recorded, ServeConfig, env_name, new_secret_key, server_binary

__all__ = ["keygen_command", "serve_command"]

READY_TIMEOUT = 60.0
"""Seconds a start may take: a large AOF is replayed before the server answers."""
STOP_TIMEOUT = 60.0


def keygen_command(args: argparse.Namespace) -> int:
    """Print one new key and nothing else: ``export FLECHE_SECRET_KEY=$(fleche-redis keygen)``."""
    print(new_secret_key())
    return EXIT_OK


def serve_command(args: argparse.Namespace) -> int:
    directory = Path(args.dir).expanduser().resolve()
    stored = ServeConfig.load(directory)
    if args.stop:
        if stored is None:
            raise CliError(f"nothing is served from {directory} (no redis.conf there)", EXIT_FOUND)
        return _stop(stored)
    config = (stored or ServeConfig(directory)).resolved(
        bind=args.bind,
        port=args.port,
        maxmemory=args.maxmemory,
        policy=args.maxmemory_policy,
        pidfile=Path(args.pidfile).resolve() if args.pidfile else None,
    )
    config, added = config.with_users(_namespaces(args))
    _refuse_a_second_server(config, stored)
    binary = server_binary()  # before writing anything: a first start stays a first start
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key, new_key = config.secret_key()
    config.write(key)
    with _stop_signals_interrupt():
        process = _launch(config, binary)
        try:
            _wait_ready(config, process)
            _announce(config, binary, process.pid, first=stored is None or new_key or bool(added))
            if args.detach:
                return EXIT_OK
            return _wait_until_stopped(config, process)
        except KeyboardInterrupt:
            _shutdown(config, process)
            print("fleche-redis: stopped; the data is in the AOF", file=sys.stderr)
            return EXIT_OK


def _refuse_a_second_server(config: ServeConfig, stored: ServeConfig | None) -> None:
    """A clear error while the directory's server runs; a stale pidfile is removed, with a note.

    Without a pidfile (deleted by hand) a server that answers on the
    directory's port with its password is still the directory's server.
    """
    stop = f"fleche-redis serve --dir {shlex.quote(str(config.directory))} --stop"
    recorded = config.recorded()
    if recorded is not None and recorded.ours:
        raise CliError(
            f"a server already runs from {config.directory} (pid {recorded.pid}); "
            f"stop it with: {stop}"
        )
    if recorded is not None:
        _remove_stale(config, recorded)
    if stored is not None and _answers(stored):
        raise CliError(
            f"a server already runs from {config.directory} (it answers on port "
            f"{stored.port}; its pidfile {stored.pid_path} is gone); stop it with: {stop}"
        )


def _remove_stale(config: ServeConfig, recorded: Recorded) -> None:
    config.pid_path.unlink(missing_ok=True)
    print(
        f"fleche-redis: removed the stale pidfile {config.pid_path}: {recorded.why}",
        file=sys.stderr,
    )


def _answers(config: ServeConfig) -> bool:
    """Whether a server answers ``PING`` on the directory's port with its password."""
    try:
        with contextlib.closing(config.client(socket_timeout=2, socket_connect_timeout=2)) as c:
            return bool(c.ping())
    except redis.RedisError:
        return False


def _namespaces(args: argparse.Namespace) -> list[str]:
    """serve's repeatable ``--namespace`` (one given before the command comes as a string)."""
    given = getattr(args, "namespace", None) or []
    return [given] if isinstance(given, str) else list(given)


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP (a closed terminal) stop the server, even where SIGINT was ignored."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    saved = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def _launch(config: ServeConfig, binary: str) -> subprocess.Popen:
    """Start the server in a session of its own, so a Ctrl-C reaches only us (we SHUTDOWN it).

    Only the config file's path is on its command line: ``ps`` shows no password.
    """
    # Start-up errors come before its own logging; the log is the owner's only, as the AOF.
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    with os.fdopen(os.open(config.logfile, flags, 0o600), "ab") as log:
        return subprocess.Popen(
            [binary, str(config.conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=config.directory,
            start_new_session=True,
            umask=0o077,
        )


def _wait_ready(config: ServeConfig, process: subprocess.Popen) -> None:
    """Wait until the server answers PING (after replaying its AOF), or say why it did not."""
    client = config.client(socket_timeout=2, socket_connect_timeout=2)
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while process.poll() is None:
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    _shutdown(config, process)
                    raise CliError(
                        _failed(config, f"did not answer in {READY_TIMEOUT:.0f} s")
                    ) from None
                time.sleep(0.05)
    finally:
        client.close()
    raise CliError(_failed(config, f"exited with {process.returncode}"))


def _failed(config: ServeConfig, what: str) -> str:
    return f"redis-server for {config.directory} {what}; {config.logfile} ends:\n" + log_tail(
        config.logfile, 10
    )


def _announce(config: ServeConfig, binary: str, pid: int, *, first: bool) -> None:
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    say(f"fleche-redis: serving {config.directory} with {binary} (pid {pid})")
    say(f"  URL        {config.url(redact=True)}")
    say(f"  memory     maxmemory {config.maxmemory}, policy {config.policy}")
    say(f"  files      {config.conf}, {config.logfile}, {config.pid_path}")
    for namespace, _ in config.users:
        say(f"  user       {namespace}, confined to {namespace}:* (${env_name(namespace)})")
    if config.beyond_loopback:
        say(
            f"fleche-redis: WARNING: listening on {config.bind} without TLS: the password and "
            "every cached value cross the network in clear; use it only on a trusted network"
        )
    if first:
        say(f"The passwords and signing key, shown once (kept in {config.env_file}, mode 0600):")
        print(config.env_file.read_text(), end="", flush=True)
    else:
        say(f"The password and signing key are in {config.env_file} (mode 0600):")
        print(f". {shlex.quote(str(config.env_file))}", flush=True)


def _wait_until_stopped(config: ServeConfig, process: subprocess.Popen) -> int:
    quoted = shlex.quote(str(config.directory))
    print(
        f"Ctrl-C stops it (or: fleche-redis serve --dir {quoted} --stop)",
        file=sys.stderr,
        flush=True,
    )
    code = process.wait()
    if code != 0:
        raise CliError(_failed(config, f"exited with {code}"))
    print("fleche-redis: the server was stopped", file=sys.stderr)
    return EXIT_OK


def _shutdown(config: ServeConfig, process: subprocess.Popen | None = None) -> None:
    """``SHUTDOWN`` (the AOF is flushed and fsynced), else SIGTERM, which does the same."""
    try:
        with contextlib.closing(config.client(socket_timeout=STOP_TIMEOUT)) as client:
            client.shutdown()
    except redis.RedisError:
        if process is not None and process.poll() is None:
            process.terminate()
    if process is not None:
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _stop(config: ServeConfig) -> int:
    """Stop the server that runs from the directory and wait until its process is gone."""
    recorded = config.recorded()
    if recorded is not None and not recorded.ours:
        _remove_stale(config, recorded)
    if recorded is None or not recorded.ours:
        if _answers(config):  # its pidfile is gone, but the server is there
            _shutdown(config)
            print(f"fleche-redis: stopped the server of {config.directory}", file=sys.stderr)
            return EXIT_OK
        raise CliError(f"nothing is running from {config.directory}", EXIT_FOUND)
    pid = recorded.pid
    assert pid is not None  # ours, so a pid was read
    try:
        with contextlib.closing(config.client(socket_timeout=STOP_TIMEOUT)) as client:
            client.shutdown()
    except redis.RedisError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while config.running_pid() == pid:
        if time.monotonic() > deadline:
            raise CliError(f"redis-server (pid {pid}) did not stop in {STOP_TIMEOUT:.0f} s")
        time.sleep(0.05)
    print(f"fleche-redis: stopped the server of {config.directory} (pid {pid})", file=sys.stderr)
    return EXIT_OK
