"""resign: entries an old key signed get the first key's signature, on fakeredis, a server, a cluster."""

import fakeredis
import pytest
from fleche.caches import Cache
from fleche.call import Call

from fleche_redis import CallRedis, ValueRedis
from fleche_redis.admin import maintenance
from fleche_redis.storage import scan
from fleche_redis.storage.codec import Codec

OLD, NEW = "0a" * 32, "0b" * 32


@pytest.fixture(params=["fakeredis", "redis-server", "cluster"])
def where(request, namespace):
    """Keyword arguments of a storage; every storage built on them shares one store."""
    if request.param == "fakeredis":
        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        yield {"client": client, "namespace": namespace}
        client.close()
    elif request.param == "cluster":
        yield {"url": request.getfixturevalue("redis_cluster").url, "namespace": namespace}
    else:
        yield {"url": request.getfixturevalue("redis_server").url, "namespace": namespace}


def cache(where, key, **options):
    return Cache(
        ValueRedis(secret_key=key, **where, **options),
        CallRedis(secret_key=key, **where, **options),
    )


def fill(target, n=7):
    return [target.save(Call("f", {"x": i}, result={"y": [i, "deep"]})) for i in range(n)]


def test_resign_moves_every_entry_to_the_first_key(where, monkeypatch):
    monkeypatch.setattr(scan, "BATCH", 3)
    keys = fill(cache(where, OLD))
    rotating = cache(where, f"{NEW}:{OLD}")
    assert rotating.calls.verify().old_key == len(keys)
    counted = [maintenance.resign(s, dry_run=True) for s in (rotating.values, rotating.calls)]
    assert [r.old_key for r in counted] == [rotating.values.count(), len(keys)]
    assert [r.resigned for r in counted] == [0, 0]
    with pytest.raises(KeyError):  # a dry run wrote nothing
        cache(where, NEW).load(keys[0])

    done = [maintenance.resign(s) for s in (rotating.values, rotating.calls)]
    assert [r.resigned for r in done] == [r.old_key for r in counted]
    assert not any(r.changed or r.undecodable for r in done)
    new_only = cache(where, NEW)
    for i, key in enumerate(keys):
        assert new_only.load(key).fetch().result == {"y": [i, "deep"]}
    again = [maintenance.resign(s) for s in (rotating.values, rotating.calls)]
    assert [r.old_key for r in again] == [0, 0]  # idempotent
    assert rotating.calls.verify().old_key == 0


def test_a_record_replaced_meanwhile_is_not_clobbered(where, monkeypatch):
    (key,) = fill(cache(where, OLD), 1)
    rotating = cache(where, f"{NEW}:{OLD}")
    resigned = Codec.resigned

    def a_writer_comes_first(codec, data, *, key="?"):
        fresh = resigned(codec, data, key=key)
        rotating.save(Call("f", {"x": 0}, result="newer"))  # same lookup key
        return fresh

    monkeypatch.setattr(Codec, "resigned", a_writer_comes_first)
    report = maintenance.resign(rotating.calls)
    assert (report.old_key, report.resigned, report.changed) == (1, 0, 1)
    assert cache(where, NEW).load(key).fetch().result == "newer"


def test_big_chunked_entries_and_ttls_are_kept(where):
    big = bytes(range(256)) * 40  # 10 kB: 10 chunks of 1 kB
    old = cache(where, OLD, chunk_size=1000, ttl=600)
    key = old.values.save(big)
    rotating = cache(where, f"{NEW}:{OLD}", chunk_size=1000, ttl=600)
    report = maintenance.resign(rotating.values)
    assert (report.old_key, report.resigned) == (1, 1)
    assert cache(where, NEW, chunk_size=1000).values.load(key) == big
    client = rotating.values.redis()
    assert 0 < client.pttl(rotating.values.layout.data(key)) <= 600_000
    assert 0 < client.pttl(rotating.values.layout.data(key) + ":9") <= 600_000


def test_entries_no_key_verifies_are_counted_and_left(where):
    (key,) = fill(cache(where, "0c" * 32), 1)
    rotating = cache(where, f"{NEW}:{OLD}")
    client, data_key = rotating.calls.redis(), rotating.calls.layout.data(key)
    before = client.hget(data_key, "v")
    report = maintenance.resign(rotating.calls)
    assert (report.entries, report.undecodable, report.old_key) == (1, 1, 0)
    assert client.hget(data_key, "v") == before


def test_a_storage_without_a_key_refuses(where):
    with pytest.raises(ValueError, match="no secret key"):
        maintenance.resign(ValueRedis(**where))
