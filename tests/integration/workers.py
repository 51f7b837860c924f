"""Functions worker processes import (spawned workers cannot unpickle test-local ones)."""

import os

import fleche
import redis


def _count_execution() -> None:
    url, key = os.environ["FLECHE_REDIS_TEST_COUNTER"].split(" ")
    with redis.Redis.from_url(url) as r:
        r.incr(key)


@fleche.fleche
def square(x: int) -> dict:
    _count_execution()
    return {"x": x, "square": x * x, "pid": os.getpid()}


def client_id_in_child(storage, conn) -> None:
    """Report the child's connection id and that the parent's client was not reused."""
    try:
        inherited = storage.channel.slot._client
        own = storage.redis()
        conn.send((own.client_id(), own is not inherited, storage.load(storage.save("child"))))
    except BaseException as e:  # surfaced in the parent
        conn.send(e)
