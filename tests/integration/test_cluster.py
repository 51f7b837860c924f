"""The core storages on a local 3-master Redis Cluster started by the test session."""

import pytest
from redis.crc import key_slot

from fleche_redis import CallRedis, ValueRedis
from fleche_redis.testing.conformance import CallStorageConformance, ValueStorageConformance

pytestmark = pytest.mark.cluster


class ClusterSuite:
    # Pipelines fan out to every node that owns one of their keys, so a
    # round trip here is one request per node touched.
    def test_round_trips_per_operation(self, storage):
        pytest.skip("counted on a single server; see test_single_key_operations_are_one_request")

    def test_expand_round_trips_do_not_grow_with_the_store(self, storage):
        pytest.skip("counted on a single server")

    def test_list_streams_in_pages(self, storage):
        pytest.skip("counted on a single server")


class TestValueRedisOnCluster(ClusterSuite, ValueStorageConformance):
    @pytest.fixture
    def make_storage(self, redis_cluster, namespace):
        return lambda **kw: ValueRedis(**{"url": redis_cluster.url, "namespace": namespace, **kw})


class TestCallRedisOnCluster(ClusterSuite, CallStorageConformance):
    @pytest.fixture
    def make_storage(self, redis_cluster, namespace):
        return lambda **kw: CallRedis(**{"url": redis_cluster.url, "namespace": namespace, **kw})


def test_entries_spread_over_every_node(redis_cluster, namespace, record_property, capsys):
    storage = ValueRedis(url=redis_cluster.url, namespace=namespace)
    keys = [storage.save(i) for i in range(600)]
    counts = []
    for node in redis_cluster.nodes:
        with node.client() as c:
            counts.append(sum(1 for _ in c.scan_iter(match=f"{namespace}:*", count=1000)))
    assert sum(counts) == 600 + len({k[:2] for k in keys})  # data keys + used index shards
    assert min(counts) > 0.2 * sum(counts), counts
    record_property("keys_per_node", counts)
    with capsys.disabled():
        print(f"\nkeys per cluster node: {counts}")


def test_single_key_operations_are_one_request(redis_cluster, namespace):
    from fleche_redis.testing.roundtrips import RoundTrips

    storage = CallRedis(url=redis_cluster.url, namespace=namespace)
    key = storage.put({"x": 1}, "ab" + "0" * 62)
    storage.evict(storage.put({"x": 2}, "cd" + "0" * 62))
    for op in (
        lambda: storage.get(key),
        lambda: storage.put({"x": 1}, key),
        lambda: storage.contains(key),
        lambda: storage.expand("ab00"),
    ):
        with RoundTrips() as trips:
            op()
        assert trips.count == 1, trips.commands
    assert key_slot(storage.layout.data(key).encode()) == key_slot(
        storage.layout.index_of(key).encode()
    )
