"""Which index terms describe a call record, and which a query template needs.

Terms are digests of facts a query can ask for, compared exactly as
:meth:`fleche.call.QueryCall.matches` compares them; the index only narrows
a search, ``matches`` decides.  Details: ``docs/storage.md``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

from fleche.call import DigestedCall, QueryCall
from fleche.digest import Digest, digest

__all__ = ["TERM_BYTES", "term_id", "record_terms", "template_terms"]

TERM_BYTES = 12
"""Length of a term id; 96 bits make accidental collisions irrelevant (and harmless)."""


def term_id(term: str) -> bytes:
    return hashlib.blake2b(term.encode("utf-8", "surrogatepass"), digest_size=TERM_BYTES).digest()


def _scalar_terms(name: str | None, module, version, code_digest, result) -> Iterable[str]:
    if name is not None:
        yield f"name\0{digest(name)}"
    if module is not None:
        yield f"module\0{digest(module)}"
    if version is not None:
        yield f"version\0{digest(version)}"
    if code_digest is not None:
        yield f"code\0{digest(code_digest)}"
    if result is not None:
        yield f"result\0{digest(result)}"


@functools.lru_cache(maxsize=4096)
def _function_terms(name: str, module, version, code_digest) -> frozenset[bytes]:
    """The term ids every record of one function version shares (the same on every call)."""
    return frozenset(term_id(t) for t in _scalar_terms(name, module, version, code_digest, None))


@functools.lru_cache(maxsize=4096)
def _text_term(text: str) -> bytes:
    """Term ids of argument names and metadata names and keys: few distinct ones, met on every call."""
    return term_id(text)


@functools.lru_cache(maxsize=4096)
def _metadata_terms(shape: tuple[tuple[str, tuple], ...]) -> frozenset[bytes]:
    """Term ids of metadata names and keys; records of one function share a handful of shapes."""
    ids = set()
    for mname, keys in shape:
        ids.add(term_id(f"meta\0{mname}"))
        ids.update(term_id(f"metakey\0{mname}\0{key}") for key in keys)
    return frozenset(ids)


def _digest_of(value) -> str:
    # fleche's invariant digest(Digest(x)) == x: a record's digests need no hashing.
    return value if type(value) is Digest else digest(value)


def record_terms(call: DigestedCall) -> list[bytes]:
    """Term ids for every fact a query may ask about *call*."""
    try:
        ids = set(_function_terms(call.name, call.module, call.version, call.code_digest))
    except TypeError:  # a field that cannot be hashed: build them afresh
        ids = {
            term_id(t)
            for t in _scalar_terms(call.name, call.module, call.version, call.code_digest, None)
        }
    if call.result is not None:
        ids.add(term_id(f"result\0{_digest_of(call.result)}"))
    for arg, value in call.arguments.items():
        ids.add(_text_term(f"argname\0{arg}"))
        ids.add(term_id(f"arg\0{arg}\0{_digest_of(value)}"))
    metadata = call.metadata
    if metadata:
        shape = tuple((mname, tuple(data or ())) for mname, data in metadata.items())
        try:
            ids |= _metadata_terms(shape)
        except TypeError:  # a metadata key that cannot be hashed
            ids |= _metadata_terms.__wrapped__(shape)
    return sorted(ids)


def template_terms(template: QueryCall) -> list[bytes]:
    """Term ids every record matching *template* has; empty when it constrains nothing indexed.

    Raises :class:`fleche.digest.Indigestible` for a template value that has no
    digest (fleche's cache layer turns that into a logged empty result).
    """
    terms = list(
        _scalar_terms(
            template.name, template.module, template.version, template.code_digest, template.result
        )
    )
    for arg, value in (template.arguments or {}).items():
        terms.append(f"argname\0{arg}" if value is None else f"arg\0{arg}\0{digest(value)}")
    for mname, filters in (template.metadata or {}).items():
        terms.append(f"meta\0{mname}")
        for key in filters or {}:
            terms.append(f"metakey\0{mname}\0{key}")
    return sorted({term_id(t) for t in terms})
