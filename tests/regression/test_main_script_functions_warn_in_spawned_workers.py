"""Under ``spawn``, a function of the main script is ``__mp_main__`` in workers and ``__main__``
in the parent, so they never shared results, silently.

fleche's digests include the module, so sharing would change them; instead a
worker that memoizes such a function warns once (and the README says to
define memoized functions in an importable module).
"""

from __future__ import annotations

import logging

from fleche.call import Call

from fleche_redis import CallRedis, RedisCache, ValueRedis


def test_a_spawned_workers_main_script_function_warns_once(fake_client, namespace, caplog):
    cache = RedisCache(
        ValueRedis(client=fake_client, namespace=namespace),
        CallRedis(client=fake_client, namespace=namespace),
    )
    main = Call(name="simulate", arguments={"x": 1}, metadata={}, module="__mp_main__")
    with caplog.at_level(logging.WARNING, logger="fleche_redis"):
        for x in range(3):
            cache.prepare(Call(**{**main.__dict__, "arguments": {"x": x}})).abandon()
    warned = [r.getMessage() for r in caplog.records if "__mp_main__" in r.getMessage()]
    assert len(warned) == 1 and "simulate" in warned[0] and "importable module" in warned[0]


def test_an_importable_function_does_not_warn(fake_client, namespace, caplog):
    cache = RedisCache(
        ValueRedis(client=fake_client, namespace=namespace),
        CallRedis(client=fake_client, namespace=namespace),
    )
    with caplog.at_level(logging.WARNING, logger="fleche_redis"):
        cache.prepare(Call(name="f", arguments={}, metadata={}, module="mypkg.jobs")).abandon()
    assert not caplog.records
