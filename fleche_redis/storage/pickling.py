"""cloudpickle's meaning at the standard pickler's speed.

:func:`dumps` uses the C pickler whenever its stream provably means what
cloudpickle's would, and cloudpickle otherwise; both load with
:func:`pickle.loads`.  Why that is safe: ``docs/storage.md``.
"""

from __future__ import annotations

import pickle
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import cloudpickle
from fleche.call import DigestedCall
from fleche.digest import Digest

__all__ = ["dumps", "dumps_buffers", "with_buffers", "is_plain"]

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
    return dumps_buffers(value, None)[0]


def dumps_buffers(value: Any, min_size: int | None) -> tuple[bytes, list[memoryview]]:
    """:func:`dumps`, with buffers of *min_size* bytes or more out of band (see :func:`with_buffers`)."""
    if is_plain(value):
        return with_buffers(pickle.dumps, value, min_size)
    if not _by_value_modules():
        try:
            data, buffers = with_buffers(pickle.dumps, value, min_size)
        except Exception:
            pass  # a local function, a lambda, a dynamic class: cloudpickle's job
        else:
            # Out-of-band buffers are raw memory: only the stream names modules.
            if b"__main__" not in data:
                return data, buffers
    return with_buffers(cloudpickle.dumps, value, min_size)


def with_buffers(
    dump: Callable[..., bytes], value: Any, min_size: int | None
) -> tuple[bytes, list[memoryview]]:
    """``dump(value)`` at protocol 5, and the buffers of at least *min_size* bytes it left out of the stream.

    Objects that support protocol 5 (numpy arrays, ``PickleBuffer``) hand
    their memory to the pickler as a buffer; a big one stays where it is, to
    be written to the socket from there, and the stream only refers to it.
    ``None`` keeps every buffer in the stream.
    """
    if min_size is None:
        return dump(value, protocol=PROTOCOL), []
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        view = buffer.raw()
        if view.nbytes < min_size:
            return True  # in the stream
        buffers.append(view)
        return False

    return dump(value, protocol=PROTOCOL, buffer_callback=out_of_band), buffers


def _by_value_modules() -> bool:
    # cloudpickle keeps the registry of register_pickle_by_value in a private
    # set; if it ever moves, assume modules are registered (always correct).
    registry = getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", None)
    return registry is None or bool(registry)
