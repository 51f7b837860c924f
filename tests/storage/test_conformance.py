"""The shipped conformance suite, run over (fakeredis, redis-server) x (ValueRedis, CallRedis)."""

import pytest

from fleche_redis import CallRedis, ValueRedis
from fleche_redis.testing.conformance import CallStorageConformance, ValueStorageConformance


class TestValueRedis(ValueStorageConformance):
    @pytest.fixture
    def make_storage(self, connection):
        return lambda **kw: ValueRedis(**{**connection, **kw})


class TestCallRedis(CallStorageConformance):
    @pytest.fixture
    def make_storage(self, connection):
        return lambda **kw: CallRedis(**{**connection, **kw})
