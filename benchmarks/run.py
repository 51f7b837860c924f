"""Run every benchmark in one go: ``benchmarks/bench_*.py``, one after the other, same machine.

Every ``bench_<name>.py`` here is a benchmark: it starts its own private
redis-server(s), prints a Markdown report and, in a full run, writes it to
``benchmarks/results/<name>.md``; with ``--smoke`` it runs at a tiny size and
writes nothing (what CI checks: that it runs).  A new benchmark joins by
following that convention; nothing here lists them.

    python benchmarks/run.py                 # full sizes; writes results/*.md and results/summary.md
    python benchmarks/run.py --smoke         # every benchmark at a tiny size (CI)
    python benchmarks/run.py --only cache locks
    python benchmarks/run.py --postgres-url postgresql+psycopg://localhost/test

``--postgres-url`` reaches the benchmarks as ``$BENCH_POSTGRES_URL`` (only
``bench_cache.py`` uses it).  ``fleche-redis bench`` runs this script.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def discover() -> dict[str, Path]:
    """Benchmark name -> script, in name order."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def run_one(
    script: Path, smoke: bool, timeout: float, env: dict[str, str]
) -> tuple[int, str, float]:
    """(exit code, stdout, seconds); stderr (progress) goes straight to the terminal."""
    start = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, str(script), *(["--smoke"] if smoke else [])],
            stdout=subprocess.PIPE,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return -1, out + f"\n(timed out after {timeout:.0f} s)\n", time.monotonic() - start
    return done.returncode, done.stdout, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    found = discover()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes; only checks that each runs"
    )
    parser.add_argument(
        "--only", nargs="+", choices=sorted(found), metavar="NAME", help=f"some of {sorted(found)}"
    )
    parser.add_argument("--postgres-url", help="PostgreSQL for bench_cache.py's Sql row")
    parser.add_argument(
        "--timeout", type=float, help="seconds per benchmark (default: 300 smoke, none full)"
    )
    args = parser.parse_args(argv)
    chosen = {n: p for n, p in found.items() if not args.only or n in args.only}
    env = dict(os.environ)
    if args.postgres_url:
        env["BENCH_POSTGRES_URL"] = args.postgres_url
    timeout = args.timeout or (300.0 if args.smoke else None)

    sections, failed = [], []
    for name, script in chosen.items():
        print(
            f"== {name} ({script.name}{', smoke' if args.smoke else ''})",
            file=sys.stderr,
            flush=True,
        )
        code, out, seconds = run_one(script, args.smoke, timeout, env)
        print(out)
        verdict = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"== {name}: {verdict} in {seconds:.1f} s", file=sys.stderr, flush=True)
        if code != 0:
            failed.append(name)
        sections.append(
            f"## {name}\n\n`{script.name}`, {seconds:.0f} s, {verdict}.\n\n{out.strip()}\n"
        )

    summary = (
        f"# Benchmarks, one run\n\n{time.strftime('%Y-%m-%d %H:%M')}, {_cpus()} "
        f"core(s), Python {platform.python_version()}; each benchmark starts its own loopback "
        "redis-server(s).\n\n" + "\n".join(sections)
    )
    if not args.smoke:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "summary.md").write_text(summary)
        print(f"written to {RESULTS / 'summary.md'}", file=sys.stderr)
    status = f"{len(chosen) - len(failed)} of {len(chosen)} benchmarks ran"
    print(status + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
