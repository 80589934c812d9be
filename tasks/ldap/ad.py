"""Active Directory specifics: account flags, binary GUIDs, ranged attribute retrieval.

AD returns at most 1,500 values of a multi-valued attribute per read. A group with more
members comes back as ``member;range=0-1499`` (and no plain ``member``); the next values are
read with ``member;range=1500-*``, and so on, until a range ends in ``*``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from enum import IntFlag

_RANGE = re.compile(r"^(?P<attr>[^;]+);range=(?P<start>\d+)-(?P<end>\d+|\*)$", re.IGNORECASE)


class UserAccountControl(IntFlag):
    """The bits of ``userAccountControl`` the provisioner reads."""

    ACCOUNTDISABLE = 0x0002


def guid_text(value: bytes) -> str:
    """AD's binary ``objectGUID`` (little-endian UUID) as the string AD tools show."""
    return str(uuid.UUID(bytes_le=value))


def parse_range(name: str) -> tuple[str, int, int | None] | None:
    """``member;range=0-1499`` → ("member", 0, 1499); ``...-*`` ends with ``None``; a name
    without a range option → ``None``."""
    match = _RANGE.match(name)
    if match is None:
        return None
    end = match.group("end")
    return match.group("attr"), int(match.group("start")), None if end == "*" else int(end)


def ranged_values(
    name: str,
    values: list[bytes],
    fetch: Callable[[str], tuple[str, list[bytes]] | None],
    *,
    max_reads: int = 10_000,
) -> list[bytes]:
    """Every value of a ranged attribute, starting from the first part already read.

    :param name: the attribute name as returned, e.g. ``member;range=0-1499``.
    :param fetch: reads one more range (``member;range=1500-*``) and returns the name it came
        back under and its values, or ``None`` if nothing came back.
    """
    collected = list(values)
    for _ in range(max_reads):
        parsed = parse_range(name)
        if parsed is None:
            return collected
        attribute, _, end = parsed
        if end is None:
            return collected
        more = fetch(f"{attribute};range={end + 1}-*")
        if more is None:
            return collected
        name, values = more
        collected += values
    raise ValueError(f"more than {max_reads} ranged reads of {name}; giving up")
