"""A Redis for when none is configured: a private redis-server, else fakeredis over TCP.

Used by the demo and the examples; see docs/testing.md.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from .server import RedisServer, free_port, redis_server_binary

__all__ = ["EmbeddedRedis", "embedded_redis"]


@dataclass(frozen=True)
class EmbeddedRedis:
    url: str
    kind: str  # "redis-server" or "fakeredis"

    def describe(self) -> str:
        if self.kind == "redis-server":
            return f"private redis-server on {self.url} (started for this run)"
        return f"fakeredis TCP server on {self.url} (no redis-server on PATH; started for this run)"


@contextlib.contextmanager
def embedded_redis() -> Iterator[EmbeddedRedis]:
    if redis_server_binary() is not None:
        with RedisServer.start() as server:
            yield EmbeddedRedis(server.url, "redis-server")
        return
    try:
        from fakeredis import TcpFakeServer
    except ImportError:
        raise RuntimeError(
            "no Redis to use: pass --url / set REDIS_URL, install redis-server, "
            "or pip install 'fakeredis[lua]'"
        ) from None
    port = free_port()
    fake = TcpFakeServer(("127.0.0.1", port))
    thread = threading.Thread(target=fake.serve_forever, name="fakeredis-tcp", daemon=True)
    thread.start()
    try:
        yield EmbeddedRedis(f"redis://127.0.0.1:{port}/0", "fakeredis")
    finally:
        fake.shutdown()
        fake.server_close()
