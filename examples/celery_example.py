"""Memoize Celery tasks in one shared Redis cache: concurrent duplicates compute once.

    python examples/celery_example.py          # starts a private Redis and a Celery worker

Broker, result backend and cache all use that Redis (databases 1, 2 and 0).
Needs ``pip install 'fleche-redis[celery]'``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import fleche
from celery import Celery

from fleche_redis import redis_cache

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
BASE = URL.rsplit("/", 1)[0]

app = Celery("celery_example", broker=f"{BASE}/1", backend=f"{BASE}/2")
app.conf.update(worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)
cache = redis_cache(url=URL, namespace="celery-example")


@fleche.fleche
def slow_square(x: int) -> int:
    time.sleep(1.0)  # the expensive part
    return x * x


@app.task
def square(x: int) -> int:
    with fleche.cache(cache), fleche.meta():
        return slow_square(x)


def main() -> None:
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_example", "worker", "--pool=prefork",
         "--concurrency=4", "--loglevel=WARNING", "--without-gossip", "--without-mingle"],
        cwd=Path(__file__).parent,
        env={**os.environ, "REDIS_URL": URL},
    )  # fmt: skip
    try:
        while not app.control.ping(timeout=0.5):
            time.sleep(0.2)
        start = time.perf_counter()
        results = [r.get(timeout=60) for r in [square.delay(x) for x in (3, 3, 3, 3, 4, 4, 4, 4)]]
        print(f"8 tasks (2 distinct inputs) in {time.perf_counter() - start:.2f} s: {results}")
        start = time.perf_counter()
        results = [r.get(timeout=60) for r in [square.delay(x) for x in (3, 4)]]
        print(f"again, from the cache, in {time.perf_counter() - start:.2f} s: {results}")
    finally:
        worker.terminate()
        worker.wait(30)
        for storage in (cache.calls, cache.values):
            for key in list(storage.list()):
                storage.evict(key)


if __name__ == "__main__":
    if os.environ.get("REDIS_URL"):
        main()
    else:
        from fleche_redis.testing.embedded import embedded_redis

        with embedded_redis() as redis:
            print(f"Redis: {redis.describe()}")
            env = {**os.environ, "REDIS_URL": redis.url}
            sys.exit(subprocess.call([sys.executable, __file__], env=env))
