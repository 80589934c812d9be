"""SCIM 1.1: the tests' 1.1 server checked on its own, then users and groups provisioned over
1.1 end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import CUSTOM_URN, GROUPS, PEOPLE, sync, write_config
from tests.support.servers import ScimServer, Slapd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]

CORE_11 = "urn:scim:schemas:core:1.0"
ENTERPRISE_11 = "urn:scim:schemas:extension:enterprise:1.0"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def scim11_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScimServer]:
    server = ScimServer(
        tmp_path_factory.mktemp("scim11"),
        app="tests.scim11_app:create_app()",
        prefix="/v1",
        user_extensions=[{"urn": CUSTOM_URN, "attributes": ["costCenter"]}],
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def scim11(scim11_server: ScimServer) -> ScimServer:
    scim11_server.wipe()
    return scim11_server


class TestTheTestServer:
    """The 1.1 facade speaks 1.1: URNs, plural discovery, partial-resource PATCH, errors."""

    def test_resources_discovery_patch_and_errors(self, scim11: ScimServer) -> None:
        base = scim11.base_url
        assert requests.get(f"{base}/ServiceProviderConfigs", timeout=10).status_code == 200
        created = requests.post(
            f"{base}/Users",
            json={
                "schemas": [CORE_11, ENTERPRISE_11],
                "userName": "ada",
                "title": "Dr",
                "emails": [{"value": "a@x.org"}],
                ENTERPRISE_11: {"department": "R&D"},
            },
            headers=JSON,
            timeout=10,
        )
        assert created.status_code == 201
        assert created.headers["Content-Type"] == "application/json"
        user = created.json()
        assert user["schemas"] == [CORE_11, ENTERPRISE_11]
        patch = {
            "schemas": [CORE_11],
            "meta": {"attributes": ["title", "emails"]},
            "emails": [{"value": "b@x.org"}],
            ENTERPRISE_11: {"department": "Ops"},
        }
        url = f"{base}/Users/{user['id']}"
        assert requests.patch(url, json=patch, headers=JSON, timeout=10).status_code in (200, 204)
        user = requests.get(url, timeout=10).json()
        assert "title" not in user
        assert [e["value"] for e in user["emails"]] == ["b@x.org"]
        assert user[ENTERPRISE_11] == {"department": "Ops"}
        group = requests.post(
            f"{base}/Groups",
            json={"schemas": [CORE_11], "displayName": "g", "members": [{"value": user["id"]}]},
            headers=JSON,
            timeout=10,
        ).json()
        removal = {"schemas": [CORE_11], "members": [{"value": user["id"], "operation": "delete"}]}
        requests.patch(f"{base}/Groups/{group['id']}", json=removal, headers=JSON, timeout=10)
        assert not requests.get(f"{base}/Groups/{group['id']}", timeout=10).json().get("members")
        conflict = requests.post(
            f"{base}/Users",
            json={"schemas": [CORE_11], "userName": "ada"},
            headers=JSON,
            timeout=10,
        )
        assert conflict.status_code == 409
        assert conflict.json()["Errors"][0]["code"] == "409"


def users_11(scim: ScimServer) -> dict[str, dict[str, Any]]:
    body = requests.get(f"{scim.base_url}/Users", params={"count": "1000"}, timeout=10).json()
    return {u["userName"]: u for u in body.get("Resources", [])}


def test_users_and_groups_over_scim11(
    tmp_path: Path, directory: Slapd, scim11: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """scim_version "1.1" is one config key: create, update with clearing, disable, groups and
    member changes all go over 1.1, and a second sync writes nothing."""
    config = write_config(
        tmp_path / "c.yaml",
        directory,
        scim11,
        scim_version="1.1",
        source={"groups": {"base_dn": GROUPS}},
    )
    code, summary = sync(config, capsys)
    assert code == 0, summary
    users = users_11(scim11)
    assert sorted(users) == ["ada", "bob", "dee"]
    assert users["ada"][ENTERPRISE_11]["department"] == "Analytical Engines"
    assert users["bob"][ENTERPRISE_11]["manager"]["value"] == users["ada"]["id"]
    directory.modify(
        f"dn: uid=ada,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Mathematician\n-\n"
        "delete: mobile\n-\ndelete: departmentNumber\n\n"
        f"dn: uid=dee,{PEOPLE}\nchangetype: delete\n\n"
        f"dn: cn=engineers,{GROUPS}\nchangetype: modify\ndelete: member\nmember: uid=bob,{PEOPLE}\n"
    )
    scim11.reset_stats()
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert scim11.stats()["PUT"] == 0 and scim11.stats()["PATCH"] >= 3
    users = users_11(scim11)
    assert users["ada"]["title"] == "Mathematician"
    assert [p["type"] for p in users["ada"]["phoneNumbers"]] == ["work"]
    assert "department" not in users["ada"][ENTERPRISE_11]
    assert users["dee"]["active"] is False
    groups = requests.get(f"{scim11.base_url}/Groups", timeout=10).json()["Resources"]
    engineers = next(g for g in groups if g["displayName"] == "engineers")
    assert [m["value"] for m in engineers["members"]] == [users["ada"]["id"]]
    scim11.reset_stats()
    assert sync(config, capsys)[0] == 0
    assert scim11.writes() == 0
