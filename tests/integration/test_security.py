"""Confinement by ACL, TLS with client certificates, tampering, and no password leaks."""

import logging
import pickle

import fleche
import pytest
from fleche.caches import Cache

from fleche_redis import CallRedis, RedisStorageError, StorageUnavailable, ValueRedis
from fleche_redis.testing.conformance import CallStorageConformance, ValueStorageConformance
from fleche_redis.testing.server import RedisServer, TlsFiles


def acl_url(server, namespace):
    """A user that may touch only keys and channels starting with the namespace, no admin commands."""
    user = f"u-{namespace}"[:60]
    server.client().execute_command(
        "ACL", "SETUSER", user, "reset", "on", ">s3cret-pw",
        f"~{namespace}*", f"&{namespace}*", "+@all", "-@dangerous",
        "-keys", "-flushdb", "-flushall", "-config",
    )  # fmt: skip
    return f"redis://{user}:s3cret-pw@127.0.0.1:{server.port}/0"


class TestValueRedisUnderAcl(ValueStorageConformance):
    @pytest.fixture
    def make_storage(self, redis_server, namespace):
        url = acl_url(redis_server, namespace)
        return lambda **kw: ValueRedis(**{"url": url, "namespace": namespace, **kw})


class TestCallRedisUnderAcl(CallStorageConformance):
    @pytest.fixture
    def make_storage(self, redis_server, namespace):
        url = acl_url(redis_server, namespace)
        return lambda **kw: CallRedis(**{"url": url, "namespace": namespace, **kw})


def test_acl_confines_the_storage_to_its_namespace(redis_server, namespace):
    url = acl_url(redis_server, namespace)
    mine = ValueRedis(url=url, namespace=namespace)
    mine.save("fine")
    big = "b" * 20_000  # written directly: MULTI, SET, the index script, EXEC
    assert mine.load(mine.save(big)) == big
    outside = ValueRedis(url=url, namespace="someone-else")
    with pytest.raises(RedisStorageError, match="NoPermissionError"):
        outside.save("nope")
    with pytest.raises(RedisStorageError, match="NoPermissionError|NOPERM|EXECABORT"):
        outside.save(big)
    client = mine.redis()
    for command in (("KEYS", "*"), ("FLUSHDB",), ("FLUSHALL",), ("CONFIG", "GET", "maxmemory")):
        with pytest.raises(Exception, match="NOPERM|no permissions"):
            client.execute_command(*command)


def test_maintenance_runs_under_the_acl(redis_server, namespace):
    from fleche_redis import RedisCache

    url = acl_url(redis_server, namespace)
    cache = RedisCache(
        ValueRedis(url=url, namespace=namespace), CallRedis(url=url, namespace=namespace)
    )
    cache.save(fleche.call.Call("f", {"x": 1}, result=2))
    cache.values.save("orphan")
    assert cache.values.verify().ok and cache.calls.verify().ok
    assert cache.gc() == 1


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    tls = TlsFiles.create(tmp_path_factory.mktemp("tls"))
    with RedisServer.start(tls=tls) as server:
        yield server


def test_tls_with_client_certificate(tls_server, namespace):
    url = f"{tls_server.url}?{tls_server.tls.url_query()}"
    cache = Cache(ValueRedis(url=url, namespace=namespace), CallRedis(url=url, namespace=namespace))
    key = cache.save(fleche.call.Call("f", {"x": [1, 2]}, result={"ok": True}))
    assert cache.load(key).result == {"ok": True}
    clone = pickle.loads(pickle.dumps(cache))  # certificate options travel with the URL
    assert clone.load(key).result == {"ok": True}


def test_tls_refuses_a_client_without_certificate(tls_server, namespace):
    ca_only = f"{tls_server.url}?ssl_ca_certs={tls_server.tls.ca_cert}"
    with pytest.raises(StorageUnavailable):
        ValueRedis(url=ca_only, namespace=namespace, retries=0).save(1)
    plain = f"redis://127.0.0.1:{tls_server.port}/0"
    with pytest.raises(StorageUnavailable):
        ValueRedis(url=plain, namespace=namespace, retries=0, socket_timeout=0.5).save(1)


def test_planted_pickle_in_a_shared_cache_never_runs(redis_server, namespace, tmp_path, caplog):
    """Someone with write access replaces a memoized result with a pickle that would create a file."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    secret = b"k" * 32
    cache = Cache(
        ValueRedis(url=redis_server.url, namespace=namespace, secret_key=secret),
        CallRedis(url=redis_server.url, namespace=namespace, secret_key=secret),
    )

    @fleche.fleche
    def add(a, b):
        return a + b

    with fleche.cache(cache), fleche.meta():
        assert add(1, 2) == 3
        record = next(iter(cache.calls.list()))
        result_key = cache.calls.load(record).result
        redis_client = cache.values.redis()
        redis_client.set(cache.values.layout.data(result_key), pickle.dumps(Exploit()))
        with caplog.at_level(logging.WARNING):
            assert add(1, 2) == 3  # recomputed: the planted bytes are a miss
    assert not marker.exists()
    assert "signature" in caplog.text


def test_passwords_never_leak(fresh_server, namespace, caplog):
    fresh_server.client().execute_command("ACL", "SETUSER", "default", "on", ">hunter2-pw")
    good = f"redis://:hunter2-pw@127.0.0.1:{fresh_server.port}/0"
    storage = ValueRedis(url=good, namespace=namespace, on_error="miss", retries=0)
    assert "hunter2" not in repr(storage) and "hunter2" not in storage.server
    assert storage.to_config()["url"] == good  # given explicitly, written back
    wrong = ValueRedis(url=good.replace("hunter2-pw", "wrong-pw"), namespace=namespace, retries=0)
    with pytest.raises(RedisStorageError) as info:
        wrong.save(1)
    assert "wrong-pw" not in str(info.value) and "hunter2" not in str(info.value)
    fresh_server.kill()
    with caplog.at_level(logging.DEBUG):
        for _ in range(5):
            with pytest.raises(KeyError):
                storage.load("0" * 64)
    assert caplog.records and "hunter2" not in caplog.text
