"""Incremental cycles on a real OpenLDAP (syncprov + accesslog) into a real scim2-server.

Every change detection method sees adds, modifies, disables, deletes, users leaving the filter
and group membership changes; a cycle with k user changes sends k writes; a slapd restart
between cycles loses nothing; a failed cycle keeps its watermark and the next one converges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import GROUPS, PEOPLE, person, sync, target_users, write_config
from tests.fault_proxy import FaultProxy
from tests.integration.test_groups import target_groups
from tests.support.servers import ScimServer, Slapd, person_ldif

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]

METHODS = ["timestamp", "timestamp_no_negation", "syncrepl", "full"]


def config_for(
    tmp_path: Path, slapd: Slapd, scim: ScimServer, method: str, *, groups: bool = True, **kw: Any
) -> Path:
    source: dict[str, Any] = {"change_detection": method}
    if groups:
        source["groups"] = {"base_dn": GROUPS}
    return write_config(tmp_path / "config.yaml", slapd, scim, source=source, **kw)


def change(slapd: Slapd, dn: str, **replace: list[str]) -> str:
    """LDIF replacing attributes of one entry."""
    lines = [f"dn: {dn}", "changetype: modify"]
    for attribute, values in replace.items():
        lines.append(f"replace: {attribute}")
        lines += [f"{attribute}: {v}" for v in values]
        lines.append("-")
    return "\n".join(lines) + "\n\n"


def lock(dn: str) -> str:
    """LDIF locking an account (nsAccountLock: TRUE)."""
    return (
        f"dn: {dn}\nchangetype: modify\nadd: objectClass\nobjectClass: nsAccountLockable\n-\n"
        "add: nsAccountLock\nnsAccountLock: TRUE\n-\n\n"
    )


def added(uid: str) -> str:
    return person_ldif(uid, given_name="New", surname=uid.title(), ou_dn=PEOPLE).replace(
        "\n", "\nchangetype: add\n", 1
    )


def writes(summary: dict[str, Any]) -> int:
    users = sum(t["writes"] for t in summary.get("targets", []))
    return users + sum(g.get("writes", 0) for g in summary.get("groups", []))


def watermarks(database: Path) -> dict[tuple[str, str], str]:
    engine = sa.create_engine(f"sqlite:///{database}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select target, stream, value from watermarks")).all()
    engine.dispose()
    return {(r.target, r.stream): r.value for r in rows}


@pytest.mark.parametrize("method", METHODS)
def test_each_method_sees_adds_modifies_disables_deletes_leavers_and_memberships(
    method: str,
    tmp_path: Path,
    directory: Slapd,
    scim: ScimServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One cycle after the first: a new user, a changed title, a locked account, a deleted
    account, a user moved out of the filter, and two membership changes all reach the
    target; the next cycle finds nothing to do."""
    directory.modify(added("gus"))
    config = config_for(tmp_path, directory, scim, method)
    code, first = sync(config, capsys)
    assert code == 0, first
    assert first["directory"]["mode"].startswith("full pass")
    assert set(target_users(scim)) == {"ada", "bob", "dee", "gus"}

    directory.modify(
        added("fay")
        + change(directory, person("ada"), title=["Chief Engineer"])
        + lock(person("gus"))
        + f"dn: {person('bob')}\nchangetype: delete\n\n"
        + change(directory, person("dee"), employeeType=["contractor"])
        + change(directory, f"cn=engineers,{GROUPS}", member=[person("ada"), person("fay")])
        + change(directory, f"cn=auditors,{GROUPS}", uniqueMember=[person("ada")])
    )
    code, second = sync(config, capsys)
    assert code == 0, second
    mode = second["directory"]["mode"]
    assert mode.startswith("full pass") if method == "full" else "full" not in mode, mode
    users = target_users(scim)
    assert users["fay"]["active"] is True
    assert users["ada"]["title"] == "Chief Engineer"
    assert users["gus"]["active"] is False  # locked
    assert users["bob"]["active"] is False  # deleted: the remove action is disable
    assert users["dee"]["active"] is False  # out of the filter
    succeeded = second["targets"][0]["succeeded"]
    assert succeeded["create"] == 1 and succeeded["update"] == 1, second
    assert succeeded["disable"] == 3, second
    groups = target_groups(scim)
    assert groups["engineers"]["names"] == ["ada", "fay"]
    assert groups["auditors"]["names"] == ["ada"]

    code, third = sync(config, capsys)
    assert code == 0, third
    assert writes(third) == 0, third
    if method == "syncrepl":
        assert third["directory"]["read"] == 0, third


