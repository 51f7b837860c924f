"""Planted entries: pickles that create a file when they are unpickled, in every unsigned form.

A test writes one of them raw into an entry's Redis key (as someone who can
write to the server would) and checks that no read path creates the file.
"""

from __future__ import annotations

import pickle
import zlib
from pathlib import Path

import numpy as np

from fleche_redis.storage.codec import FRAMED, Codec


class CreatesFile:
    """Unpickling it calls ``open(path, "w")``: what a planted pickle could do instead."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def unsigned_forms(path: Path) -> dict[str, bytes]:
    """The planted pickle as each format stores an unsigned entry: bare, compressed, framed."""
    bare = pickle.dumps({"result": CreatesFile(path)}, protocol=5)
    framed = bytes(Codec("pickle").encode({"x": CreatesFile(path), "y": np.zeros(20_000)}))
    assert framed[:2] == FRAMED
    return {"bare": bare, "compressed": zlib.compress(bare), "framed": framed}


def plant_value(storage, key: str, data: bytes) -> None:
    """Overwrite the value at *key* (written and indexed by the storage) with *data*."""
    storage.redis().set(storage.layout.data(key), data)


def plant_record(storage, key: str, data: bytes) -> None:
    """Overwrite the record at *key*, keeping its index and query terms, with *data*."""
    storage.redis().hset(storage.layout.data(key), "v", data)


def plant_in_cache(cache, what: str, data: bytes) -> None:
    """*data* in place of the only record of *cache* (*what* ``"record"``) or of its result."""
    (key,) = cache.calls.list()
    if what == "record":
        plant_record(cache.calls, key, data)
    else:
        plant_value(cache.values, cache.calls.load(key).result, data)
