"""``ls`` printed short keys that ``show`` and ``evict`` refused as ambiguous (248 of 3,000 in one
namespace): ``ls`` shortens a key among the call records, but the other commands resolved it
against the values too.  A prefix now names a call record first, values only when no record
starts so.
"""

from __future__ import annotations

import json
import secrets

from fleche.call import DigestedCall
from fleche.digest import Digest

from fleche_redis import CallRedis, ValueRedis, cli


def test_every_key_ls_prints_works_with_show_and_evict(capsys, redis_server, namespace):
    where = ["--url", redis_server.url, "--namespace", namespace]
    calls = CallRedis(url=redis_server.url, namespace=namespace)
    values = ValueRedis(url=redis_server.url, namespace=namespace)
    for i in range(20):
        key = calls.save(DigestedCall(name="f", arguments={"i": Digest(secrets.token_hex(32))}))
        # A value whose digest shares the record's first six characters.
        values.save(i, key=Digest(key[:6] + secrets.token_hex(29)[:58]))
    assert cli.main(["ls", "--json", *where]) == 0
    listed = [row["key"] for row in json.loads(capsys.readouterr().out)]
    assert len(listed) == 20 and all(len(k) < 6 for k in listed)
    for key in listed:
        assert cli.main(["show", key, *where]) == 0, capsys.readouterr().err
        assert cli.main(["evict", key, "--dry-run", *where]) == 0, capsys.readouterr().err
    capsys.readouterr()
