"""Fixtures the regression tests share with the suites they came from."""

from ..cache.test_singleflight import counter  # noqa: F401 - a fixture, used by name
