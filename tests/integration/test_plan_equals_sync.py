"""``plan`` lists exactly the writes the next ``sync`` makes: the same directory reads from the
same watermarks, the same plans and the same guard (one pipeline, flows/pipeline.py), for a
first cycle, an incremental cycle and a full pass, users and groups. The writes are taken from
the audit log (one entry per write attempted), not from the sync's own summary.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GROUPS, person, sync, write_config
from tests.integration.test_incremental import added, change, lock
from tests.support.servers import ScimServer, Slapd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]


def run_cli(capsys: pytest.CaptureFixture[str], *words: str) -> Any:
    from flows.cli import main

    capsys.readouterr()
    code = main(list(words))
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def writes_since(config: Path, moment: datetime, capsys: pytest.CaptureFixture[str]) -> Any:
    rows = run_cli(
        capsys, "audit", "--config", str(config), "--json", "--since", moment.isoformat()
    )
    assert all(r["outcome"] == "ok" for r in rows), rows
    users = Counter((r["action"], r["name"]) for r in rows if r["object"] == "user")
    groups = Counter((r["action"], r["name"]) for r in rows if r["object"] == "group")
    return users, groups


def plan_then_sync(
    config: Path, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``plan`` then ``sync`` with the same arguments; assert the sync's writes are the
    plan's; return both."""
    plan = run_cli(capsys, "plan", "--config", str(config), "--json", *args)[0]
    moment = datetime.now(UTC)
    code, summary = sync(config, capsys, *args)
    assert code == 0, summary
    users, groups = writes_since(config, moment, capsys)

    planned = Counter((a["action"], a["user"]) for a in plan["actions"])
    # a user whose manager is created in the same run is created without the reference and
    # updated right after the creates: the plan counts these as deferred
    extra = users - planned
    assert planned - users == Counter(), (plan, users)
    assert extra.total() == plan["deferred"], (plan, users)
    assert all(kind == "update" for kind, _ in extra), extra

    planned_groups = Counter((g["action"], g["group"]) for g in plan["groups"]["actions"])
    assert groups == planned_groups, (plan["groups"], groups)
    done = summary["groups"][0]
    assert done["members_added"] == sum(g["add"] for g in plan["groups"]["actions"])
    assert done["members_removed"] == sum(g["remove"] for g in plan["groups"]["actions"])
    assert summary["directory"]["mode"] == plan["directory"]["mode"]
    return plan, summary


def test_plan_lists_the_writes_of_the_next_sync(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """First cycle, an incremental cycle (a new user, a changed title, a locked account, a
    deleted account, member changes, a new group, a deleted group), then a full pass: each
    time the sync writes what the plan before it listed, no more and no less."""
    config = write_config(
        tmp_path / "c.yaml",
        directory,
        scim,
        source={"change_detection": "timestamp", "groups": {"base_dn": GROUPS}},
        use_bulk="never",
    )
    first, _ = plan_then_sync(config, capsys)
    assert first["counts"]["create"] == 3 and first["deferred"] == 1  # bob's manager is ada

    directory.modify(
        added("fay")
        + change(directory, person("ada"), title=["Chief Engineer"])
        + lock(person("dee"))
        + f"dn: {person('bob')}\nchangetype: delete\n\n"
        + change(directory, f"cn=engineers,{GROUPS}", member=[person("ada"), person("fay")])
        + f"dn: cn=auditors,{GROUPS}\nchangetype: delete\n\n"
        + f"dn: cn=founders,{GROUPS}\nchangetype: add\nobjectClass: groupOfNames\n"
        f"cn: founders\nmember: {person('ada')}\nmember: {person('fay')}\n\n"
    )
    second, _ = plan_then_sync(config, capsys)
    assert "full" not in second["directory"]["mode"]
    assert Counter(a["action"] for a in second["actions"]) == {
        "create": 1,
        "update": 1,
        "disable": 2,
    }
    kinds = {(g["action"], g["group"]) for g in second["groups"]["actions"]}
    assert {("create", "founders"), ("delete", "auditors")} <= kinds

    directory.modify(change(directory, person("fay"), title=["Analyst"]))
    third, _ = plan_then_sync(config, capsys, "--full")
    assert third["directory"]["mode"].startswith("full pass")
    assert [(a["action"], a["user"]) for a in third["actions"]] == [("update", "fay")]

    fourth, _ = plan_then_sync(config, capsys)
    assert fourth["actions"] == [] and fourth["groups"]["actions"] == []
