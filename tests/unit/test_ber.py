"""Search entries decoded from their bytes equal ldap3's decoding; other shapes are left to it."""

from __future__ import annotations

import pytest
from ldap3.utils.asn1 import decode_message_fast

from tasks.ldap.ber import search_entry


def tlv(tag: int, content: bytes, *, length_octets: int | None = None) -> bytes:
    """One BER element, its length in the short form or in ``length_octets`` octets."""
    size = len(content)
    if length_octets is None and size < 0x80:
        return bytes([tag, size]) + content
    count = length_octets or (size.bit_length() + 7) // 8
    return bytes([tag, 0x80 | count]) + size.to_bytes(count, "big") + content


def entry_message(
    ident: int,
    dn: bytes,
    attributes: list[tuple[bytes, list[bytes]]],
    *,
    controls: bytes = b"",
    length_octets: int | None = None,
) -> bytes:
    partial = b"".join(
        tlv(0x30, tlv(0x04, name) + tlv(0x31, b"".join(tlv(0x04, v) for v in values)))
        for name, values in attributes
    )
    op = tlv(0x64, tlv(0x04, dn) + tlv(0x30, partial), length_octets=length_octets)
    number = ident.to_bytes(max(1, (ident.bit_length() + 8) // 8), "big", signed=True)
    return tlv(0x30, tlv(0x02, number) + op + controls, length_octets=length_octets)


def ldap3_view(data: bytes) -> tuple[int, bytes, dict[bytes, list[bytes]]]:
    """What ldap3's generic decoder makes of the same bytes."""
    decoded = decode_message_fast(data)
    payload = decoded["payload"]
    attributes = {a[3][0][3]: [bytes(v[3]) for v in a[3][1][3]] for a in payload[1][3]}
    return decoded["messageID"], payload[0][3], attributes


ATTRIBUTES = [
    (b"uid", [b"ada"]),
    (b"mail", [b"ada@example.org", b"countess@example.org"]),
    (b"description", [b"x" * 200]),  # two-octet length
    (b"jpegPhoto", [bytes(range(256)) * 300]),  # four-octet length (76,800 bytes)
    (b"cn", ["Ada Lovelace é".encode()]),
    (b"emptyish", []),
]


@pytest.mark.parametrize("ident", [1, 127, 128, 65_000, 2**31 - 1])
def test_an_entry_decodes_as_ldap3_decodes_it(ident: int) -> None:
    data = entry_message(ident, b"uid=ada,ou=people,dc=example,dc=org", ATTRIBUTES)
    decoded = search_entry(data)
    assert decoded is not None
    assert decoded[:3] == ldap3_view(data)
    assert decoded[3] is None  # no controls


def test_long_form_lengths_where_short_would_do_are_read() -> None:
    """BER allows a long-form length for any size (some servers send 0x84 always)."""
    data = entry_message(7, b"cn=x", [(b"cn", [b"x"])], length_octets=4)
    assert search_entry(data) == (7, b"cn=x", {b"cn": [b"x"]}, None)
    assert ldap3_view(data) == (7, b"cn=x", {b"cn": [b"x"]})


def test_controls_after_the_entry_are_located_for_ldap3_to_decode() -> None:
    control = tlv(0xA0, tlv(0x30, tlv(0x04, b"1.3.6.1.4.1.4203.1.9.1.2")))
    data = entry_message(3, b"cn=x", [(b"cn", [b"x"])], controls=control)
    decoded = search_entry(data)
    assert decoded is not None
    start, end = decoded[3] or (0, 0)
    assert data[start:end] == control and end == len(data)


def test_a_repeated_attribute_keeps_all_its_values() -> None:
    data = entry_message(3, b"cn=x", [(b"mail", [b"a"]), (b"mail", [b"b"])])
    assert search_entry(data) == (3, b"cn=x", {b"mail": [b"a", b"b"]}, None)


def test_other_messages_are_left_to_ldap3() -> None:
    done = tlv(0x30, tlv(0x02, b"\x05") + tlv(0x65, b"\x0a\x01\x00\x04\x00\x04\x00"))
    assert search_entry(done) is None


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda m: m[:-1], id="truncated"),
        pytest.param(lambda m: m + b"\x00", id="trailing bytes"),
        pytest.param(lambda m: m[:1] + b"\x80" + m[2:], id="indefinite length"),
        pytest.param(lambda m: m.replace(b"\x31", b"\x30", 1), id="values not a SET"),
        pytest.param(lambda m: m.replace(b"\x04\x03ada", b"\x04\x7fada", 1), id="value too long"),
        pytest.param(lambda m: b"\x31" + m[1:], id="not a message"),
    ],
)
def test_a_message_not_shaped_as_expected_is_left_to_ldap3(damage: object) -> None:
    data = entry_message(3, b"cn=x", [(b"uid", [b"ada"]), (b"cn", [b"x"])])
    assert search_entry(damage(data)) is None  # type: ignore[operator]
