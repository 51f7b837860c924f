"""Private ``redis-server`` processes for tests, benchmarks and the demo.

Every test that needs a real Redis starts its own here, on a free loopback
port, with persistence off and its files in a temporary directory, and stops
it afterwards.  Nothing here ever touches a server somebody else started.

    with RedisServer.start() as server:
        client = server.client()

    with RedisClusterProcesses.start(masters=3) as cluster:
        client = cluster.client()          # a redis.RedisCluster

The binary is looked up on ``PATH`` (or ``$FLECHE_REDIS_SERVER``); use
:func:`redis_server_binary` to ask whether one is there.
"""

from __future__ import annotations

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

__all__ = [
    "TlsFiles",
    "RedisServer",
    "RedisClusterProcesses",
    "RedisSentinelProcesses",
    "redis_server_binary",
    "free_port",
    "ServerStartError",
]


class ServerStartError(RuntimeError):
    """A private redis-server did not come up; the message carries its log tail."""


def redis_server_binary() -> str | None:
    """Path of the ``redis-server`` binary to use, or ``None`` when there is none."""
    return os.environ.get("FLECHE_REDIS_SERVER") or shutil.which("redis-server")


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


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _ClosedOnExit:
    """``with`` support for the process groups here: leaving the block closes them."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.

    Made with ``trustme`` (a test dependency) in *directory*.
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def create(cls, directory: Path | str) -> TlsFiles:
        import trustme

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("fleche-redis-client")
        files = cls(
            path / "ca.pem",
            path / "server.pem",
            path / "server.key",
            path / "client.pem",
            path / "client.key",
        )
        ca.cert_pem.write_to_path(str(files.ca_cert))
        server.cert_chain_pems[0].write_to_path(str(files.server_cert))
        server.private_key_pem.write_to_path(str(files.server_key))
        client.cert_chain_pems[0].write_to_path(str(files.client_cert))
        client.private_key_pem.write_to_path(str(files.client_key))
        return files

    def client_options(self) -> dict[str, str | bool]:
        return {
            "ssl": True,
            "ssl_ca_certs": str(self.ca_cert),
            "ssl_certfile": str(self.client_cert),
            "ssl_keyfile": str(self.client_key),
        }

    def url_query(self) -> str:
        """The same options as URL query parameters (for ``rediss://`` URLs)."""
        return f"ssl_ca_certs={self.ca_cert}&ssl_certfile={self.client_cert}&ssl_keyfile={self.client_key}"

    def client_context(self):
        import ssl

        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


@dataclass
class RedisServer(_ClosedOnExit):
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
            raise ServerStartError(
                "redis-server is not on PATH; install it (apt-get install redis-server) "
                "or set FLECHE_REDIS_SERVER"
            )
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
                server._launch()
                return server
            except ServerStartError as e:
                last_error = e
        if owns:
            shutil.rmtree(path, ignore_errors=True)
        raise ServerStartError(str(last_error))

    def _launch(self, timeout: float = 10.0) -> None:
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
                    + _log_tail(self.logfile)
                )
            if self.ping():
                return
            time.sleep(0.01)
        self.kill()
        raise ServerStartError(
            f"redis-server on port {self.port} did not answer within {timeout}s:\n"
            + _log_tail(self.logfile)
        )

    def _launch_sentinel(self, conf: Path, timeout: float = 10.0) -> None:
        # Sentinel rewrites its config file, so it gets one of its own and no
        # persistence options.
        self.process = subprocess.Popen(
            [
                redis_server_binary() or "redis-server",
                str(conf),
                "--sentinel",
                "--logfile",
                str(self.logfile),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(0.01)
        raise ServerStartError(
            f"sentinel on port {self.port} did not start:\n" + _log_tail(self.logfile)
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
        self._launch()

    def close(self) -> None:
        """Stop the server and delete its directory (if this object created it)."""
        self.resume()
        self.stop()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class RedisClusterProcesses(_ClosedOnExit):
    """A local Redis Cluster of *masters* primaries and no replicas.

    Each node is a :class:`RedisServer` started with ``--cluster-enabled yes``;
    ``redis-cli --cluster create`` assigns the 16384 slots among them.
    """

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node (see :mod:`fleche_redis.connection`)."""
        hosts = ",".join(f"{n.host}:{n.port}" for n in self.nodes)
        return f"redis+cluster://{hosts}"

    @classmethod
    def start(
        cls, masters: int = 3, args: Sequence[str] = (), timeout: float = 30.0
    ) -> RedisClusterProcesses:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise ServerStartError("redis-cli is not on PATH; it is needed to create a cluster")
        nodes: list[RedisServer] = []
        try:
            for _ in range(masters):
                port = free_port(cluster_bus=True)
                nodes.append(
                    RedisServer.start(
                        [
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            f"nodes-{port}.conf",
                            "--cluster-node-timeout",
                            "2000",
                            *args,
                        ],
                        port=port,
                    )
                )
            created = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{n.port}" for n in nodes),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if created.returncode != 0:
                raise ServerStartError(
                    f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}"
                )
            cluster = cls(nodes)
            cluster._wait_ok(timeout)
            return cluster
        except BaseException:
            for n in nodes:
                n.close()
            raise

    def _wait_ok(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for n in self.nodes:
                with n.client() as c:
                    # redis-py parses CLUSTER INFO into a dict of str
                    info = c.execute_command("CLUSTER INFO")
                    states.append(info.get("cluster_state") == "ok")
            if all(states):
                return
            time.sleep(0.05)
        raise ServerStartError("cluster did not reach cluster_state:ok")

    def client(self, **kwargs) -> redis.RedisCluster:
        from redis.cluster import ClusterNode

        return redis.RedisCluster(
            startup_nodes=[ClusterNode(n.host, n.port) for n in self.nodes], **kwargs
        )

    def close(self) -> None:
        for n in self.nodes:
            n.close()


@dataclass
class RedisSentinelProcesses(_ClosedOnExit):
    """A primary, one replica and *sentinels* sentinels watching them as *service*.

    ``failover()`` kills the primary and waits until the sentinels promoted the
    replica, so tests can watch clients follow it.
    """

    primary: RedisServer
    replica: RedisServer
    sentinels: list[RedisServer]
    service: str = "fleche"

    @property
    def url(self) -> str:
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    @classmethod
    def start(
        cls, sentinels: int = 1, service: str = "fleche", timeout: float = 20.0
    ) -> RedisSentinelProcesses:
        started: list[RedisServer] = []
        try:
            # Diskless sync without its default 5 s wait for more replicas.
            primary = RedisServer.start(["--repl-diskless-sync-delay", "0"])
            started.append(primary)
            replica = RedisServer.start(["--replicaof", primary.host, str(primary.port)])
            started.append(replica)
            watchers = []
            for _ in range(sentinels):
                port = free_port()
                directory = Path(tempfile.mkdtemp(prefix="fleche-sentinel-"))
                conf = directory / "sentinel.conf"
                conf.write_text(
                    f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                    f"sentinel monitor {service} {primary.host} {primary.port} 1\n"
                    f"sentinel down-after-milliseconds {service} 1000\n"
                    f"sentinel failover-timeout {service} 5000\n"
                    f"sentinel parallel-syncs {service} 1\n"
                )
                watcher = RedisServer(
                    port=port,
                    directory=directory,
                    args=(str(conf), "--sentinel"),
                    _owns_directory=True,
                )
                watcher._launch_sentinel(conf)
                watchers.append(watcher)
                started.append(watcher)
            group = cls(primary, replica, watchers, service)
            group._wait(lambda: group._replica_in_sync(), timeout, "replica did not sync")
            return group
        except BaseException:
            for server in started:
                server.close()
            raise

    def _replica_in_sync(self) -> bool:
        with self.replica.client() as c:
            return c.info("replication").get("master_link_status") == "up"

    @staticmethod
    def _wait(condition, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise ServerStartError(message)

    def primary_address(self) -> tuple[str, int]:
        with redis.Redis(host=self.sentinels[0].host, port=self.sentinels[0].port) as s:
            host, port = s.sentinel_get_master_addr_by_name(self.service)
            return host, int(port)

    def failover(self, timeout: float = 30.0) -> None:
        """Kill the primary; return once the sentinels name the replica as primary."""
        self.primary.kill()
        self._wait(lambda: self.primary_address()[1] == self.replica.port, timeout, "no failover")

    def close(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.close()
