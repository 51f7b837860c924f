"""The lock benchmark runs (tiny sizes); its figures come from the full run, not from here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_locks.py"


def test_lock_benchmark_runs_in_smoke_mode():
    done = subprocess.run(
        [sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| fleche-redis Redlock, 1 master |" in done.stdout
    assert "| redis-py Lock |" in done.stdout
    assert "SMOKE sizes" in done.stdout
