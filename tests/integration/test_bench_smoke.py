"""Every benchmark runs in its smoke mode (tiny sizes): they must not rot between real runs."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize("script", ["bench_scale.py", "bench_singleflight.py"])
def test_benchmark_smoke(script):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "| records |" in done.stdout or "| approach |" in done.stdout
