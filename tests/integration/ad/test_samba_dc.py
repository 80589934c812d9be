"""The Samba AD DC fixture gives what the provisioner needs from Active Directory.

Each test talks to the DC with ldap3 directly, as the provisioner does: LDAPS verified with
the test CA, objectGUID, userAccountControl, uSNChanged against highestCommittedUSN, the DC's
invocationId, tombstones (Show Deleted), and ranged reads of a group's members.
"""

from __future__ import annotations

import ssl
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ldap3 import BASE, LEVEL, NONE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPSocketOpenError
from ldap3.utils.conv import escape_bytes

from tests.support.samba_dc import UF_ACCOUNTDISABLE, SambaDC
from tests.support.servers import make_tls_files

pytestmark = pytest.mark.integration

SHOW_DELETED = ("1.2.840.113556.1.4.417", True, None)
RANGE_SIZE = 1500
BIG_GROUP_SIZE = 1600


Connect = Callable[..., Connection]


@pytest.fixture
def connect(samba_dc: SambaDC) -> Iterator[Connect]:
    """Opens admin connections over LDAPS (``SambaDC.connection``), unbound after the test."""
    opened: list[Connection] = []

    def open_connection(**options: Any) -> Connection:
        connection = samba_dc.connection(**options)
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        connection.unbind()


def read(connection: Connection, dn: str, *attributes: str, **options: Any) -> dict[str, Any]:
    """Return the raw attribute values (bytes) of one entry, read with a base search."""
    connection.search(dn, "(objectClass=*)", BASE, attributes=list(attributes), **options)
    assert len(connection.response) == 1, connection.response
    raw: dict[str, Any] = connection.response[0]["raw_attributes"]
    return raw


def guid_of(connection: Connection, dn: str) -> uuid.UUID:
    return uuid.UUID(bytes_le=read(connection, dn, "objectGUID")["objectGUID"][0])


def test_ldaps_is_verified_with_the_test_ca(samba_dc: SambaDC, connect: Connect) -> None:
    connection = connect()
    assert connection.bound
    root = read(connection, "", "defaultNamingContext")
    assert root["defaultNamingContext"][0].decode().lower() == samba_dc.base_dn.lower()


def test_ldaps_with_another_ca_fails(samba_dc: SambaDC, tmp_path: Path) -> None:
    other_ca = make_tls_files(tmp_path / "other").ca_cert
    tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(other_ca))
    server = Server(samba_dc.ldaps_url, use_ssl=True, tls=tls, get_info=NONE, connect_timeout=5)
    with pytest.raises(LDAPSocketOpenError, match="CERTIFICATE_VERIFY_FAILED"):
        Connection(server, samba_dc.admin_dn, samba_dc.admin_password, auto_bind=True)


def test_plain_ldap_simple_bind_works(samba_dc: SambaDC) -> None:
    server = Server(samba_dc.ldap_url, get_info=NONE, connect_timeout=5)
    connection = Connection(
        server, samba_dc.admin_dn, samba_dc.admin_password, auto_bind=True, auto_referrals=False
    )
    assert connection.bound
    connection.unbind()


def test_object_guid_is_a_stable_id(samba_dc: SambaDC, connect: Connect) -> None:
    dn = samba_dc.add_user("guid.user", "Grace", "Hopper", "grace@corp.example.test")
    connection = connect()
    guid = guid_of(connection, dn)
    assert guid.version == 4
    # Found again by its GUID, as a filter and as a <GUID=...> DN.
    connection.search(samba_dc.users_dn, f"(objectGUID={escape_bytes(guid.bytes_le)})")
    assert [entry["dn"].lower() for entry in connection.response] == [dn.lower()]
    by_guid = read(connection, f"<GUID={guid}>", "sAMAccountName", "mail", "givenName", "sn")
    assert by_guid["sAMAccountName"] == [b"guid.user"]
    assert by_guid["mail"] == [b"grace@corp.example.test"]
    assert (by_guid["givenName"], by_guid["sn"]) == ([b"Grace"], [b"Hopper"])


def test_disable_and_enable_flip_the_user_account_control_bit(
    samba_dc: SambaDC, connect: Connect
) -> None:
    dn = samba_dc.add_user("uac.user", "Alan", "Turing", "alan@corp.example.test")
    born_disabled = samba_dc.add_user("uac.off", "Off", "User", None, disabled=True)
    connection = connect()

    def control(entry: str) -> int:
        return int(read(connection, entry, "userAccountControl")["userAccountControl"][0])

    assert control(dn) & UF_ACCOUNTDISABLE == 0
    assert control(born_disabled) & UF_ACCOUNTDISABLE
    samba_dc.disable(dn)
    assert control(dn) & UF_ACCOUNTDISABLE
    samba_dc.enable(dn)
    assert control(dn) & UF_ACCOUNTDISABLE == 0


