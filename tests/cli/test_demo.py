"""The README's main job runs on an embedded Redis and on a given one."""

import pytest

from fleche_redis import cli
from fleche_redis.testing import embedded

pytestmark = pytest.mark.server  # starts redis-server processes of its own


def _run(capsys, *argv):
    code = cli.main(["demo", "--tasks", "4", "--workers", "2", "--samples", "2000", *argv])
    return code, capsys.readouterr().out


def test_demo_on_private_redis_server(capsys, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    code, out = _run(capsys)
    assert code == 0, out
    assert "private redis-server" in out
    assert "round 1:   4 computed,   0 reused" in out
    assert "round 2:   0 computed,   4 reused" in out
    assert "identical results: yes" in out


def test_demo_falls_back_to_fakeredis(capsys, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(embedded, "redis_server_binary", lambda: None)
    code, out = _run(capsys)
    assert code == 0, out
    assert "fakeredis TCP server" in out and "round 2:   0 computed,   4 reused" in out


def test_demo_on_given_url_leaves_nothing_behind(capsys, redis_server, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    before = redis_server.client().dbsize()
    code, out = _run(capsys)
    assert code == 0 and "from --url/REDIS_URL" in out
    assert redis_server.client().dbsize() == before


def test_demo_reports_an_unreachable_server(capsys, fresh_server):
    url = fresh_server.url
    fresh_server.kill()
    code = cli.main(["demo", "--url", url, "--tasks", "1", "--samples", "10"])
    assert code == 2
    err = capsys.readouterr().err
    # Checked before any worker starts, and said in words a person can act on.
    assert err.startswith(f"fleche-redis: cannot connect to Redis at {url} (ConnectionError")
    assert "is it running?" in err


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0 and "demo" in capsys.readouterr().out
