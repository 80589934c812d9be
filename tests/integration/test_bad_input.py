"""Bad and hostile directory data, end to end: real slapd → provision_users → real scim2-server.

Each test adds one kind of bad input next to the sample people (ada, bob, dee provisioned; cy
locked; eve out of scope) and checks that the run's report says, for that entry, exactly what is
wrong, and that nobody else loses anything in the same run.

Covered elsewhere, not repeated here:

- an entry missing a required attribute (no uid, so no userName): test_provision_users.py,
  ``TestBadInput.test_bad_entry_is_reported_and_others_provisioned``;
- two entries with the same userName:
  ``TestBadInput.test_duplicate_user_name_does_not_take_over_an_account`` (same file);
- invalid config and extension attributes unknown to the target: ``TestBadInput`` (same file);
- HTML error pages and other malformed answers: tests/unit/test_client_faults.py;
- a wrong bind password and a wrong certificate: test_connections.py.
"""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import ldap3
import pytest
import requests
import yaml
from ldap3.utils.dn import escape_rdn

from tasks.config import load_config
from tasks.ldap.extract import connect, paged_entries
from tests.conftest import (
    CUSTOM_URN,
    GROUPS,
    PEOPLE,
    create_on_target,
    person,
    sync,
    target_users,
    write_config,
)
from tests.support.servers import ScimServer, Slapd, person_ldif

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def dn_of(uid: str) -> str:
    """The DN of a person, its uid escaped (RFC 4514)."""
    return f"uid={escape_rdn(uid)},{PEOPLE}"


def add_person(directory: Slapd, uid: str, *, raw: str = "", **extra: list[str]) -> None:
    """Add an inetOrgPerson online (``raw``: LDIF lines appended as they are)."""
    entry = person_ldif(uid, given_name="Test", surname=uid, ou_dn=PEOPLE, extra=extra)
    directory.modify(entry.replace("\n", "\nchangetype: add\n", 1).rstrip("\n") + f"\n{raw}\n")


def b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


def with_mapping(config: Path, **extra: Any) -> Path:
    """The config with more SCIM attributes in the target's mapping."""
    data = yaml.safe_load(config.read_text())
    data["targets"][0]["mapping"].update(extra)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


def rejected(summary: dict[str, Any]) -> dict[str, str]:
    """The report's rejected entries: DN → reason."""
    return {r["entry"]: r["reason"] for r in summary["targets"][0]["rejected"]}


def assert_sample_people_intact(users: dict[str, dict[str, Any]]) -> None:
    """ada, bob and dee were provisioned with everything the directory says, in this run too."""
    ada, bob, dee = users["ada"], users["bob"], users["dee"]
    assert [e["value"] for e in ada["emails"]] == ["ada@example.org", "countess@example.org"]
    assert ada["title"] == "Countess" and ada[CUSTOM_URN] == {"costCenter": "CC-1001"}
    assert ada[ENTERPRISE] == {"employeeNumber": "1815", "department": "Analytical Engines"}
    assert bob["title"] == "Engineer" and bob[ENTERPRISE]["manager"]["value"] == ada["id"]
    assert [e["value"] for e in dee["emails"]] == ["dee@example.org"]
    assert all(u["active"] for u in (ada, bob, dee))
    assert "cy" not in users and "eve" not in users


def test_binary_value_in_a_mapped_attribute_rejects_the_entry_by_name(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """jpegPhoto (octet string) mapped to photos: a JPEG's bytes are not text, so the entry is
    rejected naming the attribute and the size (before, the value was dropped with a log line
    only); a text URL in the same attribute is sent; a provisioned user who gains binary data
    keeps its account as it was."""
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) + b"\xff\xd9"
    add_person(directory, "pat", raw=f"jpegPhoto:: {b64(jpeg)}")
    directory.modify(
        f"dn: {person('bob')}\nchangetype: modify\nadd: jpegPhoto\n"
        "jpegPhoto: https://photos.example.org/bob.jpg\n"
    )
    config = write_config(tmp_path / "c.yaml", directory, scim)
    with_mapping(config, photos=[{"value": "jpegPhoto", "type": "photo"}])
    code, summary = sync(config, capsys)
    assert code == 1, summary
    reason = (
        f"attribute jpegPhoto holds binary data (a value of {len(jpeg):,} bytes that is not "
        "UTF-8 text), which a SCIM string cannot carry; fix the entry or map a text attribute"
    )
    assert rejected(summary) == {person("pat"): reason}
    assert summary["targets"][0]["failures"] == []
    users = target_users(scim)
    assert sorted(users) == ["ada", "bob", "dee"]
    assert users["bob"]["photos"] == [
        {"value": "https://photos.example.org/bob.jpg", "type": "photo"}
    ]
    assert_sample_people_intact(users)

    directory.modify(
        f"dn: {person('dee')}\nchangetype: modify\nadd: jpegPhoto\njpegPhoto:: {b64(jpeg)}\n"
    )
    scim.reset_stats()
    code, summary = sync(config, capsys)
    assert code == 1
    assert rejected(summary) == {person("pat"): reason, person("dee"): reason}
    assert scim.writes() == 0  # dee neither updated without the photo nor deprovisioned
    assert target_users(scim) == users


