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
app.conf.update(worker_prefetch_multiplier=1, task_acks_late=False, broker_connection_retry_on_startup=True)

cache = redis_cache(url=URL, namespace=NAMESPACE)


@app.task
def memo_square(x: int) -> dict:
    with fleche.cache(cache), fleche.meta():
        return slow_square(x)
