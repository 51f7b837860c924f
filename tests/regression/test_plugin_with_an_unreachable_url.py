"""The pytest plugin, given an unreachable ``FLECHE_REDIS_TEST_URL``, failed each real-server test
and added a teardown error (emptying the namespace on a server that is not there).

The given server is now pinged once a session; when it does not answer, the
tests that need it are skipped, all with one reason naming the URL, and the
rest run: no failure, no error.
"""

from __future__ import annotations

from fleche_redis.testing import free_port

from ..testing.test_pytest_plugin import USER_TESTS

pytest_plugins = ["pytester"]


def test_an_unreachable_given_server_skips_its_tests_with_one_reason(pytester, monkeypatch):
    url = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("FLECHE_REDIS_TEST_URL", url)
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=2, skipped=2)
    reasons = {line.split(": ", 1)[1] for line in result.outlines if line.startswith("SKIPPED")}
    assert len(reasons) == 1, reasons  # one reason, whatever the number of tests
    (reason,) = reasons
    assert url in reason and "does not answer" in reason and "ConnectionError" in reason