def test_oversized_user_is_rejected_with_its_size_and_the_limit(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 2 MB description makes a user bigger than max_user_bytes (1 MiB by default): it is
    not sent, the report names its size, the limit and the attribute; with a larger limit on
    the target the whole value goes through."""
    add_person(directory, "big", description=["x" * 2_000_000])
    config = write_config(tmp_path / "c.yaml", directory, scim)
    code, summary = sync(config, capsys)
    assert code == 1, summary
    (reason,) = rejected(summary).values()
    assert rejected(summary).keys() == {person("big")}
    assert reason.startswith("the SCIM user is 2,00")
    assert reason.endswith(
        " bytes, over this target's max_user_bytes of 1,048,576: not sent "
        f"(largest attribute: {CUSTOM_URN}:costCenter, 2,000,002 bytes)"
    )
    users = target_users(scim)
    assert sorted(users) == ["ada", "bob", "dee"]
    assert_sample_people_intact(users)

    config = write_config(tmp_path / "c.yaml", directory, scim, max_user_bytes=4 * 1024 * 1024)
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert summary["targets"][0]["succeeded"]["create"] == 1
    assert target_users(scim)["big"][CUSTOM_URN]["costCenter"] == "x" * 2_000_000


def test_a_thousand_mail_values_are_kept_end_to_end(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """1,000 mail values become 1,000 emails in order (the first primary); a rerun writes
    nothing; one value removed in the directory leaves the other 999."""
    mails = [f"many.{n:04d}@example.org" for n in range(1000)]
    add_person(directory, "many", mail=mails)
    config = write_config(tmp_path / "c.yaml", directory, scim)
    code, summary = sync(config, capsys)
    assert code == 0, summary
    users = target_users(scim)
    emails = users["many"]["emails"]
    assert [e["value"] for e in emails] == mails
    assert emails[0]["primary"] is True and not any(e.get("primary") for e in emails[1:])
    assert_sample_people_intact(users)

    scim.reset_stats()
    assert sync(config, capsys)[0] == 0
    assert scim.writes() == 0

    directory.modify(
        f"dn: {person('many')}\nchangetype: modify\ndelete: mail\nmail: {mails[500]}\n"
    )
    scim.reset_stats()
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert scim.writes() == 1
    assert [e["value"] for e in target_users(scim)["many"]["emails"]] == mails[:500] + mails[501:]


def test_escaped_dns_resolve_as_manager_and_group_member(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A uid with a comma, a plus, a quote and a non-ASCII letter (DN
    ``uid=o\\+brien\\,jr\\"zoë,…``) is provisioned as itself; DN values naming it in another
    escaping and case (``uid=O\\2BBrien\\2CJR\\22ZO\\C3\\AB,…``) resolve as a manager and as a
    member of a group whose name is just as awkward."""
    odd = 'o+brien,jr"zoë'
    assert dn_of(odd) == f'uid=o\\+brien\\,jr\\"zoë,{PEOPLE}'
    add_person(directory, odd, manager=[person("ada")])
    other_form = f"uid=O\\2BBrien\\2CJR\\22ZO\\C3\\AB,{PEOPLE}"
    add_person(directory, "kid", manager=[other_form])
    group = 'R&D, "Zürich"+ops'
    group_dn = f'cn=R&D\\, \\"Zürich\\"\\+ops,{GROUPS}'
    directory.modify(
        f"dn:: {b64(group_dn)}\nchangetype: add\nobjectClass: groupOfNames\n"
        f"cn:: {b64(group)}\nmember: {other_form}\nmember: {person('kid')}\n"
    )
    config = write_config(
        tmp_path / "c.yaml", directory, scim, source={"groups": {"base_dn": GROUPS}}
    )
    code, summary = sync(config, capsys)
    assert code == 0, summary
    users = target_users(scim)
    assert sorted(users) == sorted(["ada", "bob", "dee", "kid", odd])
    assert users[odd][ENTERPRISE]["manager"]["value"] == users["ada"]["id"]
    assert users["kid"][ENTERPRISE]["manager"]["value"] == users[odd]["id"]
    assert_sample_people_intact(users)
    groups = requests.get(f"{scim.base_url}/Groups", timeout=10).json()["Resources"]
    (awkward,) = [g for g in groups if g["displayName"] == group]
    assert {m["value"] for m in awkward["members"]} == {users[odd]["id"], users["kid"]["id"]}
    report = summary["groups"][0]
    assert report["failures"] == [] and report["warnings"] == []
    assert group not in {item["group"] for item in report["not_provisioned_members"]}

    scim.reset_stats()
    assert sync(config, capsys)[0] == 0
    assert scim.writes() == 0  # the DNs compare equal run after run


HOSTILE = ["x*)(uid=*", 'evil" or userName pr "', 'nobody" or userName eq "mallory']


def test_filter_injection_in_data_never_reaches_another_user(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """uids built to break an LDAP filter or a SCIM filter (unescaped, the last two would
    match mallory, a user already on the target, and adopt her) are provisioned as
    themselves: one new target user each, mallory and the others untouched; a later change
    to them changes only them."""
    create_on_target(scim, "mallory")
    mallory = target_users(scim)["mallory"]
    for uid in HOSTILE:
        add_person(directory, uid)
    config = write_config(tmp_path / "c.yaml", directory, scim)
    code, summary = sync(config, capsys)
    assert code == 0, summary
    response = requests.get(f"{scim.base_url}/Users", params={"count": "1000"}, timeout=10)
    names = [u["userName"] for u in response.json()["Resources"]]
    assert sorted(names) == sorted(["ada", "bob", "dee", "mallory", *HOSTILE])  # once each
    users = target_users(scim)
    assert users["mallory"] == mallory
    assert summary["targets"][0]["adopted"] == 0
    assert summary["targets"][0]["succeeded"]["create"] == 6
    assert len({users[uid]["externalId"] for uid in HOSTILE}) == 3
    assert_sample_people_intact(users)

    directory.modify(
        "".join(
            f"dn: {dn}\nchangetype: modify\nreplace: title\ntitle: Intruder\n\n"
            for dn in map(dn_of, HOSTILE)
        )
    )
    scim.reset_stats()
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert summary["targets"][0]["succeeded"]["update"] == 3 and scim.writes() <= 3
    after = target_users(scim)
    assert {name for name in after if after[name] != users[name]} == set(HOSTILE)
    assert all(after[uid]["title"] == "Intruder" for uid in HOSTILE)


def test_entries_are_read_exactly_as_ldap3_decodes_them(
    tmp_path: Path, directory: Slapd, scim: ScimServer
) -> None:
    """The provisioner decodes search entries from their bytes itself (tasks/ldap/ber.py, for
    speed); slapd's answers with lengths of one to four octets (a 76,800-byte photo, a
    2,000,000-byte description), multi-valued, binary and non-ASCII values, and an escaped
    DN come out equal to what ldap3's own decoder makes of the same search."""
    photo = bytes(range(256)) * 300
    add_person(
        directory,
        "wide, Émile",
        raw=f"jpegPhoto:: {b64(photo)}\ndescription:: {b64('ü' * 300)}\n"
        + "".join(f"mail: w{n}@example.org\n" for n in range(200)),
    )
    add_person(directory, "huge", description=["x" * 2_000_000])
    source = load_config(str(write_config(tmp_path / "c.yaml", directory, scim))).source
    conn = connect(source)
    try:
        ours = {
            dn: {name.lower(): values for name, values in raw.items()}
            for dn, raw in paged_entries(conn, source, PEOPLE, "(uid=*)", "subtree", ["*", "+"])
        }
    finally:
        conn.unbind()
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(directory.tls.ca_cert))
    server = ldap3.Server(directory.ldaps_url, use_ssl=True, tls=tls, get_info=ldap3.NONE)
    plain = ldap3.Connection(server, directory.admin_dn, directory.admin_password)
    plain.bind()
    try:  # ldap3's own decoding: a connection as ldap3 makes it
        plain.search(PEOPLE, "(uid=*)", attributes=["*", "+"], paged_size=500)
        theirs = {
            e["dn"]: {name.lower(): values for name, values in e["raw_attributes"].items()}
            for e in plain.response
            if e["type"] == "searchResEntry"
        }
    finally:
        plain.unbind()
    assert ours == theirs
    by_uid = {entry["uid"][0].decode(): entry for entry in ours.values()}
    assert by_uid["wide, Émile"]["jpegphoto"] == [photo]
    assert by_uid["wide, Émile"]["description"] == ["ü".encode() * 300]
    assert len(by_uid["wide, Émile"]["mail"]) == 200
    assert by_uid["huge"]["description"] == [b"x" * 2_000_000]
