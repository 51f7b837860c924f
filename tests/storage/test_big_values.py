"""A value far beyond one Redis string's 512 MB limit... well, beyond 512 MB."""

import numpy as np
import pytest

from fleche_redis import ValueRedis


@pytest.mark.slow
def test_600_mb_array_round_trips(redis_server, namespace):
    storage = ValueRedis(url=redis_server.url, namespace=namespace, serializer="pickle")
    array = np.arange(600 * 2**20 // 8, dtype=np.float64)  # 600 MiB
    key = storage.save(array)
    chunk_keys = [f"{storage.layout.data(key)}:{i}" for i in range(20)]
    assert storage.redis().exists(*chunk_keys) == 19  # 600 MiB (+ pickle header) in 32 MiB chunks
    loaded = storage.load(key)
    assert loaded.shape == array.shape and np.array_equal(loaded[-1000:], array[-1000:])
    assert loaded.sum() == array.sum()
    del loaded
    storage.evict(key)
    assert not storage.contains(key) and storage.redis().exists(*chunk_keys) == 0
