"""CallRedis.query against fleche's own query cases, with fleche's Sql as the reference.

Every case runs on fleche's ``Sql`` too, so the expected answers are fleche's
semantics, not ours.  The hypothesis case compares both storages with
``QueryCall.matches`` on random stores and templates.
"""

import fakeredis
import pytest
from fleche.caches import Cache
from fleche.call import Call, DigestedCall, QueryCall
from fleche.digest import Digest, digest
from fleche.storage import Sql, ValueMemory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleche_redis import CallRedis
from fleche_redis.storage.calls import IndexedCallsMixin


@pytest.fixture(params=["sql", "fakeredis", "redis-server", "cluster", "sentinel"])
def store(request, namespace):
    if request.param == "sql":
        return Sql()
    if request.param == "fakeredis":
        return CallRedis(
            client=fakeredis.FakeRedis(server=fakeredis.FakeServer()), namespace=namespace
        )
    if request.param in ("cluster", "sentinel"):
        return CallRedis(
            url=request.getfixturevalue(f"redis_{request.param}").url, namespace=namespace
        )
    return CallRedis(url=request.getfixturevalue("redis_server").url, namespace=namespace)


def tpl(**fields):
    return QueryCall(**fields)


def names(store, template):
    return sorted(c.name for c in store.query(template))


A, B, X, C, R, S = (Digest(ch * 64) for ch in "abecfd")


def make_calls():
    # What a Cache files: arguments and result are digests of the values.
    return (
        DigestedCall("f1", {"a": A, "b": B}, module="m", version=1, result=R),
        DigestedCall("f1", {"a": A, "b": X}, module="m", version=2, result=S),
        DigestedCall("f2", {"c": C, "n": digest(5)}),
    )


@pytest.fixture
def filled(store):
    for c in make_calls():
        store.save(c)
    return store


@pytest.mark.parametrize(
    "template, expected",
    [
        (tpl(), ["f1", "f1", "f2"]),
        (tpl(name="f1"), ["f1", "f1"]),
        (tpl(name="f1", version=1), ["f1"]),
        (tpl(name="f1", version=3), []),
        (tpl(module="m"), ["f1", "f1"]),
        (tpl(arguments={"a": A}), ["f1", "f1"]),
        (tpl(arguments={"a": "a" * 64}), []),  # a str is a value, compared by its digest
        (tpl(arguments={"b": B}), ["f1"]),
        (tpl(arguments={"n": 5}), ["f2"]),  # a value matches the digest it was filed under
        (tpl(name="f1", arguments={"b": None}), ["f1", "f1"]),
        (tpl(arguments={"not_there": None}), []),
        (tpl(arguments={"a": A, "b": X}), ["f1"]),
        (tpl(result=R), ["f1"]),
        (tpl(result=S, version=2, module="m"), ["f1"]),
        (tpl(name="f3"), []),
    ],
)
def test_scalar_and_argument_filters(filled, template, expected):
    assert names(filled, template) == expected


def make_metadata_calls():
    return (
        Call(
            "f1",
            {"a": A},
            metadata={
                "runtime": {"walltime": 1.23, "timestart": 0.1},
                "tags": {"project": "alpha", "phase": "train"},
                "flags": {"ok": True, "count": 3},
                "complex": {"listy": [1, 2]},
            },
        ),
        Call(
            "f2",
            {"b": B},
            metadata={
                "runtime": {"walltime": 2.0},
                "tags": {"project": "beta", "phase": "eval"},
                "flags": {"ok": False, "count": 7},
                "complex": {"listy": [1, 3]},
            },
        ),
        Call("f3", {"c": C}, metadata={}),
    )


@pytest.mark.parametrize(
    "metadata, expected",
    [
        ({"tags": {}}, ["f1", "f2"]),
        ({"tags": {"project": "alpha", "phase": "train"}}, ["f1"]),
        ({"tags": {"project": "alpha", "phase": "eval"}}, []),
        ({"flags": {"ok": True}}, ["f1"]),
        ({"flags": {"count": 7}}, ["f2"]),
        ({"runtime": {"walltime": 2.0}}, ["f2"]),
        ({"runtime": {"timestart": None}}, ["f1"]),
        ({"complex": {"listy": [1, 2]}}, ["f1"]),
        ({"tags": {"project": "gamma"}}, []),
        ({"nothing": {}}, []),
    ],
)
def test_metadata_filters(store, metadata, expected):
    for c in make_metadata_calls():
        store.save(c)
    assert names(store, tpl(metadata=metadata)) == expected


