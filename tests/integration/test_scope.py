"""Per-application scope on a real slapd into two real scim2-server instances: each target
receives only its users (an LDAP filter, membership of given groups) and its groups (a
filter, a list of DNs); a user who leaves one target's scope is deprovisioned there and stays
in the other; a user who enters a scope by a group change alone is created; narrowing a
scope to nobody is held back by the guard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import GROUPS, ScimServers, person, sync, target_users, write_config
from tests.integration.test_groups import target_groups
from tests.integration.test_incremental import change
from tests.support.servers import Slapd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]


def two_targets(tmp_path: Path, directory: Slapd, servers: ScimServers) -> tuple[Path, Any, Any]:
    """``eng``: members of engineers, only the engineers group; ``hr``: staff by
    employeeType, only the everyone group."""
    eng, hr = servers.get("open"), servers.get("scope-hr")
    config = write_config(
        tmp_path / "c.yaml",
        directory,
        eng,
        source={"change_detection": "timestamp", "groups": {"base_dn": GROUPS}},
        use_bulk="never",
    )
    document = yaml.safe_load(config.read_text())
    first = document["targets"][0]
    first.update(name="eng", scope={"member_of": [f"cn=engineers,{GROUPS}"]})
    first["scope"]["group_dns"] = [f"CN=Engineers,{GROUPS}"]  # DNs compare normalized
    second = {
        **first,
        "name": "hr",
        "url": hr.base_url,
        "scope": {"users_filter": "(employeeType=staff)", "groups_filter": "(cn=everyone)"},
        "deprovision_guard": {"min_count": 1, "max_share": 0.5},
    }
    document["targets"].append(second)
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    return config, eng, hr


def active(scim: Any) -> set[str]:
    return {name for name, user in target_users(scim).items() if user.get("active", True)}


def test_each_target_receives_its_scope_and_leavers_go_only_there(
    tmp_path: Path,
    directory: Slapd,
    scim_servers: ScimServers,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, eng, hr = two_targets(tmp_path, directory, scim_servers)
    code, first = sync(config, capsys)
    assert code == 0, first
    assert set(target_users(eng)) == {"ada", "bob"}
    assert set(target_users(hr)) == {"ada", "bob"}  # employeeType=staff
    assert set(target_groups(eng)) == {"engineers"}
    assert set(target_groups(hr)) == {"everyone"}
    assert target_groups(hr)["everyone"]["names"] == ["ada", "bob"]  # dee is not on hr

    # a group change alone: bob leaves engineers, dee joins; no user entry changes
    directory.modify(
        change(directory, f"cn=engineers,{GROUPS}", member=[person("ada"), person("dee")])
    )
    code, second = sync(config, capsys)
    assert code == 0, second
    assert "full" not in second["directory"]["mode"]
    assert active(eng) == {"ada", "dee"}  # dee entered eng's scope by the group change
    assert target_users(eng)["bob"]["active"] is False  # bob left it: disabled there
    assert active(hr) == {"ada", "bob"}  # and stays in the other target
    assert target_groups(eng)["engineers"]["names"] == ["ada", "dee"]

    code, third = sync(config, capsys)
    assert code == 0, third
    assert sum(t["writes"] for t in third["targets"]) == 0, third

    # bob comes back by a group change alone: enabled again on eng (his record there was
    # disabled, so "provisioned" must not hide him from the scope's newcomers)
    directory.modify(
        change(
            directory,
            f"cn=engineers,{GROUPS}",
            member=[person("ada"), person("bob"), person("dee")],
        )
    )
    code, fourth = sync(config, capsys)
    assert code == 0, fourth
    assert active(eng) == {"ada", "bob", "dee"}
    assert target_groups(eng)["engineers"]["names"] == ["ada", "bob", "dee"]


def test_narrowing_a_scope_to_nobody_is_held_back_by_the_guard(
    tmp_path: Path,
    directory: Slapd,
    scim_servers: ScimServers,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, eng, hr = two_targets(tmp_path, directory, scim_servers)
    assert sync(config, capsys)[0] == 0
    document = yaml.safe_load(config.read_text())
    document["targets"][1]["scope"]["users_filter"] = "(employeeType=nobody)"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    code, summary = sync(config, capsys)
    assert code == 1, summary
    hr_report = next(t for t in summary["targets"] if t["target"] == "hr")
    assert hr_report["held_back"] == 2, hr_report
    assert active(hr) == {"ada", "bob"}  # nothing disabled
    assert active(eng) == {"ada", "bob"}


def test_a_scope_naming_a_missing_group_stops_with_one_line(
    tmp_path: Path,
    directory: Slapd,
    scim_servers: ScimServers,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, eng, _ = two_targets(tmp_path, directory, scim_servers)
    document = yaml.safe_load(config.read_text())
    document["targets"][0]["scope"]["member_of"] = [f"cn=nosuch,{GROUPS}"]
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    code, err = sync(config, capsys)
    assert code == 2
    assert f"targets[eng].scope.member_of: there is no group 'cn=nosuch,{GROUPS.lower()}'" in err
    assert target_users(eng) == {}


@pytest.mark.parametrize(("nested", "expected"), [(False, {"dee"}), (True, {"ada", "bob", "dee"})])
def test_member_of_counts_nested_groups_only_when_asked(
    nested: bool,
    expected: set[str],
    tmp_path: Path,
    directory: Slapd,
    scim_servers: ScimServers,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """staff lists dee and the engineers group (ada, bob): its members are dee, and with
    ``nested`` the engineers too."""
    scim = scim_servers.get("open")
    scope = {"member_of": [f"cn=staff,{GROUPS}"], "nested": nested}
    config = write_config(tmp_path / "c.yaml", directory, scim, scope=scope)
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert set(target_users(scim)) == expected
