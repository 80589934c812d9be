"""Reconciliation: compare the directory, the state store and what the target really holds.

Incremental sync trusts the state store; reconciliation trusts nothing. The target's users
and groups are listed (compactly: ids, the matching values and a hash of what we manage), then
joined with the desired users and the state store (pandas merges) to decide, per object, one
class of difference (:data:`USER_CLASSES`, :data:`GROUP_CLASSES`). The result is also the
*truth*: state records that describe what the target holds, so the normal plan and load path,
fed with them, repairs exactly the differences.

Everything here is pure: the flow lists the target and fetches the few objects it must read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd

from tasks.config import MultiValuedRule, TargetConfig
from tasks.extract import normalize_dn
from tasks.groups import DesiredGroup, display_name
from tasks.load import _lookup_value
from tasks.plan import resolve_references
from tasks.scim.dialect import Scim20
from tasks.state import GroupRecord, StateRecord, Status
from tasks.transform import DesiredUser, content_hash

Shape = dict[str, Any]
"""The attributes we manage: key → ``None`` (a simple value), a sub-shape (a complex
attribute) or a set of sub-attribute names (a multi-valued complex attribute)."""

USER_CLASSES = (
    "in step",
    "missing on the target",
    "stale state",
    "attributes drifted",
    "re-linked",
    "duplicate on the target",
    "unmanaged",
)
GROUP_CLASSES = (
    "in step",
    "missing on the target",
    "stale state",
    "membership drifted",
    "renamed on the target",
    "re-linked",
    "unmanaged",
)


def managed_shape(mapping: dict[str, Any]) -> Shape:
    """The shape of what a mapping manages, plus ``active``."""

    def walk(node: dict[str, Any]) -> Shape:
        shape: Shape = {}
        for key, rule in node.items():
            if isinstance(rule, dict):
                shape[key] = walk(rule)
            elif isinstance(rule, list):
                keys = {"value"}
                for item in rule:
                    if isinstance(item, MultiValuedRule):
                        keys |= {"type"} if item.type is not None else set()
                        keys |= {"display"} if item.display is not None else set()
                        keys |= {"primary"} if item.primary else set()
                shape[key] = keys
            else:
                shape[key] = None
        return shape

    return {**walk(mapping), "active": None}


def project(resource: dict[str, Any], shape: Shape) -> dict[str, Any]:
    """The part of a SCIM resource that the shape manages (absent and empty values left out)."""
    out: dict[str, Any] = {}
    for key, sub in shape.items():
        value = resource.get(key)
        if value is None or value == "" or value == [] or value == {}:
            continue
        if isinstance(sub, dict):
            if isinstance(value, dict):
                value = project(value, sub)
                if not value:
                    continue
        elif isinstance(sub, set) and isinstance(value, list):
            value = [
                {k: v for k, v in item.items() if k in sub} if isinstance(item, dict) else item
                for item in value
            ]
        out[key] = value
    return out


def _canonical(value: Any) -> Any:
    """Order-free form: multi-valued attributes compared as sets, names case-sensitively."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_canonical(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    return value


def managed_hash(resource: dict[str, Any], shape: Shape) -> bytes:
    """A 16-byte fingerprint of the managed part of a resource (desired or actual)."""
    canonical = json.dumps(_canonical(project(resource, shape)), sort_keys=True)
    return hashlib.blake2b(canonical.encode(), digest_size=16).digest()


def drifted_attributes(actual: dict[str, Any], desired: dict[str, Any], shape: Shape) -> list[str]:
    """The top-level managed attributes whose values differ."""
    a, d = project(actual, shape), project(desired, shape)
    return sorted(k for k in set(a) | set(d) if _canonical(a.get(k)) != _canonical(d.get(k)))


@dataclass(frozen=True, slots=True)
class TargetUser:
    """One user as listed from the target, kept small: ids, matching values, a fingerprint."""

    scim_id: str
    external_id: str | None
    match_value: str | None
    user_name: str
    active: bool
    fingerprint: bytes


def target_user(
    resource: dict[str, Any], shape: Shape, match_attribute: str, dialect: Scim20
) -> TargetUser:
    match = _lookup_value(resource, match_attribute)
    return TargetUser(
        scim_id=str(resource.get("id") or ""),
        external_id=str(resource["externalId"]) if resource.get("externalId") else None,
        match_value=dialect.match_key(match_attribute, match) if match else None,
        user_name=str(resource.get("userName") or ""),
        active=resource.get("active", True) is not False,
        fingerprint=managed_hash(resource, shape),
    )


def listing_attributes(shape: Shape, match_attribute: str) -> list[str]:
    """The attributes to ask for when listing the target's users."""
    return sorted({*shape, "userName", "externalId", "active", match_attribute.split(".")[0]})


