"""The connector options of PingFederate's SCIM connector that the provisioner lacked: endpoint
paths, the Authorization header's type, PATCH or PUT for groups on its own switch; real slapd →
Prefect → a proxy in front of a real scim2-server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import BEARER_TOKEN, GROUPS, ScimServers, sync, target_users, write_config
from tests.fault_proxy import FaultProxy
from tests.support.servers import Slapd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]


def test_endpoint_paths_and_authorization_header_type(
    tmp_path: Path,
    directory: Slapd,
    scim_servers: ScimServers,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A target serving its users at /Accounts and groups at /Teams, accepting only
    ``Authorization: Token <t>``: every request goes there, with that header."""
    scim = scim_servers.get("bearer")
    proxy = FaultProxy(scim.base_url.removesuffix("/v2"), rates={})
    proxy.path_map = {"/v2/Accounts": "/v2/Users", "/v2/Teams": "/v2/Groups"}
    proxy.header_type = "Token"
    proxy.start()
    monkeypatch.setenv("APP_TOKEN", BEARER_TOKEN)
    try:
        config = write_config(
            tmp_path / "c.yaml",
            directory,
            scim,
            url=f"{proxy.url}/v2",
            users_path="/Accounts",
            groups_path="/Teams",
            auth={"type": "bearer", "token": {"env": "APP_TOKEN"}, "header_type": "Token"},
            source={"groups": {"base_dn": GROUPS}},
        )
        code, summary = sync(config, capsys)
        assert code == 0, summary
        assert proxy.unmapped == 0  # never /Users nor /Groups
        headers = {"Authorization": f"Bearer {BEARER_TOKEN}"}
        assert sorted(target_users(scim, headers=headers)) == ["ada", "bob", "dee"]
        assert summary["groups"][0]["succeeded"]["create"] == 4
        code, summary = sync(config, capsys)
        assert code == 0 and summary["targets"][0]["writes"] == 0
    finally:
        proxy.stop()