def test_versions_keep_their_type(store):
    for version in ("1.2.3", 42):
        c = DigestedCall("f", {"x": A}, module="mod", version=version, result=R)
        loaded = store.load(store.save(c))
        assert loaded.version == version and type(loaded.version) is type(version)
        assert loaded.to_lookup_key() == c.to_lookup_key()
    assert [c.version for c in store.query(tpl(version="1.2.3"))] == ["1.2.3"]


calls_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["foo", "bar", "baz"]),
            "module": st.one_of(st.none(), st.sampled_from(["mod1", "mod2"])),
            "version": st.one_of(st.none(), st.integers(1, 2)),
            "result": st.integers(100, 110),
            "x": st.integers(0, 5),
            "y": st.sampled_from(["a", "b"]),
            "tag": st.one_of(st.none(), st.sampled_from(["p", "q"])),
        }
    ),
    min_size=5,
    max_size=12,
    unique_by=lambda d: (d["name"], d["module"], d["version"], d["x"], d["y"]),
)
template_strategy = st.fixed_dictionaries(
    {
        "name": st.one_of(st.none(), st.sampled_from(["foo", "bar", "baz"])),
        "module": st.one_of(st.none(), st.sampled_from(["mod1", "mod2"])),
        "version": st.one_of(st.none(), st.integers(1, 2)),
        "result": st.one_of(st.none(), st.integers(100, 110)),
        "x": st.one_of(st.none(), st.integers(0, 5)),
        "y": st.one_of(st.none(), st.sampled_from(["a", "b", "c"])),
        "tag": st.one_of(st.none(), st.sampled_from(["p", "q", ""])),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(call_data=calls_strategy, template_data=template_strategy)
def test_query_equals_matches_and_sql(redis_server, call_data, template_data):
    """Same records as fleche's Sql and as filtering everything with QueryCall.matches."""
    import uuid

    redis_cache = Cache(
        ValueMemory({}), CallRedis(url=redis_server.url, namespace=f"h{uuid.uuid4().hex[:12]}")
    )
    sql_cache = Cache(ValueMemory({}), Sql())
    saved = []
    for d in call_data:
        meta = {"tags": {"project": d["tag"]}} if d["tag"] else {}
        c = Call(
            d["name"],
            {"x": d["x"], "y": d["y"]},
            metadata=meta,
            module=d["module"],
            version=d["version"],
            result=d["result"],
        )
        redis_cache.save(c)
        sql_cache.save(c)
        saved.append(c)
    args = {k: template_data[k] for k in ("x", "y") if template_data[k] is not None}
    template = QueryCall(
        name=template_data["name"],
        arguments=args or None,
        module=template_data["module"],
        version=template_data["version"],
        result=template_data["result"],
        metadata={"tags": {"project": template_data["tag"]}}
        if template_data["tag"] is not None
        else None,
    )
    expected = {c.to_lookup_key() for c in saved if template.matches(c)}
    got = [c.to_lookup_key() for c in redis_cache.query(template)]
    assert len(got) == len(set(got))
    assert set(got) == expected
    assert {c.to_lookup_key() for c in sql_cache.query(template)} == expected


def _records(n_funcs, per_func):
    for f in range(n_funcs):
        for i in range(per_func):
            yield DigestedCall(
                name=f"pkg.func{f}",
                arguments={"i": digest(i), "f": digest(f)},
                result=digest((f, i)),
                metadata={"Runtime": {"seconds": 0.1 * i}},
                module="pkg",
                version=1,
            )


def test_query_reads_only_candidate_records(redis_server, namespace, monkeypatch):
    storage = CallRedis(url=redis_server.url, namespace=namespace)
    for record in _records(30, 20):
        storage.save(record)
    fetched = []
    original = IndexedCallsMixin._fetch_batch

    def counting(self, keys, terms):
        fetched.extend(keys)
        return original(self, keys, terms)

    monkeypatch.setattr(IndexedCallsMixin, "_fetch_batch", counting)
    found = list(storage.query(QueryCall(name="pkg.func7")))
    assert len(found) == 20 and len(fetched) == 20
    fetched.clear()
    found = list(storage.query(QueryCall(name="pkg.func7", module="pkg", arguments={"i": 3})))
    assert [c.arguments["i"] for c in found] == [digest(3)] and len(fetched) == 1
    fetched.clear()
    assert list(storage.query(QueryCall(module="pkg", arguments={"i": 3}, result=(7, 3)))) != []
    assert len(fetched) == 1


def test_overwrite_and_evict_update_the_index(store):
    if isinstance(store, Sql):
        pytest.skip("index bookkeeping is CallRedis's own")
    a = DigestedCall(
        name="f", arguments={"x": digest(1)}, result=digest(10), metadata={"tags": {"p": "a"}}
    )
    key = store.save(a)
    assert names(store, tpl(metadata={"tags": {"p": None}})) == ["f"]
    b = DigestedCall(
        name="f", arguments={"x": digest(1)}, result=digest(11), metadata={"other": {}}
    )
    assert store.save(b) == key
    assert names(store, tpl(metadata={"tags": {}})) == []
    assert names(store, tpl(result=digest(10))) == []
    assert names(store, tpl(result=digest(11))) == ["f"]
    store.evict(key)
    assert names(store, tpl(name="f")) == []
    terms = store.redis().zcard(store.layout.terms_of(key))
    assert terms == 0


def test_expired_records_leave_the_index_when_met(fresh_server, namespace):
    from fleche_redis.storage.query import record_terms

    storage = CallRedis(url=fresh_server.url, namespace=namespace, ttl=0.2)
    record = DigestedCall(name="f", arguments={"x": digest(1)}, result=digest(2))
    key = storage.save(record)
    assert names(storage, tpl(name="f")) == ["f"]
    import time

    time.sleep(0.3)
    assert names(storage, tpl(name="f")) == []
    raw = storage.redis()
    assert raw.zcard(storage.layout.index_of(key)) == 0
    # The term the query used is gone; the others wait for repair().
    assert raw.zlexcount(storage.layout.terms_of(key), "-", "+") == len(record_terms(record)) - 1


def test_records_whose_digest_starts_with_ff_are_found(store):
    """Regression: the term range once ended at "term id + 0xff", cutting off record digests 0xff...."""
    record = next(
        r
        for i in range(100_000)
        if (r := DigestedCall(name="edge", arguments={"i": digest(i)}))
        .to_lookup_key()
        .startswith("ff")
    )
    store.save(record)
    store.save(DigestedCall(name="edge", arguments={"i": digest(-1)}))
    assert names(store, tpl(name="edge")) == ["edge", "edge"]
    assert [
        c.to_lookup_key() for c in store.query(tpl(arguments={"i": record.arguments["i"]}))
    ] == [record.to_lookup_key()]


@pytest.mark.parametrize("backend", ["fakeredis", "redis-server"])
def test_a_record_rewritten_without_ttl_loses_its_expiry(backend, request, namespace):
    """PUT_RECORD drops a ttl only when the hash existed (HSET added fewer than both fields)."""
    if backend == "fakeredis":
        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        expiring = CallRedis(client=client, namespace=namespace, ttl=60)
        lasting = CallRedis(client=client, namespace=namespace)
    else:
        url = request.getfixturevalue("redis_server").url
        expiring = CallRedis(url=url, namespace=namespace, ttl=60)
        lasting = CallRedis(url=url, namespace=namespace)
    raw = lasting.redis()
    record = DigestedCall(name="f", arguments={"x": digest(1)}, result=digest(2))
    key = lasting.save(record)
    assert raw.pttl(lasting.layout.data(key)) == -1  # new, no ttl asked: none set
    expiring.save(record)
    assert 0 < raw.pttl(lasting.layout.data(key)) <= 60_000
    lasting.save(record)
    assert raw.pttl(lasting.layout.data(key)) == -1
