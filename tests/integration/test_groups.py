"""Groups and memberships end to end: real slapd → Prefect flows → real scim2-server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import GROUPS, PEOPLE, ScimServers, sync, target_users, write_config
from tests.support.servers import ScimServer, Slapd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]

GROUP_SOURCE = {"groups": {"base_dn": GROUPS}}


def target_groups(scim: ScimServer) -> dict[str, dict[str, Any]]:
    """Every group on the target by displayName, with ``names``: its members' userNames."""
    ids = {u["id"]: name for name, u in target_users(scim).items()}
    response = requests.get(f"{scim.base_url}/Groups", params={"count": "1000"}, timeout=10)
    response.raise_for_status()
    groups = {}
    for group in response.json().get("Resources", []):
        group["names"] = sorted(ids.get(m["value"], m["value"]) for m in group.get("members", []))
        groups[group["displayName"]] = group
    return groups


def forget_groups(database: Path) -> None:
    """Empty the state store's group table, as if the groups had never been provisioned."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{database}")
    with engine.begin() as conn:
        conn.execute(sa.text("delete from provisioned_groups"))
    engine.dispose()


def add_on_target(scim: ScimServer, group: str, user: str) -> None:
    """Someone else adds a member to a group directly on the target."""
    group_id = target_groups(scim)[group]["id"]
    requests.patch(
        f"{scim.base_url}/Groups/{group_id}",
        json={
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [
                {
                    "op": "add",
                    "path": "members",
                    "value": [{"value": target_users(scim)[user]["id"]}],
                }
            ],
        },
        timeout=10,
    ).raise_for_status()


def groups_summary(summary: dict[str, Any]) -> dict[str, Any]:
    return summary["groups"][0]


def config_for(tmp_path: Path, directory: Slapd, scim: ScimServer, **options: Any) -> Path:
    groups = {**GROUP_SOURCE["groups"], **options.pop("groups", {})}
    return write_config(tmp_path / "c.yaml", directory, scim, source={"groups": groups}, **options)


def run_groups(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    """``scim-provisioner groups``: the sync_group_memberships flow only."""
    return sync(config, capsys, command="groups")


class TestCreate:
    def test_sync_creates_groups_with_provisioned_members(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """One sync provisions users, then groups with the members that are provisioned and
        active; the locked and the out-of-scope members are left out and counted."""
        config = config_for(tmp_path, directory, scim)
        code, summary = sync(config, capsys)
        assert code == 0, summary
        groups = target_groups(scim)
        assert groups["engineers"]["names"] == ["ada", "bob"]
        assert groups["everyone"]["names"] == ["ada", "bob", "dee"]
        assert groups["auditors"]["names"] == ["dee"]  # groupOfUniqueNames
        assert groups["staff"]["names"] == ["dee"]  # nested group not flattened
        assert len(groups["engineers"]["externalId"]) == 36
        g = groups_summary(summary)
        assert g["succeeded"]["create"] == 4
        counts = {r["group"]: r["members"] for r in g["not_provisioned_members"]}
        assert counts == {"everyone": 2, "staff": 1}
        scim.reset_stats()
        assert sync(config, capsys)[0] == 0
        assert scim.writes() == 0

    def test_existing_group_is_adopted(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A group already on the target with the same displayName is found by filter, adopted,
        and its membership replaced by the directory's (authoritative mode)."""
        config = config_for(tmp_path, directory, scim)
        assert sync(config, capsys)[0] == 0
        dee = target_users(scim)["dee"]["id"]
        requests.delete(
            f"{scim.base_url}/Groups/{target_groups(scim)['engineers']['id']}", timeout=10
        )
        existing = requests.post(
            f"{scim.base_url}/Groups",
            json={
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "displayName": "engineers",
                "members": [{"value": dee}],
            },
            timeout=10,
        ).json()
        forget_groups(tmp_path / "state.db")
        code, summary = run_groups(config, capsys)
        assert code == 0, summary
        groups = target_groups(scim)
        assert groups["engineers"]["id"] == existing["id"]
        assert groups["engineers"]["names"] == ["ada", "bob"]
        assert groups_summary(summary)["adopted"] >= 1


