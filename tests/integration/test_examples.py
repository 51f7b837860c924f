"""The examples the README links run as they are (on a private Redis they start)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(script: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_dask_example():
    pytest.importorskip("distributed")
    out = run("dask_example.py")
    assert "round 2: 40 tasks" in out and "20 results stored for 40 tasks" in out


def test_celery_example():
    pytest.importorskip("celery")
    out = run("celery_example.py")
    assert "8 tasks (2 distinct inputs)" in out and "[9, 9, 9, 9, 16, 16, 16, 16]" in out
    assert "again, from the cache" in out and "[9, 16]" in out
