"""Vendor profiles against the real scim2-server (where its strict RFC reading allows)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.local_servers import ScimServer, Slapd
from tests.conftest import PEOPLE, sync, target_users, write_config

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]


def test_aws_profile_sends_one_email(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """ada has two mail values: the AWS profile provisions the primary one only, and a second
    sync sees nothing to change."""
    config = write_config(tmp_path / "c.yaml", directory, scim, dialect="aws")
    assert sync(config, capsys)[0] == 0
    emails = target_users(scim)["ada"]["emails"]
    assert [e["value"] for e in emails] == ["ada@example.org"]
    scim.reset_stats()
    assert sync(config, capsys)[0] == 0
    assert scim.writes() == 0


def test_entra_profile_updates_and_disables(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Capitalised operations and string booleans, accepted by scim2-server for users."""
    config = write_config(tmp_path / "c.yaml", directory, scim, dialect="entra")
    assert sync(config, capsys)[0] == 0
    directory.modify(f"dn: uid=bob,{PEOPLE}\nchangetype: delete\n")
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert target_users(scim)["bob"]["active"] is False
