"""Groups of private servers: a primary with a replica and sentinels, and what replicated groups share.

Built from :class:`~fleche_redis.testing.process.RedisServer`; closing a group stops every process.
The group can be failed over (a crash, a planned failover, one that loses writes), so tests can
watch clients ride it out; the Redis Cluster group is in :mod:`.cluster` (see docs/testing.md).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

__all__ = ["RedisSentinelProcesses", "cut_off", "in_sync", "wait_until"]


def wait_until(condition: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise ServerStartError(message)


def in_sync(replica: RedisServer) -> bool:
    with replica.client() as c:
        return c.info("replication").get("master_link_status") == "up"


@contextmanager
def cut_off(primary: RedisServer, replica: RedisServer, junk: str) -> Iterator[None]:
    """Stop *replica* and make *primary* drop it, so writes in the block never reach it.

    The primary drops a replica whose output buffer overflows: the limit is
    lowered to 1 MB and 8 MB written to *junk* (a key the primary serves),
    which a stopped replica cannot read.  On an exception the replica is
    resumed; otherwise resuming it is the caller's, after the failover.
    """
    replica.pause()
    try:
        with primary.client() as p:
            p.config_set("client-output-buffer-limit", "replica 1mb 1mb 0")
            p.set(junk, b"x" * 8_000_000)
            wait_until(
                lambda: not any("S" in c["flags"] for c in p.client_list()),
                10,
                "the primary kept its replica",
            )
            p.delete(junk)
            p.config_set("client-output-buffer-limit", "replica 256mb 64mb 60")
        yield
    except BaseException:
        replica.resume()
        raise


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
class RedisSentinelProcesses(ClosedOnExit):
    """A primary, one replica and *sentinels* sentinels watching them as *service*.

    ``failover()`` kills the primary and waits until the sentinels promoted the
    replica, so tests can watch clients follow it; ``switch()`` is a planned
    failover (``SENTINEL FAILOVER``) after which the two have changed places.
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
            wait_until(lambda: in_sync(replica), timeout, "replica did not sync")
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
        wait_until(lambda: self.primary_address()[1] == self.replica.port, timeout, "no failover")

    @contextmanager
    def losing_writes(self) -> Iterator[None]:
        """Writes to the primary inside the block are acknowledged and then lost: on leaving
        it the primary is killed and the sentinels promote the replica, which never got them."""
        with cut_off(self.primary, self.replica, "junk"):
            yield
        self.primary.kill()
        self.replica.resume()
        wait_until(lambda: self.primary_address()[1] == self.replica.port, 30, "no failover")

    def switch(self, timeout: float = 30.0) -> None:
        """``SENTINEL FAILOVER``: the sentinels promote the replica and demote the primary
        (a planned failover); return once they name the new primary and it is in sync."""
        before = self.primary_address()
        with self.sentinels[0].client() as s:
            s.execute_command("SENTINEL FAILOVER", self.service)
        wait_until(lambda: self.primary_address() != before, timeout, "no failover")
        if self.primary_address()[1] == self.replica.port:
            self.primary, self.replica = self.replica, self.primary
        wait_until(lambda: in_sync(self.replica), timeout, "the old primary did not follow")

    def close(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.close()
