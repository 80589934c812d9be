"""Compact columns for joins over a whole directory (a million users and more).

A Python ``str`` costs about 50 bytes more than its text and an ``int`` 28 bytes more than its
value; a reconciliation holding one object per user of the directory, the state store and the
target grows by kilobytes per user. Here strings are packed into a few large UTF-8 buffers
(:class:`Strings`), keys are 64-bit hashes in ``array``/``numpy`` columns (:func:`h64`), and
look-ups go through a sorted index (:class:`Index`).

Hashes only narrow a search: wherever a match decides a write, the caller compares the
strings themselves.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

CHUNK = 4096
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]


def h64(value: str | None) -> int:
    """A 64-bit hash of a string; 0 stands for no value (``None`` or empty)."""
    if not value:
        return 0
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little") or 1


def column(values: Iterable[int] = ()) -> array[int]:
    """An append-only column of unsigned 64-bit values (8 bytes each)."""
    return array("Q", values)


def as_numpy(values: array[int]) -> U64:
    return np.frombuffer(values, dtype=np.uint64) if len(values) else np.zeros(0, np.uint64)


class Strings:
    """An append-only list of strings held as UTF-8 in buffers of :data:`CHUNK` strings."""

    __slots__ = ("_blobs", "_offsets", "_pending")

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._blobs: list[bytes] = []
        self._offsets: list[I64] = []
        self._pending: list[str] = []
        for value in values:
            self.append(value)

    def append(self, value: str) -> None:
        self._pending.append(value)
        if len(self._pending) == CHUNK:
            encoded = [v.encode() for v in self._pending]
            offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
            np.cumsum([len(e) for e in encoded], out=offsets[1:])
            self._blobs.append(b"".join(encoded))
            self._offsets.append(offsets)
            self._pending = []

    def __len__(self) -> int:
        return len(self._blobs) * CHUNK + len(self._pending)

    def __getitem__(self, index: int | np.integer[Any]) -> str:
        chunk, at = divmod(int(index), CHUNK)
        if chunk == len(self._blobs):
            return self._pending[at]
        offsets = self._offsets[chunk]
        return self._blobs[chunk][offsets[at] : offsets[at + 1]].decode()


class Index:
    """Positions of 64-bit keys in a column, found by binary search.

    Among equal keys the first in ``order`` wins (by default the first appended); ``prefer``
    puts the rows where it is true first.
    """

    __slots__ = ("_order", "_sorted")

    def __init__(self, keys: U64, prefer: npt.NDArray[np.bool_] | None = None) -> None:
        if prefer is None:
            self._order = np.argsort(keys, kind="stable")
        else:
            self._order = np.lexsort((~prefer, keys))
        self._sorted = keys[self._order]

    def find(self, key: int) -> int:
        """The row of ``key``, or -1."""
        if not key:
            return -1
        at = int(np.searchsorted(self._sorted, np.uint64(key)))
        if at < len(self._sorted) and int(self._sorted[at]) == key:
            return int(self._order[at])
        return -1

    def find_many(self, keys: U64) -> I64:
        """The row of each key (-1 where absent, or where the key is 0)."""
        if not len(self._sorted):
            return np.full(len(keys), -1, dtype=np.int64)
        at = np.searchsorted(self._sorted, keys)
        at = np.minimum(at, len(self._sorted) - 1)
        found = (self._sorted[at] == keys) & (keys != 0)
        return np.where(found, self._order[at], -1).astype(np.int64)
