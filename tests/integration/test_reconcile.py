"""The reconcile flow against drift made by hand on a real scim2-server."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from tests.conftest import ScimServers, create_on_target, sync, target_users
from tests.integration.test_groups import config_for, target_groups
from tests.support.servers import ScimServer, Slapd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]

PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def patch(scim: ScimServer, path: str, *operations: dict[str, Any]) -> None:
    body = {"schemas": [PATCH], "Operations": list(operations)}
    requests.patch(f"{scim.base_url}{path}", json=body, timeout=10).raise_for_status()


def reconcile(
    config: Path, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, dict[str, Any]]:
    code, summary = sync(config, capsys, *args, command="reconcile")
    assert code != 2, summary
    return code, summary


def classes(summary: dict[str, Any], what: str = "users") -> dict[str, int]:
    counts = summary["reconciliation"][0]["counts"][what]
    return {kind: n for kind, n in counts.items() if n and kind != "in step"}


def state_rows(tmp_path: Path) -> list[Any]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("select source_id, scim_id, content_hash from provisioned_users order by 1")
        ).all()
    engine.dispose()
    return list(rows)


def written_at(tmp_path: Path, user_name: str) -> Any:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with engine.connect() as conn:
        moment = conn.execute(
            sa.text("select updated_at from provisioned_users where user_name = :n"),
            {"n": user_name},
        ).scalar_one()
    engine.dispose()
    return moment


@pytest.fixture
def scim(scim_servers: ScimServers) -> ScimServer:
    return scim_servers.get("open")


def test_drift_is_reported_by_a_dry_run_then_repaired(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user deleted on the target, an attribute changed there, a member removed there and
    an unmanaged user: the dry run reports each (CSV too) and writes nothing; the real run
    repairs all but the unmanaged user, and a second reconcile finds nothing else."""
    config = config_for(tmp_path, directory, scim)
    assert sync(config, capsys)[0] == 0
    users = target_users(scim)
    requests.delete(f"{scim.base_url}/Users/{users['dee']['id']}", timeout=10).raise_for_status()
    patch(scim, f"/Users/{users['bob']['id']}", {"op": "replace", "path": "title", "value": "CEO"})
    engineers = target_groups(scim)["engineers"]
    remove_ada = {"op": "remove", "path": f'members[value eq "{users["ada"]["id"]}"]'}
    patch(scim, f"/Groups/{engineers['id']}", remove_ada)
    create_on_target(scim, "mallory")
    before = state_rows(tmp_path)
    scim.reset_stats()

    code, summary = reconcile(config, capsys, "--dry-run")
    assert code == 0, summary
    assert scim.writes() == 0 and state_rows(tmp_path) == before
    assert classes(summary) == {"stale state": 1, "attributes drifted": 1, "unmanaged": 1}
    # engineers lost ada; the three groups of dee hold the id of a user that is gone
    assert classes(summary, "groups") == {"membership drifted": 4}
    result = summary["reconciliation"][0]
    with open(result["report_file"], newline="") as handle:
        rows = {(r["object"], r["kind"], r["name"]): r for r in csv.DictReader(handle)}
    assert rows[("user", "attributes drifted", "bob")]["detail"] == "differs on the target: title"
    assert ("user", "stale state", "dee") in rows and ("user", "unmanaged", "mallory") in rows
    assert "1 members missing" in rows[("group", "membership drifted", "engineers")]["detail"]
    assert result["would"]["users"]["create"] == 1 and result["would"]["users"]["update"] == 1

    ada_written = written_at(tmp_path, "ada")
    code, summary = reconcile(config, capsys)
    assert code == 0, summary
    assert written_at(tmp_path, "ada") == ada_written  # in step: her state record untouched
    users = target_users(scim)
    assert users["bob"]["title"] == "Engineer" and "dee" in users and "mallory" in users
    assert users["mallory"].get("active", True) is True  # not ours: left alone
    assert target_groups(scim)["engineers"]["names"] == ["ada", "bob"]

    scim.reset_stats()
    code, summary = reconcile(config, capsys)
    assert code == 0 and classes(summary) == {"unmanaged": 1}, summary
    assert classes(summary, "groups") == {}
    assert scim.writes() == 0


def test_wiped_state_store_is_rebuilt_without_a_create(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the state store is lost, reconcile re-links every user and group by the
    externalId we set: no create, no duplicate, and the next sync changes nothing."""
    config = config_for(tmp_path, directory, scim)
    assert sync(config, capsys)[0] == 0
    before = state_rows(tmp_path)
    (tmp_path / "state.db").unlink()
    scim.reset_stats()

    code, summary = reconcile(config, capsys)
    assert code == 0, summary
    assert classes(summary) == {"re-linked": 3}
    assert classes(summary, "groups") == {"re-linked": 4}
    assert scim.stats()["POST"] == 0 and scim.writes() == 0
    assert [(r[0], r[1]) for r in state_rows(tmp_path)] == [(r[0], r[1]) for r in before]
    scim.reset_stats()
    assert sync(config, capsys)[0] == 0
    assert scim.writes() == 0


def test_unmanaged_users_deprovisioned_only_when_configured_and_past_the_guard(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """deprovision_unmanaged disables users nobody in the directory accounts for, through the
    mass-deprovisioning guard: 12 of them trip a limit of 5 and nothing is disabled."""
    guard = {"max_count": 5, "min_count": 1}
    config = config_for(
        tmp_path, directory, scim, deprovision_unmanaged=True, deprovision_guard=guard
    )
    assert sync(config, capsys)[0] == 0
    for n in range(12):
        create_on_target(scim, f"stray{n:02d}")
    code, summary = reconcile(config, capsys)
    assert code == 1, summary
    assert summary["targets"][0]["held_back"] == 12
    assert all(u.get("active", True) for u in target_users(scim).values())

    code, summary = reconcile(config, capsys, "--allow-mass-deprovisioning")
    assert code == 0, summary
    users = target_users(scim)
    assert sorted(n for n, u in users.items() if u.get("active") is False) == [
        f"stray{n:02d}" for n in range(12)
    ]
    assert users["ada"]["active"] is True
