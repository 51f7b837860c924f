"""After the cool-down every thread probed a dead Redis at once, each paying a socket timeout.

The docs promise that once the circuit's cool-down is over "one request
probes"; the breaker let every operation through while half-open, so N
threads against a silent server paid N timeouts every cool-down.  Now the
first operation probes and the others fail at once until it has its answer
(or a cool-down passes without one).
"""

from __future__ import annotations

import threading
import time

import pytest

from fleche_redis import ValueRedis
from fleche_redis.errors import StorageUnavailable
from fleche_redis.testing.faultproxy import FaultProxy
from fleche_redis.testing.roundtrips import RoundTrips

TIMEOUT = 0.3
COOLDOWN = 0.3


def test_one_thread_probes_the_others_fail_at_once(redis_server, namespace):
    with FaultProxy.to_url(redis_server.url) as proxy:
        values = ValueRedis(
            url=proxy.url,
            namespace=namespace,
            socket_timeout=TIMEOUT,
            retries=0,
            breaker_threshold=2,
            breaker_cooldown=COOLDOWN,
        )
        key = values.save(1)
        proxy.blackhole()
        for _ in range(2):
            with pytest.raises(StorageUnavailable):
                values.load(key)
        breaker = values.channel.breaker
        assert breaker.state == "open"
        time.sleep(COOLDOWN)
        assert breaker.state == "half-open"

        outcomes: list[tuple[float, BaseException]] = []
        start = threading.Barrier(4)

        def load() -> None:
            start.wait(5)
            began = time.monotonic()
            try:
                values.load(key)
            except StorageUnavailable as e:
                outcomes.append((time.monotonic() - began, e))

        threads = [threading.Thread(target=load) for _ in range(4)]
        with RoundTrips() as trips:
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
        assert trips.count == 1, trips.commands  # one probe
        assert len(outcomes) == 4
        slow = [elapsed for elapsed, _ in outcomes if elapsed >= TIMEOUT]
        assert len(slow) == 1, outcomes  # the probe waited for its timeout; the rest did not
        assert breaker.state == "open"  # the probe failed: open for another cool-down

        proxy.heal()
        time.sleep(COOLDOWN)
        assert values.load(key) == 1
        assert breaker.state == "closed"
