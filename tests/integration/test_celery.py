"""A real Celery worker (prefork, 2 processes) runs a memoized task; concurrent duplicates compute once."""

import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("celery")


@pytest.fixture
def celery_worker(redis_server, namespace, monkeypatch):
    env = {
        **os.environ,
        "FLECHE_REDIS_CELERY_URL": redis_server.url,
        "FLECHE_REDIS_CELERY_NAMESPACE": namespace,
        "FLECHE_REDIS_TEST_COUNTER": f"{redis_server.url} {namespace}:runs",
    }
    for key in ("FLECHE_REDIS_CELERY_URL", "FLECHE_REDIS_CELERY_NAMESPACE", "FLECHE_REDIS_TEST_COUNTER"):
        monkeypatch.setenv(key, env[key])
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.integration.celeryapp", "worker",
         "--pool=prefork", "--concurrency=2", "--loglevel=WARNING", "--without-gossip",
         "--without-mingle", "--without-heartbeat", "-n", f"{namespace}@%h"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    from tests.integration import celeryapp

    celeryapp.app.conf.broker_url = f"{redis_server.url.rsplit('/', 1)[0]}/1"
    celeryapp.app.conf.result_backend = f"{redis_server.url.rsplit('/', 1)[0]}/2"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            pytest.fail(f"celery worker exited: {worker.stdout.read().decode()[-2000:]}")
        replies = celeryapp.app.control.ping(timeout=0.5)
        if replies:
            break
    else:
        worker.kill()
        pytest.fail("celery worker did not come up")
    yield celeryapp
    worker.terminate()
    try:
        worker.wait(20)
    except subprocess.TimeoutExpired:
        worker.kill()


def test_concurrent_duplicates_compute_once(celery_worker, redis_server, namespace):
    app = celery_worker
    inputs = [1, 2, 3]
    pending = [app.memo_square.delay(x) for x in inputs for _ in range(4)]  # four copies of each, at once
    results = [p.get(timeout=60) for p in pending]
    assert results == [{"x": x, "square": x * x} for x in inputs for _ in range(4)]
    client = redis_server.client()
    assert [int(client.get(f"{namespace}:runs:{x}") or 0) for x in inputs] == [1, 1, 1]
