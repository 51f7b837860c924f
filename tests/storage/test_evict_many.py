"""RedisBackend.evict_many: what gc's sweep runs, one request for a whole batch."""

import pytest
from fleche.call import DigestedCall
from fleche.digest import digest

from fleche_redis import CallRedis, ValueRedis
from fleche_redis.testing.roundtrips import RoundTrips


@pytest.mark.parametrize("kind", [ValueRedis, CallRedis])
def test_evict_many_evicts_like_evict_in_one_request(kind, connection):
    storage = kind(**connection)
    if kind is ValueRedis:
        keys = [storage.save({"n": i, "inner": [i, [i]]}) for i in range(4)]
    else:
        keys = [storage.save(DigestedCall(name="f", arguments={"i": digest(i)})) for i in range(4)]
    keep = keys.pop()
    before = storage.count()
    assert len(storage.eviction_commands(keys)) == len(keys)
    storage.redis().script_flush()  # evicting must also work on a server without the scripts
    storage.evict_many([])
    storage.evict_many(keys[:1])  # loads the scripts again
    with RoundTrips() as trips:
        storage.evict_many(keys[1:])
    assert trips.count == 1
    assert not any(storage.contains(k) for k in keys) and storage.contains(keep)
    assert storage.count() == before - len(keys)
    assert storage.verify().ok


def test_eviction_commands_refuse_a_bad_digest(connection):
    with pytest.raises(KeyError):
        ValueRedis(**connection).eviction_commands(["not a digest"])
