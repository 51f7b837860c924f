"""``redis://host:6379/abc`` silently used database 0 (redis-py ignores a path it cannot parse).

A database that is not a number is now refused with a clear error when the
storage is built, and by the command line with exit code 2.
"""

from __future__ import annotations

import pytest

from fleche_redis import CallRedis, ValueRedis, cli


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/abc",
        "redis://localhost:6379/0/1",
        "redis://localhost/-1",
        "rediss://h/x",
    ],
)
@pytest.mark.parametrize("cls", [ValueRedis, CallRedis])
def test_a_database_that_is_no_number_is_refused_at_construction(cls, url):
    with pytest.raises(ValueError, match="database"):
        cls(url=url)


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379", "redis://localhost:6379/", "redis://h/15"]
)
def test_good_databases_are_accepted(url):
    ValueRedis(url=url)


def test_the_command_line_refuses_it_with_exit_code_2(capsys):
    assert cli.main(["info", "--url", "redis://localhost:6379/abc"]) == 2
    assert "database" in capsys.readouterr().err
