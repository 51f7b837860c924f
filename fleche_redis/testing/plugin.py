"""pytest fixtures for testing memoized code on a Redis cache, with no infrastructure to set up.

Registered by the ``pytest11`` entry point: ``fleche_redis_cache`` and
``fleche_redis_client`` (fakeredis, per test), ``fleche_redis_server`` and
``fleche_redis_real_cache`` (a real Redis); see docs/testing.md.
"""

from __future__ import annotations

import itertools
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ..errors import RedisStorageError

__all__ = [
    "fleche_redis_client",
    "fleche_redis_cache",
    "fleche_redis_server",
    "fleche_redis_real_cache",
]

_tests = itertools.count()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fleche-redis")
    group.addoption(
        "--fleche-redis-url",
        default=None,
        help="Redis for the fleche_redis_server fixtures (default: $FLECHE_REDIS_TEST_URL, "
        "else a private redis-server when one is on PATH)",
    )


@dataclass(frozen=True)
class ExternalServer:
    """A Redis the test run was pointed at; the fixtures only touch their own namespaces."""

    url: str

    def client(self, **kwargs: Any) -> Any:
        from ..transport.connection import client_from_url

        return client_from_url(self.url, **kwargs)


def _namespace(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", ".", request.node.name)[:40]
    return f"pytest-{os.getpid()}-{next(_tests)}-{name}"


@pytest.fixture
def fleche_redis_client() -> Iterator[Any]:
    """An in-process fakeredis client (with Lua) on a server of this test's own."""
    fakeredis = pytest.importorskip(
        "fakeredis", reason="fleche_redis_cache needs fakeredis: pip install 'fakeredis[lua]'"
    )
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def fleche_redis_cache(fleche_redis_client: Any, request: pytest.FixtureRequest) -> Any:
    """A fleche cache on fakeredis, isolated per test."""
    from ..cache.caches import RedisCache
    from ..storage.backend import CallRedis, ValueRedis

    namespace = _namespace(request)
    return RedisCache(
        values=ValueRedis(client=fleche_redis_client, namespace=namespace),
        calls=CallRedis(client=fleche_redis_client, namespace=namespace),
    )


@pytest.fixture(scope="session")
def fleche_redis_server(pytestconfig: pytest.Config) -> Iterator[Any]:
    """A real Redis for the session (given, or a private ``redis-server``), else the test skips."""
    url = pytestconfig.getoption("--fleche-redis-url") or os.environ.get("FLECHE_REDIS_TEST_URL")
    if url:
        server = ExternalServer(url)
        _skip_unless_reachable(server)
        yield server
        return
    from .server import RedisServer, redis_server_binary

    if redis_server_binary() is None:
        pytest.skip(
            "no Redis: pass --fleche-redis-url, set FLECHE_REDIS_TEST_URL or install redis-server"
        )
    with RedisServer.start() as server:
        yield server


def _skip_unless_reachable(server: ExternalServer) -> None:
    """Skip (once for the session: the fixture is cached) when the given Redis does not answer."""
    from ..transport.connection import redact_url

    try:
        client = server.client(socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as e:  # unreachable, refused, a bad URL, a wrong password
        pytest.skip(
            f"the Redis given for fleche_redis_server ({redact_url(server.url)}) does not "
            f"answer: {type(e).__name__}: {e}"
        )


@pytest.fixture
def fleche_redis_real_cache(
    fleche_redis_server: Any, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """A fleche cache on the real server, in a namespace of this test's own (emptied afterwards)."""
    from ..cache.caches import RedisCache
    from ..storage.backend import CallRedis, ValueRedis

    namespace = _namespace(request)
    values = ValueRedis(url=fleche_redis_server.url, namespace=namespace)
    calls = CallRedis(url=fleche_redis_server.url, namespace=namespace)
    try:
        yield RedisCache(values=values, calls=calls)
    finally:
        try:
            for storage in (calls, values):
                for key in list(storage.list()):
                    storage.evict(key)
        except RedisStorageError as e:  # the server went away: the test already says so
            warnings.warn(f"could not empty namespace {namespace!r}: {e}", stacklevel=1)
        finally:
            calls.close()
            values.close()
