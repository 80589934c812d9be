"""Never report done what the target did not do, never say "in step" about a target the run
did not reach, never delete every group unasked: real slapd → Prefect → fault proxy → real
scim2-server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    BEARER_TOKEN,
    GROUPS,
    PEOPLE,
    ScimServers,
    sync,
    target_users,
    write_config,
)
from tests.fault_proxy import FaultProxy
from tests.support.servers import ScimServer, Slapd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]

LOCK_BOB = (
    f"dn: uid=bob,{PEOPLE}\nchangetype: modify\nadd: objectClass\n"
    "objectClass: nsAccountLockable\n-\nadd: nsAccountLock\nnsAccountLock: TRUE\n"
)


def config_via(
    tmp_path: Path, directory: Slapd, scim: ScimServer, proxy: FaultProxy, **options: Any
) -> Path:
    """A config whose target is the fault proxy in front of the open scim2-server."""
    return write_config(tmp_path / "c.yaml", directory, scim, url=f"{proxy.url}/v2", **options)


def counts(summary: dict[str, Any], kind: str) -> int:
    return int(summary["targets"][0]["succeeded"][kind])


class TestRedirectedWrites:
    @pytest.mark.parametrize("remove_action", ["disable", "delete"])
    def test_a_write_redirected_to_a_login_page_is_not_recorded_and_is_retried(
        self,
        remove_action: str,
        tmp_path: Path,
        directory: Slapd,
        scim: ScimServer,
        proxy: FaultProxy,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A gateway answers the deprovisioning write with ``302 Location: /login`` (its login
        page answers 200 HTML): the run exits 2 naming the Location, bob stays active on the
        target and in the state store, and the next sync deprovisions him."""
        config = config_via(tmp_path, directory, scim, proxy, remove_action=remove_action)
        assert sync(config, capsys)[0] == 0
        directory.modify(LOCK_BOB)
        proxy.redirect = (302, "/login?return=%2Fv2")
        code, err = sync(config, capsys)
        assert code == 2, err
        assert f"redirected (HTTP 302) to {proxy.url}/login" in err
        assert "(flow run " in err  # the one line names the run whose log has the traceback
        assert target_users(scim)["bob"]["active"] is True
        assert proxy.redirected == 1
        code, audit = sync(config, capsys, "--user", "bob", command="audit")
        assert [(a["action"], a["outcome"]) for a in audit][:1] == [(remove_action, "failed")]
        proxy.redirect = None
        code, summary = sync(config, capsys)
        assert code == 0, summary
        assert counts(summary, remove_action) == 1
        users = target_users(scim)
        assert "bob" not in users if remove_action == "delete" else not users["bob"]["active"]

    def test_a_create_redirected_to_another_host_sends_it_nothing(
        self,
        tmp_path: Path,
        directory: Slapd,
        scim: ScimServer,
        proxy: FaultProxy,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A ``307`` to another host is not followed: the other host receives no user, no
        made-up id is recorded, and the next sync creates every user on the real target."""
        elsewhere = FaultProxy("http://127.0.0.1:9", rates={})
        elsewhere.start()
        try:
            config = config_via(tmp_path, directory, scim, proxy)
            proxy.redirect = (307, f"{elsewhere.url}/v2/Users")
            code, err = sync(config, capsys)
            assert code == 2, err
            assert f"to {elsewhere.url}/v2/Users" in err
            assert elsewhere.requests == 0
            assert target_users(scim) == {}
            proxy.redirect = None
            code, summary = sync(config, capsys)
            assert code == 0, summary
            assert counts(summary, "create") == 3
            assert sorted(target_users(scim)) == ["ada", "bob", "dee"]
        finally:
            elsewhere.stop()


class TestReachability:
    @pytest.mark.parametrize("full", [False, True])
    def test_a_target_that_is_down_is_never_said_to_be_in_step(
        self,
        full: bool,
        tmp_path: Path,
        directory: Slapd,
        scim: ScimServer,
        proxy: FaultProxy,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Nothing to change, but the target is down: exit 2 naming the target and its URL."""
        config = config_via(tmp_path, directory, scim, proxy, max_retries=1)
        assert sync(config, capsys)[0] == 0
        url = proxy.url
        proxy.stop()
        code, err = sync(config, capsys, *(["--full"] if full else []))
        assert code == 2
        assert f"target app ({url}/v2) not reached: GET /Users failed: connection error" in err
        assert "in step" not in err

    def test_refused_credentials_are_found_with_nothing_to_change(
        self,
        tmp_path: Path,
        directory: Slapd,
        scim_servers: ScimServers,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A wrong token, then a token variable that is not set: exit 2 naming the target."""
        scim = scim_servers.get("bearer")
        auth = {"type": "bearer", "token": {"env": "APP_TOKEN"}}
        config = write_config(tmp_path / "c.yaml", directory, scim, auth=auth)
        monkeypatch.setenv("APP_TOKEN", BEARER_TOKEN)
        assert sync(config, capsys)[0] == 0
        monkeypatch.setenv("APP_TOKEN", "expired-token")
        code, err = sync(config, capsys)
        assert code == 2
        assert f"target app ({scim.base_url}) not reached: GET /Users failed: HTTP 401" in err
        assert BEARER_TOKEN not in err and "expired-token" not in err
        monkeypatch.delenv("APP_TOKEN")
        code, err = sync(config, capsys)
        assert code == 2
        assert "target app" in err and "environment variable APP_TOKEN" in err

    def test_one_unreachable_target_does_not_stop_the_others(
        self,
        tmp_path: Path,
        directory: Slapd,
        scim: ScimServer,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The reachable target is provisioned; the run still exits 2 for the other one."""
        config = write_config(tmp_path / "c.yaml", directory, scim)
        sync_with_a_target_down(config, scim, capsys, at=-1)

    def test_one_unreachable_target_does_not_stop_the_others_groups(
        self,
        tmp_path: Path,
        directory: Slapd,
        scim: ScimServer,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """With groups: the group read started during the user load covered both targets;
        the reachable one still gets its groups (read again for it alone), the run exits 2."""
        source = {"groups": {"base_dn": GROUPS}}
        config = write_config(tmp_path / "c.yaml", directory, scim, source=source)
        sync_with_a_target_down(config, scim, capsys, at=0)
        assert _groups(scim) == {"auditors", "engineers", "everyone", "staff"}


def sync_with_a_target_down(
    config: Path, scim: ScimServer, capsys: pytest.CaptureFixture[str], *, at: int
) -> None:
    """Add target ``down`` (nothing listens at its URL; no retries) to the config's targets
    (first with ``at=0``, last with ``at=-1``), sync, and check that the run exits 2 naming it
    while target ``app`` got its users."""
    import yaml

    data = yaml.safe_load(config.read_text())
    down = {**data["targets"][0], "name": "down", "url": "http://127.0.0.1:9/v2", "max_retries": 0}
    data["targets"].insert(len(data["targets"]) if at == -1 else at, down)
    config.write_text(yaml.safe_dump(data))
    code, err = sync(config, capsys)
    assert code == 2
    assert "target down (http://127.0.0.1:9/v2) not reached" in err
    assert sorted(target_users(scim)) == ["ada", "bob", "dee"]


class TestGroupDeletionGuard:
    def test_an_emptied_group_base_is_held_back_until_allowed(
        self,
        tmp_path: Path,
        directory: Slapd,
        scim: ScimServer,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """``groups.base_dn`` pointed at an OU without groups would delete every group: held
        back by the guard (exit 1, nothing deleted) until ``--allow-mass-deprovisioning``."""
        config = write_config(
            tmp_path / "c.yaml", directory, scim, source={"groups": {"base_dn": GROUPS}}
        )
        assert sync(config, capsys)[0] == 0
        before = _groups(scim)
        assert len(before) == 4
        write_config(tmp_path / "c.yaml", directory, scim, source={"groups": {"base_dn": PEOPLE}})
        code, summary = sync(config, capsys, command="groups")
        assert code == 1
        report = summary["groups"][0]
        assert report["held_back"] == 4 and report["succeeded"]["delete"] == 0
        assert "4 group deletions held back by the guard" in summary["headline"]
        assert {s["would"] for s in report["skipped"]} == {"delete"}
        assert _groups(scim) == before
        code, summary = sync(config, capsys, "--allow-mass-deprovisioning", command="groups")
        assert code == 0, summary
        assert summary["groups"][0]["succeeded"]["delete"] == 4
        assert _groups(scim) == set()


def _groups(scim: ScimServer) -> set[str]:
    import requests

    response = requests.get(f"{scim.base_url}/Groups", params={"count": "100"}, timeout=10)
    response.raise_for_status()
    return {g["displayName"] for g in response.json().get("Resources", [])}


class TestHonestNames:
    def test_a_run_is_named_after_the_pass_it_made(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The first cycle has no watermark: it is a full pass, and its run says so although
        nobody asked for --full; the next one is incremental."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.sorting import FlowRunSort

        config = write_config(tmp_path / "c.yaml", directory, scim)
        assert sync(config, capsys)[0] == 0
        assert sync(config, capsys)[0] == 0
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=2)
        assert [r.name for r in runs] == [
            "provision-users-all-targets-incremental",
            "provision-users-all-targets-full",
        ]


class TestEndlessListing:
    def test_a_listing_that_never_advances_stops_with_one_line(
        self,
        tmp_path: Path,
        directory: Slapd,
        scim: ScimServer,
        proxy: FaultProxy,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The target answers every page with the first one and totalResults 10⁹: reconcile
        stops after the second page (it looped for ever) and names the listing."""
        config = config_via(tmp_path, directory, scim, proxy)
        assert sync(config, capsys)[0] == 0
        proxy.stuck_listing = True
        before = proxy.requests
        code, err = sync(config, capsys, "--dry-run", command="reconcile")
        assert code == 2
        assert "listing /Users of target app does not advance" in err
        assert proxy.requests - before < 10


class TestListingWithoutAttributes:
    def test_a_listing_refused_with_attributes_is_made_without_them(
        self,
        tmp_path: Path,
        directory: Slapd,
        scim: ScimServer,
        proxy: FaultProxy,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A server answering 400 to ``attributes=`` (with the enterprise URN in it) is listed
        whole: reconcile --dry-run finds every user in step instead of failing."""
        config = config_via(tmp_path, directory, scim, proxy)
        assert sync(config, capsys)[0] == 0
        proxy.refuse_attributes = True
        code, summary = sync(config, capsys, "--dry-run", command="reconcile")
        assert code == 0, summary
        result = summary["reconciliation"][0]
        assert result["differences"] == 0
        assert result["counts"]["users"]["in step"] == 3


class TestAdoption:
    """An account already on the target with the directory user's userName."""

    def _existing_bob(self, scim: ScimServer) -> dict[str, Any]:
        import requests

        response = requests.post(
            f"{scim.base_url}/Users",
            json={
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "bob",
                "emails": [{"value": "svc-bob@vendor.example", "primary": True}],
            },
            timeout=10,
        )
        response.raise_for_status()
        return dict(response.json())

    @pytest.mark.parametrize(
        "policy",
        [
            {"adopt_existing": "verified"},
            {"adopt_existing": "never"},
            {"protected_accounts": ["B*"]},
        ],
        ids=["verified", "never", "protected"],
    )
    def test_a_safe_policy_leaves_an_unrelated_account_alone(
        self,
        policy: dict[str, Any],
        tmp_path: Path,
        directory: Slapd,
        scim: ScimServer,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """An unmanaged "bob" whose email is not the directory bob's is not taken over: he is
        reported failed with the reason, his account keeps its email, the others are created."""
        self._existing_bob(scim)
        config = write_config(tmp_path / "c.yaml", directory, scim, **policy)
        code, summary = sync(config, capsys)
        assert code == 1
        target = summary["targets"][0]
        assert target["adopted"] == 0 and target["succeeded"]["create"] == 2
        assert [f["user"] for f in target["failures"]] == ["bob"]
        assert "not adopted, not changed" in target["failures"][0]["error"]
        bob = target_users(scim)["bob"]
        assert [e["value"] for e in bob["emails"]] == ["svc-bob@vendor.example"]

    def test_verified_adopts_when_the_email_is_the_users(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        import requests

        existing = self._existing_bob(scim)
        requests.patch(
            f"{scim.base_url}/Users/{existing['id']}",
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [
                    {"op": "replace", "path": "emails", "value": [{"value": "bob@example.org"}]}
                ],
            },
            timeout=10,
        ).raise_for_status()
        config = write_config(tmp_path / "c.yaml", directory, scim, adopt_existing="verified")
        code, summary = sync(config, capsys)
        assert code == 0, summary
        assert summary["targets"][0]["adoptions"] == ["bob"]

    def test_every_adoption_is_listed_in_the_summary(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With the default (on_match), the account is adopted, and the summary names it."""
        self._existing_bob(scim)
        config = write_config(tmp_path / "c.yaml", directory, scim)
        code, summary = sync(config, capsys)
        assert code == 0, summary
        assert summary["targets"][0]["adoptions"] == ["bob"]
        from flows.cli import main

        capsys.readouterr()
        write_config(tmp_path / "c.yaml", directory, scim)
        assert main(["sync", "--config", str(config), "--full"]) == 0
        assert "adopted" not in capsys.readouterr().out  # adopted once, managed since


class TestCheck:
    def test_check_says_ready_for_a_good_config(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """One line per finding, every one ok, exit 0; the directory's entries counted."""
        from flows.cli import main

        config = write_config(
            tmp_path / "c.yaml", directory, scim, source={"groups": {"base_dn": GROUPS}}
        )
        capsys.readouterr()
        assert main(["check", "--config", str(config)]) == 0
        out = capsys.readouterr().out
        assert "PROBLEM" not in out
        assert "source.bind_password: environment variable TEST_LDAP_PASSWORD is set" in out
        assert f"source: bound to {directory.ldaps_url}" in out
        assert "users: 4 entries" in out and "groups: 4 entries" in out
        assert f"target app: {scim.base_url} answers with these credentials (0 users" in out
        assert "every mapped extension attribute is defined" in out
        assert "everything checked is ready" in out

    def test_check_names_every_problem_in_one_line_each(
        self,
        tmp_path: Path,
        directory: Slapd,
        scim_servers: ScimServers,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A token variable not set, a missing CA file, a users base DN that does not exist,
        a target refusing the credentials: each named, exit 2, no secret shown."""
        from flows.cli import main

        scim = scim_servers.get("bearer")
        auth = {"type": "bearer", "token": {"env": "APP_TOKEN"}}
        missing_ca = tmp_path / "nope.pem"
        config = write_config(
            tmp_path / "c.yaml",
            directory,
            scim,
            source={"users": {"base_dn": f"ou=nobody,{PEOPLE}"}},
            auth=auth,
            ca_file=str(missing_ca),
        )
        monkeypatch.delenv("APP_TOKEN", raising=False)
        capsys.readouterr()
        assert main(["check", "--config", str(config)]) == 2
        out = capsys.readouterr().out
        problems = [line for line in out.splitlines() if line.startswith("PROBLEM")]
        assert any("targets[app].auth.token: environment variable APP_TOKEN" in p for p in problems)
        assert any(f"targets[app].ca_file: {missing_ca} cannot be read" in p for p in problems)
        assert any("does not exist" in p and "ou=nobody" in p for p in problems)
        assert any(p.startswith("PROBLEM target app: target app (") for p in problems)
        monkeypatch.setenv("APP_TOKEN", "wrong-token")
        write_config(
            tmp_path / "c.yaml",
            directory,
            scim,
            auth=auth,
        )
        capsys.readouterr()
        assert main(["check", "--config", str(config)]) == 2
        out = capsys.readouterr().out
        assert "not reached: GET /Users failed: HTTP 401" in out
        assert "wrong-token" not in out


class TestHugeAndSlowAnswers:
    def test_a_20_mb_error_detail_is_kept_as_2_kb(
        self,
        tmp_path: Path,
        directory: Slapd,
        scim: ScimServer,
        proxy: FaultProxy,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Every write answered 400 with a 20 MB detail: the audit log and the summary keep at
        most 2,000 characters of it (the state file grew to 84 MB for 4 users)."""
        config = config_via(tmp_path, directory, scim, proxy, use_bulk="never")
        proxy.huge_error = 20_000_000
        code, summary = sync(config, capsys)
        assert code == 1
        errors = [f["error"] for f in summary["targets"][0]["failures"]]
        assert len(errors) == 3 and all(len(e) < 2_100 for e in errors)
        code, audit = sync(config, capsys, command="audit")
        assert audit and all(len(a["cause"]) < 2_100 for a in audit)
        assert (tmp_path / "state.db").stat().st_size < 2_000_000

    def test_a_trickling_target_fails_at_the_deadline(
        self,
        tmp_path: Path,
        directory: Slapd,
        scim: ScimServer,
        proxy: FaultProxy,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A byte every 0.2 s never trips a 2 s read timeout; the request still ends at 2 s."""
        import time

        config = config_via(tmp_path, directory, scim, proxy, timeout=2, max_retries=0)
        proxy.trickle = 0.2
        started = time.monotonic()
        code, err = sync(config, capsys)
        assert code == 2
        assert "not reached: GET /Users failed: no complete answer within 2s" in err
        assert time.monotonic() - started < 60

    def test_an_answer_over_the_size_cap_is_refused(
        self,
        tmp_path: Path,
        directory: Slapd,
        scim: ScimServer,
        proxy: FaultProxy,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        config = config_via(tmp_path, directory, scim, proxy, max_response_bytes=1_000_000)
        proxy.oversize = 5_000_000
        code, err = sync(config, capsys)
        assert code == 2
        assert "larger than max_response_bytes (1,000,000 bytes)" in err


class TestPatchRefused:
    @pytest.mark.parametrize("server", ["405-proxy", "501-scim2-server"])
    def test_a_target_refusing_the_patch_it_advertises_gets_put(
        self,
        server: str,
        tmp_path: Path,
        directory: Slapd,
        scim_servers: ScimServers,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """PATCH advertised, answered 405 (the proxy) or 501 (scim2-server without PATCH,
        behind a proxy claiming PATCH): the user update and the member change go as PUT, the
        PATCH is tried once per kind (and by the requests already in flight), and the summary
        says so once."""
        scim = scim_servers.get("open" if server == "405-proxy" else "nopatch")
        proxy = FaultProxy(scim.base_url.removesuffix("/v2"), rates={})
        proxy.advertise_patch = True
        proxy.refuse_patch = 405 if server == "405-proxy" else 0
        proxy.start()
        try:
            config = config_via(
                tmp_path,
                directory,
                scim,
                proxy,
                use_bulk="never",
                source={"groups": {"base_dn": GROUPS}},
            )
            assert sync(config, capsys)[0] == 0
            directory.modify(
                f"dn: uid=ada,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Queen\n\n"
                f"dn: uid=bob,{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: Lead\n\n"
                f"dn: cn=engineers,{GROUPS}\nchangetype: modify\ndelete: member\n"
                f"member: uid=bob,{PEOPLE}\n"
            )
            code, summary = sync(config, capsys)
            assert code == 0, summary
            users = target_users(scim)
            assert (users["ada"]["title"], users["bob"]["title"]) == ("Queen", "Lead")
            assert summary["targets"][0]["succeeded"]["update"] == 2
            for report in (summary["targets"][0], summary["groups"][0]):
                assert len(report["notes"]) == 1 and "went as PUT" in report["notes"][0]
            engineers = _group_members(scim, "engineers")
            assert engineers == [users["ada"]["id"]]
            if server == "405-proxy":  # once per kind, and per request already in flight
                assert 2 <= proxy.refused_patches <= 1 + 4
        finally:
            proxy.stop()


def _group_members(scim: ScimServer, name: str) -> list[str]:
    import requests

    found = requests.get(
        f"{scim.base_url}/Groups", params={"filter": f'displayName eq "{name}"'}, timeout=10
    ).json()["Resources"][0]
    return [m["value"] for m in found.get("members", [])]
