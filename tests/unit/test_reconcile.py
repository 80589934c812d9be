"""Reconciliation's pure parts: what we manage, fingerprints, linking and classes."""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.config import TargetConfig
from tasks.reconcile.classify import (
    TargetUser,
    managed_hash,
    managed_shape,
    project,
    reconcile_users,
    target_user,
)
from tasks.reconcile.compact import CHUNK, Index, Strings, h64
from tasks.scim.dialect import Scim20
from tasks.state.store import StateRecord
from tasks.sync.transform import REFERENCE, DesiredUser, Rejection, content_hash

MAPPING = {
    "userName": "uid",
    "externalId": "$id",
    "title": "title",
    "emails": [{"value": "mail", "type": "work", "primary": True}],
}
TARGET = TargetConfig(name="t", url="http://127.0.0.1:1/v2", mapping=MAPPING)
SHAPE = managed_shape(TARGET.mapping)
DIALECT = Scim20()


def desired(uid: str, **extra: Any) -> DesiredUser:
    payload = {"userName": uid, "externalId": f"id-{uid}", "active": True, **extra}
    return DesiredUser(f"id-{uid}", f"uid={uid},ou=people", payload, False)


def on_target(scim_id: str, uid: str, **extra: Any) -> TargetUser:
    resource = {"id": scim_id, "userName": uid, "externalId": f"id-{uid}", "active": True}
    return target_user({**resource, **extra}, SHAPE, "userName", DIALECT)


def record(uid: str, scim_id: str) -> StateRecord:
    payload = desired(uid).payload
    return StateRecord(f"id-{uid}", scim_id, uid, content_hash(payload), payload, "active")


def test_fingerprint_ignores_what_we_do_not_manage_and_value_order() -> None:
    mine = {"userName": "a", "emails": [{"value": "x"}, {"value": "y", "type": "work"}]}
    theirs = {
        **mine,
        "id": "1",
        "meta": {"created": "now"},
        "nickName": "added on the target",
        "emails": [{"value": "y", "type": "work", "display": "Y"}, {"value": "x"}],
    }
    assert managed_hash(mine, SHAPE) == managed_hash(theirs, SHAPE)
    assert managed_hash({**mine, "title": "CEO"}, SHAPE) != managed_hash(mine, SHAPE)
    assert project({"title": "", "userName": "a"}, SHAPE) == {"userName": "a"}


def test_each_user_class() -> None:
    users = [
        desired("inStep"),
        desired("drift", title="Engineer"),
        desired("stale"),
        desired("new"),
        desired("relinked"),
    ]
    state = {
        r.source_id: r
        for r in (record("inStep", "1"), record("drift", "2"), record("stale", "gone"))
    }
    state["id-drift"] = StateRecord(
        "id-drift", "2", "drift", "", {"userName": "drift", "title": "Engineer"}, "active"
    )
    listed = [
        on_target("1", "inStep"),
        on_target("2", "drift", title="CEO"),
        on_target("5", "relinked"),
        on_target("6", "mallory", externalId=None),
        on_target("7", "inStep"),  # a second user carrying inStep's externalId
    ]
    result = reconcile_users(TARGET, DIALECT, users, state, listed)
    kinds = {(d.kind, d.name) for d in result.differences}
    assert kinds == {
        ("attributes drifted", "drift"),
        ("stale state", "stale"),
        ("missing on the target", "new"),
        ("re-linked", "relinked"),
        ("unmanaged", "mallory"),
        ("duplicate on the target", "inStep"),
    }
    assert result.counts["in step"] == 1
    assert result.to_read == {"2": "id-drift"}
    assert set(result.truth) == {"id-drift", "id-relinked"}  # inStep: nothing to change
    assert result.truth["id-relinked"].scim_id == "5"
    assert result.truth["id-relinked"].content_hash == content_hash(users[4].payload)

    actual = {"id": "2", "userName": "drift", "externalId": "id-drift", "title": "CEO"}
    result.read({**actual, "active": True}, SHAPE)
    assert result.truth["id-drift"].payload["title"] == "CEO"
    drift = next(d for d in result.differences if d.kind == "attributes drifted")
    assert drift.detail == "differs on the target: title"


def test_match_by_user_name_when_the_external_id_is_not_ours() -> None:
    listed = [on_target("9", "Ada", externalId=None)]
    result = reconcile_users(TARGET, DIALECT, [desired("ada")], {}, listed)
    assert result.truth["id-ada"].scim_id == "9"
    assert [(d.kind, d.detail) for d in result.differences] == [
        ("re-linked", "found by match"),
        ("attributes drifted", ""),  # no externalId there yet; named once the user is read
    ]


def test_two_candidates_for_one_user_are_not_guessed() -> None:
    listed = [on_target("1", "ada", externalId=None), on_target("2", "ADA", externalId=None)]
    result = reconcile_users(TARGET, DIALECT, [desired("ada")], {}, listed)
    assert "id-ada" not in result.truth
    assert {d.kind for d in result.differences} == {
        "duplicate on the target",
        "missing on the target",
    }


def test_unmanaged_users_become_deprovisionable_only_when_configured() -> None:
    listed = [on_target("6", "mallory", externalId=None)]
    assert reconcile_users(TARGET, DIALECT, [], {}, listed).truth == {}
    strict = TARGET.model_copy(update={"deprovision_unmanaged": True})
    result = reconcile_users(strict, DIALECT, [], {}, listed)
    assert list(result.truth) == ["unmanaged:6"] and result.to_read == {"6": "unmanaged:6"}


