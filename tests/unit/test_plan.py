"""The plan: create / update / disable / delete / unchanged, under the target's switches."""

from typing import Any

from tasks.config import parse_config
from tasks.state.store import StateRecord
from tasks.sync.plan import plan_users
from tasks.sync.transform import DesiredUser, Rejection, content_hash


def target(**switches: Any):
    return parse_config(
        {
            "source": {"url": "ldap://x", "users": {"base_dn": "dc=x"}},
            "targets": [{"name": "t", "url": "http://t/v2", **switches}],
        }
    ).targets[0]


def desired(sid: str, name: str, *, disabled: bool = False, title: str = "") -> DesiredUser:
    payload: dict[str, Any] = {"userName": name, "active": not disabled}
    if title:
        payload["title"] = title
    return DesiredUser(sid, f"uid={name}", payload, disabled)


def record(user: DesiredUser, *, status: str = "active") -> StateRecord:
    return StateRecord(
        user.source_id,
        f"scim-{user.source_id}",
        user.user_name,
        content_hash(user.payload),
        user.payload,
        status,
    )  # type: ignore[arg-type]


def kinds(plan) -> dict[str, str]:
    return {a.user_name: a.kind for a in plan.actions}


def test_new_changed_unchanged_and_gone() -> None:
    ada, bob, cy = desired("1", "ada"), desired("2", "bob"), desired("3", "cy")
    state = {"2": record(bob), "3": record(cy), "9": record(desired("9", "gone"))}
    plan = plan_users(target(), [ada, desired("2", "bob", title="Dr"), cy], [], state)
    assert kinds(plan) == {"ada": "create", "bob": "update", "gone": "disable"}
    assert plan.unchanged == 1
    update = next(a for a in plan.actions if a.kind == "update")
    assert update.previous == bob.payload and update.scim_id == "scim-2"


def test_remove_action_delete() -> None:
    state = {"9": record(desired("9", "gone"))}
    assert kinds(plan_users(target(remove_action="delete"), [], [], state)) == {"gone": "delete"}


def test_disabled_in_directory_is_deprovisioned() -> None:
    """A provisioned user disabled in the directory gets the remove action."""
    bob = desired("2", "bob")
    plan = plan_users(target(), [desired("2", "bob", disabled=True)], [], {"2": record(bob)})
    assert kinds(plan) == {"bob": "disable"}
    assert plan.actions[0].payload["active"] is False


def test_disabled_user_already_disabled_is_unchanged() -> None:
    bob = desired("2", "bob", disabled=True)
    plan = plan_users(target(), [bob], [], {"2": record(bob, status="disabled")})
    assert plan.actions == [] and plan.unchanged == 1


def test_disabled_never_provisioned_is_not_created() -> None:
    plan = plan_users(target(), [desired("1", "ada", disabled=True)], [], {})
    assert plan.actions == [] and plan.not_provisioned == 1


def test_provision_disabled_users_creates_them_inactive() -> None:
    plan = plan_users(
        target(provision_disabled_users=True), [desired("1", "ada", disabled=True)], [], {}
    )
    assert kinds(plan) == {"ada": "create"}
    assert plan.actions[0].payload["active"] is False


def test_re_enabled_user_is_updated() -> None:
    bob = desired("2", "bob")
    disabled_record = record(
        DesiredUser("2", "uid=bob", {"userName": "bob", "active": False}, True), status="disabled"
    )
    plan = plan_users(target(), [bob], [], {"2": disabled_record})
    assert kinds(plan) == {"bob": "update"}
    assert plan.actions[0].reason == "re-enabled"


def test_switched_off_actions_are_skipped_with_reason() -> None:
    """Each switch stops only its own action, and says so."""
    bob, gone = desired("2", "bob"), desired("9", "gone")
    state = {"2": record(bob), "9": record(gone)}
    users = [desired("1", "ada"), desired("2", "bob", title="Dr")]
    plan = plan_users(target(create_users=False), users, [], state)
    assert kinds(plan) == {"bob": "update", "gone": "disable"}
    assert [(s.user_name, s.would) for s in plan.skipped] == [("ada", "create")]
    assert "switched off" in plan.skipped[0].reason
    plan = plan_users(target(update_users=False), users, [], state)
    assert kinds(plan) == {"ada": "create", "gone": "disable"}
    assert [(s.user_name, s.would) for s in plan.skipped] == [("bob", "update")]
    plan = plan_users(target(deprovision_users=False), users, [], state)
    assert kinds(plan) == {"ada": "create", "bob": "update"}
    assert [(s.user_name, s.would) for s in plan.skipped] == [("gone", "disable")]


