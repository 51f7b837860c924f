"""A function taking about half of ``claim_ttl`` sometimes logged a false "compute lease ran
out while computing".

The watchdog's first renewal (at half the claim) could leave while the commit
was dropping the lease; the renewal then found no lease and called it lost.
A renewal that finds the lease gone now checks whether the lease finished in
the meantime, and says nothing if it did.
"""

from __future__ import annotations

import logging

from fleche_redis import CallRedis
from fleche_redis.cache import singleflight


def lease_on(fake_client, namespace) -> singleflight.Lease:
    calls = CallRedis(client=fake_client, namespace=namespace)
    return singleflight.Lease(calls, "ab" * 32, singleflight.new_token(), ttl=5.0)


def test_a_lease_finished_during_its_renewal_is_not_lost(fake_client, namespace, caplog):
    lease = lease_on(fake_client, namespace)  # no lease key in Redis: EXTEND finds nothing
    renew = lease._extend

    def commit_while_renewing() -> bool:
        lease.finish_request()  # the commit takes the lease over...
        return renew()  # ...and this renewal reaches Redis after it dropped the key

    lease._extend = commit_while_renewing
    with caplog.at_level(logging.WARNING, logger="fleche_redis"):
        assert lease._renew() is None
    assert not lease.lost and not caplog.records


def test_a_lease_gone_while_computing_is_still_reported(fake_client, namespace, caplog):
    lease = lease_on(fake_client, namespace)
    with caplog.at_level(logging.WARNING, logger="fleche_redis"):
        assert lease._renew() is None
    assert lease.lost
    assert "ran out while computing" in caplog.records[0].getMessage()
