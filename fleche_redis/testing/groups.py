"""Groups of private servers: a local Redis Cluster, and a primary with a replica and sentinels.

Built from :class:`~fleche_redis.testing.process.RedisServer`; closing a group stops every process.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from .process import (
    ClosedOnExit,
    RedisServer,
    ServerStartError,
    free_port,
    log_tail,
    redis_server_binary,
)

__all__ = ["RedisClusterProcesses", "RedisSentinelProcesses"]


def _wait_until(condition: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise ServerStartError(message)


def _cluster_ok(nodes: Sequence[RedisServer], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for n in nodes:
            with n.client() as c:
                # redis-py parses CLUSTER INFO into a dict of str
                info = c.execute_command("CLUSTER INFO")
                states.append(info.get("cluster_state") == "ok")
        if all(states):
            return
        time.sleep(0.05)
    raise ServerStartError("cluster did not reach cluster_state:ok")


def _in_sync(replica: RedisServer) -> bool:
    with replica.client() as c:
        return c.info("replication").get("master_link_status") == "up"


def _launch_sentinel(watcher: RedisServer, conf: Path, timeout: float = 10.0) -> None:
    # Sentinel rewrites its config file, so it gets one of its own and no
    # persistence options.
    watcher.process = subprocess.Popen(
        [
            redis_server_binary() or "redis-server",
            str(conf),
            "--sentinel",
            "--logfile",
            str(watcher.logfile),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if watcher.ping():
            return
        time.sleep(0.01)
    raise ServerStartError(
        f"sentinel on port {watcher.port} did not start:\n" + log_tail(watcher.logfile)
    )


def _start_sentinel(primary: RedisServer, service: str) -> RedisServer:
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
    _launch_sentinel(watcher, conf)
    return watcher


@dataclass
class RedisClusterProcesses(ClosedOnExit):
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
            _cluster_ok(nodes, timeout)
            return cls(nodes)
        except BaseException:
            for n in nodes:
                n.close()
            raise

    def client(self, **kwargs) -> redis.RedisCluster:
        from redis.cluster import ClusterNode

        return redis.RedisCluster(
            startup_nodes=[ClusterNode(n.host, n.port) for n in self.nodes], **kwargs
        )

    def close(self) -> None:
        for n in self.nodes:
            n.close()


@dataclass
class RedisSentinelProcesses(ClosedOnExit):
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
                watcher = _start_sentinel(primary, service)
                watchers.append(watcher)
                started.append(watcher)
            _wait_until(lambda: _in_sync(replica), timeout, "replica did not sync")
            return cls(primary, replica, watchers, service)
        except BaseException:
            for server in started:
                server.close()
            raise

    def primary_address(self) -> tuple[str, int]:
        with redis.Redis(host=self.sentinels[0].host, port=self.sentinels[0].port) as s:
            host, port = s.sentinel_get_master_addr_by_name(self.service)
            return host, int(port)

    def failover(self, timeout: float = 30.0) -> None:
        """Kill the primary; return once the sentinels name the replica as primary."""
        self.primary.kill()
        _wait_until(lambda: self.primary_address()[1] == self.replica.port, timeout, "no failover")

    def close(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.close()