def test_rejected_entry_is_not_deprovisioned() -> None:
    """An entry still in the directory but unusable keeps its target user."""
    bob = desired("2", "bob")
    plan = plan_users(target(), [], [Rejection("2", "uid=bob", "no userName")], {"2": record(bob)})
    assert plan.actions == [] and plan.counts()["rejected"] == 1


def test_manager_reference_resolved_or_deferred() -> None:
    """A DN reference becomes the SCIM id of a provisioned user, else it is left out for now."""
    from tasks.sync.transform import REFERENCE

    ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
    boss = desired("1", "boss")
    worker = DesiredUser(
        "2",
        "uid=worker",
        {"userName": "worker", ent: {"manager": {"value": {REFERENCE: "uid=boss"}}}},
        False,
    )
    plan = plan_users(target(), [boss, worker], [], {})
    create = next(a for a in plan.actions if a.user_name == "worker")
    assert create.payload == {"userName": "worker"}
    assert plan.deferred == 1
    plan = plan_users(target(), [boss, worker], [], {"1": record(boss)})
    create = next(a for a in plan.actions if a.user_name == "worker")
    assert create.payload == {"userName": "worker", ent: {"manager": {"value": "scim-1"}}}
    assert plan.deferred == 0


def test_duplicate_user_names_are_rejected_not_merged() -> None:
    """A second entry with a provisioned user's userName is rejected; the owner keeps it.
    Two new entries sharing a userName are both rejected."""
    bob = desired("2", "bob")
    other_bob = DesiredUser("7", "uid=bob,ou=elsewhere", {"userName": "BOB", "active": True}, False)
    plan = plan_users(target(), [bob, other_bob], [], {"2": record(bob)})
    assert plan.actions == [] and plan.unchanged == 1
    assert [r.dn for r in plan.rejected] == ["uid=bob,ou=elsewhere"]
    assert "duplicate userName 'BOB'" in plan.rejected[0].reason
    plan = plan_users(target(), [bob, other_bob], [], {})
    assert plan.actions == [] and len(plan.rejected) == 2


def test_a_user_over_max_user_bytes_is_rejected_not_sent() -> None:
    """Too big to create or update: rejected with its size, never deprovisioned for it; a
    provisioned user that did not change is not re-checked (nothing would be sent)."""
    small, big = "x" * 10, "x" * 3000
    ada, bob = desired("1", "ada", title=big), desired("2", "bob")
    state = {"2": record(bob), "3": record(desired("3", "cy", title=big))}
    plan = plan_users(
        target(max_user_bytes=2048),
        [ada, desired("2", "bob", title=big), desired("3", "cy", title=big)],
        [],
        state,
    )
    assert plan.actions == []
    assert [r.dn for r in plan.rejected] == ["uid=ada", "uid=bob"]
    assert "over this target's max_user_bytes of 2,048" in plan.rejected[0].reason
    assert plan.unchanged == 1  # cy
    plan = plan_users(target(max_user_bytes=2048), [desired("1", "ada", title=small)], [], {})
    assert kinds(plan) == {"ada": "create"}


def test_user_names_differing_only_by_unicode_normalisation_are_duplicates() -> None:
    """NFC "josé" and NFD "jose\u0301" look identical: they are refused like a case-only
    duplicate, instead of becoming two accounts with identical-looking names."""
    nfc = DesiredUser("1", "uid=josé,ou=a", {"userName": "jos\u00e9", "active": True}, False)
    nfd = DesiredUser("2", "uid=jose,ou=b", {"userName": "jose\u0301", "active": True}, False)
    plan = plan_users(target(), [nfc, nfd], [], {})
    assert plan.actions == [] and len(plan.rejected) == 2
    assert all("duplicate userName" in r.reason for r in plan.rejected)
    plan = plan_users(target(), [nfc, nfd], [], {"1": record(nfc)})
    assert plan.actions == [] and [r.dn for r in plan.rejected] == ["uid=jose,ou=b"]


def test_a_user_disabled_too_long_is_deleted_even_in_an_incremental_cycle() -> None:
    """Disable now, delete later: a record disabled longer than the grace (``expired``) is
    deleted although this cycle did not see it; one within the grace stays disabled."""
    gone_long, gone_recently = desired("1", "ada"), desired("2", "bob")
    state = {
        "1": record(gone_long, status="disabled"),
        "2": record(gone_recently, status="disabled"),
    }
    plan = plan_users(
        target(delete_disabled_after_days=30), [], [], state, gone=set(), expired=frozenset({"1"})
    )
    assert [(a.kind, a.user_name) for a in plan.actions] == [("delete", "ada")]
    assert "disabled more than 30 days ago" in plan.actions[0].reason
