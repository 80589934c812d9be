"""The audit log: one entry per write attempted, in the state store, searchable from the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PEOPLE, ScimServers, sync, write_config
from tests.support.servers import Slapd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]


def audit(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, str]]:
    code, rows = sync(config, capsys, *args, command="audit")
    assert code == 0, rows
    assert isinstance(rows, list)
    return rows


def test_every_write_is_audited_with_its_run_and_cause(
    tmp_path: Path,
    directory: Slapd,
    scim_servers: ScimServers,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run with a user the target refuses: each create is logged with the run id, the
    refusal with the target's words; later runs add their own entries; the CLI filters by
    user, action, outcome, run and time."""
    scim = scim_servers.get("open")
    mapping = {"userName": "uid", "externalId": "$id", "profileUrl": "labeledURI"}
    config = write_config(tmp_path / "c.yaml", directory, scim, mapping=mapping)
    directory.modify(
        f"dn: uid=dee,{PEOPLE}\nchangetype: modify\nadd: labeledURI\nlabeledURI: not a url\n"
    )

    code, summary = sync(config, capsys)
    assert code == 1, summary
    first = audit(config, capsys)
    assert sorted((r["name"], r["action"], r["outcome"]) for r in first) == [
        ("ada", "create", "ok"),
        ("bob", "create", "ok"),
        ("dee", "create", "failed"),
    ]
    failure = next(r for r in first if r["outcome"] == "failed")
    assert "Invalid URI" in failure["cause"] and failure["scim_id"] is None
    run_ids = {r["run_id"] for r in first}
    assert len(run_ids) == 1 and None not in run_ids
    assert all(
        r["target"] == "app" and r["object"] == "user" and r["scim_id"]
        for r in first
        if r["outcome"] == "ok"
    )

    directory.modify(
        f"dn: uid=dee,{PEOPLE}\nchangetype: modify\nreplace: labeledURI\n"
        "labeledURI: https://example.org/dee\n\n"
        f"dn: uid=bob,{PEOPLE}\nchangetype: modify\nadd: objectClass\n"
        "objectClass: nsAccountLockable\n-\nadd: nsAccountLock\nnsAccountLock: TRUE\n"
    )
    code, summary = sync(config, capsys)
    assert code == 0, summary

    dee = audit(config, capsys, "--user", "DEE")
    assert [(r["action"], r["outcome"]) for r in dee] == [("create", "ok"), ("create", "failed")]
    disabled = audit(config, capsys, "--action", "disable")
    assert [(r["name"], r["outcome"]) for r in disabled] == [("bob", "ok")]
    assert audit(config, capsys, "--user", disabled[0]["scim_id"])[0]["name"] == "bob"
    assert [r["name"] for r in audit(config, capsys, "--outcome", "failed")] == ["dee"]
    assert len(audit(config, capsys, "--run", run_ids.pop())) == 3
    assert len(audit(config, capsys, "--since", "1h")) == 5
    assert audit(config, capsys, "--since", "2099-01-01") == []
    assert len(audit(config, capsys, "--limit", "2")) == 2

    from flows.cli import main

    monkeypatch.setenv("COLUMNS", "200")  # one line per entry in the table
    capsys.readouterr()
    assert main(["audit", "--config", str(config), "--user", "dee"]) == 0
    out = capsys.readouterr().out
    assert "audit log: 2 entries" in out and "Invalid URI" in out


def test_audit_of_a_store_that_does_not_exist_creates_nothing(
    tmp_path: Path,
    directory: Slapd,
    scim_servers: ScimServers,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path / "c.yaml", directory, scim_servers.get("open"))
    assert audit(config, capsys) == []
    assert not (tmp_path / "state.db").exists()
