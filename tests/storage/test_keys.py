import pytest
from redis.crc import key_slot

from fleche_redis.storage.keys import (
    SHARD_CHARS,
    SHARDS,
    InvalidDigestError,
    KeyLayout,
    check_digest,
    check_namespace,
    check_prefix,
)

DIGEST = "3fa9" + "0" * 60


def test_data_key_and_its_shard_share_a_cluster_slot():
    layout = KeyLayout("fleche", "v")
    assert layout.data(DIGEST) == f"fleche:{{v.3f}}:{DIGEST}"
    assert layout.index_of(DIGEST) == "fleche:{v.3f}:index"
    assert key_slot(layout.data(DIGEST).encode()) == key_slot(layout.index_of(DIGEST).encode())
    assert key_slot(layout.key(DIGEST, "lock").encode()) == key_slot(layout.data(DIGEST).encode())


def test_the_data_template_builds_the_data_key():
    for layout in (KeyLayout("fleche", "v"), KeyLayout("team-a:sub", "c")):
        head, middle = layout.data_template()
        assert head + DIGEST[:SHARD_CHARS] + middle + DIGEST == layout.data(DIGEST)


def test_shards_spread_over_many_slots():
    layout = KeyLayout("fleche", "c")
    slots = {key_slot(layout.index(s).encode()) for s in SHARDS}
    assert len(SHARDS) == 256 and len(slots) > 250
    # with three masters holding equal slot ranges, each gets a fair share
    thirds = [sum(1 for s in slots if lo <= s < lo + 5462) for lo in (0, 5462, 10924)]
    assert min(thirds) > 60


def test_keyspaces_never_collide():
    assert KeyLayout("ns", "v").data(DIGEST) != KeyLayout("ns", "c").data(DIGEST)


@pytest.mark.parametrize(
    "bad", ["", "abc", "G" * 64, "A" * 64, "*" * 64, "0" * 65, b"0" * 64, None, "0" * 63 + "\n"]
)
def test_check_digest_refuses(bad):
    with pytest.raises(InvalidDigestError):
        check_digest(bad)
    assert issubclass(InvalidDigestError, KeyError)


def test_check_prefix():
    assert check_prefix("3fa9") == "3fa9"
    for bad in ("", "3fa*", "[3f]", "3FA9", "0" * 65):
        with pytest.raises(KeyError):
            check_prefix(bad)


@pytest.mark.parametrize("ok", ["fleche", "team-a", "proj/x", "a:b", "a.b_c@d"])
def test_namespace_accepted(ok):
    assert check_namespace(ok) == ok


@pytest.mark.parametrize(
    "bad", ["", "a{b}", "a*", "a?", "a b", "a:", ":a", "a::b", "a[0]", "a\\b", 3]
)
def test_namespace_refused(bad):
    with pytest.raises(ValueError, match="invalid namespace"):
        check_namespace(bad)
