"""Helpers for running stages over batches inside Prefect flows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar, cast

from prefect.utilities.annotations import quote

T = TypeVar("T")


def as_is(value: T) -> T:
    """Pass a large collection to a task without Prefect walking every element of it."""
    return cast(T, quote(value))


def batches(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
