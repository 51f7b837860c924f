"""``_prefix_candidates(prefix)`` returned ``[]`` for prefixes shorter than the shard width.

fleche's contract is "the two smallest keys starting with *prefix*" for any
prefix; the index answered only prefixes that name one shard.  Shorter ones
now read the shards they span, in order, until two keys are found.
"""

from __future__ import annotations

import pytest

from fleche_redis import ValueRedis


@pytest.fixture(params=["fakeredis", "redis-server"])
def storage(request, namespace):
    if request.param == "fakeredis":
        import fakeredis

        return ValueRedis(client=fakeredis.FakeRedis(), namespace=namespace)
    return ValueRedis(url=request.getfixturevalue("redis_server").url, namespace=namespace)


def test_every_prefix_gets_the_two_smallest_matching_keys(storage):
    keys = sorted(storage.save(i) for i in range(60))
    for prefix in ["", keys[0][:1], keys[-1][:1], keys[10][:2], keys[30][:3], "f", "0"]:
        expected = [k for k in keys if k.startswith(prefix)][:2]
        assert list(storage._prefix_candidates(prefix)) == expected, prefix
