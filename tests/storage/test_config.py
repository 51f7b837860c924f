"""Storage type "redis" in fleche's configuration system."""

import fleche.config
import pytest
from fleche.caches import Cache
from fleche.call import Call
from fleche.storage import get_storage_constructor

import fleche_redis
from fleche_redis import CallRedis, ValueRedis


def test_importing_registers_both_kinds():
    assert get_storage_constructor("redis", "value") is ValueRedis
    assert get_storage_constructor("redis", "call") is CallRedis


def test_cache_from_config_round_trip(redis_server, namespace):
    config = {
        "values": {
            "type": "redis",
            "url": redis_server.url,
            "namespace": namespace,
            "compress": True,
        },
        "calls": {"type": "redis", "url": redis_server.url, "namespace": namespace},
    }
    cache = fleche.config.cache_from_config(config)
    assert isinstance(cache, Cache)
    assert isinstance(cache.values, ValueRedis) and isinstance(cache.calls, CallRedis)
    key = cache.save(Call("f", {"x": 1}, result=[1, 2]))
    assert cache.load(key).result == [1, 2]
    written = fleche.config.cache_to_config(cache)
    assert written["values"] == {
        "type": "redis",
        "url": redis_server.url,
        "namespace": namespace,
        "serializer": "cloudpickle",
        "compress": True,
        "remaining_depth": 1,
    }
    assert fleche.config.cache_from_config(written).load(key).result == [1, 2]


@pytest.fixture
def fleche_toml(tmp_path, monkeypatch, redis_server, namespace):
    """Write a fleche.toml whose ``[shared]`` section is redis storages (plus *extra* lines) and point fleche at it."""

    def write(values_extra: str = "", extra: str = "") -> None:
        (tmp_path / "fleche.toml").write_text(
            f"""
[default]
cache = "shared"
root = true

[shared]
values.type = "redis"
values.url = "{redis_server.url}"
values.namespace = "{namespace}"
{values_extra}
calls.type = "redis"
calls.url = "{redis_server.url}"
calls.namespace = "{namespace}"
{extra}
"""
        )
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
        monkeypatch.setattr(fleche.config, "_live_caches", {})

    return write


def test_fleche_toml(fleche_toml):
    fleche_toml(values_extra=f'values.secret_key = ["{(b"s" * 32).hex()}"]')
    cache = fleche.config.load_cache_config("shared")
    assert cache.values.secret_key == (b"s" * 32,)
    assert cache.calls.secret_key == ()
    assert cache.values.to_config()["secret_key"] == [(b"s" * 32).hex()]


def test_unknown_option_is_a_clear_error(redis_server):
    with pytest.raises(TypeError, match="unexpected keyword"):
        fleche.config.storage_from_config(
            {"type": "redis", "url": redis_server.url, "hostname": "x"}, "value"
        )


def test_public_names():
    for name in (
        "RedisBackend",
        "ValueRedis",
        "CallRedis",
        "RedisStorageError",
        "StorageUnavailable",
    ):
        assert hasattr(fleche_redis, name)


def test_configured_cache_puts_a_toml_section_in_a_redis_cache(
    fleche_toml, redis_server, namespace
):
    from fleche_redis.testing.roundtrips import RoundTrips

    fleche_toml(extra='[local]\ntemplate = "memory"')
    cache = fleche_redis.configured_cache("shared", write_behind=True)
    assert isinstance(cache, fleche_redis.RedisCache) and cache.write_behind
    assert cache.values.namespace == namespace and cache.calls.url == redis_server.url
    assert fleche_redis.configured_cache().calls == cache.calls  # the default names "shared"

    @fleche.fleche
    def plus(x):
        return x + 1

    with fleche.cache(cache):
        plus(0)
        cache.flush()
        with RoundTrips() as trips:
            assert plus(1) == 2
    assert trips.count == 2  # RedisCache's miss; fleche's plain Cache spends 4
    with pytest.raises(ValueError, match="'local' is Cache\\(ValueMemory, CallMemory\\)"):
        fleche_redis.configured_cache("local")
    with pytest.raises(ValueError, match="'absent'"):
        fleche_redis.configured_cache("absent")
