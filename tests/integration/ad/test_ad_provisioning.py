"""Provisioning from a real Active Directory (Samba AD DC) into a real scim2-server.

objectGUID ids, userAccountControl disables, ``ad_usn`` cycles (uSNChanged against the DC's
highestCommittedUSN and invocationId), deletions found as tombstones, users moved out of the
scope, and a group of more than 1,500 members read in ranges.
"""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from ldap3 import Connection
from ldap3.utils.dn import escape_rdn

from tests.conftest import sync, target_users
from tests.integration.test_groups import target_groups
from tests.support.samba_dc import SambaDC
from tests.support.servers import ScimServer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect")]

NORMAL, DISABLED = 0x220, 0x222  # NORMAL_ACCOUNT | PASSWD_NOTREQD (| ACCOUNTDISABLE)
_numbers = itertools.count(1)


class Area:
    """An OU of people and an OU of groups of the session's DC, for one test only."""

    def __init__(self, dc: SambaDC) -> None:
        number = next(_numbers)
        self.dc = dc
        self.conn: Connection = dc.connection()
        self.people = f"OU=people{number},{dc.base_dn}"
        self.groups = f"OU=groups{number},{dc.base_dn}"
        for ou in (self.people, self.groups):
            self.conn.add(ou, "organizationalUnit")

    def user(self, sam: str, *, disabled: bool = False, title: str | None = None) -> str:
        dn = f"CN={escape_rdn(sam)},{self.people}"
        values: dict[str, Any] = {
            "objectClass": ["top", "person", "organizationalPerson", "user"],
            "sAMAccountName": sam,
            "givenName": sam.title(),
            "sn": "Tester",
            "mail": f"{sam}@corp.example.test",
            "userAccountControl": str(DISABLED if disabled else NORMAL),
        }
        if title:
            values["title"] = title
        self.conn.add(dn, attributes=values)
        return dn

    def users(self, count: int, prefix: str) -> list[str]:
        return [self.user(f"{prefix}{n:04d}") for n in range(count)]

    def group(self, name: str, members: list[str]) -> str:
        dn = f"CN={escape_rdn(name)},{self.groups}"
        self.conn.add(dn, attributes={"objectClass": ["top", "group"], "sAMAccountName": name})
        for first in range(0, len(members), 500):
            self.dc.add_members(dn, members[first : first + 500])
        return dn

    def close(self) -> None:
        self.conn.unbind()


@pytest.fixture
def area(samba_dc: SambaDC) -> Any:
    made = Area(samba_dc)
    yield made
    made.close()


@pytest.fixture
def admin_password(monkeypatch: pytest.MonkeyPatch, samba_dc: SambaDC) -> None:
    monkeypatch.setenv("TEST_AD_PASSWORD", samba_dc.admin_password)