def placed(uid: str, scim_id: str, payload: dict[str, Any], dn: str | None = None) -> StateRecord:
    """A state record holding exactly this payload, with the user's DN."""
    return StateRecord(
        f"id-{uid}",
        scim_id,
        uid,
        content_hash(payload),
        payload,
        "active",
        dn=dn or f"uid={uid},ou=people",
    )


def test_users_in_step_with_a_right_state_record_get_no_truth_record() -> None:
    users = [desired("ada"), desired("bob")]
    state = {"id-ada": placed("ada", "1", users[0].payload)}
    state["id-bob"] = StateRecord(
        "id-bob", "2", "bob", "an older hash", users[1].payload, "active", dn="uid=bob,ou=people"
    )
    result = reconcile_users(
        TARGET, DIALECT, users, state, [on_target("1", "ada"), on_target("2", "bob")]
    )
    assert result.counts["in step"] == 2 and result.differences == []
    assert result.unchanged == 1  # ada: nothing about her is held or written
    assert list(result.truth) == ["id-bob"]  # bob's record is corrected, nothing sent
    assert result.truth["id-bob"].content_hash == content_hash(users[1].payload)
    assert [u.source_id for u in result.desired] == ["id-bob"] and not result.to_read


def test_reference_to_a_relinked_user_is_checked_again() -> None:
    """bob's manager DN belonged to a leaver (scim 1) and now to a new ada (scim 2): bob looked in
    step through the state store's DNs, and is found drifted once every link is known."""
    target = TARGET.model_copy(
        update={"mapping": {"userName": "uid", "externalId": "$id", "manager": "@manager"}}
    )
    shape = managed_shape(target.mapping)
    boss = "uid=ada,ou=people"
    bob = DesiredUser(
        "id-bob",
        "uid=bob,ou=people",
        {"userName": "bob", "externalId": "id-bob", "active": True, "manager": {REFERENCE: boss}},
        False,
    )
    ada = DesiredUser(
        "id-ada", boss, {"userName": "ada", "externalId": "id-ada", "active": True}, False
    )
    bob_then = {**bob.payload, "manager": "1"}
    state = {
        "id-bob": placed("bob", "3", bob_then),
        "id-old": placed("old", "1", {"userName": "old", "externalId": "id-old"}, dn=boss),
    }

    def listed(scim_id: str, resource: dict[str, Any]) -> TargetUser:
        return target_user({"id": scim_id, **resource}, shape, "userName", DIALECT)

    on_it = [
        listed("1", {"userName": "old", "externalId": "id-old", "active": True}),
        listed("2", ada.payload),
        listed("3", bob_then),
    ]
    result = reconcile_users(target, DIALECT, [ada, bob], state, on_it)
    kinds = {(d.kind, d.name) for d in result.differences}
    assert ("attributes drifted", "bob") in kinds and ("re-linked", "ada") in kinds
    assert result.drifted["3"][0]["manager"] == "2"
    assert result.gone == {"id-old"}


def test_strings_and_index_hold_many_values_compactly() -> None:
    values = [f"user-{n}" for n in range(CHUNK * 2 + 5)]
    strings = Strings(values)
    assert len(strings) == len(values)
    assert [strings[i] for i in (0, CHUNK - 1, CHUNK, 2 * CHUNK + 4)] == [
        values[0],
        values[CHUNK - 1],
        values[CHUNK],
        values[-1],
    ]
    keys = np.array([h64(v) for v in ["a", "b", "a", ""]], dtype=np.uint64)
    assert h64(None) == h64("") == 0 and h64("a") != 0
    assert Index(keys).find(h64("a")) == 0
    assert Index(keys, prefer=np.array([False, False, True, False])).find(h64("a")) == 2
    assert Index(keys).find(h64("zz")) == -1 and Index(keys).find(0) == -1
    found = Index(keys).find_many(np.array([h64("b"), h64("c"), 0], dtype=np.uint64))
    assert found.tolist() == [1, -1, -1]


def test_a_rejected_users_account_is_kept_never_taken_for_unmanaged() -> None:
    """rj is rejected by the transform this time; its state record points at a SCIM id gone
    from the target, and its account is there under a new id: re-linked and left alone, not
    deprovisioned as unmanaged (deprovision_unmanaged is on); a copy of kept's live account
    is a duplicate."""
    strict = TARGET.model_copy(update={"deprovision_unmanaged": True})
    state = {
        "id-rj": record("rj", "old-scim"),
        "id-kept": record("kept", "4"),
    }
    listed = [
        on_target("9", "rj"),
        on_target("4", "kept"),
        on_target("8", "kept2", externalId="id-kept"),
    ]
    rejected = [Rejection("id-rj", "uid=rj", "bad mail"), Rejection("id-kept", "uid=kept", "x")]
    result = reconcile_users(strict, DIALECT, [], state, listed, rejected)
    kinds = {(d.kind, d.scim_id) for d in result.differences}
    assert kinds == {("re-linked", "9"), ("duplicate on the target", "8")}
    assert result.gone == set() and result.truth["id-rj"].scim_id == "9"
    assert result.to_read == {"9": "id-rj"}


def test_disabled_users_never_provisioned_are_kept_small() -> None:
    user = desired("off", title="Engineer")
    off = DesiredUser(user.source_id, user.dn, {**user.payload, "active": False}, True)
    result = reconcile_users(TARGET, DIALECT, [off], {}, [])
    assert result.differences == [] and result.truth == {}
    assert [u.payload for u in result.desired] == [
        {"userName": "off", "externalId": "id-off", "active": False}
    ]
