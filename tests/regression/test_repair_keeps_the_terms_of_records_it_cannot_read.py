"""``verify`` run with a key the records were not signed with (or on unsigned records, with a
key) counted every query term of those records as stale, and ``repair`` removed them: a
repair run with the wrong key stripped the query index of the whole store.  Records a
storage cannot read are now left unjudged, their terms kept as their writer stored them.
"""

from __future__ import annotations

import fakeredis
import pytest
from fleche.call import DigestedCall, QueryCall
from fleche.digest import digest

from fleche_redis import CallRedis
from fleche_redis.admin.maintenance import repair, verify

KEY_A, KEY_B = b"a" * 32, b"b" * 32


def records(calls: CallRedis) -> None:
    for i in range(6):
        calls.save(
            DigestedCall(name="f", arguments={"i": digest(i), "j": digest(i % 2)}, result=digest(i))
        )


@pytest.mark.parametrize("writer_key, reader_key", [(KEY_A, KEY_B), ((), KEY_B)])
def test_a_repair_that_cannot_read_the_records_keeps_their_terms(namespace, writer_key, reader_key):
    client = fakeredis.FakeRedis()
    writer = CallRedis(client=client, namespace=namespace, secret_key=writer_key)
    records(writer)
    terms_before = {k: client.zcard(k) for k in client.scan_iter(f"{namespace}:*") if b":t" in k}
    reader = CallRedis(client=client, namespace=namespace, secret_key=reader_key)
    report = verify(reader)
    assert report.stale_terms == 0 and report.missing_terms == 0
    assert report.undecodable + report.unsigned == 6
    repaired = repair(reader)
    assert repaired.stale_terms == 0
    assert {k: client.zcard(k) for k in terms_before} == terms_before
    found = list(writer.query(QueryCall(name="f", arguments={"j": 1})))
    assert sorted(r.arguments["i"] for r in found) == sorted(digest(i) for i in (1, 3, 5))
    assert verify(writer).ok


def test_examples_name_each_record_once(namespace):
    """A record gone from the store leaves its terms behind (name, arguments, ...): one
    example names it once, not once per term."""
    client = fakeredis.FakeRedis()
    calls = CallRedis(client=client, namespace=namespace)
    records(calls)
    gone = calls.layout.data(next(iter(calls.list())))
    client.hdel(gone, "v")  # the record is gone (as a half-removed one would be); its terms stay
    report = verify(calls)
    assert report.stale_terms > 1
    assert len(report.examples["stale_terms"]) == 1