def test_a_modified_user_has_a_usn_above_the_previous_highest_committed(
    samba_dc: SambaDC,
    connect: Connect,
) -> None:
    dn = samba_dc.add_user("usn.user", "Edsger", "Dijkstra", "edsger@corp.example.test")
    before = samba_dc.highest_committed_usn()
    samba_dc.modify(dn, {"title": "Professor", "mail": None})
    connection = connect()
    entry = read(connection, dn, "uSNChanged", "title", "mail")
    assert int(entry["uSNChanged"][0]) > before
    assert entry["title"] == [b"Professor"]
    assert "mail" not in entry or entry["mail"] == []
    # What a poller asks: everything changed since the last highestCommittedUSN it saw.
    connection.search(samba_dc.base_dn, f"(&(objectClass=user)(uSNChanged>={before + 1}))")
    assert [item["dn"].lower() for item in connection.response if "dn" in item] == [dn.lower()]
    assert samba_dc.highest_committed_usn() >= int(entry["uSNChanged"][0])


def test_the_dc_invocation_id_is_readable(samba_dc: SambaDC, connect: Connect) -> None:
    connection = connect()
    service = read(connection, "", "dsServiceName")["dsServiceName"][0].decode()
    assert service.startswith("CN=NTDS Settings,")
    invocation_id = uuid.UUID(bytes_le=read(connection, service, "invocationId")["invocationId"][0])
    assert invocation_id.int != 0
    assert invocation_id == uuid.UUID(
        bytes_le=read(connect(), service, "invocationId")["invocationId"][0]
    )


def test_a_deleted_user_is_a_tombstone_found_with_show_deleted(
    samba_dc: SambaDC, connect: Connect
) -> None:
    dn = samba_dc.add_user("gone.user", "Gone", "Away", "gone@corp.example.test")
    connection = connect()
    guid = guid_of(connection, dn)
    samba_dc.delete(dn)
    guid_filter = f"(objectGUID={escape_bytes(guid.bytes_le)})"
    connection.search(samba_dc.base_dn, guid_filter)
    assert [item for item in connection.response if "dn" in item] == []

    deleted_objects = f"CN=Deleted Objects,{samba_dc.base_dn}"
    connection.search(
        deleted_objects,
        guid_filter,
        LEVEL,
        attributes=["isDeleted", "objectGUID", "lastKnownParent"],
        controls=[SHOW_DELETED],
    )
    tombstones = [item for item in connection.response if "dn" in item]
    assert len(tombstones) == 1
    tombstone = tombstones[0]
    assert tombstone["dn"].endswith(deleted_objects)
    assert "\\0ADEL:" in tombstone["dn"]
    assert tombstone["raw_attributes"]["isDeleted"] == [b"TRUE"]
    assert uuid.UUID(bytes_le=tombstone["raw_attributes"]["objectGUID"][0]) == guid
    last_parent = tombstone["raw_attributes"]["lastKnownParent"][0].decode()
    assert last_parent.lower() == samba_dc.users_dn.lower()


def test_group_members_change(samba_dc: SambaDC, connect: Connect) -> None:
    ann, ben, cat = (
        samba_dc.add_user(sam, sam.title(), "Member", None) for sam in ("ann", "ben", "cat")
    )
    group = samba_dc.add_group("small-team", [ann, ben])
    samba_dc.remove_members(group, [ann])
    samba_dc.add_members(group, [cat])
    members = read(connect(), group, "member")["member"]
    assert sorted(value.decode().lower() for value in members) == sorted([ben.lower(), cat.lower()])


def test_a_big_group_is_read_in_ranges_of_1500(samba_dc: SambaDC, connect: Connect) -> None:
    users = samba_dc.add_users(BIG_GROUP_SIZE, "bulk")
    assert len(users) == BIG_GROUP_SIZE
    group = samba_dc.add_group("everyone-big", users)
    connection = connect(auto_range=False, return_empty_attributes=False)

    first = read(connection, group, f"member;range=0-{RANGE_SIZE - 1}")
    assert list(first) == [f"member;range=0-{RANGE_SIZE - 1}"]
    assert len(first[f"member;range=0-{RANGE_SIZE - 1}"]) == RANGE_SIZE

    rest = read(connection, group, f"member;range={RANGE_SIZE}-*")
    assert list(rest) == [f"member;range={RANGE_SIZE}-*"]
    assert len(rest[f"member;range={RANGE_SIZE}-*"]) == BIG_GROUP_SIZE - RANGE_SIZE

    members = [*first[f"member;range=0-{RANGE_SIZE - 1}"], *rest[f"member;range={RANGE_SIZE}-*"]]
    assert {value.decode().lower() for value in members} == {dn.lower() for dn in users}


def test_a_second_dc_restores_from_the_cache_and_stop_cleans_up(
    samba_dc: SambaDC, connect: Connect, tmp_path: Path
) -> None:
    """Two DCs run side by side (own namespaces); stop() leaves no process or namespace."""
    with SambaDC(tmp_path / "second") as second:
        second.start()
        assert "provision" not in second.timings  # the session's DC filled the cache
        second_connection = second.connection()
        assert second_connection.bound
        second_connection.unbind()
        namespace = second.namespace
        pids = [child.process.pid for child in second._children]
    assert (
        namespace
        not in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout
    )
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)
    second.stop()  # a second stop does nothing
    assert connect().bound


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True
