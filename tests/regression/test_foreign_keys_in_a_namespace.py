"""One key of the wrong type inside a namespace stopped maintenance, and repair could not fix it.

``SET <ns>:{c.02}:index garbage`` made every write to that shard raise
WRONGTYPE after storing the record (data without index), and ``count``,
``ls``, ``gc``, ``verify`` and ``repair`` all failed; a string planted at a
record key crashed ``verify`` with a traceback.  Now, for a foreign key at any
kind of key the layout uses: the other shards work, a write that meets it
stores nothing, ``verify`` names it (exit 1), ``repair`` removes it (exit 0),
and the shard works again.
"""

from __future__ import annotations

import fleche
import pytest
from fleche.call import DigestedCall
from fleche.digest import Digest
from fleche.digest import digest as fleche_digest

from fleche_redis import RedisStorageError, cli, redis_cache

SHARD = "02"
OTHER = "a7"


def digest(shard: str, fill: str = "5") -> Digest:
    return Digest(shard + fill * 62)


def record(i: int) -> DigestedCall:
    return DigestedCall(name="f", arguments={"i": fleche_digest(i)})


# (what the layout calls it, the storage it belongs to, its key, a foreign value to plant)
KINDS = [
    ("value index", "values", lambda v, c: v.layout.index(SHARD), "string"),
    ("value data", "values", lambda v, c: v.layout.data(digest(SHARD)), "hash"),
    ("value refs", "values", lambda v, c: v.layout.references(SHARD), "string"),
    ("gc flag", "values", lambda v, c: v.layout.gc_flag(SHARD), "hash"),
    ("chunk", "values", lambda v, c: v.layout.data(digest(SHARD)) + ":0", "list"),
    ("record index", "calls", lambda v, c: c.layout.index(SHARD), "string"),
    ("record data", "calls", lambda v, c: c.layout.data(digest(SHARD)), "string"),
    ("terms", "calls", lambda v, c: c.layout.terms(SHARD), "string"),
    ("lease", "calls", lambda v, c: c.layout.key(digest(SHARD), "lease"), "hash"),
    ("lock", "calls", lambda v, c: c.layout.key(digest(SHARD), "lock"), "list"),
]


def plant(client, key: str, kind: str) -> None:
    {
        "string": lambda: client.set(key, b"garbage"),
        "hash": lambda: client.hset(key, "x", b"garbage"),
        "list": lambda: client.rpush(key, b"garbage"),
    }[kind]()


def where(cache) -> list[str]:
    return ["--url", cache.calls.url, "--namespace", cache.calls.namespace]


@pytest.mark.parametrize("name, owner, key_of, foreign", KINDS, ids=[k[0] for k in KINDS])
def test_a_foreign_key_is_contained_named_and_repaired(
    capsys, redis_server, namespace, name, owner, key_of, foreign
):
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    values, calls = cache.values, cache.calls
    client = redis_server.client()
    values.save("kept", key=digest(OTHER))
    calls.put(record(0), digest(OTHER))
    key = key_of(values, calls)
    plant(client, key, foreign)

    # Every other shard keeps working, and so do listing and counting.
    values.save("more", key=digest(OTHER, "6"))
    calls.put(record(1), digest(OTHER, "6"))
    assert values.load(digest(OTHER)) == "kept" and calls.load(digest(OTHER)).arguments == {"i": fleche_digest(0)}
    assert digest(OTHER) in set(values.list()) and calls.count() >= 2

    # A write that meets the key stores nothing: neither data nor index.
    store, target = (
        (values, digest(SHARD, "7")) if owner == "values" else (calls, digest(SHARD, "7"))
    )
    try:
        if owner == "values":
            values.save("new", key=target)
        else:
            calls.put(record(2), target)
    except RedisStorageError as e:
        assert "WRONGTYPE" in str(e)
        assert not client.exists(store.layout.data(target))
        index_type = client.type(store.layout.index(SHARD)).decode()
        if index_type == "zset":
            assert client.zscore(store.layout.index(SHARD), target) is None
    else:  # the foreign key was not in this write's way (a lease, a lock, a chunk)
        assert store.load(target) is not None

    # verify names it, without a traceback; repair removes it; verify is clean.
    assert cli.main(["verify", *where(cache)]) == 1
    out = capsys.readouterr().out
    assert f"wrong_type: {key} ({foreign}, not" in out
    assert cli.main(["repair", *where(cache)]) == 0
    capsys.readouterr()
    assert cli.main(["verify", *where(cache)]) == 0, capsys.readouterr().out
    capsys.readouterr()
    assert not client.exists(key) or client.type(key).decode() != foreign

    # New work in that shard is stored and found again, through the cache too.
    values.save("after", key=digest(SHARD, "8"))
    calls.put(record(3), digest(SHARD, "8"))
    assert values.load(digest(SHARD, "8")) == "after"
    assert calls.load(digest(SHARD, "8")).arguments == {"i": fleche_digest(3)}
    assert values.expand(digest(SHARD, "8")[:6]) == digest(SHARD, "8")
    assert list(calls.query(fleche.call.QueryCall(name="f", arguments={"i": 3})))
    assert cli.main(["gc", *where(cache)]) == 0
    capsys.readouterr()


def test_a_string_at_a_record_key_does_not_crash_verify_repair_or_gc(
    capsys, redis_server, namespace
):
    cache = redis_cache(url=redis_server.url, namespace=namespace)
    cache.calls.save(record(6))  # stays: the namespace is not empty after the repair
    key = cache.calls.save(record(5))
    redis_server.client().delete(cache.calls.layout.data(key))
    redis_server.client().set(cache.calls.layout.data(key), b"not a hash")
    for command, code in (["verify", 1], ["gc", 0], ["repair", 0], ["verify", 0]):
        assert cli.main([command, *where(cache)]) == code, command
        assert "Traceback" not in capsys.readouterr().err
