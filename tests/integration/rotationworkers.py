"""What each process of the key-rotation test runs (tests/integration/test_key_rotation.py).

Run as ``python -c "from tests.integration.rotationworkers import main; main()" URL NAMESPACE
FIRST STOP``, with the process's ``FLECHE_SECRET_KEY`` and ``ROTATION_ROLE``; it memoizes
``cube(x)`` for ``FIRST <= x < STOP`` and prints the results and what it computed, as JSON.
"""

import json
import os
import sys
from dataclasses import dataclass

import fleche

from fleche_redis import CallRedis, RedisCache, ValueRedis

COMPUTED: list[int] = []


@dataclass
class Tattle:
    """A result that leaves a trace when it is unpickled: its process's role, in $ROTATION_TATTLE."""

    x: int

    def __reduce__(self):
        return (_unpickled, (self.x,))


def _unpickled(x: int) -> Tattle:
    with open(os.environ["ROTATION_TATTLE"], "a") as f:
        f.write(os.environ["ROTATION_ROLE"] + "\n")
    return Tattle(x)


@fleche.fleche
def cube(x: int) -> Tattle:
    COMPUTED.append(x)
    return Tattle(x**3)


def main() -> None:
    url, namespace, first, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    cache = RedisCache(
        ValueRedis(url=url, namespace=namespace), CallRedis(url=url, namespace=namespace)
    )
    with fleche.cache(cache):
        results = [cube(x).x for x in range(first, stop)]
    print(json.dumps({"results": results, "computed": COMPUTED}))
