"""Plan: compare the desired users with what the state store says was provisioned.

Pure functions only. The result says, per user, create / update / disable / delete or nothing,
and which of those a switched-off target setting prevented (reported as skipped, with why).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tasks.config import TargetConfig
from tasks.ldap.dn import normalize_dn
from tasks.scim.dialect import name_key
from tasks.state.store import StateRecord
from tasks.sync.transform import REFERENCE, DesiredUser, Rejection, oversize_reason

ActionKind = Literal["create", "update", "disable", "delete"]

GONE = "no longer in the directory or out of the source filter"
DISABLED = "disabled in the directory"


@dataclass(frozen=True, slots=True)
class Action:
    """One write to make on the target."""

    kind: ActionKind
    source_id: str
    user_name: str
    reason: str
    payload: dict[str, Any] | None = None
    """Desired SCIM user (create, update, disable)."""
    previous: dict[str, Any] | None = None
    """What was last provisioned (update, disable), for PATCH diffs."""
    scim_id: str | None = None
    version: str | None = None
    """The target's ETag after our last write, for If-Match."""
    dn: str | None = None
    """The directory entry's DN (kept in the state store to resolve references later)."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """An action that would have happened but a target switch prevents."""

    source_id: str
    user_name: str
    would: ActionKind
    reason: str


@dataclass(slots=True)
class Plan:
    target: str
    actions: list[Action] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    unchanged: int = 0
    not_provisioned: int = 0
    """Disabled in the directory and never provisioned (provision_disabled_users is off)."""
    deferred: int = 0
    """Users with a reference (e.g. manager) to a user not provisioned yet: left out for now."""
    moved: dict[str, str] = field(default_factory=dict)
    """Source id → new DN of provisioned users that moved in the directory but need no write."""

    def counts(self) -> dict[str, int]:
        counts = Counter(a.kind for a in self.actions)
        return {
            "create": counts["create"],
            "update": counts["update"],
            "disable": counts["disable"],
            "delete": counts["delete"],
            "unchanged": self.unchanged,
            "skipped": len(self.skipped),
            "rejected": len(self.rejected),
            "not provisioned (disabled)": self.not_provisioned,
        }


def _deprovision(
    plan: Plan,
    target: TargetConfig,
    record: StateRecord,
    why: str,
    expired: frozenset[str] = frozenset(),
) -> None:
    """Apply the remove action to a provisioned user, honouring the switches; a user disabled
    longer than ``delete_disabled_after_days`` (in ``expired``) is deleted."""
    kind: ActionKind = "delete" if target.remove_action == "delete" else "disable"
    if kind == "disable" and record.status == "disabled":
        if record.source_id not in expired:
            plan.unchanged += 1
            return
        kind = "delete"
        why = f"disabled more than {target.delete_disabled_after_days} days ago ({why})"
    if not target.deprovision_users:
        plan.skipped.append(
            Skipped(
                record.source_id, record.user_name, kind, f"{why}; disable/delete is switched off"
            )
        )
        return
    payload = {**record.payload, "active": False} if kind == "disable" else None
    plan.actions.append(
        Action(
            kind,
            record.source_id,
            record.user_name,
            why,
            payload,
            record.payload,
            record.scim_id,
            record.version,
            record.dn,
        )
    )


def by_status(records: Iterable[StateRecord]) -> list[StateRecord]:
    """Records with the active ones last: a DN kept by a deprovisioned account and taken by a
    new entry resolves to the active account (the later one wins in a dict)."""
    return sorted(records, key=lambda r: r.status == "active")


def resolve_references(
    payload: dict[str, Any], scim_id_of: Callable[[str], str | None]
) -> tuple[dict[str, Any], int]:
    """Replace ``@attribute`` placeholders by SCIM ids; drop those not resolvable yet.

    Returns the resolved payload (the same object when it held no placeholder) and how many
    references were dropped. A complex attribute left empty by a dropped reference is dropped.
    """
    dropped = 0

    def walk(node: dict[str, Any]) -> dict[str, Any]:
        nonlocal dropped
        out: dict[str, Any] = {}
        for key, value in node.items():
            if isinstance(value, dict) and REFERENCE in value:
                value = scim_id_of(value[REFERENCE])
                if value is None:
                    dropped += 1
                    continue
            elif isinstance(value, dict):
                value = walk(value)
                if not value:
                    continue
            out[key] = value
        return out if out != node else node

    return walk(payload), dropped


def without_duplicate_names(
    desired: Iterable[DesiredUser],
    state: dict[str, StateRecord],
    *,
    partial: bool = False,
    gone: set[str] | None = None,
) -> tuple[list[DesiredUser], list[Rejection]]:
    """Set aside users whose userName another directory entry has too (ignoring case and
    Unicode normalisation: :func:`tasks.scim.dialect.name_key`).

    When exactly one of them is already provisioned it keeps its account; the others (all of
    them otherwise) are rejected with the DNs involved, so nobody takes over another's account.
    ``partial``: ``desired`` holds only the changed users, so a changed user taking the
    userName of another provisioned user (not in this cycle, and not ``gone`` in it) is
    rejected too.
    """
    users = list(desired)
    groups: dict[str, list[DesiredUser]] = {}
    for user in users:
        groups.setdefault(name_key(user.user_name), []).append(user)
    rejected: list[Rejection] = []
    if partial:
        ids = {u.source_id for u in users} | (gone or set())
        owner = {name_key(r.user_name): r for r in state.values() if r.source_id not in ids}
        for name, group in list(groups.items()):
            other = owner.get(name)
            if other is None:
                continue
            for user in group:
                rejected.append(
                    Rejection(
                        user.source_id,
                        user.dn,
                        f"duplicate userName {user.user_name!r}: provisioned for "
                        f"{other.dn or other.source_id}",
                    )
                )
            del groups[name]
    for group in groups.values():
        if len(group) == 1:
            continue
        owners = [u for u in group if u.source_id in state]
        keeper = owners[0] if len(owners) == 1 else None
        for user in group:
            if user is not keeper:
                others = "; ".join(o.dn for o in group if o is not user)
                rejected.append(
                    Rejection(
                        user.source_id,
                        user.dn,
                        f"duplicate userName {user.user_name!r} in the directory (also {others})",
                    )
                )
    refused = {r.source_id for r in rejected}
    return [u for u in users if u.source_id not in refused], rejected


def plan_users(
    target: TargetConfig,
    desired: Iterable[DesiredUser],
    rejected: Iterable[Rejection],
    state: dict[str, StateRecord],
    gone: set[str] | None = None,
    expired: frozenset[str] = frozenset(),
) -> Plan:
    """Decide what to do for every user of one target.

    ``desired`` is every user in scope (a full pass: a provisioned user not among them is
    deprovisioned), or, with ``gone`` given, only the users that changed (an incremental
    cycle: only the provisioned users in ``gone`` are deprovisioned; the others are unchanged).
    A rejected entry is still in the directory: its target user is left alone, never
    deprovisioned because of that. ``expired``: users the provisioner disabled longer ago than
    ``delete_disabled_after_days``, deleted now unless they came back.
    """
    desired, duplicates = without_duplicate_names(
        desired, state, partial=gone is not None, gone=gone
    )
    plan = Plan(target=target.name, rejected=[*rejected, *duplicates])
    keep = {r.source_id for r in plan.rejected}
    seen: set[str] = set()
    by_dn: dict[str, str] = {}

    def scim_id_of(dn: str) -> str | None:
        if not by_dn:  # built on the first reference only: normalizing every DN costs
            by_dn.update((r.dn, r.source_id) for r in by_status(state.values()) if r.dn)
            by_dn.update((normalize_dn(user.dn), user.source_id) for user in desired)
        record = state.get(by_dn.get(dn, ""))
        return record.scim_id if record is not None else None

    for user in desired:
        seen.add(user.source_id)
        record = state.get(user.source_id)
        payload, dropped = resolve_references(user.payload, scim_id_of)
        plan.deferred += bool(dropped)
        if payload is not user.payload:
            user = replace(user, payload=payload)
        if user.disabled and not target.provision_disabled_users:
            if record is None:
                plan.not_provisioned += 1
            else:
                _deprovision(plan, target, record, DISABLED, expired)
            continue
        changed = record is None or record.content_hash != user.content_hash
        too_big = oversize_reason(user.payload, target.max_user_bytes) if changed else None
        if too_big is not None:  # never sent; an account already there is left as it is
            plan.rejected.append(Rejection(user.source_id, user.dn, too_big))
            continue
        if record is None:
            if target.create_users:
                plan.actions.append(
                    Action(
                        "create",
                        user.source_id,
                        user.user_name,
                        "new",
                        user.payload,
                        dn=normalize_dn(user.dn),
                    )
                )
            else:
                plan.skipped.append(
                    Skipped(
                        user.source_id, user.user_name, "create", "user creation is switched off"
                    )
                )
        elif record.content_hash != user.content_hash:
            reason = "re-enabled" if record.status == "disabled" else "attributes changed"
            if target.update_users:
                plan.actions.append(
                    Action(
                        "update",
                        user.source_id,
                        user.user_name,
                        reason,
                        user.payload,
                        record.payload,
                        record.scim_id,
                        record.version,
                        normalize_dn(user.dn),
                    )
                )
            else:
                plan.skipped.append(
                    Skipped(
                        user.source_id,
                        user.user_name,
                        "update",
                        f"{reason}; updates are switched off",
                    )
                )
        else:
            plan.unchanged += 1
            dn = normalize_dn(user.dn)
            if record.dn != dn:
                plan.moved[user.source_id] = dn
    for source_id, record in state.items():
        if source_id in seen:
            continue
        if source_id in keep or (
            gone is not None and source_id not in gone and source_id not in expired
        ):
            plan.unchanged += 1
            continue
        _deprovision(plan, target, record, GONE, expired)
    return plan