class TestChanges:
    def test_members_added_and_removed_by_patch(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A membership change costs one read of the group and one PATCH."""
        config = config_for(tmp_path, directory, scim)
        assert sync(config, capsys)[0] == 0
        directory.modify(
            f"dn: cn=engineers,{GROUPS}\nchangetype: modify\n"
            f"delete: member\nmember: uid=bob,{PEOPLE}\n-\nadd: member\nmember: uid=dee,{PEOPLE}\n"
        )
        scim.reset_stats()
        code, summary = run_groups(config, capsys)
        assert code == 0, summary
        assert scim.stats()["PATCH"] == 1 and scim.writes() == 1
        assert target_groups(scim)["engineers"]["names"] == ["ada", "dee"]
        g = groups_summary(summary)
        assert (g["members_added"], g["members_removed"]) == (1, 1)
        code, log = sync(config, capsys, "--user", "engineers", command="audit")
        assert [(e["object"], e["action"], e["cause"]) for e in log] == [
            ("group", "update", "+1 members, -1 members"),
            ("group", "create", "+2 members"),
        ]

    def test_rename_keeps_the_scim_id(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = config_for(tmp_path, directory, scim)
        assert sync(config, capsys)[0] == 0
        before = target_groups(scim)["auditors"]["id"]
        directory.modify(
            f"dn: cn=auditors,{GROUPS}\nchangetype: modrdn\nnewrdn: cn=reviewers\ndeleteoldrdn: 1\n"
        )
        code, summary = run_groups(config, capsys)
        assert code == 0, summary
        groups = target_groups(scim)
        assert "auditors" not in groups
        assert groups["reviewers"]["id"] == before
        assert groups_summary(summary)["renamed"] == 1
        assert groups["reviewers"]["names"] == ["dee"]

    def test_deleted_group_is_deleted_or_skipped(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = config_for(tmp_path, directory, scim)
        assert sync(config, capsys)[0] == 0
        directory.modify(f"dn: cn=auditors,{GROUPS}\nchangetype: delete\n")
        keep = config_for(tmp_path, directory, scim, delete_groups=False)
        code, summary = run_groups(keep, capsys)
        assert code == 0
        assert "auditors" in target_groups(scim)
        assert groups_summary(summary)["skipped"] == [
            {"group": "auditors", "would": "delete", "reason": "group deletion is switched off"}
        ]
        config = config_for(tmp_path, directory, scim)
        code, summary = run_groups(config, capsys)
        assert code == 0
        assert "auditors" not in target_groups(scim)
        assert groups_summary(summary)["succeeded"]["delete"] == 1

    @pytest.mark.parametrize("remove_action", ["disable", "delete"])
    def test_deprovisioned_user_leaves_its_groups(
        self,
        remove_action: str,
        tmp_path: Path,
        directory: Slapd,
        scim: ScimServer,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A user deleted in the directory is removed from every group (disabled or deleted)."""
        config = config_for(tmp_path, directory, scim, remove_action=remove_action)
        assert sync(config, capsys)[0] == 0
        directory.modify(f"dn: uid=bob,{PEOPLE}\nchangetype: delete\n")
        code, summary = sync(config, capsys)
        assert code == 0, summary
        groups = target_groups(scim)
        assert groups["engineers"]["names"] == ["ada"]
        assert groups["everyone"]["names"] == ["ada", "dee"]


class TestModes:
    def test_nested_groups_flattened_with_cycle_reported(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        directory.modify(
            f"dn: cn=engineers,{GROUPS}\nchangetype: modify\nadd: member\n"
            f"member: cn=staff,{GROUPS}\n"
        )
        config = config_for(tmp_path, directory, scim, groups={"flatten_nested": True})
        code, summary = sync(config, capsys)
        assert code == 0, summary
        groups = target_groups(scim)
        assert groups["staff"]["names"] == ["ada", "bob", "dee"]
        assert groups["engineers"]["names"] == ["ada", "bob", "dee"]
        assert any("nested group cycle" in w for w in groups_summary(summary)["warnings"])

    def test_additive_mode_never_removes_what_it_did_not_add(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = config_for(tmp_path, directory, scim, membership_mode="additive")
        assert sync(config, capsys)[0] == 0
        add_on_target(scim, "engineers", "dee")
        directory.modify(
            f"dn: cn=engineers,{GROUPS}\nchangetype: modify\ndelete: member\n"
            f"member: uid=bob,{PEOPLE}\n"
        )
        code, summary = run_groups(config, capsys)
        assert code == 0, summary
        assert target_groups(scim)["engineers"]["names"] == ["ada", "dee"]  # dee kept, bob gone

    def test_authoritative_mode_removes_foreign_members_on_change(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = config_for(tmp_path, directory, scim)
        assert sync(config, capsys)[0] == 0
        add_on_target(scim, "engineers", "dee")
        directory.modify(
            f"dn: cn=engineers,{GROUPS}\nchangetype: modify\ndelete: member\n"
            f"member: uid=bob,{PEOPLE}\n"
        )
        assert run_groups(config, capsys)[0] == 0
        assert target_groups(scim)["engineers"]["names"] == ["ada"]

    def test_put_when_the_target_has_no_patch(
        self,
        tmp_path: Path,
        directory: Slapd,
        scim_servers: ScimServers,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        scim = scim_servers.get("nopatch")
        config = config_for(tmp_path, directory, scim)
        assert sync(config, capsys)[0] == 0
        directory.modify(
            f"dn: cn=engineers,{GROUPS}\nchangetype: modify\n"
            f"add: member\nmember: uid=dee,{PEOPLE}\n"
        )
        scim.reset_stats()
        code, summary = run_groups(config, capsys)
        assert code == 0, summary
        assert scim.stats()["PUT"] == 1 and scim.stats()["PATCH"] == 0
        assert target_groups(scim)["engineers"]["names"] == ["ada", "bob", "dee"]

    def test_switched_off_group_sync_leaves_groups_alone(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = config_for(tmp_path, directory, scim, sync_groups=False)
        code, summary = sync(config, capsys)
        assert code == 0
        assert target_groups(scim) == {}
        assert "groups" not in summary


def test_plan_shows_group_changes(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """``plan`` lists group creations with the members the sync would give them."""
    import json

    from flows.cli import main

    config = config_for(tmp_path, directory, scim)
    capsys.readouterr()
    assert main(["plan", "--config", str(config), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)[0]
    actions = {a["group"]: a for a in plan["groups"]["actions"]}
    assert actions["engineers"] == {
        "action": "create",
        "group": "engineers",
        "add": 2,
        "remove": 0,
        "rename": False,
    }
    assert sum(scim.stats().values()) == 0


def test_many_new_groups_are_matched_against_one_listing(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """60 new groups: the target's groups are listed once instead of one look-up per create
    (before: 64 filter GETs); one already on the target under another case ("TEAM07") is
    adopted, never duplicated."""
    from tests.conftest import group_ldif, person

    directory.modify(
        "".join(
            group_ldif(f"team{n:02d}", [person("ada")]).replace("\n", "\nchangetype: add\n", 1)
            for n in range(60)
        )
    )
    requests.post(
        f"{scim.base_url}/Groups",
        json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "TEAM07"},
        timeout=10,
    ).raise_for_status()
    scim.reset_stats()
    code, summary = sync(config_for(tmp_path, directory, scim), capsys)
    assert code == 0, summary
    assert scim.stats()["GET"] < 15, scim.stats()
    names = [g.casefold() for g in target_groups(scim)]
    assert len(names) == 64 and names.count("team07") == 1
    assert groups_summary(summary)["adopted"] == 1


def test_a_sync_with_groups_reaches_each_target_once(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """One authenticated request proves a target reachable for the whole run: the group step
    uses the client the user step reached (before: a second probe)."""
    config = config_for(tmp_path, directory, scim)
    assert sync(config, capsys)[0] == 0
    scim.reset_stats()
    code, summary = sync(config, capsys)
    assert code == 0, summary
    sent = {method: n for method, n in scim.stats().items() if n}
    assert sent == {"GET": 1}, sent


def task_runs_of_the_run_of(config: Path, expected: dict[str, int]) -> list[Any]:
    """The task runs of the latest provision_users flow run made with this config, once
    ``expected`` of each name prefix have been recorded and ended (task runs reach the server
    as events, a moment later)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["provision_users"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=50,
        )
        run = next(r for r in runs if r.parameters.get("config_path") == str(config))
        for _ in range(80):
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
            )
            ended = [t for t in tasks if t.end_time is not None]
            if all(
                sum(t.name.startswith(prefix) for t in ended) >= count
                for prefix, count in expected.items()
            ):
                return ended
            time.sleep(0.25)
    names = [t.name for t in tasks]
    raise AssertionError(f"flow run {run.id}: task runs {expected} not all recorded: {names}")


def test_the_groups_are_read_while_the_users_load(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The group step's directory read runs beside the user load (which mostly waits for the
    target, here 0.1 s away, one user a batch): it starts before the last user batch ends, not
    after it; the groups come out as the read after the load made them (the incremental
    inputs, the DNs of changed and deprovisioned users, go through the same read in the tests
    of TestChanges)."""
    from tests.fault_proxy import FaultProxy

    proxy = FaultProxy(scim.base_url.removesuffix("/v2"), rates={})
    proxy.latency = 0.1
    proxy.start()
    try:
        config = config_for(
            tmp_path, directory, scim, url=f"{proxy.url}/v2", batch_size=1, use_bulk="never"
        )
        code, summary = sync(config, capsys)
    finally:
        proxy.stop()
    assert code == 0, summary
    created = summary["targets"][0]["succeeded"]["create"]
    assert created > 1
    runs = task_runs_of_the_run_of(
        config, {"extract-group-changes-from-LDAP": 1, "load-app-batch-": created}
    )
    read = next(r for r in runs if r.name.startswith("extract-group-changes-from-LDAP"))
    loads = [r for r in runs if r.name.startswith("load-app-batch-")]
    assert read.start_time < max(load.end_time for load in loads)
    groups = target_groups(scim)
    assert groups["engineers"]["names"] == ["ada", "bob"]
    assert groups["everyone"]["names"] == ["ada", "bob", "dee"]
    assert groups["auditors"]["names"] == ["dee"]
    assert groups["staff"]["names"] == ["dee"]
    assert groups_summary(summary)["succeeded"]["create"] == 4


def test_groups_command_without_groups_config(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "c.yaml", directory, scim)
    code, err = run_groups(config, capsys)
    assert code == 2
    assert "no source.groups section" in err


def test_a_20000_member_group_changed_by_10_members(
    tmp_path: Path, slapd: Slapd, scim_servers: ScimServers, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 20,000-member group is created in one POST (as few requests as the target accepts:
    its bulk.maxOperations limits Bulk, not a POST), and a change of 10 members then costs one
    read and one PATCH."""
    people = big_group_directory(slapd, 20_000, people=20_005)
    scim = scim_servers.get("open")
    config = config_for(tmp_path, slapd, scim, concurrency=8)
    code, summary = sync(config, capsys)
    assert code == 0, summary["headline"]
    created = groups_summary(summary)
    assert created["members_added"] == 20_000
    assert created["requests"] == {"GET": 1, "POST": 1}  # GET: find by name

    removed = "".join(f"member: uid={uid},{PEOPLE}\n" for uid in people[:5])
    added = "".join(f"member: uid={uid},{PEOPLE}\n" for uid in people[20_000:])
    slapd.modify(
        f"dn: cn=all,{GROUPS}\nchangetype: modify\ndelete: member\n{removed}-\nadd: member\n{added}"
    )
    scim.reset_stats()
    code, summary = run_groups(config, capsys)
    assert code == 0, summary["headline"]
    changed = groups_summary(summary)
    assert (changed["members_added"], changed["members_removed"]) == (5, 5)
    assert changed["requests"] == {"GET": 1, "PATCH": 1}  # GET: the group's members
    assert scim.writes() == 1
    group = requests.get(
        f"{scim.base_url}/Groups", params={"filter": 'displayName eq "all"'}, timeout=60
    ).json()["Resources"][0]
    assert len(group["members"]) == 20_000


def big_group_directory(slapd: Slapd, members: int, people: int | None = None) -> list[str]:
    """``people`` people m00000… (default: ``members``) and one group ``all`` holding the
    first ``members`` of them; returns their uids."""
    from tests.support.servers import ou_ldif, person_ldif

    uids = [f"m{n:05d}" for n in range(people or members)]
    ldif = ou_ldif(PEOPLE) + "".join(
        person_ldif(uid, given_name="M", surname=uid, ou_dn=PEOPLE) for uid in uids
    )
    lines = "".join(f"member: uid={uid},{PEOPLE}\n" for uid in uids[:members])
    ldif += ou_ldif(GROUPS) + f"dn: cn=all,{GROUPS}\nobjectClass: groupOfNames\ncn: all\n{lines}\n"
    slapd.reload(ldif)
    return uids


def members_of_all(scim: ScimServer) -> int:
    found = requests.get(
        f"{scim.base_url}/Groups", params={"filter": 'displayName eq "all"'}, timeout=60
    ).json()["Resources"]
    return len(found[0]["members"])


def test_a_new_group_is_created_in_chunks_when_the_config_limits_members_per_request(
    tmp_path: Path, slapd: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """``max_members_per_request`` limits a new group's POST too: 250 members at 100 a request
    are one POST and two PATCHes, and all 250 are in."""
    big_group_directory(slapd, 250)
    config = config_for(tmp_path, slapd, scim, max_members_per_request=100)
    code, summary = sync(config, capsys)
    assert code == 0, summary["headline"]
    created = groups_summary(summary)
    assert created["members_added"] == 250
    assert created["requests"] == {"GET": 1, "POST": 1, "PATCH": 2}
    assert members_of_all(scim) == 250


def test_a_new_group_too_large_for_one_request_is_created_in_chunks(
    tmp_path: Path, slapd: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A target (its nginx) that answers 413 to a POST with every member: the group is created
    with fewer and PATCHed up to all of them, and the run says so; nothing is reported
    failed."""
    from tests.fault_proxy import FaultProxy

    big_group_directory(slapd, 1500)
    proxy = FaultProxy(scim.base_url.removesuffix("/v2"), rates={})
    proxy.max_body = 50_000  # ~1,000 members' worth
    proxy.start()
    try:
        config = config_for(tmp_path, slapd, scim, url=f"{proxy.url}/v2", use_bulk="never")
        code, summary = sync(config, capsys)
    finally:
        proxy.stop()
    assert code == 0, summary["headline"]
    created = groups_summary(summary)
    assert created["members_added"] == 1500
    assert proxy.too_large == 1
    assert any("too large for one request (HTTP 413)" in n for n in created["notes"])
    assert created["requests"]["POST"] == 2 and created["requests"]["PATCH"] >= 1
    assert members_of_all(scim) == 1500
