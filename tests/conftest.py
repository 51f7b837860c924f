"""Fixtures shared by the whole suite.

Real servers are private ``redis-server`` processes started here (never the
one on port 6379).  One server lives for the session and each test gets its
own namespace on it; tests that crash, stop or reconfigure a server ask for
``fresh_server`` instead.  ``fake_client`` is an isolated in-process
fakeredis with Lua.
"""

from __future__ import annotations

import itertools
import os
import re

import fakeredis
import pytest

from fleche_redis.testing import RedisClusterProcesses, RedisServer, redis_server_binary

# Storages must never fall back to a signing key from the developer's shell.
os.environ.pop("FLECHE_SECRET_KEY", None)

_namespaces = itertools.count()


@pytest.fixture(scope="session")
def redis_server():
    if redis_server_binary() is None:
        pytest.fail(
            "redis-server is not installed; .ci/run installs it (apt-get install redis-server)"
        )
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
