"""Groups as the targets should have them: members resolved, and the plan per target.

Members are resolved to *user source ids* (DN → the user entry in scope), optionally through
nested groups (flattened, cycles detected), then to SCIM user ids from the state store: only
users provisioned and active on the target can be members there; the others are counted and
reported. The plan per group is a rename and a member delta, never a full re-send. Pure
functions only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from tasks.config import GroupsQuery, TargetConfig
from tasks.ldap.dn import normalize_dn
from tasks.ldap.extract import SourceUser
from tasks.ldap.groups import GroupExtraction
from tasks.state.store import GroupRecord, StateRecord

# -- resolve members -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DesiredGroup:
    """A group as the directory says it should be: name and member user source ids."""

    source_id: str
    dn: str
    display_name: str
    members: frozenset[str]
    """Source ids of the member users in scope."""
    unknown_members: int = 0
    """Member DNs that are neither users in scope nor (when flattening) groups in scope."""


def resolve_groups(
    extraction: GroupExtraction,
    users: Iterable[SourceUser],
    query: GroupsQuery,
    known: dict[str, str] | None = None,
) -> tuple[list[DesiredGroup], list[str]]:
    """Groups with their members as user source ids; also returns warnings (cycles).

    Member DNs are looked up among ``users`` and, in an incremental cycle, ``known``
    (normalized DN → source id of the users the state store knows).
    """
    users = list(users)
    user_by_dn = dict(known or {})
    user_by_dn.update((normalize_dn(u.dn), u.source_id) for u in users)
    groups = {normalize_dn(g.dn): g for g in extraction.groups}
    direct: dict[str, list[str]] = {dn: list(g.member_dns) for dn, g in groups.items()}
    if query.members_from == "user_member_of":
        direct = {dn: [] for dn in groups}
        attribute = query.member_of_attribute.lower()
        for user in users:
            for group_dn in user.attributes.get(attribute, []):
                listed = direct.get(normalize_dn(group_dn))
                if listed is not None:
                    listed.append(normalize_dn(user.dn))
    warnings: list[str] = []

    def expand(dn: str, path: tuple[str, ...]) -> tuple[set[str], int]:
        found: set[str] = set()
        unknown = 0
        for member in direct.get(dn, []):
            if member in user_by_dn:
                found.add(user_by_dn[member])
            elif member in groups and query.flatten_nested:
                if member in path:
                    cycle = " → ".join(groups[d].name for d in (*path, member))
                    warnings.append(f"nested group cycle: {cycle}")
                    continue
                nested, nested_unknown = expand(member, (*path, member))
                found |= nested
                unknown += nested_unknown
            else:
                unknown += 1
        return found, unknown

    desired = []
    for dn, group in groups.items():
        found, unknown = expand(dn, (dn,))
        desired.append(
            DesiredGroup(group.source_id, group.dn, group.name, frozenset(found), unknown)
        )
    return desired, sorted(set(warnings))


def display_name(group: DesiredGroup, target: TargetConfig) -> str:
    return group.dn if target.group_name_source == "dn" else group.display_name


# -- plan ------------------------------------------------------------------------------------

GroupActionKind = Literal["create", "update", "delete"]


@dataclass(frozen=True, slots=True)
class GroupAction:
    """One group to create, update (rename and/or members) or delete on the target.

    The member delta here is planned from the state store; the loader reads the group's
    current members before changing them, so drift on the target is corrected too.
    """

    kind: GroupActionKind
    source_id: str
    display_name: str
    members: frozenset[str] = frozenset()
    """The member SCIM ids the group should have afterwards (create, update)."""
    known: frozenset[str] = frozenset()
    """The members the state store knows the group has (update)."""
    scim_id: str | None = None
    rename: bool = False
    keep: frozenset[str] = frozenset()
    """Additive mode: members we did not add, never removed."""

    @property
    def add(self) -> frozenset[str]:
        return self.members - self.known

    @property
    def remove(self) -> frozenset[str]:
        return self.known - self.members


@dataclass(frozen=True, slots=True)
class GroupSkip:
    display_name: str
    would: GroupActionKind
    reason: str


@dataclass(slots=True)
class GroupPlan:
    target: str
    actions: list[GroupAction] = field(default_factory=list)
    skipped: list[GroupSkip] = field(default_factory=list)
    unchanged: int = 0
    not_provisioned_members: Counter[str] = field(default_factory=Counter)
    """Per group name: members in the directory that are not provisioned, active users."""
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        kinds = Counter(a.kind for a in self.actions)
        return {
            "create": kinds["create"],
            "update": kinds["update"],
            "delete": kinds["delete"],
            "renames": sum(1 for a in self.actions if a.rename),
            "unchanged": self.unchanged,
            "skipped": len(self.skipped),
            "members to add": sum(len(a.add) for a in self.actions if a.kind != "delete"),
            "members to remove": sum(len(a.remove) for a in self.actions if a.kind == "update"),
            "members not provisioned": sum(self.not_provisioned_members.values()),
        }


def plan_groups(
    target: TargetConfig,
    desired: Iterable[DesiredGroup],
    users: dict[str, StateRecord],
    state: dict[str, GroupRecord],
    warnings: Iterable[str] = (),
    gone: set[str] | None = None,
    disabled_members: frozenset[str] = frozenset(),
) -> GroupPlan:
    """Decide, per group, create / rename / member delta / delete, honouring the switches.

    ``desired`` is every group in scope, or, with ``gone`` given (an incremental cycle), the
    groups that changed: then only the provisioned groups in ``gone`` are deleted. Members are
    the active provisioned users, and the disabled ones in ``disabled_members`` (provisioned
    disabled, kept in their groups: ``disabled_users_keep_groups``).
    """
    plan = GroupPlan(target=target.name, warnings=list(warnings))
    active = {
        sid: r.scim_id
        for sid, r in users.items()
        if r.status == "active" or sid in disabled_members
    }
    additive = target.membership_mode == "additive"
    seen: set[str] = set()
    for group in desired:
        seen.add(group.source_id)
        name = display_name(group, target)
        members = frozenset(active[sid] for sid in group.members if sid in active)
        missing = len(group.members) - len(members) + group.unknown_members
        if missing:
            plan.not_provisioned_members[name] += missing
        record = state.get(group.source_id)
        if record is None:
            if target.create_groups:
                plan.actions.append(GroupAction("create", group.source_id, name, members))
            else:
                plan.skipped.append(GroupSkip(name, "create", "group creation is switched off"))
            continue
        keep = record.foreign if additive else frozenset()
        should = members | keep
        rename = record.display_name != name
        if not rename and should == record.members:
            plan.unchanged += 1
            continue
        if not target.update_groups:
            plan.skipped.append(GroupSkip(name, "update", "group updates are switched off"))
            continue
        plan.actions.append(
            GroupAction(
                "update",
                group.source_id,
                name,
                should,
                record.members,
                record.scim_id,
                rename,
                keep,
            )
        )
    for left, record in state.items():
        if left in seen:
            continue
        if gone is not None and left not in gone:
            plan.unchanged += 1
            continue
        if target.delete_groups:
            plan.actions.append(
                GroupAction("delete", left, record.display_name, scim_id=record.scim_id)
            )
        else:
            plan.skipped.append(
                GroupSkip(record.display_name, "delete", "group deletion is switched off")
            )
    return plan
