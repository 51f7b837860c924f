import os
import pickle

import fakeredis
import pytest
import redis

from fleche_redis import ValueRedis
from fleche_redis.runtime import fork_generation
from fleche_redis.transport.connection import (
    ClientSlot,
    client_from_url,
    redact_url,
    url_from_client,
)


def test_redact_url():
    assert redact_url("redis://:s3cret@host:6380/1") == "redis://:***@host:6380/1"
    assert redact_url("rediss://user:s3cret@host/0") == "rediss://user:***@host/0"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
    assert "s3cret" not in redact_url("redis+cluster://u:s3cret@a:1,b:2")


def test_password_not_in_repr_or_errors(fresh_server):
    url = f"redis://:s3cret@127.0.0.1:{fresh_server.port}/0"
    storage = ValueRedis(url=url)
    assert "s3cret" not in repr(storage)
    fresh_server.stop()
    with pytest.raises(Exception) as info:
        storage.load("0" * 64)
    assert "s3cret" not in str(info.value)


def test_client_from_url_never_decodes():
    client = client_from_url("redis://localhost:1/0?decode_responses=True")
    assert client.connection_pool.connection_kwargs["decode_responses"] is False


def test_cluster_url_parsing():
    from fleche_redis.transport.connection import parse_cluster_url

    nodes, options = parse_cluster_url(
        "rediss+cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002?socket_timeout=2"
    )
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)]
    assert options["username"] == "u" and options["password"] == "p@ss"
    assert options["ssl"] is True and options["socket_timeout"] == 2.0
    assert parse_cluster_url("redis+cluster://h1,h2:7001")[0] == [("h1", 6379), ("h2", 7001)]
    with pytest.raises(ValueError, match="no nodes"):
        parse_cluster_url("redis+cluster://")


def test_url_from_client():
    assert (
        url_from_client(redis.Redis(host="h", port=7, db=3, password="pw")) == "redis://:pw@h:7/3"
    )
    assert (
        url_from_client(redis.Redis(host="h", port=7, db=3, password="pw"), with_password=False)
        == "redis://h:7/3"
    )
    assert url_from_client(redis.Redis(host="h", ssl=True)).startswith("rediss://h:6379")
    assert url_from_client(redis.Redis(unix_socket_path="/tmp/r.sock")) == "unix:///tmp/r.sock?db=0"
    assert url_from_client(fakeredis.FakeRedis()) is None


def test_decoding_client_is_refused():
    with pytest.raises(ValueError, match="decode_responses=False"):
        ValueRedis(client=fakeredis.FakeRedis(decode_responses=True))


def test_client_slot_rebuilds_after_fork():
    built = []
    slot = ClientSlot(lambda: built.append(object()) or built[-1])
    first = slot.get()
    assert slot.get() is first and len(built) == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        ok = fork_generation() > 0 and slot.get() is not first
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert slot.get() is first  # the parent keeps its own


def test_given_client_is_used_as_is_and_not_closed():
    client = fakeredis.FakeRedis()
    storage = ValueRedis(client=client)
    assert storage.redis() is client
    storage.close()
    assert client.ping()


def test_in_process_client_refuses_to_pickle():
    with pytest.raises(pickle.PicklingError, match="url="):
        pickle.dumps(ValueRedis(client=fakeredis.FakeRedis()))
