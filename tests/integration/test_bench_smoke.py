"""Every benchmark runs at its smoke size, through the one runner and ``fleche-redis bench``.

Figures come from full runs, not from here; this only keeps the benchmarks
from rotting between them.  A new ``benchmarks/bench_*.py`` is picked up
without touching this test.
"""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_every_benchmark_runs_in_smoke_mode():
    names = sorted(p.stem.removeprefix("bench_") for p in BENCHMARKS.glob("bench_*.py"))
    assert {"cache", "large", "locks", "scale", "singleflight", "sizing"} <= set(names)
    done = subprocess.run(
        [sys.executable, "-m", "fleche_redis", "bench", "--dir", str(BENCHMARKS)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in names:
        assert f"== {name}: ok in " in done.stderr
    assert f"{len(names)} of {len(names)} benchmarks ran" in done.stderr
    # Each report's table made it to the output.
    assert "| fleche-redis, RedisCache |" in done.stdout
    assert "| fleche-redis Redlock, 1 master |" in done.stdout
    assert "| records |" in done.stdout
    assert "SMOKE sizes" in done.stdout
    assert "| fleche-redis RedisCache (single flight) |" in done.stdout
    assert "| ValueRedis.get |" in done.stdout and "RedisCache miss / Cache miss" in done.stdout
    assert "| miss, wait_replicas=0 | miss, wait_replicas=1 |" in done.stdout
    assert "| calls | Redis memory per call |" in done.stdout
