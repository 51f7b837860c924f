"""Memoize a Dask workload in one shared Redis cache: duplicates run once, the second round is free.

    python examples/dask_example.py            # starts a private Redis unless REDIS_URL is set

Needs ``pip install 'fleche-redis[dask]'``.
"""

from __future__ import annotations

import os
import random
import time

import fleche
from distributed import Client, LocalCluster

from fleche_redis import redis_cache
from fleche_redis.testing.embedded import embedded_redis


@fleche.fleche
def simulate(seed: int, samples: int = 200_000) -> float:
    """A seeded Monte Carlo estimate of pi: deterministic, and costly enough to be worth caching."""
    rng = random.Random(seed)
    return 4 * sum(rng.random() ** 2 + rng.random() ** 2 <= 1 for _ in range(samples)) / samples


def main(url: str) -> None:
    cache = redis_cache(url=url, namespace="dask-example")
    with fleche.cache(cache), fleche.meta():
        task = fleche.BoundWrapper.bind(simulate)  # carries the cache to the workers
    seeds = [s % 20 for s in range(40)]  # every seed asked for twice, concurrently
    with (
        LocalCluster(n_workers=2, threads_per_worker=2, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        for round_ in (1, 2):
            start = time.perf_counter()
            estimates = client.gather(client.map(task, seeds, pure=False))
            print(
                f"round {round_}: {len(estimates)} tasks in {time.perf_counter() - start:.2f} s, "
                f"mean estimate {sum(estimates) / len(estimates):.4f}"
            )
    print(f"{cache.calls.count()} results stored for {len(seeds)} tasks (20 distinct seeds)")
    for storage in (cache.calls, cache.values):
        for key in list(storage.list()):
            storage.evict(key)


if __name__ == "__main__":
    if os.environ.get("REDIS_URL"):
        main(os.environ["REDIS_URL"])
    else:
        with embedded_redis() as redis:
            print(f"Redis: {redis.describe()}")
            main(redis.url)
