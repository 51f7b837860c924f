"""A misspelled namespace gave "ok, 0 entries" and exit 0.

A command on a namespace that holds nothing now says so, lists the
namespaces that do exist, and exits 1 (looked, found nothing).
"""

from __future__ import annotations

import pytest
from fleche.call import DigestedCall

from fleche_redis import CallRedis, cli


@pytest.mark.parametrize("command", [["verify"], ["ls"], ["info"], ["gc"], ["show", "abcd"]])
def test_an_empty_namespace_is_named_with_the_ones_that_exist(
    capsys, redis_server, namespace, command
):
    CallRedis(url=redis_server.url, namespace=namespace).save(DigestedCall(name="f", arguments={}))
    wrong = namespace + "-typo"
    code = cli.main([*command, "--url", redis_server.url, "--namespace", wrong])
    err = capsys.readouterr().err
    assert code == 1
    assert (
        f"namespace {wrong!r} holds nothing" in err
        and namespace in err.split("namespaces there:")[1]
    )


def test_info_all_still_lists_an_empty_server(capsys, fresh_server):
    assert cli.main(["info", "--all", "--url", fresh_server.url]) == 0
    assert "no fleche-redis namespaces on this server" in capsys.readouterr().out
