"""Search result entries decoded straight from their bytes (RFC 4511 4.5.2, BER as 5.1 allows).

ldap3 decodes every message with a generic BER decoder that looks up each element's class and
type in tables and builds a 4-tuple per element: ~65 % of reading a directory was spent there.
A search entry has one fixed shape, so :func:`search_entry` walks it in one loop and returns
the DN and the raw values the provisioner uses (what ldap3 would have produced, without the
tuples). Anything else, or anything this decoder does not expect (an indefinite length, a
wrong tag, a length past the end), is left to ldap3 by returning ``None``.
"""

from __future__ import annotations

ENTRY = 0x64
"""[APPLICATION 4], constructed: searchResEntry."""
_SEQUENCE, _SET, _OCTETS, _INTEGER = 0x30, 0x31, 0x04, 0x02


class _Malformed(Exception):
    pass


def _length(data: bytes, i: int) -> tuple[int, int]:
    """The definite length whose first octet is at ``i``, and where the contents start."""
    first = data[i]
    if first < 0x80:
        return first, i + 1
    count = first & 0x7F
    if count == 0 or count > 4:  # indefinite (not allowed in LDAP) or absurd
        raise _Malformed
    return int.from_bytes(data[i + 1 : i + 1 + count], "big"), i + 1 + count


def _expect(data: bytes, i: int, tag: int) -> tuple[int, int]:
    """The end and the contents' start of the element at ``i``, which must have ``tag``."""
    if data[i] != tag:
        raise _Malformed
    size = data[i + 1]
    if size < 0x80:  # the short form, inlined: most elements of an entry are short
        start = i + 2
    else:
        size, start = _length(data, i + 1)
    end = start + size
    if end > len(data):
        raise _Malformed
    return end, start


def search_entry(
    data: bytes,
) -> tuple[int, bytes, dict[bytes, list[bytes]], tuple[int, int] | None] | None:
    """One whole LDAPMessage holding a searchResEntry as (messageID, DN, {attribute type: raw
    values}, where its controls lie or ``None``); ``None`` for any other message or one not
    shaped as expected. Attribute types are the bytes the server sent (an attribute the
    server lists twice keeps the values of both)."""
    try:
        return _search_entry(data)
    except (_Malformed, IndexError):
        return None


def _search_entry(
    data: bytes,
) -> tuple[int, bytes, dict[bytes, list[bytes]], tuple[int, int] | None] | None:
    message_end, i = _expect(data, 0, _SEQUENCE)
    if message_end != len(data):
        raise _Malformed
    id_end, id_start = _expect(data, i, _INTEGER)
    ident = int.from_bytes(data[id_start:id_end], "big", signed=True)
    if data[id_end] != ENTRY:
        return None
    op_end, i = _expect(data, id_end, ENTRY)
    dn_end, dn_start = _expect(data, i, _OCTETS)
    attributes_end, i = _expect(data, dn_end, _SEQUENCE)
    if attributes_end != op_end:
        raise _Malformed
    attributes: dict[bytes, list[bytes]] = {}
    while i < attributes_end:
        attribute_end, i = _expect(data, i, _SEQUENCE)
        if attribute_end > attributes_end:
            raise _Malformed
        type_end, type_start = _expect(data, i, _OCTETS)
        values_end, i = _expect(data, type_end, _SET)
        if values_end != attribute_end:
            raise _Malformed
        values = attributes.setdefault(data[type_start:type_end], [])
        while i < values_end:
            if data[i] != _OCTETS:
                raise _Malformed
            # _length inlined: most values are shorter than 128 bytes
            size = data[i + 1]
            if size < 0x80:
                start = i + 2
            else:
                size, start = _length(data, i + 1)
            i = start + size
            if i > values_end:
                raise _Malformed
            values.append(data[start:i])
        if i != attribute_end:
            raise _Malformed
    if i != attributes_end:
        raise _Malformed
    controls = None
    if op_end < message_end:
        if data[op_end] != 0xA0:  # [0] Controls, the only element allowed after protocolOp
            raise _Malformed
        controls = (op_end, message_end)
    return ident, data[dn_start:dn_end], attributes, controls