def ad_config(tmp_path: Path, dc: SambaDC, area: Area, scim: ScimServer, **target: Any) -> Path:
    config = {
        "source": {
            "type": "active_directory",
            "url": dc.ldaps_url,
            "ca_file": str(dc.ca_file),
            "bind_dn": dc.admin_dn,
            "bind_password": {"env": "TEST_AD_PASSWORD"},
            "users": {
                "base_dn": area.people,
                "filter": "(&(objectClass=user)(objectCategory=person))",
            },
            "groups": {"base_dn": area.groups, "filter": "(objectClass=group)"},
        },
        "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "targets": [
            {
                "name": "app",
                "url": scim.base_url,
                "mapping": {
                    "userName": "sAMAccountName",
                    "externalId": "$id",
                    "name": {"givenName": "givenName", "familyName": "sn"},
                    "title": "title",
                    "emails": [{"value": "mail", "type": "work", "primary": True}],
                },
                **target,
            }
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def writes(summary: dict[str, Any]) -> int:
    return sum(t["writes"] for t in summary.get("targets", [])) + sum(
        g["writes"] for g in summary.get("groups", [])
    )


@pytest.mark.usefixtures("admin_password")
def test_ad_usn_cycles_see_adds_modifies_disables_deletes_moves_and_members(
    tmp_path: Path,
    samba_dc: SambaDC,
    area: Area,
    scim: ScimServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """First cycle: everyone (objectGUID ids as externalId; the disabled account left out).
    Second: a new user, a new title, a disabled account, a deleted account (its tombstone),
    a user moved out of the OU and a membership change, each reaching the target, reading
    only what changed. Third: nothing to do."""
    alice, brian = area.user("alice"), area.user("brian")
    area.user("carol", disabled=True)
    dave, frank = area.user("dave"), area.user("frank")
    team = area.group("team", [alice, brian])
    config = ad_config(tmp_path, samba_dc, area, scim)

    code, first = sync(config, capsys)
    assert code == 0, first
    assert first["directory"]["mode"] == "full pass (no watermark yet for app)"
    users = target_users(scim)
    assert sorted(users) == ["alice", "brian", "dave", "frank"]
    guid = uuid.UUID(users["alice"]["externalId"])  # the objectGUID, as AD tools show it
    assert str(guid) == users["alice"]["externalId"]
    assert target_groups(scim)["team"]["names"] == ["alice", "brian"]

    erin = area.user("erin")
    samba_dc.modify(alice, {"title": "Architect"})
    samba_dc.disable(brian)
    samba_dc.delete(dave)
    area.conn.modify_dn(frank, "CN=frank", new_superior=samba_dc.users_dn)
    samba_dc.add_members(team, [erin])
    code, second = sync(config, capsys)
    assert code == 0, second
    assert second["directory"]["mode"].startswith("changes since USN"), second
    assert second["directory"]["read"] == 3, second  # erin, alice, brian: nobody else
    users = target_users(scim)
    assert users["erin"]["active"] is True
    assert users["alice"]["title"] == "Architect"
    assert users["brian"]["active"] is False  # userAccountControl ACCOUNTDISABLE
    assert users["dave"]["active"] is False  # deleted: found by its tombstone
    assert users["frank"]["active"] is False  # moved out of the scope
    assert second["targets"][0]["succeeded"] == {
        "create": 1,
        "update": 1,
        "disable": 3,
        "delete": 0,
    }, second
    assert target_groups(scim)["team"]["names"] == ["alice", "erin"]  # brian is disabled

    code, third = sync(config, capsys)
    assert code == 0, third
    assert third["directory"]["read"] == 0 and writes(third) == 0, third


@pytest.mark.usefixtures("admin_password")
def test_a_group_of_1600_members_is_read_in_ranges(
    tmp_path: Path,
    samba_dc: SambaDC,
    area: Area,
    scim: ScimServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """member;range=0-1499 then 1500-*: all 1,600 members reach the target group."""
    members = area.users(1600, "m")
    area.group("big", members)
    config = ad_config(tmp_path, samba_dc, area, scim)
    code, summary = sync(config, capsys)
    assert code == 0, summary
    big = target_groups(scim)["big"]
    assert len(big["names"]) == 1600


@pytest.mark.usefixtures("admin_password")
def test_another_domain_controller_forces_a_full_pass(
    tmp_path: Path,
    samba_dc: SambaDC,
    area: Area,
    scim: ScimServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """USNs are per DC: a watermark from another DC (or from this one before a restore, which
    gets a new invocationId) is not trusted; the cycle reads everyone, and writes nothing."""
    area.user("gina")
    config = ad_config(tmp_path, samba_dc, area, scim)
    assert sync(config, capsys)[0] == 0
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with engine.begin() as conn:
        (value,) = conn.execute(
            sa.text("select value from watermarks where stream = 'users'")
        ).one()
        other = f"{uuid.uuid4()}:{value.split(':')[1]}"
        conn.execute(sa.text("update watermarks set value = :v"), {"v": other})
    engine.dispose()
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert "domain controller changed" in summary["directory"]["mode"], summary
    assert summary["directory"]["read"] == 1 and writes(summary) == 0, summary
