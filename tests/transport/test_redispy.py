"""The redis-py internals fleche_redis.transport.redispy relies on, each checked by name.

A failure here means a redis-py release changed one of them: the message
names the member, and redispy.py is the one place to adapt.
"""

import inspect
import socket
import warnings

import fakeredis
import pytest
import redis
from redis.client import Pipeline

from fleche_redis.transport import redispy
from fleche_redis.transport.connection import client_from_url


@pytest.fixture
def client(redis_server):
    c = redis.Redis.from_url(redis_server.url)
    yield c
    c.close()


def changed(member: str, what: str) -> str:
    return f"redis-py {redis.__version__} changed {member}: {what}; adapt fleche_redis/transport/redispy.py"


@pytest.mark.parametrize("pool_class", [redis.ConnectionPool, redis.BlockingConnectionPool])
def test_get_connection_is_called_as_redispy_expects(pool_class):
    parameters = inspect.signature(pool_class.get_connection).parameters
    assert "command_name" in parameters or not redispy.CHECKOUT_NEEDS_COMMAND, changed(
        f"{pool_class.__name__}.get_connection", f"its parameters are now {list(parameters)}"
    )
    required = [
        name
        for name, p in parameters.items()
        if name != "self"
        and p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    assert required == (["command_name"] if redispy.CHECKOUT_NEEDS_COMMAND else []), changed(
        f"{pool_class.__name__}.get_connection", f"it requires {required}"
    )


@pytest.mark.parametrize("blocking", [False, True], ids=["pool", "blocking-pool"])
def test_checkout_write_read_release(redis_server, blocking):
    kind = redis.BlockingConnectionPool if blocking else redis.ConnectionPool
    pool = kind.from_url(redis_server.url, max_connections=2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a deprecated call form warns: fail on it
            conn = redispy.checkout(pool)
        assert isinstance(conn, redis.Connection), changed(
            "ConnectionPool.get_connection", f"it returned {type(conn).__name__}"
        )
        assert redispy.socket_of(conn) is not None, changed(
            "Connection._sock", "a checked-out connection has no socket there"
        )
        assert type(redispy.socket_of(conn)) is socket.socket, changed(
            "Connection._sock", f"it holds {type(redispy.socket_of(conn)).__name__}"
        )
        packed = redispy.pack(conn, [("SET", "redispy", bytearray(b"x")), ("GET", "redispy")])
        assert isinstance(packed, list) and all(
            isinstance(p, (bytes, memoryview)) for p in packed
        ), changed("Connection.pack_commands", f"it returned {packed!r}")
        try:
            redispy.write(conn, packed)
        except TypeError as e:
            pytest.fail(changed("Connection.send_packed_command", f"check_health= refused: {e}"))
        assert redispy.read(conn) == b"OK", changed("Connection.read_response", "SET's reply")
        assert redispy.read(conn) == b"x", changed("Connection.read_response", "GET's reply")
    finally:
        pool.disconnect()


def test_read_returns_replies_in_order_and_raises_error_replies(client):
    pool = client.connection_pool
    conn = redispy.checkout(pool)
    try:
        redispy.write(conn, redispy.pack(conn, [("SET", "r", "v"), ("INCR", "r"), ("GET", "r")]))
        assert redispy.read(conn) == b"OK", changed("Connection.read_response", "SET")
        with pytest.raises(redis.ResponseError):
            redispy.read(conn)
        assert redispy.read(conn) == b"v", changed("Connection.read_response", "replies order")
        assert redispy.can_read(conn) is False, changed("Connection.can_read", "idle connection")
    finally:
        redispy.release(pool, conn)


def test_socket_of_an_unconnected_connection_is_none(redis_server):
    conn = redis.Connection(host=redis_server.host, port=redis_server.port)
    assert hasattr(conn, "_sock"), changed("Connection._sock", "the attribute is gone")
    assert redispy.socket_of(conn) is None, changed("Connection._sock", "not None before connect")
    conn.connect()
    assert redispy.socket_of(conn) is not None
    conn.disconnect()
    assert redispy.socket_of(conn) is None, changed("Connection._sock", "kept after disconnect")


def test_pipelines_are_told_apart_by_their_class(client, redis_cluster):
    assert redispy.is_pipeline(type(client.pipeline())), changed(
        "redis.client.Pipeline", f"client.pipeline() is {type(client.pipeline()).__name__}"
    )
    assert not redispy.is_pipeline(type(client))
    assert redispy.pool_of(client) is client.connection_pool
    assert redispy.pool_of(client.pipeline()) is None, changed(
        "redis.client.Pipeline", "a pipeline is taken for a client with one pool"
    )
    cluster = client_from_url(redis_cluster.url)
    try:
        assert redispy.pool_of(cluster) is None, changed(
            "RedisCluster", "it has a connection_pool attribute"
        )
    finally:
        cluster.close()
    assert issubclass(Pipeline, redis.Redis)  # why pool_of must check pipelines first


def test_fakeredis_connections_take_the_same_calls():
    fake = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    pool = redispy.pool_of(fake)
    conn = redispy.checkout(pool)
    redispy.write(conn, redispy.pack(conn, [("SET", "f", "1"), ("GET", "f")]))
    assert [redispy.read(conn), redispy.read(conn)] == [b"OK", b"1"]
    redispy.release(pool, conn)
    assert not redispy.is_blocking_pool(pool)


def test_pool_options_carry_the_retry_policy_and_address(redis_server):
    retry = redis.retry.Retry(redis.backoff.NoBackoff(), 2)
    c = redis.Redis.from_url(redis_server.url, retry=retry)
    try:
        kwargs = redispy.connection_kwargs(c.connection_pool)
        assert kwargs.get("port") == redis_server.port, changed(
            "ConnectionPool.connection_kwargs", f"keys are {sorted(kwargs)}"
        )
        assert redispy.retry_of(c.connection_pool) is retry, changed(
            "ConnectionPool.connection_kwargs['retry']", "the client's retry policy is not there"
        )
    finally:
        c.close()
    assert redispy.is_blocking_pool(redis.BlockingConnectionPool())


def test_parse_url_reads_credentials_and_options():
    options = redispy.parse_url("redis://u:p%40ss@localhost:7000/3?socket_timeout=2")
    assert options["username"] == "u" and options["password"] == "p@ss", changed(
        "redis.connection.parse_url", f"credentials: {options}"
    )
    assert options["socket_timeout"] == 2.0 and options["db"] == 3, changed(
        "redis.connection.parse_url", f"options: {options}"
    )


def test_big_bulk_replies_are_received_into_a_bytearray(redis_server):
    """read() takes a big bulk string off the socket itself: hiredis's members it relies on."""
    c = redis.Redis.from_url(redis_server.url)
    conn = redispy.checkout(c.connection_pool)
    try:
        parser = getattr(conn, "_parser", None)
        assert type(parser).__name__ == "_HiredisParser", changed(
            "Connection._parser", f"it is a {type(parser).__name__}"
        )
        assert isinstance(getattr(parser, "_buffer", None), bytearray), changed(
            "_HiredisParser._buffer", "no bytearray read buffer"
        )
        assert callable(getattr(parser._reader, "has_data", None)), changed(
            "_HiredisParser._reader", "its hiredis.Reader has no has_data()"
        )
        big = bytes(range(256)) * 1024  # 256 KiB
        c.set("big", big)
        c.set("small", b"s")
        commands = [("GET", "big"), ("GET", "small"), ("GET", "big"), ("GET", "none")]
        for _ in range(3):  # the connection stays in step
            redispy.write(conn, redispy.pack(conn, commands))
            replies = [redispy.read(conn) for _ in commands]
            assert replies == [big, b"s", big, None]
            assert type(replies[0]) is bytearray  # nothing buffered before it: received in place
    finally:
        redispy.release(c.connection_pool, conn)
        c.close()


@pytest.mark.parametrize("extra", [0, 1, 2, 3, 500])
def test_a_read_buffer_holding_the_whole_reply_and_more_stays_in_step(redis_server, extra):
    """With a read size above the reply, the first read takes its CRLF (or part) and the next reply."""
    c = redis.Redis.from_url(redis_server.url, socket_read_size=2**20)
    conn = redispy.checkout(c.connection_pool)
    try:
        big = b"b" * 100_000
        c.set("big", big)
        c.set("next", b"n" * extra)
        commands = [("GET", "big"), ("GET", "next"), ("PING",)]
        redispy.write(conn, redispy.pack(conn, commands))
        assert [redispy.read(conn) for _ in commands] == [big, b"n" * extra, b"PONG"]
    finally:
        redispy.release(c.connection_pool, conn)
        c.close()


def test_a_big_reply_cut_off_is_a_connection_error(redis_server):
    c = redis.Redis.from_url(redis_server.url, socket_timeout=0.5)
    conn = redispy.checkout(c.connection_pool)
    try:
        c.set("big", b"x" * 300_000)
        redispy.write(conn, redispy.pack(conn, [("GET", "big")]))
        sock = redispy.socket_of(conn)
        sock.recv(1000, socket.MSG_WAITALL)  # someone else took the head: the rest is no reply
        with pytest.raises(
            (redis.ConnectionError, redis.TimeoutError, redis.exceptions.InvalidResponse)
        ):
            redispy.read(conn)
    finally:
        conn.disconnect()
        redispy.release(c.connection_pool, conn)
        c.close()


def test_connect_once_makes_one_attempt_and_keeps_the_policy():
    """``Connection.connect()`` retries by ``conn.retry``; connect_once swaps it out for one attempt."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from fleche_redis.testing import free_port

    policy = Retry(NoBackoff(), 3)
    pool = redis.ConnectionPool(port=free_port(), retry=policy, socket_connect_timeout=0.5)
    conn = pool.make_connection()
    assert hasattr(conn, "retry"), changed("Connection.retry", "it is gone")
    own = conn.retry
    attempts = []
    original = conn._connect

    def counted():
        attempts.append(1)
        return original()

    conn._connect = counted
    with pytest.raises(redis.ConnectionError):
        conn.connect()  # nobody listens: refused at once, attempt after attempt
    # redis-py 5.0 connects once whatever the policy; later releases retry by it.
    retries = tuple(int(part) for part in redis.__version__.split(".")[:2]) >= (5, 1)
    assert (len(attempts) > 1) == retries, changed("Connection.connect", "its retrying changed")
    attempts.clear()
    with pytest.raises(redis.ConnectionError):
        redispy.connect_once(conn)
    assert len(attempts) == 1, changed("Connection.connect", "it retries by another policy")
    assert conn.retry is own  # the connection's own policy is back


def test_a_cluster_names_the_plain_client_of_a_commands_primary(redis_cluster):
    """``primary_client``: ``determine_slot``, ``nodes_manager.get_node_from_slot`` and
    ``get_redis_connection`` give the primary's own client, one per node (WAIT needs it)."""
    cluster = client_from_url(redis_cluster.url)
    try:
        for command in (("SET", "a", 1), ("EVALSHA", "0" * 40, 2, "{b}1", "{b}2", "arg")):
            node = redispy.primary_client(cluster, command)
            assert isinstance(node, redis.Redis) and redispy.pool_of(node) is not None, changed(
                "RedisCluster.get_redis_connection", f"it returned {type(node).__name__}"
            )
            expected = cluster.get_node_from_key(command[1] if command[0] == "SET" else "{b}1")
            assert node is cluster.get_redis_connection(expected), changed(
                "RedisCluster.determine_slot", "it routes the command elsewhere"
            )
            assert redispy.primary_client(cluster, command) is node  # runs group by identity
            assert node.execute_command("ROLE")[0] == b"master"
    finally:
        cluster.close()
