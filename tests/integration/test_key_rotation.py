"""Rotating the secret key across processes, as docs/security.md (Rotating a key) says to.

A writes with ``old``; B, rotated to ``new:old``, hits all of A's entries
and writes new ones that a process still on ``old`` alone misses without
unpickling them; ``fleche-redis resign`` signs everything with ``new``;
then C, on ``new`` alone, hits every entry and ``verify`` is clean.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

OLD, NEW = "0a" * 32, "0b" * 32
N, M = 6, 4
ROOT = Path(__file__).resolve().parents[2]


def memoize(where, tmp_path, role, key, first, stop):
    """Run ``cube(x)`` for ``first <= x < stop`` in a new process with *key*: its results and what it computed."""
    code = "from tests.integration.rotationworkers import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code, *where, str(first), str(stop)],
        env=_env(key, ROTATION_ROLE=role, ROTATION_TATTLE=str(tmp_path / "unpickled")),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["results"] == [x**3 for x in range(first, stop)]
    return reply["computed"]


def fleche_redis(where, key, *argv):
    url, namespace = where
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleche_redis",
            *argv,
            "--json",
            "--url",
            url,
            "--namespace",
            namespace,
        ],
        env=_env(key),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout else done.stderr


def _env(key, **more):
    return {**os.environ, "FLECHE_SECRET_KEY": key, "PYTHONPATH": str(ROOT), **more}


def unpickled_by(tmp_path):
    tattle = tmp_path / "unpickled"
    return set(tattle.read_text().split()) if tattle.exists() else set()


def test_a_key_rotates_across_processes_without_recomputing(redis_server, namespace, tmp_path):
    where = (redis_server.url, namespace)
    assert memoize(where, tmp_path, "A", OLD, 0, N) == list(range(N))

    # B has the new key first and the old one after it: every old entry hits.
    assert memoize(where, tmp_path, "B", f"{NEW}:{OLD}", 0, N + M) == list(range(N, N + M))
    assert "B" in unpickled_by(tmp_path)

    # A process not rotated yet misses B's entries and never unpickles them.
    assert memoize(where, tmp_path, "old-only", OLD, N, N + M) == list(range(N, N + M))
    assert "old-only" not in unpickled_by(tmp_path)

    code, found = fleche_redis(where, f"{NEW}:{OLD}", "verify")
    assert code == 0 and found["reports"][0]["old_key"] > 0, found
    code, found = fleche_redis(where, f"{NEW}:{OLD}", "resign", "--dry-run")
    assert code == 1 and found["old_key"] > 0, found  # the old key must stay
    code, done = fleche_redis(where, f"{NEW}:{OLD}", "resign")
    assert code == 0 and [r["resigned"] for r in done["reports"]] == [
        r["old_key"] for r in found["reports"]
    ], done
    code, found = fleche_redis(where, f"{NEW}:{OLD}", "resign", "--dry-run")
    assert code == 0 and found["old_key"] == 0, found  # the old key may go

    # C has only the new key: everything hits, the old-only process's rewrites too.
    assert memoize(where, tmp_path, "C", NEW, 0, N + M) == []
    assert "C" in unpickled_by(tmp_path)
    code, found = fleche_redis(where, NEW, "verify")
    assert code == 0 and found["ok"], found
    assert [(r["undecodable"], r["old_key"]) for r in found["reports"]] == [(0, 0), (0, 0)]
