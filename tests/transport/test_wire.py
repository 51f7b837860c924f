"""fleche_redis.wire: one kept connection per thread and pool, checked, retried, never shared."""

import gc
import multiprocessing
import threading
import time

import pytest
import redis

from fleche_redis import runtime
from fleche_redis.transport import redispy, wire

FORK = multiprocessing.get_context("fork")


def client_names(server):
    return [c["name"] for c in server.client().client_list()]


@pytest.fixture
def client(fresh_server):
    c = redis.Redis.from_url(fresh_server.url, client_name="wire-test")
    yield c
    c.close()


def test_a_thread_keeps_one_connection_for_every_request(client, fresh_server):
    for i in range(20):
        assert wire.call(client, "SET", f"k{i}", i) == b"OK"
    assert wire.request(client, [("GET", "k1"), ("GET", "k2")]) == [b"1", b"2"]
    assert client_names(fresh_server).count("wire-test") == 1


def test_threads_keep_their_own_connections_and_return_them(client, fresh_server):
    seen = []
    together = threading.Barrier(3)  # all alive at once: none has handed its connection back

    def worker():
        wire.call(client, "PING")
        seen.append(id(runtime.thread.kept.conn))
        together.wait(timeout=10)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 3
    gc.collect()
    wire.tidy()  # the ended threads' kept connections go back to the pool
    assert len(client.connection_pool._available_connections) == 3


def test_a_connection_the_server_closed_is_replaced_before_the_request(fresh_server):
    # No retry policy: only the check before sending can save this request.
    client = redis.Redis.from_url(fresh_server.url, retry=None)
    wire.call(client, "SET", "k", "v")
    assert fresh_server.client().client_kill_filter(_type="normal", skipme=True) >= 1
    time.sleep(0.05)  # the server's FIN reaches our socket
    assert wire.call(client, "GET", "k") == b"v"


def test_a_request_while_replies_are_owed_takes_its_own_connection(client):
    pending = wire.send(client, [("SET", "a", "1"), ("GET", "a")])
    assert wire.call(client, "SET", "b", "2") == b"OK"  # would read a's replies on a shared socket
    assert wire.receive(pending) == [b"OK", b"1"]
    assert wire.call(client, "GET", "b") == b"2"


def test_error_replies_come_back_in_their_place(client):
    replies = wire.request(client, [("SET", "s", "x"), ("INCR", "s"), ("GET", "s")])
    assert (
        replies[0] == b"OK" and isinstance(replies[1], redis.ResponseError) and replies[2] == b"x"
    )
    with pytest.raises(redis.ResponseError):
        wire.call(client, "INCR", "s")
    assert wire.call(client, "GET", "s") == b"x"  # the connection is still in step


def test_blocking_pools_and_pipelines_keep_redis_pys_path(fresh_server):
    pool = redis.BlockingConnectionPool.from_url(fresh_server.url, max_connections=1, timeout=0.2)
    blocking = redis.Redis(connection_pool=pool)
    wire.call(blocking, "SET", "k", "v")
    pool.release(redispy.checkout(pool))  # the pool's only connection went back (or this times out)
    assert wire.call(blocking, "GET", "k") == b"v"
    pipe = blocking.pipeline(transaction=False)
    assert wire.call(pipe, "GET", "k") is pipe  # queued, as pipe.get would
    assert pipe.execute() == [b"v"]


def test_arguments_hiredis_does_not_pack_fall_back_to_the_connection(client):
    assert wire.call(client, "SET", "ba", bytearray(b"xyz")) == b"OK"
    assert wire.call(client, "GET", "ba") == b"xyz"


def _in_child(client, queue):
    try:
        wire.call(client, "SET", "child", "1")
        queue.put(("ok", None))
    except Exception as e:  # pragma: no cover - reported to the parent
        queue.put(("error", repr(e)))


def test_a_forked_child_never_uses_its_parents_kept_connection(client):
    wire.call(client, "PING")
    parent_conn = runtime.thread.kept.conn
    queue = FORK.Queue()
    child = FORK.Process(target=_in_child, args=(client, queue))
    child.start()
    status, _ = queue.get(timeout=10)
    child.join(10)
    assert status == "ok"
    # The parent's connection is still in step after the child talked.
    assert runtime.thread.kept.conn is parent_conn
    assert wire.request(client, [("GET", "child"), ("PING",)]) == [b"1", b"PONG"]


def test_posted_replies_are_read_in_order_before_the_next_request(client, fresh_server):
    got = []
    wire.call(client, "PING")
    sock = runtime.thread.kept.conn._sock
    assert wire.post(client, [("SET", "p", "1"), ("INCR", "p"), ("HGET", "p", "x")], got.append)
    assert wire.owing() and got == []  # written, not read
    assert wire.call(client, "GET", "p") == b"2"  # the posted replies came off the socket first
    assert not wire.owing() or not runtime.thread.kept.owed
    (replies,) = got
    assert replies[:2] == [b"OK", 2]
    assert isinstance(replies[2], redis.ResponseError)  # WRONGTYPE, in its place
    # No reconnect: replies waiting on the socket are owed, not a sign of a stale one.
    assert runtime.thread.kept.conn._sock is sock
    assert client_names(fresh_server).count("wire-test") == 1


