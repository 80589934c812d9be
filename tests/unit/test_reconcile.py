"""Reconciliation's pure parts: what we manage, fingerprints, linking and classes."""

from __future__ import annotations

from typing import Any

from tasks.config import TargetConfig
from tasks.reconcile import (
    TargetUser,
    managed_hash,
    managed_shape,
    project,
    reconcile_users,
    target_user,
)
from tasks.scim.dialect import Scim20
from tasks.state import StateRecord
from tasks.transform import DesiredUser, content_hash

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
    assert set(result.truth) == {"id-inStep", "id-drift", "id-relinked"}
    assert result.truth["id-relinked"].scim_id == "5"
    assert result.truth["id-inStep"].content_hash == content_hash(users[0].payload)

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
