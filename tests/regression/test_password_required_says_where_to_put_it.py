"""A storage on a password-protected server, reached without a password, raised redis-py's
"HELLO must be called with the client already authenticated".

The library now says what the command line says: the server needs a password,
and where to put it.
"""

from __future__ import annotations

import pytest

from fleche_redis import RedisStorageError, ValueRedis
from fleche_redis.testing import RedisServer


@pytest.fixture(scope="module")
def password_server():
    with RedisServer.start(["--requirepass", "s3cret"]) as server:
        yield server


def test_the_error_says_a_password_is_needed_and_where_it_goes(password_server, namespace):
    storage = ValueRedis(url=password_server.url, namespace=namespace, retries=0)
    with pytest.raises(RedisStorageError) as caught:
        storage.save(1)
    message = str(caught.value)
    assert f"failed: Redis at {storage.server} requires a password; put it in the URL: " in message
    assert "redis://[user]:PASSWORD@host:port/db" in message


def test_with_the_password_it_works(password_server, namespace):
    url = password_server.url.replace("redis://", "redis://:s3cret@")
    storage = ValueRedis(url=url, namespace=namespace)
    assert storage.load(storage.save(1)) == 1
