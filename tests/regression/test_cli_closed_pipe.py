"""``fleche-redis ls | head -1`` ended with a ``BrokenPipeError`` traceback.

A reader that closes the pipe now ends the command quietly with status 141
(128 + SIGPIPE), as a Unix tool killed by SIGPIPE reports.
"""

from __future__ import annotations

import subprocess
import sys

from fleche.call import DigestedCall

from fleche_redis import CallRedis


def test_a_closed_pipe_ends_ls_quietly(redis_server, namespace):
    calls = CallRedis(url=redis_server.url, namespace=namespace)
    for i in range(1500):  # far more than a pipe buffer holds
        calls.save(DigestedCall(name=f"function_number_{i}", arguments={"i": i}))
    command = (
        f"set -o pipefail; {sys.executable} -m fleche_redis ls --url {redis_server.url} "
        f"--namespace {namespace} | head -1"
    )
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("KEY")
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141
