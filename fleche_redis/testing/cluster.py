"""A local Redis Cluster of private servers, and the faults a managed cluster goes through.

Built from :class:`~fleche_redis.testing.process.RedisServer`; closing the group stops every
process.  Resharding, ``kill -9`` of a primary and ``CLUSTER FAILOVER`` are methods, so tests
can watch clients ride them out (see docs/testing.md).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from redis.crc import key_slot

from .groups import cut_off, in_sync, wait_until
from .process import ClosedOnExit, RedisServer, ServerStartError, free_port, redis_cli_binary

__all__ = ["RedisClusterProcesses"]


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


@dataclass
class RedisClusterProcesses(ClosedOnExit):
    """A local Redis Cluster of *masters* primaries, each with *replicas* replicas.

    Each node is a :class:`RedisServer` started with ``--cluster-enabled yes``;
    ``redis-cli --cluster create`` assigns the 16384 slots among them.  The
    faults a managed cluster goes through are methods: :meth:`move_slots`
    (online resharding, with the ``ASK``/``TRYAGAIN`` window held open as long
    as a test wants), :meth:`kill` (``kill -9`` of a primary, its replica
    promoted), :meth:`failover` (``CLUSTER FAILOVER`` on a replica) and
    :meth:`losing_writes` (a failover that loses acknowledged writes).
    """

    nodes: list[RedisServer]
    """Every node started, primaries first; a killed one stays listed (not running)."""

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node (see :mod:`fleche_redis.connection`)."""
        hosts = ",".join(f"{n.host}:{n.port}" for n in self.nodes)
        return f"redis+cluster://{hosts}"

    @classmethod
    def start(
        cls,
        masters: int = 3,
        args: Sequence[str] = (),
        timeout: float = 30.0,
        *,
        replicas: int = 0,
    ) -> RedisClusterProcesses:
        cli = redis_cli_binary()
        if cli is None:
            raise ServerStartError("no redis-cli or valkey-cli; it is needed to create a cluster")
        nodes: list[RedisServer] = []
        try:
            for _ in range(masters * (1 + replicas)):
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
                            # Diskless sync without its default 5 s wait for more replicas.
                            "--repl-diskless-sync-delay",
                            "0",
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
                    str(replicas),
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
            group = cls(nodes)
            group.wait_ok(timeout)
            return group
        except BaseException:
            for n in nodes:
                n.close()
            raise

    def client(self, **kwargs) -> redis.RedisCluster:
        from redis.cluster import ClusterNode

        return redis.RedisCluster(
            startup_nodes=[ClusterNode(n.host, n.port) for n in self.running()], **kwargs
        )

    # -- topology ---------------------------------------------------------------

    def running(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.running]

    def node_id(self, node: RedisServer) -> str:
        return str(self._myself(node)["node_id"])

    def role(self, node: RedisServer) -> str:
        """``"master"`` or ``"slave"``, as the node itself says."""
        with node.client() as c:
            return c.execute_command("ROLE")[0].decode()

    def primaries(self) -> list[RedisServer]:
        """The running nodes that serve slots now, in the order of :attr:`nodes`."""
        return [n for n in self.running() if self.role(n) == "master" and self.slots_of(n)]

    def replicas_of(self, primary: RedisServer) -> list[RedisServer]:
        mine = self.node_id(primary)
        return [n for n in self.running() if self._master_id(n) == mine]

    def _myself(self, node: RedisServer) -> dict:
        """*node*'s own line of ``CLUSTER NODES``, as redis-py parses it."""
        with node.client() as c:
            view = c.execute_command("CLUSTER NODES")
        return next(n for n in view.values() if "myself" in n["flags"])

    def _master_id(self, node: RedisServer) -> str | None:
        master = self._myself(node)["master_id"]
        return None if master == "-" else str(master)

    def slots_of(self, node: RedisServer) -> list[int]:
        """The slots *node* serves, as it says itself."""
        return [
            slot
            for low, *high in self._myself(node)["slots"]
            for slot in range(int(low), int((high or [low])[0]) + 1)
        ]

    def owner(self, slot: int) -> RedisServer:
        """The primary serving *slot* now."""
        for n in self.primaries():
            if slot in self.slots_of(n):
                return n
        raise LookupError(f"no primary serves slot {slot}")

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says ``cluster_state:ok``, every replica is in sync,
        and all agree on who serves each slot."""
        _cluster_ok(self.running(), timeout)
        wait_until(self._replicas_synced, timeout, "cluster replicas did not sync")
        wait_until(self._agreed, timeout, "cluster nodes disagree on the slot map")

    def _replicas_synced(self) -> bool:
        return all(in_sync(n) for n in self.running() if self.role(n) == "slave")

    def _agreed(self) -> bool:
        views = set()
        for n in self.running():
            with n.client() as c:
                views.add(
                    tuple(
                        sorted(
                            (int(lo), int(hi), int(node[1]))
                            for lo, hi, node, *_ in c.execute_command("CLUSTER SLOTS")
                        )
                    )
                )
        return len(views) == 1

    # -- faults -----------------------------------------------------------------

    def move_slots(
        self,
        slots: Sequence[int],
        target: RedisServer,
        *,
        batch: int = 10,
        pause: float = 0.0,
        between: Callable[[int], None] | None = None,
    ) -> None:
        """Move *slots* to primary *target* online, the way ``redis-cli --cluster reshard`` does.

        Per slot: ``SETSLOT IMPORTING`` on the target, ``MIGRATING`` on its
        owner, ``MIGRATE`` of its keys *batch* at a time (sleeping *pause*
        between batches, so clients meet ``ASK`` and ``TRYAGAIN`` while the
        slot is split), then ``SETSLOT NODE`` on every primary (``MOVED`` from
        then on).  *between* is called with each slot while it is split.
        """
        primaries = self.primaries()
        ids = {n.port: self.node_id(n) for n in primaries}
        owners = {slot: n for n in primaries for slot in self.slots_of(n)}
        clients = {n.port: n.client() for n in primaries}
        try:
            for slot in slots:
                source = owners[slot]
                if source.port != target.port:
                    self._move(slot, source, target, clients, ids, batch, pause, between)
        finally:
            for client in clients.values():
                client.close()

    @staticmethod
    def _move(
        slot: int,
        source: RedisServer,
        target: RedisServer,
        clients: dict[int, redis.Redis],
        ids: dict[int, str],
        batch: int,
        pause: float,
        between: Callable[[int], None] | None,
    ) -> None:
        s, t = clients[source.port], clients[target.port]
        t.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source.port])
        s.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target.port])
        RedisClusterProcesses._finish(slot, source, target, clients, ids, batch, pause, between)

    @staticmethod
    def _finish(
        slot: int,
        source: RedisServer,
        target: RedisServer,
        clients: dict[int, redis.Redis],
        ids: dict[int, str],
        batch: int,
        pause: float,
        between: Callable[[int], None] | None,
    ) -> None:
        """Move a split slot's keys, then give it to *target* everywhere."""
        s, t = clients[source.port], clients[target.port]
        split = False
        while keys := s.execute_command("CLUSTER GETKEYSINSLOT", slot, batch):
            s.execute_command(
                "MIGRATE", target.host, target.port, "", 0, 5000, "REPLACE", "KEYS", *keys
            )
            if not split and between is not None:
                between(slot)
            split = True
            if pause:
                time.sleep(pause)
        # The target first, so a MOVED from the source never points back.
        t.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target.port])
        s.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target.port])
        for port, other in clients.items():
            if port not in (target.port, source.port):
                other.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target.port])

    @contextmanager
    def slot_split(self, slot: int, target: RedisServer) -> Iterator[RedisServer]:
        """Hold *slot* split: ``MIGRATING`` on its owner (yielded), ``IMPORTING`` on *target*.

        No key has moved yet, so a script whose declared keys are all on
        the owner runs there, and stops at the first undeclared key that is
        not.  On exit the keys move and *target* owns the slot.
        """
        primaries = self.primaries()
        ids = {n.port: self.node_id(n) for n in primaries}
        source = self.owner(slot)
        clients = {n.port: n.client() for n in primaries}
        try:
            clients[target.port].execute_command(
                "CLUSTER SETSLOT", slot, "IMPORTING", ids[source.port]
            )
            clients[source.port].execute_command(
                "CLUSTER SETSLOT", slot, "MIGRATING", ids[target.port]
            )
            try:
                yield source
            finally:  # also when the test failed: the next one needs a whole slot
                self._finish(slot, source, target, clients, ids, 100, 0.0, None)
        finally:
            for client in clients.values():
                client.close()

    @contextmanager
    def losing_writes(self, replica: RedisServer, fault: str = "kill") -> Iterator[None]:
        """Writes to *replica*'s primary inside the block are acknowledged and then lost: on
        leaving it, *replica* takes over without them, as asynchronous replication allows.

        The replica is stopped and its primary drops it (see :func:`cut_off`).  On
        leaving, *fault* happens before the replica can ask for the writes again:
        ``"kill"`` kills the primary with SIGKILL, ``"takeover"`` queues
        ``CLUSTER FAILOVER TAKEOVER`` on the replica (it reads that command before
        its reconnect timer fires); then the replica runs and is promoted.
        """
        primary = next(n for n in self.running() if self.node_id(n) == self._master_id(replica))
        served = set(self.slots_of(primary))
        junk = next(f"junk-{i}" for i in range(100_000) if key_slot(f"junk-{i}".encode()) in served)
        with cut_off(primary, replica, junk):
            yield
        with contextlib.ExitStack() as queued:
            if fault == "kill":
                primary.kill()
            else:
                raw = queued.enter_context(socket.create_connection((replica.host, replica.port)))
                raw.sendall(b"CLUSTER FAILOVER TAKEOVER\r\n")
            replica.resume()
            if fault != "kill":
                assert raw.recv(64).startswith(b"+OK")
        wait_until(lambda: self.role(replica) == "master", 30, "the replica was not promoted")
        self.wait_ok()

    def kill(self, primary: RedisServer, timeout: float = 30.0) -> RedisServer:
        """``kill -9`` *primary*; return the replica promoted in its place once the cluster is ok."""
        replicas = self.replicas_of(primary)
        if not replicas:
            raise ValueError(f"node {primary.port} has no replica to take over")
        primary.kill()
        wait_until(
            lambda: any(self.role(r) == "master" for r in replicas if r.running),
            timeout,
            f"no replica of {primary.port} was promoted",
        )
        self.wait_ok(timeout)
        return next(r for r in replicas if self.role(r) == "master")

    def failover(self, replica: RedisServer, timeout: float = 30.0, *, mode: str = "") -> None:
        """``CLUSTER FAILOVER [FORCE|TAKEOVER]`` on *replica*; return once it serves its slots.

        A planned failover that its primary did not complete in time (Redis
        gives it 5 s; a busy machine can miss that) is asked for again.
        """
        deadline = time.monotonic() + timeout
        while True:
            with replica.client() as c:
                c.execute_command("CLUSTER FAILOVER", *([mode] if mode else []))
            try:
                wait_until(
                    lambda: self.role(replica) == "master" and bool(self.slots_of(replica)),
                    min(8.0, max(0.1, deadline - time.monotonic())),
                    f"replica {replica.port} did not take over",
                )
                break
            except ServerStartError:
                if time.monotonic() >= deadline:
                    raise
        self.wait_ok(timeout)

    def close(self) -> None:
        for n in self.nodes:
            n.close()
