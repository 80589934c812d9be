"""AWS IAM Identity Center's rules, end to end: real slapd → Prefect → a proxy behaving as AWS
documents (no members in group reads, eq-only filters, no Bulk, 100 members a request) → a
real scim2-server, whose true memberships are read behind the proxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.aws_proxy import AwsLikeProxy
from tests.conftest import GROUPS, PEOPLE, sync, write_config
from tests.support.servers import ScimServer, Slapd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]


@pytest.fixture
def aws(scim: ScimServer) -> Iterator[AwsLikeProxy]:
    proxy = AwsLikeProxy(scim.base_url.removesuffix("/v2"))
    proxy.start()
    yield proxy
    proxy.stop()


def true_memberships(scim: ScimServer) -> dict[str, list[str]]:
    """Every group on the real server behind the proxy, with its members' userNames."""
    users = requests.get(f"{scim.base_url}/Users", params={"count": "1000"}, timeout=10).json()
    names = {u["id"]: u["userName"] for u in users.get("Resources", [])}
    groups = requests.get(f"{scim.base_url}/Groups", params={"count": "1000"}, timeout=10).json()
    return {
        g["displayName"]: sorted(names.get(m["value"], m["value"]) for m in g.get("members", []))
        for g in groups.get("Resources", [])
    }


def aws_config(tmp_path: Path, directory: Slapd, scim: ScimServer, aws: AwsLikeProxy) -> Path:
    mapping = {
        "userName": "uid",
        "externalId": "$id",
        "displayName": "cn",
        "name": {"givenName": "givenName", "familyName": "sn"},
        "emails": [{"value": "mail", "type": "work", "primary": True}],
    }
    return write_config(
        tmp_path / "c.yaml",
        directory,
        scim,
        url=aws.url,
        dialect="aws",
        mapping=mapping,
        source={"groups": {"base_dn": GROUPS}},
    )


def test_memberships_converge_through_a_change_cycle_on_aws(
    tmp_path: Path,
    directory: Slapd,
    scim: ScimServer,
    aws: AwsLikeProxy,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """AWS never returns members: the provisioner takes them from its own record. A member
    removed in the directory, a user disabled and one deleted, a group renamed: after each
    sync the target's true memberships equal the directory's (before: members were never
    removed, and every change re-added every member)."""
    config = aws_config(tmp_path, directory, scim, aws)
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert true_memberships(scim) == {
        "engineers": ["ada", "bob"],
        "everyone": ["ada", "bob", "dee"],
        "auditors": ["dee"],
        "staff": ["dee"],
    }
    assert aws.requests["POST /v2/Bulk"] == 0  # the dialect knows AWS has no Bulk

    directory.modify(
        f"dn: cn=engineers,{GROUPS}\nchangetype: modify\ndelete: member\n"
        f"member: uid=bob,{PEOPLE}\n\n"
        f"dn: uid=ada,{PEOPLE}\nchangetype: modify\nadd: objectClass\n"
        "objectClass: nsAccountLockable\n-\nadd: nsAccountLock\nnsAccountLock: TRUE\n\n"
        f"dn: uid=dee,{PEOPLE}\nchangetype: delete\n\n"
        f"dn: cn=auditors,{GROUPS}\nchangetype: modrdn\nnewrdn: cn=reviewers\ndeleteoldrdn: 1\n"
    )
    aws.requests.clear()
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert true_memberships(scim) == {
        "engineers": [],
        "everyone": ["bob"],
        "reviewers": [],
        "staff": [],
    }
    patches = aws.requests["PATCH Groups"]
    assert patches == 4  # one PATCH per changed group (the rename with its member removal)

    aws.requests.clear()
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert aws.requests["PATCH Groups"] == 0 and aws.requests["POST Groups"] == 0


def test_an_existing_aws_group_is_adopted_by_asking_its_members(
    tmp_path: Path,
    directory: Slapd,
    scim: ScimServer,
    aws: AwsLikeProxy,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A group already on AWS (someone put dee and ada in "engineers" by hand): adopting it
    asks which provisioned users are members (``members eq``), removes dee and adds bob."""
    config = aws_config(tmp_path, directory, scim, aws)
    code, summary = sync(config, capsys)
    assert code == 0, summary
    ids = {
        u["userName"]: u["id"]
        for u in requests.get(f"{scim.base_url}/Users", timeout=10).json()["Resources"]
    }
    engineers = _group_id(scim, "engineers")
    requests.delete(f"{scim.base_url}/Groups/{engineers}", timeout=10).raise_for_status()
    _post_group(scim, "engineers", [ids["dee"], ids["ada"]])
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with engine.begin() as conn:  # forget it was ours: the next full pass finds it anew
        conn.execute(sa.text("delete from provisioned_groups"))
    engine.dispose()
    code, summary = sync(config, capsys, "--full")
    assert code == 0, summary
    assert true_memberships(scim)["engineers"] == ["ada", "bob"]


def test_reconcile_on_aws_asks_members_and_finds_only_the_real_drift(
    tmp_path: Path,
    directory: Slapd,
    scim: ScimServer,
    aws: AwsLikeProxy,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """AWS never lists members, so reconcile asks them one by one (``members eq``): bob taken
    out of engineers and dee put in by hand are the only difference found (before: every
    group read came back empty and every member of every group was reported missing); the
    repair restores the directory's memberships and the next reconcile finds nothing."""
    config = aws_config(tmp_path, directory, scim, aws)
    assert sync(config, capsys)[0] == 0
    ids = {
        u["userName"]: u["id"]
        for u in requests.get(f"{scim.base_url}/Users", timeout=10).json()["Resources"]
    }
    engineers = _group_id(scim, "engineers")
    requests.patch(
        f"{scim.base_url}/Groups/{engineers}",
        json={
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [
                {"op": "remove", "path": f'members[value eq "{ids["bob"]}"]'},
                {"op": "add", "path": "members", "value": [{"value": ids["dee"]}]},
            ],
        },
        timeout=10,
    ).raise_for_status()
    assert true_memberships(scim)["engineers"] == ["ada", "dee"]

    code, summary = sync(config, capsys, "--dry-run", command="reconcile")
    assert code == 0, summary
    counts = summary["reconciliation"][0]["counts"]["groups"]
    assert {k: v for k, v in counts.items() if v} == {"in step": 3, "membership drifted": 1}
    assert aws.requests["GET Groups"] > 4  # the listing, then one question per membership

    code, summary = sync(config, capsys, command="reconcile")
    assert code == 0, summary
    assert true_memberships(scim)["engineers"] == ["ada", "bob"]
    code, summary = sync(config, capsys, "--dry-run", command="reconcile")
    assert summary["reconciliation"][0]["differences"] == 0, summary


def _group_id(scim: ScimServer, name: str) -> str:
    found = requests.get(
        f"{scim.base_url}/Groups", params={"filter": f'displayName eq "{name}"'}, timeout=10
    ).json()
    return str(found["Resources"][0]["id"])


def _post_group(scim: ScimServer, name: str, members: list[str]) -> dict[str, Any]:
    response = requests.post(
        f"{scim.base_url}/Groups",
        json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": name,
            "members": [{"value": m} for m in members],
        },
        timeout=10,
    )
    response.raise_for_status()
    return dict(response.json())
