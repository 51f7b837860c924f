"""Keys that cannot be digests raised a plain ``KeyError`` or a ``TypeError``.

``evict("../etc")``, ``load("zz")`` and ``expand("AAAA")`` raised ``KeyError``
where the README promises ``InvalidDigestError``, and ``contains(None)``,
``load(None)`` and ``evict(None)`` raised ``TypeError`` from fleche's
``len(key)``.  Every key is now checked before fleche looks at its length.
"""

from __future__ import annotations

import pytest

from fleche_redis import CallRedis, InvalidDigestError, ValueRedis


@pytest.fixture(params=[ValueRedis, CallRedis])
def storage(request, fake_client, namespace):
    return request.param(client=fake_client, namespace=namespace)


@pytest.mark.parametrize("key", ["../etc", "zz", "AAAA", "3FA9", "3fa9*", "", "g" * 64, None, 12])
@pytest.mark.parametrize("operation", ["load", "evict", "expand"])
def test_a_key_that_is_no_digest_is_an_invalid_digest_error(storage, operation, key):
    with pytest.raises(InvalidDigestError):
        getattr(storage, operation)(key)


@pytest.mark.parametrize("key", ["../etc", "zz", None, 12, ""])
def test_contains_of_a_key_that_is_no_digest_is_false(storage, key):
    assert storage.contains(key) is False


def test_a_valid_but_short_prefix_is_still_a_plain_miss(storage):
    # fleche's contract: prefixes shorter than four characters never expand.
    with pytest.raises(KeyError) as caught:
        storage.expand("ab")
    assert not isinstance(caught.value, InvalidDigestError)