@dataclass(slots=True)
class Difference:
    """One row of the reconciliation report."""

    object: str
    kind: str
    name: str
    source_id: str = ""
    scim_id: str = ""
    detail: str = ""


@dataclass(slots=True)
class Findings:
    """Objects counted per class of difference, and a report row per difference."""

    OBJECT: ClassVar[str] = ""
    CLASSES: ClassVar[tuple[str, ...]] = ()
    differences: list[Difference] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = dict.fromkeys(self.CLASSES, 0)

    def note(
        self, kind: str, name: str, source_id: str = "", scim_id: str = "", detail: str = ""
    ) -> Difference:
        """Count one object in ``kind``; unless it is in step, add (and return) its row."""
        self.counts[kind] += 1
        row = Difference(self.OBJECT, kind, name, source_id, scim_id, detail)
        if kind != "in step":
            self.differences.append(row)
        return row


@dataclass(slots=True)
class UserReconciliation(Findings):
    """The users of one target: differences, and the truth to plan from."""

    OBJECT: ClassVar[str] = "user"
    CLASSES: ClassVar[tuple[str, ...]] = USER_CLASSES
    truth: dict[str, StateRecord] = field(default_factory=dict)
    to_read: dict[str, str] = field(default_factory=dict)
    """SCIM id → source id of linked users whose actual values must be read (drifted, or to
    be deprovisioned): the truth records of these get their payload from that read."""
    drifted: dict[str, tuple[dict[str, Any], Difference]] = field(default_factory=dict)
    """SCIM id → (desired payload, report row) of the users whose attributes drifted."""

    def read(self, actual: dict[str, Any], shape: Shape) -> None:
        """Put a user read from the target into the truth, and name what drifted."""
        scim_id = str(actual.get("id") or "")
        source_id = self.to_read.get(scim_id)
        if source_id is None:
            return
        self.truth[source_id] = with_actual(self.truth[source_id], actual, shape)
        if scim_id in self.drifted:
            desired, row = self.drifted[scim_id]
            names = ", ".join(drifted_attributes(actual, desired, shape))
            row.detail = f"differs on the target: {names}"


def _status(active: bool) -> Status:
    return "active" if active else "disabled"


def _to_be_read(source_id: str, listed: TargetUser, user_name: str | None = None) -> StateRecord:
    """A truth record for a user whose values are still to be read from the target
    (:meth:`UserReconciliation.read` completes it)."""
    name = user_name or listed.user_name
    return StateRecord(source_id, listed.scim_id, name, "", {}, _status(listed.active))


