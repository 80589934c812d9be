"""RFC 4533 (LDAP Content Synchronization, "syncrepl") refreshOnly, as pure BER codecs.

ldap3 sends any control as raw bytes and hands back the values of controls and intermediate
messages it does not know as bytes too; these functions build the Sync Request control and read
the Sync State, Sync Done and Sync Info values. Only what a refreshOnly consumer needs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal

SYNC_REQUEST = "1.3.6.1.4.1.4203.1.9.1.1"
SYNC_STATE = "1.3.6.1.4.1.4203.1.9.1.2"
SYNC_DONE = "1.3.6.1.4.1.4203.1.9.1.3"
SYNC_INFO = "1.3.6.1.4.1.4203.1.9.1.4"

SyncState = Literal["present", "add", "modify", "delete"]
_STATES: tuple[SyncState, ...] = ("present", "add", "modify", "delete")


class BerError(ValueError):
    """A control value that is not the BER the RFC describes."""


# -- a minimal BER reader/writer: enough for these four structures -----------------------------


def _length(data: bytes, at: int) -> tuple[int, int]:
    """(length, offset of the contents) of the length octets starting at ``at``."""
    if at >= len(data):
        raise BerError("truncated length")
    first = data[at]
    if first < 0x80:
        return first, at + 1
    count = first & 0x7F
    if count == 0 or count > 4 or at + 1 + count > len(data):
        raise BerError("unsupported or truncated long length")
    return int.from_bytes(data[at + 1 : at + 1 + count], "big"), at + 1 + count


def tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag octet, contents) of each element encoded one after the other in ``data``."""
    out: list[tuple[int, bytes]] = []
    at = 0
    while at < len(data):
        tag = data[at]
        length, start = _length(data, at + 1)
        end = start + length
        if end > len(data):
            raise BerError("element longer than its container")
        out.append((tag, data[start:end]))
        at = end
    return out


def _encode(tag: int, contents: bytes) -> bytes:
    size = len(contents)
    if size < 0x80:
        return bytes([tag, size]) + contents
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + contents


def _boolean(contents: bytes) -> bool:
    return any(contents)


_SEQUENCE, _SET, _OCTETS, _ENUM, _BOOL = 0x30, 0x31, 0x04, 0x0A, 0x01


def sync_request_value(cookie: bytes | None, *, reload_hint: bool = False) -> bytes:
    """The Sync Request control value for a refreshOnly search (mode 1)."""
    body = _encode(_ENUM, b"\x01")
    if cookie:
        body += _encode(_OCTETS, cookie)
    if reload_hint:
        body += _encode(_BOOL, b"\xff")
    return _encode(_SEQUENCE, body)


def entry_uuid(raw: bytes) -> str:
    """A syncUUID (16 octets) in the text form of the entryUUID attribute."""
    if len(raw) != 16:
        raise BerError(f"a syncUUID has 16 octets, not {len(raw)}")
    return str(uuid.UUID(bytes=raw))


@dataclass(frozen=True, slots=True)
class StateValue:
    """The Sync State control of one entry."""

    state: SyncState
    entry_uuid: str
    cookie: bytes | None = None


def sync_state(value: bytes) -> StateValue:
    """Decode a Sync State control value."""
    [(tag, body)] = tlvs(value) or [(0, b"")]
    if tag != _SEQUENCE:
        raise BerError("Sync State value is not a SEQUENCE")
    parts = tlvs(body)
    if len(parts) < 2 or parts[0][0] != _ENUM or parts[1][0] != _OCTETS:
        raise BerError("Sync State value lacks its state or entryUUID")
    number = int.from_bytes(parts[0][1], "big")
    if number >= len(_STATES):
        raise BerError(f"unknown sync state {number}")
    cookie = parts[2][1] if len(parts) > 2 and parts[2][0] == _OCTETS else None
    return StateValue(_STATES[number], entry_uuid(parts[1][1]), cookie)


@dataclass(frozen=True, slots=True)
class DoneValue:
    """The Sync Done control ending the refresh: the new cookie and which phase ended it."""

    cookie: bytes | None
    refresh_deletes: bool
    """True: the server listed deletions (the delete phase); False: it listed what is
    present, so every entry it did not mention is gone (the present phase)."""


def sync_done(value: bytes) -> DoneValue:
    """Decode a Sync Done control value."""
    [(tag, body)] = tlvs(value) or [(0, b"")]
    if tag != _SEQUENCE:
        raise BerError("Sync Done value is not a SEQUENCE")
    cookie: bytes | None = None
    deletes = False
    for part_tag, part in tlvs(body):
        if part_tag == _OCTETS:
            cookie = part
        elif part_tag == _BOOL:
            deletes = _boolean(part)
    return DoneValue(cookie, deletes)


@dataclass(frozen=True, slots=True)
class InfoValue:
    """A Sync Info intermediate message."""

    kind: Literal["newcookie", "refreshDelete", "refreshPresent", "syncIdSet"]
    cookie: bytes | None = None
    refresh_deletes: bool = False
    """For syncIdSet: True, the ids were deleted; False, they are present."""
    uuids: tuple[str, ...] = field(default=())


_INFO_KINDS = {0x80: "newcookie", 0xA1: "refreshDelete", 0xA2: "refreshPresent", 0xA3: "syncIdSet"}


def sync_info(value: bytes) -> InfoValue:
    """Decode a Sync Info message value (a CHOICE of four context-tagged forms)."""
    [(tag, body)] = tlvs(value) or [(0, b"")]
    kind = _INFO_KINDS.get(tag)
    if kind == "newcookie":
        return InfoValue("newcookie", body)
    if kind is None:
        raise BerError(f"unknown Sync Info choice 0x{tag:02x}")
    cookie: bytes | None = None
    deletes = False
    uuids: tuple[str, ...] = ()
    for part_tag, part in tlvs(body):
        if part_tag == _OCTETS:
            cookie = part
        elif part_tag == _BOOL:
            deletes = _boolean(part)
        elif part_tag == _SET:
            uuids = tuple(entry_uuid(raw) for inner_tag, raw in tlvs(part) if inner_tag == _OCTETS)
    return InfoValue(kind, cookie, deletes, uuids)  # type: ignore[arg-type]