def test_settle_reads_every_posted_reply_of_the_thread(client):
    got = []
    assert wire.post(client, [("SET", "a", "1")], got.append)
    assert wire.post(client, [("SET", "b", "2")], got.append)  # settles the first before writing
    assert got == [[b"OK"]]
    wire.settle()
    assert got == [[b"OK"], [b"OK"]] and not wire.owing()
    wire.settle()  # nothing owed: nothing happens
    assert len(got) == 2


def test_a_posted_request_on_a_dropped_connection_is_settled_with_the_error(client):
    got = []
    assert wire.post(client, [("SET", "c", "1")], got.append)
    runtime.thread.kept.conn.disconnect()  # the reply can no longer be read
    wire.settle()
    assert len(got) == 1 and isinstance(got[0], Exception)
    assert wire.call(client, "GET", "c") == b"1"  # the connection comes back for the next request


def test_posting_falls_back_where_there_is_no_kept_connection(fresh_server):
    pooled = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(fresh_server.url))
    assert wire.post(pooled, [("SET", "d", "1")], lambda _: None) is False
    assert wire.post(pooled.pipeline(), [("SET", "d", "1")], lambda _: None) is False
    assert not wire.owing()


def test_a_forked_child_never_reads_its_parents_posted_replies(client):
    got = []
    assert wire.post(client, [("SET", "e", "1")], got.append)

    def child(out):
        wire.settle()  # must not touch the parent's socket
        out.put((len(got), wire.owing()))

    out = FORK.Queue()
    p = FORK.Process(target=child, args=(out,))
    p.start()
    assert out.get(timeout=10) == (0, False)
    p.join(5)
    wire.settle()
    assert got == [[b"OK"]]


def test_fakeredis_connections_are_kept_too():
    """Regression: fakeredis sockets report made-up descriptor numbers; polling one read as stale."""
    import os

    import fakeredis

    from fleche_redis.testing.roundtrips import RoundTrips

    def is_open(fd):
        try:
            os.fstat(fd)
        except OSError:
            return False
        return True

    server = fakeredis.FakeServer()
    for _ in range(200):  # a fake socket whose number names no descriptor (poll: POLLNVAL)
        client = fakeredis.FakeRedis(server=server)
        wire.call(client, "PING")
        if not is_open(runtime.thread.kept.conn._sock.fileno()):
            break
    with RoundTrips() as trips:
        for i in range(10):
            wire.call(client, "SET", f"k{i}", i)
    assert trips.count == 10, trips.commands  # no HELLO: never reconnected


def test_big_arguments_are_framed_without_copies_and_arrive_intact(client):
    import fakeredis
    import hiredis

    big = bytes(range(256)) * 1024  # 256 KiB
    commands = [("SET", "big", big, "PX", 60_000), ("STRLEN", "big"), ("ECHO", 2.5)]
    parts = wire._packed(redispy.checkout(client.connection_pool), commands)
    assert any(part is big for part in parts)  # sent from its own buffer
    assert b"".join(bytes(p) for p in parts) == b"".join(hiredis.pack_command(c) for c in commands)
    for target in (client, fakeredis.FakeRedis(server=fakeredis.FakeServer())):
        assert wire.request(target, commands) == [b"OK", len(big), b"2.5"]
        assert wire.call(target, "GET", "big") == big


def test_a_kept_connection_let_go_while_its_pool_is_busy_never_waits_for_the_pool(client):
    """A kept connection's finalizer runs wherever its last reference goes.

    Seen in CI on redis-py 5: the collector ran it inside this very pool's
    ``get_connection()`` (which holds a plain ``Lock``), so the finalizer's
    ``pool.release()`` waited for its own thread forever, while that thread
    held a cache entry's lock.  Now it only queues the connection, and
    :func:`wire.tidy` (run before the next checkout) hands it back.
    """
    pool = client.connection_pool
    kept = wire._Kept(pool, redispy.checkout(pool))
    in_use = len(pool._in_use_connections)
    busy, done = threading.Event(), threading.Event()

    def hold_the_pools_lock():
        with pool._lock:
            busy.set()
            done.wait(10)

    holder = threading.Thread(target=hold_the_pools_lock)
    holder.start()
    assert busy.wait(10)
    let_go = threading.Event()

    def drop(box=[kept]):  # noqa: B006 - the only reference, dropped in this thread
        box.clear()
        let_go.set()

    del kept
    dropper = threading.Thread(target=drop, daemon=True)
    dropper.start()
    try:
        assert let_go.wait(5), "the finalizer waited for the pool's lock"
    finally:
        done.set()
        holder.join(10)
    assert len(pool._in_use_connections) == in_use  # queued, not yet returned
    wire.tidy()
    assert len(pool._in_use_connections) == in_use - 1


def test_connections_of_ended_threads_go_back_before_the_next_checkout(client):
    together = threading.Barrier(3)  # alive at once, so each checks out a connection of its own

    def one_request(barrier=None):
        wire.call(client, "PING")
        if barrier is not None:
            barrier.wait(10)

    threads = [threading.Thread(target=one_request, args=(together,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool = client.connection_pool
    assert len(pool._in_use_connections) == 3  # their threads ended; queued to go back
    last = threading.Thread(target=one_request)  # its checkout tidies first
    last.start()
    last.join()
    assert len(pool._in_use_connections) == 1  # only the last thread's, queued in turn
