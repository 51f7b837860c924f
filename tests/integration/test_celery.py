"""A real Celery worker (prefork, 2 processes) runs a memoized task; concurrent duplicates compute once.

Worker and producer both run in subprocesses: Celery's broker connections
register after-fork hooks that would hang later forks of the test process.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("celery")


def test_concurrent_duplicates_compute_once(redis_server, namespace):
    env = {
        **os.environ,
        "FLECHE_REDIS_CELERY_URL": redis_server.url,
        "FLECHE_REDIS_CELERY_NAMESPACE": namespace,
        "FLECHE_REDIS_TEST_COUNTER": f"{redis_server.url} {namespace}:runs",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.integration.celeryapp", "worker",
         "--pool=prefork", "--concurrency=2", "--loglevel=WARNING", "--without-gossip",
         "--without-mingle", "--without-heartbeat", "-n", f"{namespace}@%h"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        producer = subprocess.run(
            [sys.executable, "-c", "from tests.integration.celeryapp import submit_duplicates; submit_duplicates()"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
    assert producer.returncode == 0, producer.stdout[-1000:] + producer.stderr[-3000:]
    results = json.loads(producer.stdout.strip().splitlines()[-1])
    inputs = [1, 2, 3]
    assert results == [{"x": x, "square": x * x} for x in inputs for _ in range(4)]
    client = redis_server.client()
    assert [int(client.get(f"{namespace}:runs:{x}") or 0) for x in inputs] == [1, 1, 1]
