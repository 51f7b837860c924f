"""A storage's signing keys: read from ``secret_key`` or ``FLECHE_SECRET_KEY``, and checked.

fleche's own parser (``fleche.security.normalize_secret_key``) decides what
a key is; this module turns its refusals into errors that say where the
key came from and what one looks like, and warns once per process about a
key short enough to guess (it accepts any length).  See ``docs/security.md``.
"""

from __future__ import annotations

import logging
from typing import Any

from fleche.security import get_secret_key, normalize_secret_key

from .. import runtime

__all__ = ["signing_keys", "MIN_KEY_BYTES"]

logger = logging.getLogger("fleche_redis.security")

MIN_KEY_BYTES = 16
"""Below this many bytes a key is warned about: HMAC-SHA256 wants 32 random bytes (``keygen``)."""


def signing_keys(given: Any) -> tuple[bytes, ...]:
    """The keys a storage signs and verifies with: *given*, else ``FLECHE_SECRET_KEY``; ``()``: none.

    Raises ``ValueError`` naming the source for a key that is not bytes or
    hex text (never quoting it: it is a secret).
    """
    source = "secret_key" if given else "FLECHE_SECRET_KEY"
    try:
        keys = tuple(normalize_secret_key(given) if given else get_secret_key())
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{source} is not a signing key ({e}): give bytes, or hex text as "
            "`fleche-redis keygen` prints it; several keys are joined by ':', "
            "the signing key first"
        ) from None
    short = min((len(k) for k in keys), default=MIN_KEY_BYTES)
    if short < MIN_KEY_BYTES:
        warned: set[str] = runtime.per_process("signing.short", set)
        if source not in warned:
            warned.add(source)
            logger.warning(
                "fleche-redis: %s holds a key of %d bytes, short enough to guess; "
                "use 32 random bytes (`fleche-redis keygen`)",
                source,
                short,
            )
    return keys
