"""Which entries a storage is willing to unpickle: required signatures, and the restricted reader.

``require_signature`` makes a storage refuse to start without a secret key,
so no process of a deployment can read (or write) unsigned pickles by
mistake.  The restricted reader is for deployments that cannot share a
key: its unpickler imports only an allow-list of classes and functions, so
a planted pickle cannot call ``os.system``; it does not make the results
trustworthy.  What each protects against: ``docs/security.md``.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ENVIRONMENT",
    "DEFAULT_ALLOWED",
    "TrustOptions",
    "Allowed",
    "Refused",
    "required_by_environment",
    "warn_once",
]

logger = logging.getLogger("fleche_redis.codec")

ENVIRONMENT = "FLECHE_REDIS_REQUIRE_SIGNATURE"
"""Set to ``1``/``true``/``yes``/``on``, it turns ``require_signature`` on in every storage of the process."""

_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"", "0", "false", "no", "off"})

_SAFE_BUILTINS = (
    "bool bytearray bytes complex dict float frozenset int list range set slice str tuple "
    "Ellipsis NotImplemented"
)
"""Builtins a value's pickle may name: data types only (never ``eval``, ``getattr``, ``open``...)."""

DEFAULT_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {("builtins", name) for name in _SAFE_BUILTINS.split()}
    | {
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        # numpy 1.x and 2.x name the same helpers under numpy.core / numpy._core.
        *(
            (f"{core}.multiarray", name)
            for core in ("numpy.core", "numpy._core")
            for name in ("_reconstruct", "scalar")
        ),
        *((f"{core}.numeric", "_frombuffer") for core in ("numpy.core", "numpy._core")),
        ("fleche.call", "DigestedCall"),
        ("fleche.digest", "Digest"),
        *(
            ("fleche.storage.destructuring", name)
            for name in ("DigestedIterable", "DigestedDict", "DigestedDataclass", "DigestedAttrs")
        ),
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("collections", "deque"),
        ("collections", "Counter"),
        *(("datetime", name) for name in ("date", "time", "datetime", "timedelta", "timezone")),
        ("decimal", "Decimal"),
        ("fractions", "Fraction"),
        ("uuid", "UUID"),
    }
)
"""``(module, name)`` pairs the restricted reader allows by default, each by its exact name:
safe builtins, numpy arrays, scalars and dtypes, fleche's call records and
destructured containers, and a few standard data types."""


def required_by_environment() -> bool:
    """Whether :data:`ENVIRONMENT` turns signatures on; any value not clearly on or off is an error."""
    raw = os.environ.get(ENVIRONMENT, "")
    value = raw.strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(
        f"{ENVIRONMENT}={raw!r} is neither on (1, true, yes, on) nor off (0, false, no, off, empty)"
    )


class Refused(pickle.UnpicklingError):
    """The restricted reader met a global that is not on its allow-list."""


@dataclass(frozen=True)
class Allowed:
    """The restricted reader's allow-list: :data:`DEFAULT_ALLOWED`, and whole modules of the user's.

    A module in *modules* allows itself and its submodules (``numpy`` allows
    ``numpy.linalg``, not ``numpyevil``), and only what is defined there:
    a name reached through another module (``mypkg.os.system``) is refused.
    """

    modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for module in self.modules:
            if not isinstance(module, str) or not module or module.strip(".") != module:
                raise ValueError(f"allowed_modules holds {module!r}, not a module name")
            if module.partition(".")[0] in ("builtins", "__builtin__"):
                raise ValueError(
                    "allowed_modules may not name builtins: it holds eval, exec and open "
                    "(the safe builtins are allowed already)"
                )

    def module_allowed(self, module: Any) -> bool:
        return isinstance(module, str) and any(
            module == m or module.startswith(m + ".") for m in self.modules
        )

    def loads(self, stream: Any, buffers: list[Any]) -> Any:
        """The value in *stream*, its out-of-band buffers from *buffers*; :class:`Refused` past the list."""
        return _Unpickler(io.BytesIO(stream), buffers, self).load()


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, buffers: list[Any], allowed: Allowed) -> None:
        # No renaming of Python 2 names (``__builtin__``): what is checked is what is imported.
        super().__init__(file, buffers=buffers, fix_imports=False)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in DEFAULT_ALLOWED:
            return super().find_class(module, name)
        if not self.allowed.module_allowed(module):
            raise Refused(f"{module}.{name} is not allowed")
        if any(part.startswith("__") for part in name.split(".")):
            raise Refused(f"{module}.{name} reaches into internals")  # __globals__, __init__
        found = super().find_class(module, name)
        # ``mypkg`` may have imported ``os``: what is found must live there too.
        if not self.allowed.module_allowed(getattr(found, "__module__", None)):
            raise Refused(f"{module}.{name} is defined outside the allowed modules")
        return found


@dataclass(frozen=True, kw_only=True)
class TrustOptions:
    """The storage options of this module (fields of every Redis storage).

    Args:
        require_signature: refuse to start without a secret key, so nothing
            unsigned is ever read or written; also on when
            ``FLECHE_REDIS_REQUIRE_SIGNATURE`` is set (which configuration
            cannot turn off).  Unsigned entries are misses, counted as
            ``unsigned_refused``.
        restricted: unpickle with the restricted reader: only the classes
            and functions of :data:`DEFAULT_ALLOWED` and *allowed_modules*;
            anything else is a miss, counted as ``restricted_refused``.
        allowed_modules: modules (with their submodules) the restricted
            reader allows besides its defaults, e.g. ``("pandas", "mypkg")``.
    """

    require_signature: bool = False
    restricted: bool = False
    allowed_modules: tuple[str, ...] = ()

    def codec_options(self, keys: tuple[bytes, ...]) -> dict[str, Any]:
        """Check these options against the signing *keys*; the codec's keyword arguments."""
        by_environment = required_by_environment()  # a value neither on nor off: always an error
        if not keys and (self.require_signature or by_environment):
            by = "require_signature=True" if self.require_signature else f"{ENVIRONMENT} is set"
            raise ValueError(
                f"{by}, but there is no secret key: set FLECHE_SECRET_KEY (`fleche-redis keygen` "
                "makes one) or pass secret_key=..."
            )
        modules = self.allowed_modules
        if isinstance(modules, str):
            raise ValueError(f"allowed_modules must be a list of module names, not {modules!r}")
        object.__setattr__(self, "allowed_modules", modules := tuple(modules))
        if modules and not self.restricted:
            raise ValueError("allowed_modules extends the restricted reader: pass restricted=True")
        return {"allowed": Allowed(modules) if self.restricted else None}


_WARNED_MAX = 10_000
"""Keys a codec remembers as warned about; past it the memory starts again (a warning may repeat)."""


def warn_once(warned: set[tuple[str, str]], key: str, reason: str, detail: str) -> None:
    """Log one warning per entry and *reason* in *warned* (a codec's): a planted entry read in a loop does not flood the log."""
    if (key, reason) in warned:
        return
    if len(warned) >= _WARNED_MAX:
        warned.clear()
    warned.add((key, reason))
    logger.warning("entry %s: %s (%s); treating it as a miss", key, reason, detail)
