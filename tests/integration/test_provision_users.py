"""provision_users end to end: real slapd → real Prefect flow → real scim2-server."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from tests.conftest import (
    CUSTOM_URN,
    PEOPLE,
    add_people,
    create_on_target,
    sync,
    target_users,
    write_config,
)
from tests.fault_proxy import FaultProxy
from tests.support.servers import ScimServer, Slapd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def counts(summary: dict, kind: str) -> int:
    return summary["targets"][0]["succeeded"][kind]


class TestInitialSync:
    def test_creates_active_users_with_all_attributes(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Active people in scope are created with core, enterprise and custom attributes."""
        config = write_config(tmp_path / "c.yaml", directory, scim)
        code, summary = sync(config, capsys)
        assert code == 0, summary
        users = target_users(scim)
        assert sorted(users) == ["ada", "bob", "dee"]  # cy is locked, eve out of scope
        ada = users["ada"]
        assert ada["name"]["formatted"] == "Ada Lovelace"
        assert ada["title"] == "Countess"
        assert [e["value"] for e in ada["emails"]] == ["ada@example.org", "countess@example.org"]
        assert ada["emails"][0]["primary"] is True
        assert {p["type"] for p in ada["phoneNumbers"]} == {"work", "mobile"}
        assert ada[ENTERPRISE] == {"employeeNumber": "1815", "department": "Analytical Engines"}
        assert ada[CUSTOM_URN] == {"costCenter": "CC-1001"}
        assert ada["active"] is True
        assert len(ada["externalId"]) == 36  # the entryUUID
        assert counts(summary, "create") == 3
        assert summary["targets"][0]["planned"]["not provisioned (disabled)"] == 1

    def test_manager_reference_is_resolved_in_the_same_run(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """bob's manager DN (ada, created in the same run) becomes ada's SCIM id."""
        config = write_config(tmp_path / "c.yaml", directory, scim)
        code, summary = sync(config, capsys)
        assert code == 0, summary
        users = target_users(scim)
        assert users["bob"][ENTERPRISE]["manager"]["value"] == users["ada"]["id"]
        assert counts(summary, "update") == 1  # the follow-up that filled in the reference
        scim.reset_stats()
        assert sync(config, capsys)[0] == 0
        assert scim.writes() == 0

    def test_second_sync_without_change_makes_no_write(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A sync right after a sync sends zero write requests."""
        config = write_config(tmp_path / "c.yaml", directory, scim)
        assert sync(config, capsys)[0] == 0
        scim.reset_stats()
        code, summary = sync(config, capsys)
        assert code == 0
        assert scim.writes() == 0
        assert summary["targets"][0]["writes"] == 0
        assert summary["targets"][0]["planned"]["unchanged"] == 3


class TestUpdates:
    @pytest.mark.parametrize("variant", ["open", "nopatch"])
    def test_changes_and_cleared_attributes_reach_the_target(
        self,
        variant: str,
        tmp_path: Path,
        directory: Slapd,
        scim_servers,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A changed title is updated and removed attributes are cleared (PATCH and PUT)."""
        scim = scim_servers.get(variant)
        config = write_config(tmp_path / "c.yaml", directory, scim, use_bulk="never")
        assert sync(config, capsys)[0] == 0
        directory.modify(
            f"dn: uid=ada,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Mathematician\n-\n"
            "delete: mobile\n-\ndelete: description\n-\ndelete: departmentNumber\n\n"
            f"dn: uid=bob,{PEOPLE}\nchangetype: modify\ndelete: mail\n-\ndelete: title\n"
        )
        scim.reset_stats()
        code, summary = sync(config, capsys)
        assert code == 0, summary
        assert counts(summary, "update") == 2
        method = "PATCH" if variant == "open" else "PUT"
        assert scim.stats().get(method) == 2
        assert scim.writes() == 2
        users = target_users(scim)
        assert users["ada"]["title"] == "Mathematician"
        assert [p["type"] for p in users["ada"]["phoneNumbers"]] == ["work"]
        assert users["ada"][ENTERPRISE] == {"employeeNumber": "1815"}
        assert CUSTOM_URN not in users["ada"] or not users["ada"][CUSTOM_URN]
        assert "emails" not in users["bob"] and "title" not in users["bob"]

    @pytest.mark.parametrize("use_bulk", ["never", "auto"])
    def test_etag_conflict_rereads_and_reapplies(
        self,
        use_bulk: str,
        tmp_path: Path,
        directory: Slapd,
        scim: ScimServer,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Updates carry If-Match; a user changed on the target meanwhile answers 412, is read
        again and the change applied to what it holds now (one by one or after a Bulk)."""
        config = write_config(tmp_path / "c.yaml", directory, scim, use_bulk=use_bulk)
        code, summary = sync(config, capsys)
        assert code == 0, summary
        ada = target_users(scim)["ada"]
        requests.patch(
            f"{scim.base_url}/Users/{ada['id']}",
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "path": "nickName", "value": "Countess"}],
            },
            timeout=10,
        ).raise_for_status()
        directory.modify(
            f"dn: uid=ada,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Mathematician\n"
        )
        scim.reset_stats()
        code, summary = sync(config, capsys)
        assert code == 0, summary
        ada = target_users(scim)["ada"]
        assert ada["title"] == "Mathematician"
        assert ada["nickName"] == "Countess"  # not ours: left as the target has it
        stats = scim.stats()
        assert stats["PATCH"] == 2  # refused with 412, then applied after a re-read
        assert stats["POST"] == (1 if use_bulk == "auto" else 0)  # the Bulk answered 412 too
        scim.reset_stats()
        assert sync(config, capsys)[0] == 0
        assert scim.writes() == 0


class TestDeprovisioning:
    def test_locked_deleted_and_out_of_scope_users_are_disabled(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Disable is the default remove action, for all three ways of leaving."""
        config = write_config(tmp_path / "c.yaml", directory, scim)
        assert sync(config, capsys)[0] == 0
        directory.modify(
            f"dn: uid=ada,{PEOPLE}\nchangetype: modify\nadd: objectClass\n"
            "objectClass: nsAccountLockable\n-\nadd: nsAccountLock\nnsAccountLock: TRUE\n\n"
            f"dn: uid=bob,{PEOPLE}\nchangetype: delete\n\n"
            f"dn: uid=dee,{PEOPLE}\nchangetype: modify\nadd: employeeType\n"
            "employeeType: contractor\n"
        )
        code, summary = sync(config, capsys)
        assert code == 0, summary
        assert counts(summary, "disable") == 3
        users = target_users(scim)
        assert {name: u["active"] for name, u in users.items()} == {
            "ada": False,
            "bob": False,
            "dee": False,
        }
        scim.reset_stats()
        assert sync(config, capsys)[0] == 0
        assert scim.writes() == 0

    def test_remove_action_delete(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With remove_action delete, a deleted and a locked user are deleted on the target."""
        config = write_config(tmp_path / "c.yaml", directory, scim, remove_action="delete")
        assert sync(config, capsys)[0] == 0
        directory.modify(
            f"dn: uid=bob,{PEOPLE}\nchangetype: delete\n\n"
            f"dn: uid=ada,{PEOPLE}\nchangetype: modify\nadd: objectClass\n"
            "objectClass: nsAccountLockable\n-\nadd: nsAccountLock\nnsAccountLock: TRUE\n"
        )
        code, summary = sync(config, capsys)
        assert code == 0, summary
        assert counts(summary, "delete") == 2
        assert sorted(target_users(scim)) == ["dee"]

    def test_re_enabled_user_is_active_again(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = write_config(tmp_path / "c.yaml", directory, scim)
        assert sync(config, capsys)[0] == 0
        lock = (
            f"dn: uid=bob,{PEOPLE}\nchangetype: modify\nadd: objectClass\n"
            "objectClass: nsAccountLockable\n-\nadd: nsAccountLock\nnsAccountLock: TRUE\n"
        )
        directory.modify(lock)
        assert sync(config, capsys)[0] == 0
        assert target_users(scim)["bob"]["active"] is False
        directory.modify(
            f"dn: uid=bob,{PEOPLE}\nchangetype: modify\n"
            "replace: nsAccountLock\nnsAccountLock: FALSE\n"
        )
        code, summary = sync(config, capsys)
        assert code == 0
        assert counts(summary, "update") == 1
        assert target_users(scim)["bob"]["active"] is True


class TestSwitches:
    def test_provision_disabled_users(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With provision_disabled_users, the locked user is created inactive."""
        config = write_config(tmp_path / "c.yaml", directory, scim, provision_disabled_users=True)
        assert sync(config, capsys)[0] == 0
        users = target_users(scim)
        assert users["cy"]["active"] is False
        assert len(users) == 4

    def test_create_switched_off(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Nothing is created; each would-be creation is reported as skipped with the reason."""
        config = write_config(tmp_path / "c.yaml", directory, scim, create_users=False)
        code, summary = sync(config, capsys)
        assert code == 0
        assert target_users(scim) == {}
        skipped = summary["targets"][0]["skipped"]
        assert sorted(s["user"] for s in skipped) == ["ada", "bob", "dee"]
        assert all(s["would"] == "create" and "switched off" in s["reason"] for s in skipped)

    def test_update_switched_off(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = write_config(tmp_path / "c.yaml", directory, scim)
        assert sync(config, capsys)[0] == 0
        directory.modify(f"dn: uid=bob,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Boss\n")
        config = write_config(tmp_path / "c.yaml", directory, scim, update_users=False)
        scim.reset_stats()
        code, summary = sync(config, capsys)
        assert code == 0
        assert scim.writes() == 0
        assert target_users(scim)["bob"]["title"] == "Engineer"
        assert [(s["user"], s["would"]) for s in summary["targets"][0]["skipped"]] == [
            ("bob", "update")
        ]

    def test_deprovision_switched_off(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = write_config(tmp_path / "c.yaml", directory, scim)
        assert sync(config, capsys)[0] == 0
        directory.modify(f"dn: uid=bob,{PEOPLE}\nchangetype: delete\n")
        config = write_config(tmp_path / "c.yaml", directory, scim, deprovision_users=False)
        code, summary = sync(config, capsys)
        assert code == 0
        assert target_users(scim)["bob"]["active"] is True
        assert [(s["user"], s["would"]) for s in summary["targets"][0]["skipped"]] == [
            ("bob", "disable")
        ]


class TestMatching:
    def test_existing_user_is_adopted_not_duplicated(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A user already on the target with the same userName is found by filter and adopted."""
        created = create_on_target(scim, "ada")
        config = write_config(tmp_path / "c.yaml", directory, scim)
        code, summary = sync(config, capsys)
        assert code == 0, summary
        users = target_users(scim)
        assert len(users) == 3
        assert users["ada"]["id"] == created["id"]
        assert users["ada"]["title"] == "Countess"
        assert summary["targets"][0]["adopted"] == 1

    def test_conflict_409_is_looked_up_and_adopted(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Matching by externalId misses, the POST answers 409, the user is adopted."""
        created = create_on_target(scim, "bob")
        config = write_config(
            tmp_path / "c.yaml",
            directory,
            scim,
            user_match_filter='externalId eq "%s"',
            user_match_attribute="externalId",
            use_bulk="never",
        )
        scim.reset_stats()
        code, summary = sync(config, capsys)
        assert code == 0, summary
        users = target_users(scim)
        assert users["bob"]["id"] == created["id"]
        assert users["bob"]["externalId"]
        assert scim.stats()["POST"] == 3  # ada, dee created; bob's POST answered 409
        assert len(users) == 3


class TestBadInput:
    def test_bad_entry_is_reported_and_others_provisioned(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An entry without uid is rejected with its DN; the others are created; exit code 1."""
        directory.modify(
            f"dn: cn=No Uid,{PEOPLE}\nchangetype: add\nobjectClass: inetOrgPerson\n"
            "cn: No Uid\nsn: Uid\n"
        )
        config = write_config(tmp_path / "c.yaml", directory, scim)
        code, summary = sync(config, capsys)
        assert code == 1
        assert sorted(target_users(scim)) == ["ada", "bob", "dee"]
        rejected = summary["targets"][0]["rejected"]
        assert rejected == [
            {
                "entry": f"cn=No Uid,{PEOPLE}",
                "reason": "no value for userName (check the entry and the userName mapping)",
            }
        ]

    def test_duplicate_user_name_does_not_take_over_an_account(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A second entry with bob's uid is rejected, naming both DNs; bob's account stays his."""
        config = write_config(tmp_path / "c.yaml", directory, scim)
        assert sync(config, capsys)[0] == 0
        before = target_users(scim)["bob"]
        directory.modify(
            f"dn: ou=elsewhere,{PEOPLE}\nchangetype: add\nobjectClass: organizationalUnit\n"
            f"ou: elsewhere\n\ndn: uid=bob,ou=elsewhere,{PEOPLE}\nchangetype: add\n"
            "objectClass: inetOrgPerson\nuid: bob\ncn: Other Bob\nsn: Bob\n"
        )
        scim.reset_stats()
        code, summary = sync(config, capsys)
        assert code == 1
        assert scim.writes() == 0
        (rejected,) = summary["targets"][0]["rejected"]
        assert rejected["entry"] == f"uid=bob,ou=elsewhere,{PEOPLE}"
        assert f"also uid=bob,{PEOPLE}" in rejected["reason"]
        assert target_users(scim)["bob"] == before

    def test_extension_attributes_unknown_to_the_target_stop_before_any_write(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The target's /Schemas is read first: unknown extension attributes are named."""
        mapping = {
            "userName": "uid",
            CUSTOM_URN: {"costCenter": "description", "badge": "employeeNumber"},
            "urn:example:params:scim:schemas:extension:nope:2.0:User": {"x": "uid"},
        }
        config = write_config(tmp_path / "c.yaml", directory, scim, mapping=mapping)
        code, err = sync(config, capsys)
        assert code == 2
        assert f"{CUSTOM_URN}:badge" in err
        assert "urn:example:params:scim:schemas:extension:nope:2.0:User (no such schema)" in err
        assert scim.writes() == 0

    def test_invalid_config_gives_one_clear_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from flows.cli import main

        path = tmp_path / "bad.yaml"
        path.write_text(
            "source: {url: 'ldap://x', users: {base_dn: 'dc=x'}}\n"
            "targets: [{name: a, url: 'http://t', remove_action: purge}]\n"
        )
        assert main(["sync", "--config", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err
        assert "targets[0].remove_action" in err and "'disable' or 'delete'" in err


def test_many_creates_match_against_one_listing(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """With many creates the target is listed once instead of one look-up per create; users
    already there are still adopted, and each new user costs one POST."""
    add_people(directory, 60)
    for name in ("ada", "p007"):
        create_on_target(scim, name)
    config = write_config(tmp_path / "c.yaml", directory, scim, use_bulk="never")
    scim.reset_stats()
    code, summary = sync(config, capsys)
    assert code == 0, summary
    stats = scim.stats()
    assert len(target_users(scim)) == 63
    assert summary["targets"][0]["adopted"] == 2
    assert stats["POST"] == 61
    # the reachability probe (which counts the users), discovery (/ServiceProviderConfig,
    # /Schemas), one page of the listing, and the 2 adopted users
    assert stats["GET"] == 6


def test_listing_by_cursor_when_the_target_offers_it(
    tmp_path: Path, scim_servers, directory: Slapd, capsys: pytest.CaptureFixture[str]
) -> None:
    """A target announcing RFC 9865 cursors is listed by cursor; matching still adopts."""
    scim = scim_servers.get("cursor")
    add_people(directory, 60)
    create_on_target(scim, "p042")
    config = write_config(tmp_path / "c.yaml", directory, scim)
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert summary["targets"][0]["adopted"] == 1
    assert len(target_users(scim)) == 63


def test_bulk_carries_creates_updates_and_deprovisioning(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """With Bulk advertised, 60 new users go in one POST /Bulk (after one listing); then an
    update and a disable go in one more; results are mapped back to each user."""
    add_people(directory, 60)
    config = write_config(tmp_path / "c.yaml", directory, scim)
    code, summary = sync(config, capsys)
    assert code == 0, summary
    stats = scim.stats()
    assert stats["POST"] == 2  # the creates, then the manager reference, each one Bulk
    assert len(target_users(scim)) == 63
    assert summary["targets"][0]["succeeded"]["create"] == 63
    directory.modify(
        f"dn: uid=ada,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Mathematician\n\n"
        f"dn: uid=p001,{PEOPLE}\nchangetype: delete\n"
    )
    scim.reset_stats()
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert scim.writes() == 1 and scim.stats()["POST"] == 1
    users = target_users(scim)
    assert users["ada"]["title"] == "Mathematician" and users["p001"]["active"] is False
    scim.reset_stats()
    assert sync(config, capsys)[0] == 0
    assert scim.writes() == 0


@pytest.mark.parametrize("concurrency", [1, 2])
def test_batches_overlap_within_the_targets_concurrency(
    concurrency: int,
    tmp_path: Path,
    directory: Slapd,
    scim: ScimServer,
    proxy: FaultProxy,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The next batch starts while the last writes of one are in flight (no moment with
    nothing in flight at each batch's end), and all batches share the target's
    ``concurrency``: never more writes in flight than it allows. One user per batch, the
    target 0.2 s away: with a concurrency of 2, two batches' writes are in flight at once
    (one at a time when each batch waited for the last); with 1, never two."""
    add_people(directory, 3)  # with ada, bob and dee: 6 users, 6 batches
    proxy.latency = 0.2
    config = write_config(
        tmp_path / "c.yaml",
        directory,
        scim,
        url=f"{proxy.url}/v2",
        batch_size=1,
        concurrency=concurrency,
        use_bulk="never",
    )
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert counts(summary, "create") == 6
    assert len(target_users(scim)) == 6  # each user once
    assert proxy.peak_writes_in_flight == concurrency


def test_a_token_revoked_in_the_middle_of_overlapping_batches_stops_the_run(
    tmp_path: Path,
    directory: Slapd,
    scim: ScimServer,
    proxy: FaultProxy,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The target answers 401 from the fifth write on, while two batches overlap: the run
    stops with exit 2 and the reason, no write of either batch starts after the 401 (at most
    the one in flight beside it is refused too), and the state store holds exactly the users
    the target created."""
    add_people(directory, 17)  # with ada, bob and dee: 20 users, 10 batches of 2
    proxy.latency = 0.1
    proxy.revoke_after = 4
    config = write_config(
        tmp_path / "c.yaml",
        directory,
        scim,
        url=f"{proxy.url}/v2",
        batch_size=2,
        concurrency=2,
        use_bulk="never",
    )
    code, err = sync(config, capsys)
    assert code == 2
    assert "HTTP 401" in err
    assert 1 <= proxy.revoked <= 2
    created = target_users(scim)
    assert len(created) == 4
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with engine.connect() as conn:
        names = conn.execute(sa.text("select user_name from provisioned_users")).scalars()
        assert sorted(names) == sorted(created)
    engine.dispose()
