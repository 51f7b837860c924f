"""A Celery app whose broker, result backend and fleche cache all live on the test's redis-server.

The URL and namespace come from the environment, so the worker subprocess the
test starts builds the same app.
"""

from __future__ import annotations

import os

import fleche
from celery import Celery

from fleche_redis import redis_cache

from .taskworkers import slow_square

URL = os.environ.get("FLECHE_REDIS_CELERY_URL", "redis://127.0.0.1:1/0")
NAMESPACE = os.environ.get("FLECHE_REDIS_CELERY_NAMESPACE", "celery-test")
base = URL.rsplit("/", 1)[0]

app = Celery("fleche_redis_tests", broker=f"{base}/1", backend=f"{base}/2")
app.conf.update(
    worker_prefetch_multiplier=1, task_acks_late=False, broker_connection_retry_on_startup=True
)

cache = redis_cache(url=URL, namespace=NAMESPACE)


@app.task
def memo_square(x: int) -> dict:
    with fleche.cache(cache), fleche.meta():
        return slow_square(x)


def submit_duplicates() -> None:
    """The producer side, run in a subprocess of its own by the test.

    Kombu registers after-fork hooks for the broker connections a producer
    opens; in the pytest process they would make every later fork hang.
    """
    import json
    import time

    deadline = time.monotonic() + 60
    while not app.control.ping(timeout=0.5):
        if time.monotonic() > deadline:
            raise SystemExit("celery worker did not come up")
    inputs = [1, 2, 3]
    pending = [
        memo_square.delay(x) for x in inputs for _ in range(4)
    ]  # four copies of each, at once
    print(json.dumps([p.get(timeout=60) for p in pending]))
