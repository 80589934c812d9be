"""Vendor profiles against the real scim2-server (where its strict RFC reading allows)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PEOPLE, sync, target_users, write_config
from tests.support.servers import ScimServer, Slapd

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


def test_target_without_filter_support(
    tmp_path: Path, directory: Slapd, scim_servers, capsys: pytest.CaptureFixture[str]
) -> None:
    """A target whose /ServiceProviderConfig says no filters (scim2-server then answers 501
    to any filter) is matched against listings: existing users and groups are adopted."""
    import requests

    from tests.conftest import GROUPS, create_on_target

    scim = scim_servers.get("nofilter")
    ada = create_on_target(scim, "ada")
    requests.post(
        f"{scim.base_url}/Groups",
        json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "staff"},
        timeout=10,
    ).raise_for_status()
    config = write_config(
        tmp_path / "c.yaml", directory, scim, source={"groups": {"base_dn": GROUPS}}
    )
    code, summary = sync(config, capsys)
    assert code == 0, summary
    users = target_users(scim)
    assert users["ada"]["id"] == ada["id"] and len(users) == 3
    assert summary["targets"][0]["adopted"] == 1
    assert summary["groups"][0]["adopted"] == 1
    scim.reset_stats()
    assert sync(config, capsys)[0] == 0
    assert scim.writes() == 0