def _frame(rows: Iterable[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame.from_records(list(rows), columns=columns)


def link_users(
    target: TargetConfig,
    dialect: Scim20,
    desired: list[DesiredUser],
    state: dict[str, StateRecord],
    listed: list[TargetUser],
) -> tuple[dict[str, str], dict[str, str], list[TargetUser], list[tuple[TargetUser, str]]]:
    """Decide which target user belongs to which source id.

    Returns (links: source id → SCIM id, how: source id → "state" / "externalId" / "match",
    unmanaged target users, duplicates: (target user, the source id it duplicates)).
    A link from the state store counts when its SCIM id still exists; the others are found
    by the externalId we set, then by the matching attribute, never twice for one object.
    """
    match_attribute = target.user_match_attribute
    sources = _frame(
        (
            {
                "source_id": u.source_id,
                "external_id": u.payload.get("externalId"),
                "match_value": _match_value(u.payload, match_attribute, dialect),
            }
            for u in desired
        ),
        ["source_id", "external_id", "match_value"],
    )
    known = set(sources["source_id"])
    leavers = _frame(
        (
            {
                "source_id": r.source_id,
                "external_id": r.payload.get("externalId"),
                "match_value": None,
            }
            for r in state.values()
            if r.source_id not in known
        ),
        ["source_id", "external_id", "match_value"],
    )
    sources = pd.concat([sources, leavers], ignore_index=True) if len(leavers) else sources
    targets = _frame(
        (
            {"scim_id": t.scim_id, "external_id": t.external_id, "match_value": t.match_value}
            for t in listed
        ),
        ["scim_id", "external_id", "match_value"],
    )
    stored = _frame(
        ({"source_id": r.source_id, "scim_id": r.scim_id} for r in state.values()),
        ["source_id", "scim_id"],
    )
    live = stored.merge(targets[["scim_id"]], on="scim_id", how="inner")
    links = dict(zip(live["source_id"], live["scim_id"], strict=True))
    how = dict.fromkeys(links, "state")

    free = targets[~targets["scim_id"].isin(set(links.values()))]
    duplicates: list[tuple[TargetUser, str]] = []
    by_id = {t.scim_id: t for t in listed}
    for column in ("external_id", "match_value"):
        unlinked = sources[~sources["source_id"].isin(set(links))].dropna(subset=[column])
        unlinked = unlinked.drop_duplicates(subset=[column], keep=False)
        candidates = free.dropna(subset=[column])
        pairs = candidates.merge(unlinked[["source_id", column]], on=column, how="inner")
        ambiguous = pairs[pairs.duplicated(subset=["source_id"], keep=False)]
        for scim_id, source_id in zip(ambiguous["scim_id"], ambiguous["source_id"], strict=True):
            duplicates.append((by_id[scim_id], source_id))
        pairs = pairs.drop_duplicates(subset=["source_id"], keep=False)
        for scim_id, source_id in zip(pairs["scim_id"], pairs["source_id"], strict=True):
            links[source_id] = scim_id
            how[source_id] = "externalId" if column == "external_id" else "match"
        free = free[~free["scim_id"].isin(set(pairs["scim_id"]) | set(ambiguous["scim_id"]))]
    # a free user carrying the externalId of a source linked elsewhere is a duplicate
    ours = sources[sources["source_id"].isin(set(links))].dropna(subset=["external_id"])
    copies = free.dropna(subset=["external_id"]).merge(
        ours[["source_id", "external_id"]], on="external_id", how="inner"
    )
    for scim_id, source_id in zip(copies["scim_id"], copies["source_id"], strict=True):
        duplicates.append((by_id[scim_id], source_id))
    free = free[~free["scim_id"].isin(set(copies["scim_id"]))]
    unmanaged = [by_id[s] for s in free["scim_id"]]
    return links, how, unmanaged, duplicates


def _match_value(payload: dict[str, Any], attribute: str, dialect: Scim20) -> str | None:
    value = _lookup_value(payload, attribute)
    return dialect.match_key(attribute, value) if value else None


def reconcile_users(
    target: TargetConfig,
    dialect: Scim20,
    desired: list[DesiredUser],
    state: dict[str, StateRecord],
    listed: list[TargetUser],
) -> UserReconciliation:
    """Classify every user and build the truth (state records of what the target holds).

    Truth records of users in step carry the desired payload and hash (the plan leaves them
    alone); those that drifted or must be deprovisioned are listed in ``to_read``: the flow
    reads them and calls :func:`with_actual` so the plan diffs against the target's values.
    """
    shape = managed_shape(target.mapping)
    links, how, unmanaged, duplicates = link_users(target, dialect, desired, state, listed)
    by_id = {t.scim_id: t for t in listed}
    result = UserReconciliation()
    by_dn = {normalize_dn(u.dn): u.source_id for u in desired}

    def scim_id_of(dn: str) -> str | None:
        return links.get(by_dn.get(dn, ""))

    seen: set[str] = set()
    for user in desired:
        seen.add(user.source_id)
        payload, _ = resolve_references(user.payload, scim_id_of)
        scim_id = links.get(user.source_id)
        record = state.get(user.source_id)
        name = user.user_name
        if scim_id is None:
            if record is not None:
                result.note(
                    "stale state",
                    name,
                    user.source_id,
                    record.scim_id,
                    "the SCIM id no longer exists on the target",
                )
            elif not (user.disabled and not target.provision_disabled_users):
                result.note("missing on the target", name, user.source_id)
            continue
        actual = by_id[scim_id]
        if how[user.source_id] != "state":
            detail = f"found by {how[user.source_id]}" + (
                f"; the state store had {record.scim_id}" if record is not None else ""
            )
            result.note("re-linked", name, user.source_id, scim_id, detail)
        if actual.fingerprint == managed_hash(payload, shape):
            result.truth[user.source_id] = StateRecord(
                user.source_id,
                scim_id,
                name,
                content_hash(payload),
                payload,
                _status(actual.active),
                dn=normalize_dn(user.dn),
            )
            if how[user.source_id] == "state":
                result.note("in step", name, user.source_id, scim_id)
            continue
        result.truth[user.source_id] = _to_be_read(user.source_id, actual, name)
        if user.disabled and not target.provision_disabled_users and not actual.active:
            continue  # disabled on both sides: nothing to do, nothing to read
        row = result.note("attributes drifted", name, user.source_id, scim_id)
        result.drifted[scim_id] = (payload, row)
        result.to_read[scim_id] = user.source_id
    for source_id, scim_id in links.items():
        if source_id in seen:
            continue
        actual = by_id[scim_id]  # a leaver still on the target: the plan deprovisions it
        if how[source_id] != "state":
            result.note(
                "re-linked", actual.user_name, source_id, scim_id, f"found by {how[source_id]}"
            )
        result.to_read[scim_id] = source_id
        result.truth[source_id] = _to_be_read(source_id, actual)
    for copy, source_id in duplicates:
        result.note(
            "duplicate on the target",
            copy.user_name,
            source_id,
            copy.scim_id,
            "carries the externalId or matching value of a user linked elsewhere; left alone",
        )
    for other in unmanaged:
        detail = "not ours; left alone"
        if target.deprovision_unmanaged:
            detail = f"not ours; {target.remove_action} (deprovision_unmanaged is on)"
            key = f"unmanaged:{other.scim_id}"
            result.to_read[other.scim_id] = key
            result.truth[key] = _to_be_read(key, other)
        result.note("unmanaged", other.user_name, "", other.scim_id, detail)
    return result


def with_actual(record: StateRecord, actual: dict[str, Any], shape: Shape) -> StateRecord:
    """A truth record holding the target's actual managed values (so the plan's update or
    deprovisioning diffs against them)."""
    payload = project(actual, shape)
    if "schemas" in actual:
        payload = {"schemas": actual["schemas"], **payload}
    return StateRecord(
        record.source_id,
        record.scim_id,
        str(actual.get("userName") or record.user_name),
        content_hash(payload),
        payload,
        _status(actual.get("active", True) is not False),
    )


# -- groups ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetGroup:
    scim_id: str
    display_name: str
    external_id: str | None
    members: frozenset[str]


@dataclass(slots=True)
class GroupReconciliation(Findings):
    """The groups of one target: differences, and the truth to plan from."""

    OBJECT: ClassVar[str] = "group"
    CLASSES: ClassVar[tuple[str, ...]] = GROUP_CLASSES
    truth: dict[str, GroupRecord] = field(default_factory=dict)


def reconcile_groups(
    target: TargetConfig,
    desired: list[DesiredGroup],
    users: dict[str, StateRecord],
    state: dict[str, GroupRecord],
    listed: list[TargetGroup],
) -> GroupReconciliation:
    """Classify every group against the target and build the truth records (actual members
    and names), from which the normal group plan repairs the differences."""
    result = GroupReconciliation()
    by_id = {g.scim_id: g for g in listed}
    free = {g.scim_id: g for g in listed}
    for stored in state.values():
        free.pop(stored.scim_id, None)
    by_external: dict[str, list[TargetGroup]] = {}
    by_name: dict[str, list[TargetGroup]] = {}
    for candidate in free.values():
        if candidate.external_id:
            by_external.setdefault(candidate.external_id, []).append(candidate)
        by_name.setdefault(candidate.display_name, []).append(candidate)
    active = {sid: r.scim_id for sid, r in users.items() if r.status == "active"}
    for group in desired:
        name = display_name(group, target)
        record = state.get(group.source_id)
        actual = by_id.get(record.scim_id) if record is not None else None
        how = "state"
        if actual is None:
            for table, key, via in (
                (by_external, group.source_id, "externalId"),
                (by_name, name, "displayName"),
            ):
                found = [g for g in table.get(key, []) if g.scim_id in free]
                if len(found) == 1:
                    actual, how = found[0], via
                    del free[actual.scim_id]
                    break
        if actual is None:
            if record is not None:
                result.note(
                    "stale state",
                    name,
                    group.source_id,
                    record.scim_id,
                    "the SCIM id no longer exists on the target",
                )
            else:
                result.note("missing on the target", name, group.source_id)
            continue
        if how != "state":
            result.note("re-linked", name, group.source_id, actual.scim_id, f"found by {how}")
        foreign = (record.foreign if record is not None else frozenset()) & actual.members
        result.truth[group.source_id] = GroupRecord(
            group.source_id, actual.scim_id, actual.display_name, actual.members, foreign
        )
        should = frozenset(active[s] for s in group.members if s in active)
        if target.membership_mode == "additive":
            should |= foreign
        drift = []
        if actual.display_name != name:
            result.note(
                "renamed on the target",
                name,
                group.source_id,
                actual.scim_id,
                f"the target calls it {actual.display_name!r}",
            )
            drift.append("name")
        if should != actual.members:
            extra, lacking = len(actual.members - should), len(should - actual.members)
            result.note(
                "membership drifted",
                name,
                group.source_id,
                actual.scim_id,
                f"{lacking} members missing, {extra} members not in the directory",
            )
            drift.append("members")
        if not drift and how == "state":
            result.note("in step", name, group.source_id, actual.scim_id)
    wanted = {g.source_id for g in desired}
    for source_id, stored in state.items():
        if source_id not in wanted and stored.scim_id in by_id:
            gone = by_id[stored.scim_id]  # gone from the directory: the plan deletes it
            result.truth[source_id] = GroupRecord(
                source_id, gone.scim_id, gone.display_name, gone.members, stored.foreign
            )
    for other in free.values():
        result.note("unmanaged", other.display_name, "", other.scim_id, "not ours; left alone")
    return result
