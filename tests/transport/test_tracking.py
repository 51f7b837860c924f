"""The invalidation listener, and the redis-py members its connection relies on (see redispy.py)."""

from __future__ import annotations

import time

import fakeredis
import redis

from fleche_redis import CallRedis, runtime
from fleche_redis.transport import redispy, tracking
from fleche_redis.transport.connection import ClientSlot


def changed(member: str, what: str) -> str:
    return f"redis-py {redis.__version__} changed {member}: {what}; adapt fleche_redis/transport/redispy.py"


def test_a_tracking_connection_reads_invalidations_as_push_messages(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    conn = redispy.tracking_connection(client, name="probe")
    try:
        redispy.connect(conn)
        redispy.send_command(conn, "CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "probe:")
        assert redispy.read_push(conn) == b"OK"
        client.set("probe:x", 1)
        assert redispy.wait_readable(conn, 2.0)
        message = redispy.read_push(conn)
        assert message == [b"invalidate", [b"probe:x"]], changed(
            "the RESP3 parser's push handler", f"an invalidation reads as {message!r}"
        )
        redispy.send_command(conn, "PING")
        assert redispy.read_push(conn) == b"PONG"
        names = [c["name"] for c in client.client_list()]
        assert "probe" in names
    finally:
        conn.disconnect()
        client.close()


def test_no_tracking_without_a_single_server(fake_client):
    assert redispy.tracking_connection(fake_client) is None
    assert redispy.tracking_connection(fake_client.pipeline()) is None


class Heard:
    def __init__(self) -> None:
        self.events: list[object] = []

    def tracking_started(self) -> None:
        self.events.append("started")

    def invalidated(self, names) -> None:
        self.events.append(names)

    def tracking_stopped(self) -> None:
        self.events.append("stopped")

    def tracking_ended(self) -> None:
        self.events.append("ended")


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_a_listener_tells_its_subscribers(redis_server, namespace):
    slot = ClientSlot(lambda: redis.Redis.from_url(redis_server.url))
    subscribers = [Heard()]
    events = subscribers[0].events
    assert tracking.watch(slot, (f"{namespace}:",), subscribers[0])
    wait_for(lambda: events == ["started"])
    other = redis_server.client()
    other.set(f"{namespace}:a", 1)
    other.set("elsewhere", 1)
    wait_for(lambda: len(events) == 2)
    assert events[1] == [f"{namespace}:a".encode()]
    listeners = runtime.per_process("tracking.listeners", dict).values()
    listener = next(lst for lst in listeners if lst.prefix == f"{namespace}:")
    other.execute_command("CLIENT", "KILL", "ID", listener.connection_id)
    wait_for(lambda: events[-2:] == ["stopped", "started"])
    subscribers.clear()  # the last subscriber gone, the listener ends
    wait_for(lambda: not listener.running)


def test_fakeredis_cannot_be_watched():
    slot = ClientSlot(lambda: fakeredis.FakeRedis())
    assert not tracking.watch(slot, ("x:",), Heard())


def test_a_listener_whose_server_is_gone_ends_its_thread(fresh_server, namespace, monkeypatch):
    """A server gone for good leaves no thread behind knocking every second."""
    monkeypatch.setattr(tracking, "GIVE_UP", 0.5)
    slot = ClientSlot(lambda: redis.Redis.from_url(fresh_server.url, socket_connect_timeout=1))
    heard = Heard()
    assert tracking.watch(slot, (f"{namespace}:",), heard)
    wait_for(lambda: heard.events == ["started"])
    listeners = runtime.per_process("tracking.listeners", dict).values()
    listener = next(lst for lst in listeners if lst.prefix == f"{namespace}:")
    fresh_server.kill()
    wait_for(lambda: not listener._thread.is_alive(), timeout=10)
    assert heard.events == ["started", "stopped", "ended"]
    fresh_server.restart()  # back: subscribing again makes a new listener
    assert tracking.watch(slot, (f"{namespace}:",), heard)
    wait_for(lambda: heard.events[-1] == "started", timeout=10)


def test_a_near_cache_tracks_again_once_its_server_is_back(fresh_server, namespace, monkeypatch):
    monkeypatch.setattr(tracking, "GIVE_UP", 0.5)
    calls = CallRedis(url=fresh_server.url, namespace=namespace)
    near = calls.near
    near._subscribed()
    wait_for(lambda: near.state == "tracked")
    fresh_server.kill()
    wait_for(lambda: near.state != "tracked" and near._watched == -1, timeout=10)
    fresh_server.restart()
    near._subscribed()  # what the next read does
    wait_for(lambda: near.state == "tracked", timeout=10)
