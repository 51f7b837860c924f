"""A request to a server that accepts and never answers made (retries + 1)² attempts, not retries + 1.

redis-py's ``Connection.connect()`` retries the connect and its handshake by
the connection's retry policy, and ``wire.request`` retries the whole request
by the same policy: with ``retries=1``, a request to a blackholed server cost
four socket timeouts (about 8 s with the defaults) where the README promises
the socket timeout per attempt.  The transport now connects its kept
connections once per attempt (``redispy.connect_once``), so the request's own
retry is the only one.  Counted exactly: each attempt is one connection the
proxy accepts.
"""

from __future__ import annotations

import pytest

from fleche_redis import ValueRedis
from fleche_redis.errors import StorageUnavailable
from fleche_redis.testing.faultproxy import FaultProxy


@pytest.mark.parametrize("retries", [1, 2])
def test_each_attempt_connects_once(redis_server, namespace, retries):
    with FaultProxy.to_url(redis_server.url) as proxy:
        values = ValueRedis(
            url=proxy.url,
            namespace=namespace,
            socket_timeout=0.1,
            connect_timeout=0.1,
            retries=retries,
            breaker_threshold=100,
        )
        key = values.save({"a": 1})
        assert proxy.accepted == 1
        proxy.blackhole()
        with pytest.raises(StorageUnavailable):
            values.load(key)  # the kept connection, then one new one per retry
        assert proxy.accepted == 1 + retries
        with pytest.raises(StorageUnavailable):
            values.load(key)  # no connection left: one per attempt
        assert proxy.accepted == 1 + retries + (retries + 1)
        proxy.heal()
        assert values.load(key) == {"a": 1}