@pytest.mark.parametrize("method", ["put", "patch"])
def test_groups_have_their_own_patch_or_put_switch(
    method: str,
    tmp_path: Path,
    directory: Slapd,
    scim_servers: ScimServers,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Users updated by PATCH, groups by PUT (or PATCH) as group_update_method says."""
    scim = scim_servers.get("open")
    config = write_config(
        tmp_path / "c.yaml",
        directory,
        scim,
        update_method="patch",
        group_update_method=method,
        use_bulk="never",
        source={"groups": {"base_dn": GROUPS}},
    )
    assert sync(config, capsys)[0] == 0
    directory.modify(
        f"dn: cn=engineers,{GROUPS}\nchangetype: modify\ndelete: member\n"
        "member: uid=bob,ou=people,dc=example,dc=org\n"
    )
    scim.reset_stats()
    code, summary = sync(config, capsys)
    assert code == 0, summary
    stats = scim.stats()
    if method == "put":
        assert stats.get("PUT", 0) == 1 and stats.get("PATCH", 0) == 0
    else:
        assert stats.get("PATCH", 0) == 1 and stats.get("PUT", 0) == 0


def test_ldap_failover_to_the_next_server(
    tmp_path: Path,
    directory: Slapd,
    scim_servers: ScimServers,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The first directory server is down: the next of failover_urls serves the run."""
    from deployments.processes import free_port

    scim = scim_servers.get("open")
    down = f"ldaps://127.0.0.1:{free_port()}"
    config = write_config(
        tmp_path / "c.yaml",
        directory,
        scim,
        source={"url": down, "failover_urls": [directory.ldaps_url], "connect_timeout": 2},
    )
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert sorted(target_users(scim)) == ["ada", "bob", "dee"]


def test_every_ldap_server_down_is_one_line_naming_them(tmp_path: Path) -> None:
    from deployments.processes import free_port
    from tasks.config import parse_config
    from tasks.errors import SourceUnavailable
    from tasks.ldap.extract import connect

    first, second = (f"ldap://127.0.0.1:{free_port()}" for _ in range(2))
    config = parse_config(
        {
            "source": {
                "url": first,
                "failover_urls": [second],
                "tls": "none",
                "connect_timeout": 1,
                "users": {"base_dn": "ou=people,dc=x"},
            },
            "targets": [{"name": "app", "url": "https://app.example.org/scim/v2"}],
        }
    )
    with pytest.raises(SourceUnavailable, match=r"no LDAP server reachable \(2 tried\)") as caught:
        connect(config.source)
    assert first in str(caught.value) and second in str(caught.value)


def test_constants_defaults_and_functions_in_the_mapping(
    tmp_path: Path,
    directory: Slapd,
    scim_servers: ScimServers,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A fixed userType, a title defaulting to Staff, an upper-cased nickName, lower-cased
    emails reach the target; a second sync writes nothing."""
    scim = scim_servers.get("open")
    mapping = {
        "userName": "uid",
        "externalId": "$id",
        "userType": "=Employee",
        "title": "title || =Staff",
        "nickName": "upper(uid)",
        "emails": [{"value": "lower({uid}@EXAMPLE.org)", "type": "work", "primary": True}],
    }
    config = write_config(tmp_path / "c.yaml", directory, scim, mapping=mapping)
    code, summary = sync(config, capsys)
    assert code == 0, summary
    users = target_users(scim)
    assert {u["userType"] for u in users.values()} == {"Employee"}
    assert (users["bob"]["title"], users["dee"]["title"]) == ("Engineer", "Staff")
    assert users["ada"]["nickName"] == "ADA"
    assert users["dee"]["emails"][0]["value"] == "dee@example.org"
    code, summary = sync(config, capsys)
    assert code == 0 and summary["targets"][0]["writes"] == 0


@pytest.mark.parametrize("days", [0, 7])
def test_disable_now_delete_later(
    days: int,
    tmp_path: Path,
    directory: Slapd,
    scim_servers: ScimServers,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A locked user and a deleted one are disabled; once they have been disabled for
    delete_disabled_after_days (0 here: by the next cycle) they are deleted; within the grace
    period (7 days) they stay disabled."""
    scim = scim_servers.get("open")
    config = write_config(tmp_path / "c.yaml", directory, scim, delete_disabled_after_days=days)
    assert sync(config, capsys)[0] == 0
    directory.modify(
        "dn: uid=bob,ou=people,dc=example,dc=org\nchangetype: modify\nadd: objectClass\n"
        "objectClass: nsAccountLockable\n-\nadd: nsAccountLock\nnsAccountLock: TRUE\n\n"
        "dn: uid=dee,ou=people,dc=example,dc=org\nchangetype: delete\n"
    )
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert summary["targets"][0]["succeeded"]["disable"] == 2
    code, summary = sync(config, capsys)
    assert code == 0, summary
    users = target_users(scim)
    if days == 0:
        assert summary["targets"][0]["succeeded"]["delete"] == 2
        assert sorted(users) == ["ada"]
    else:
        assert summary["targets"][0]["writes"] == 0
        assert not users["bob"]["active"] and not users["dee"]["active"]


def test_a_cursor_listing_over_many_pages_survives_an_invalid_cursor(
    scim_servers: ScimServers,
) -> None:
    """RFC 9865 cursors followed over four pages of a real server; the target calling the
    second cursor invalid restarts the listing, and each user is listed once."""
    from tasks.config import TargetConfig
    from tasks.scim.client import ScimClient
    from tests.conftest import create_on_target

    scim = scim_servers.get("cursor")
    for n in range(7):
        create_on_target(scim, f"u{n}")
    proxy = FaultProxy(scim.base_url.removesuffix("/v2"), rates={})
    proxy.invalidate_cursors = 1
    proxy.start()
    client = ScimClient(TargetConfig(name="app", url=f"{proxy.url}/v2", max_retries=0))
    try:
        names = [u["userName"] for u in client.list_all("/Users", ["userName"], 2, cursor=True)]
    finally:
        client.close()
        proxy.stop()
    assert sorted(names) == [f"u{n}" for n in range(7)]
    assert proxy.invalidate_cursors == 0


@pytest.mark.parametrize("keep", [True, False])
def test_users_provisioned_disabled_keep_their_groups_when_asked(
    keep: bool,
    tmp_path: Path,
    directory: Slapd,
    scim_servers: ScimServers,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """provision_disabled_users with disabled_users_keep_groups: the locked cy is in his
    groups from the start and bob keeps engineers when locked (a pre-hire ready on day one);
    dee, deleted from the directory, leaves every group all the same. Without the switch,
    disabled users are in no group."""
    from tests.integration.test_groups import target_groups

    scim = scim_servers.get("open")
    config = write_config(
        tmp_path / "c.yaml",
        directory,
        scim,
        provision_disabled_users=True,
        disabled_users_keep_groups=keep,
        source={"groups": {"base_dn": GROUPS}},
    )
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert ("cy" in target_groups(scim)["everyone"]["names"]) is keep
    directory.modify(
        "dn: uid=bob,ou=people,dc=example,dc=org\nchangetype: modify\nadd: objectClass\n"
        "objectClass: nsAccountLockable\n-\nadd: nsAccountLock\nnsAccountLock: TRUE\n\n"
        "dn: uid=dee,ou=people,dc=example,dc=org\nchangetype: delete\n"
    )
    code, summary = sync(config, capsys)
    assert code == 0, summary
    groups = target_groups(scim)
    assert groups["engineers"]["names"] == (["ada", "bob"] if keep else ["ada"])
    assert "dee" not in groups["everyone"]["names"] and groups["auditors"]["names"] == []
