"""cloudpickle's meaning at the standard pickler's speed.

cloudpickle differs from :mod:`pickle` in one respect: functions and classes
that another process could not import by name (those defined in
``__main__``, in a function body, or in a module registered with
``cloudpickle.register_pickle_by_value``) are pickled *by value*.  For
everything else both write the same stream, but cloudpickle's pure-Python
hook runs for every object, which makes a call record about three times
slower to encode.  :func:`dumps` therefore uses the C pickler whenever the
result provably means the same:

* the value is *plain* (built-in scalars and containers, numpy arrays without
  Python objects inside, fleche's digests and call records over plain
  metadata), so it cannot refer to a function or class by name at all; or
* the C pickler succeeds, no module is registered for by-value pickling, and
  the stream never names ``__main__``: every function and class in it was
  found by import, exactly as cloudpickle would have referred to it.

Anything else (a pickling error, a stream naming ``__main__``, by-value
modules) goes to cloudpickle.  A plain string that happens to contain
``__main__`` costs only the slower path.  Both streams load with
:func:`pickle.loads`.
"""

from __future__ import annotations

import pickle
from collections import defaultdict
from typing import Any

import cloudpickle
from fleche.call import DigestedCall
from fleche.digest import Digest

__all__ = ["dumps", "is_plain"]

PROTOCOL = pickle.HIGHEST_PROTOCOL

_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray})
_SEQUENCES = frozenset({tuple, list, set, frozenset})
_FACTORIES = (None, dict, list, set, int, float, str, tuple)
_BUDGET = 256
"""Objects :func:`is_plain` looks at before it gives up (and the value takes the checked path)."""


def is_plain(value: Any) -> bool:
    """Whether *value* is built only of types that pickle and cloudpickle write alike.

    Looks at no more than a few hundred objects: a larger value is not
    called plain, and is checked by its pickle stream instead.
    """
    stack = [value]
    budget = _BUDGET
    while stack:
        budget -= 1
        if budget < 0:
            return False
        item = stack.pop()
        kind = type(item)
        if kind in _SCALARS or kind is Digest:
            continue
        if kind in _SEQUENCES:
            stack.extend(item)
        elif kind is dict or (
            kind is defaultdict and any(item.default_factory is f for f in _FACTORIES)
        ):
            stack.extend(item)  # its keys
            stack.extend(item.values())
        elif kind is DigestedCall:
            stack.append(item.name)
            stack.append(item.arguments)
            stack.append(item.result)
            stack.append(item.metadata)
            stack.append(item.module)
            stack.append(item.version)
            stack.append(item.code_digest)
        elif kind.__module__ == "numpy" and kind.__name__ == "ndarray":
            if item.dtype.hasobject:
                return False
        else:
            return False
    return True


def dumps(value: Any) -> bytes:
    """``cloudpickle.dumps(value)`` in meaning, plain ``pickle.dumps`` in speed where they agree."""
    if is_plain(value):
        return pickle.dumps(value, protocol=PROTOCOL)
    if not _by_value_modules():
        try:
            data = pickle.dumps(value, protocol=PROTOCOL)
        except Exception:
            pass  # a local function, a lambda, a dynamic class: cloudpickle's job
        else:
            if b"__main__" not in data:
                return data
    return cloudpickle.dumps(value, protocol=PROTOCOL)


def _by_value_modules() -> bool:
    # cloudpickle keeps the registry of register_pickle_by_value in a private
    # set; if it ever moves, assume modules are registered (always correct).
    registry = getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", None)
    return registry is None or bool(registry)
