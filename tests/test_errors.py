"""Redis faults surface as documented fleche_redis exceptions naming server and operation."""

import pytest
from fleche.digest import digest

from fleche_redis import CallRedis, RedisStorageError, StorageUnavailable, ValueRedis


def test_server_down_is_storage_unavailable(fresh_server, namespace):
    storage = ValueRedis(url=fresh_server.url, namespace=namespace)
    key = storage.save("x")
    fresh_server.kill()
    for op, call in [
        ("get", lambda: storage.load(key)),
        ("put", lambda: storage.save("y")),
        ("contains", lambda: storage.contains(key)),
        ("evict", lambda: storage.evict(key)),
        ("expand", lambda: storage.expand(key[:6])),
        ("shrink", lambda: storage.shrink(key)),
        ("list", lambda: list(storage.list())),
    ]:
        with pytest.raises(StorageUnavailable) as info:
            call()
        assert info.value.operation == op
        assert info.value.server == fresh_server.url
        assert f"Redis {op} on {fresh_server.url}" in str(info.value)


def test_recovers_after_restart(fresh_server, namespace):
    storage = CallRedis(url=fresh_server.url, namespace=namespace)
    storage.count()
    fresh_server.kill()
    with pytest.raises(StorageUnavailable):
        storage.count()
    fresh_server.restart()
    assert storage.count() == 0  # reconnected by itself; the restarted server is empty


def test_command_refused_is_redis_storage_error(fresh_server, namespace):
    storage = ValueRedis(url=fresh_server.url, namespace=namespace)
    # Someone overwrote an index shard with a string: Redis answers WRONGTYPE.
    key = digest("v")
    storage.redis().set(storage.layout.index_of(key), b"oops")
    with pytest.raises(RedisStorageError, match="WRONGTYPE") as info:
        storage.expand(key[:5])
    assert not isinstance(info.value, StorageUnavailable)


def test_errors_cross_process_boundaries():
    import pickle

    err = StorageUnavailable(
        "Redis get on redis://h:1/0 failed", operation="get", server="redis://h:1/0"
    )
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is StorageUnavailable and str(back) == str(err)
    assert (back.operation, back.server) == ("get", "redis://h:1/0")