@pytest.mark.parametrize("method", ["timestamp", "syncrepl"])
def test_k_changes_cost_k_write_requests(
    method: str,
    tmp_path: Path,
    directory: Slapd,
    scim: ScimServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Among 59 users, a cycle with 5 changes (2 modified, 1 added, 1 locked, 1 deleted)
    sends exactly 5 write requests to the target (Bulk off: one request per change), and one
    with none sends none."""
    directory.modify("".join(added(f"x{n:02d}") for n in range(56)))
    config = config_for(tmp_path, directory, scim, method, groups=False, use_bulk="never")
    code, first = sync(config, capsys)
    assert code == 0 and first["targets"][0]["succeeded"]["create"] == 59, first  # cy is locked
    scim.reset_stats()
    directory.modify(
        change(directory, person("x01"), title=["One"])
        + change(directory, person("x02"), sn=["Two"])
        + added("new")
        + lock(person("x03"))
        + f"dn: {person('x04')}\nchangetype: delete\n\n"
    )
    code, second = sync(config, capsys)
    assert code == 0, second
    assert second["targets"][0]["writes"] == 5, second
    assert scim.writes() == 5
    code, third = sync(config, capsys)
    assert code == 0 and third["targets"][0]["writes"] == 0, third
    assert scim.writes() == 5


@pytest.mark.parametrize("method", ["syncrepl", "timestamp"])
def test_a_slapd_restart_between_cycles_loses_nothing(
    method: str,
    tmp_path: Path,
    directory: Slapd,
    scim: ScimServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Changes made, then slapd restarted (syncrepl's session log comes back from the
    accesslog database): the next cycle still sees the deletion and the change."""
    config = config_for(tmp_path, directory, scim, method)
    assert sync(config, capsys)[0] == 0
    directory.modify(
        f"dn: {person('dee')}\nchangetype: delete\n\n"
        + change(directory, person("ada"), title=["After restart"])
    )
    directory.restart()
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert "full" not in summary["directory"]["mode"]
    users = target_users(scim)
    assert users["dee"]["active"] is False
    assert users["ada"]["title"] == "After restart"


def test_a_stale_syncrepl_cookie_falls_back_to_a_present_phase(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cookie older than anything the server logged (as after a long outage or a
    restored directory): the server lists what is present; deletions are still found."""
    config = config_for(tmp_path, directory, scim, "syncrepl", groups=False)
    assert sync(config, capsys)[0] == 0
    database = tmp_path / "state.db"
    engine = sa.create_engine(f"sqlite:///{database}")
    with engine.begin() as conn:
        conn.execute(
            sa.text("update watermarks set value = :v"),
            {"v": "rid=000,csn=20000101000000.000000Z#000000#000#000000"},
        )
    engine.dispose()
    directory.modify(f"dn: {person('dee')}\nchangetype: delete\n\n")
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert "present phase" in summary["directory"]["mode"]
    assert target_users(scim)["dee"]["active"] is False
    assert summary["targets"][0]["writes"] == 1


def test_a_failed_cycle_keeps_its_watermark_and_the_next_converges(
    tmp_path: Path,
    directory: Slapd,
    scim: ScimServer,
    proxy: FaultProxy,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The target fails every request of the second cycle: the watermark stays where the
    first left it; the third cycle (target healthy) applies the change once, and no user
    exists twice."""
    config = config_for(tmp_path, directory, scim, "syncrepl", groups=False, url=f"{proxy.url}/v2")
    assert sync(config, capsys)[0] == 0
    marks = watermarks(tmp_path / "state.db")
    directory.modify(added("fay") + change(directory, person("ada"), title=["Retried"]))
    proxy.rates = {"5xx": 1.0}
    code, failed = sync(config, capsys)
    assert code != 0, failed
    assert watermarks(tmp_path / "state.db") == marks
    proxy.rates = {}
    code, summary = sync(config, capsys)
    assert code == 0, summary
    succeeded = summary["targets"][0]["succeeded"]
    assert succeeded["create"] == 1 and succeeded["update"] == 1, summary
    assert watermarks(tmp_path / "state.db") != marks
    users = target_users(scim)
    assert users["ada"]["title"] == "Retried"
    assert sorted(users) == ["ada", "bob", "dee", "fay"]  # cy is locked


def test_full_flag_reads_everyone(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--full`` makes a full pass even with a watermark, for users and for groups."""
    config = config_for(tmp_path, directory, scim, "timestamp")
    assert sync(config, capsys)[0] == 0
    code, summary = sync(config, capsys, "--full")
    assert code == 0, summary
    assert summary["directory"]["mode"] == "full pass (a full pass was asked for (--full))"
    assert summary["source_entries"] == 4
    assert writes(summary) == 0
    code, groups = sync(config, capsys, "--full", command="groups")
    assert code == 0 and writes(groups) == 0, groups


def test_a_new_mapping_forces_a_full_pass(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A watermark is only valid for the mapping it was made with: a newly mapped attribute
    reaches every user, although none of them changed in the directory."""
    config = config_for(tmp_path, directory, scim, "syncrepl", groups=False)
    assert sync(config, capsys)[0] == 0
    mapping = {"userName": "uid", "externalId": "$id", "displayName": "cn", "title": "sn"}
    config = config_for(tmp_path, directory, scim, "syncrepl", groups=False, mapping=mapping)
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert "mapping" in summary["directory"]["mode"]
    assert target_users(scim)["ada"]["title"] == "Lovelace"


class GroupsFaultProxy(FaultProxy):
    """Injects its faults into requests for groups only (users go through untouched)."""

    def _pick(self, path: str) -> str | None:
        return super()._pick(path) if path.startswith("/v2/Groups") else None


def test_a_user_cycle_waits_for_its_groups(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user locked in a cycle whose group sync fails: the user is disabled, but the user
    watermark stays, so the next cycle reads the user again and takes it out of its groups
    (its groups did not change in the directory: only the user cycle names them)."""
    proxy = GroupsFaultProxy(scim.base_url.removesuffix("/v2"), rates={})
    proxy.start()
    try:
        config = config_for(tmp_path, directory, scim, "syncrepl", url=f"{proxy.url}/v2")
        assert sync(config, capsys)[0] == 0
        assert target_groups(scim)["auditors"]["names"] == ["dee"]
        marks = watermarks(tmp_path / "state.db")
        directory.modify(lock(person("dee")))
        proxy.rates = {"5xx": 1.0}
        code, failed = sync(config, capsys)
        assert code != 0, failed
        assert target_users(scim)["dee"]["active"] is False
        assert watermarks(tmp_path / "state.db")[("app", "users")] == marks[("app", "users")]
        proxy.rates = {}
        code, summary = sync(config, capsys)
        assert code == 0, summary
        assert target_groups(scim)["auditors"]["names"] == []
    finally:
        proxy.stop()
