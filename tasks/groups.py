"""Groups: read them from the directory, resolve their members, plan the target's changes.

Members are resolved to *user source ids* (DN → the user entry in scope), optionally through
nested groups (flattened, cycles detected), then to SCIM user ids from the state store: only
users provisioned and active on the target can be members there; the others are counted and
reported. The plan per group is a rename and a member delta, never a full re-send.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

import ldap3
from ldap3.core import exceptions as ldap_exc
from ldap3.utils.conv import escape_filter_chars

from tasks.ad import parse_range, ranged_values
from tasks.changes import Changes, Reader, Start, read_changes
from tasks.config import DirectoryType, GroupsQuery, LdapSource, TargetConfig
from tasks.errors import SourceError
from tasks.extract import (
    SourceUser,
    connect,
    directory_task,
    normalize_dn,
    source_id,
)
from tasks.logs import run_logger
from tasks.state import GroupRecord, StateRecord

# -- extract ---------------------------------------------------------------------------------

AD_RANGE_SIZE = 1500
"""Values per ranged read of a multi-valued attribute (AD's default MaxValRange)."""


@dataclass(frozen=True, slots=True)
class SourceGroup:
    """One group entry: stable id, DN, name and member DNs (normalized)."""

    source_id: str
    dn: str
    name: str
    member_dns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GroupExtraction:
    groups: list[SourceGroup]
    invalid: list[tuple[str, str]]


def fetch_range(conn: ldap3.Connection, dn: str) -> Callable[[str], tuple[str, list[bytes]] | None]:
    def fetch(attribute: str) -> tuple[str, list[bytes]] | None:
        try:
            conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[attribute])
        except ldap_exc.LDAPException as exc:
            raise SourceError(f"ranged read of {attribute} on {dn!r} failed: {exc}") from exc
        for item in conn.response or []:
            for name, values in item.get("raw_attributes", {}).items():
                return name, list(values)
        return None

    return fetch


def entry_to_group(
    query: GroupsQuery, dn: str, raw: dict[str, list[bytes]], conn: ldap3.Connection | None
) -> SourceGroup | tuple[str, str]:
    """A group entry as a :class:`SourceGroup` (ranged member values read in full)."""
    id_attribute = query.id_attribute or "entryUUID"
    by_name = {name.lower(): values for name, values in raw.items()}
    ids = by_name.get(id_attribute.lower())
    if not ids:
        return dn, f"no {id_attribute} (the stable source id)"
    names = by_name.get(query.name_attribute.lower())
    member_attributes = {a.lower() for a in query.member_attributes}
    members: list[str] = []
    for name, values in raw.items():
        ranged = parse_range(name)
        base = (ranged[0] if ranged else name).lower()
        if base not in member_attributes:
            continue
        if ranged is not None and conn is not None:
            values = ranged_values(name, list(values), fetch_range(conn, dn))
        members += [normalize_dn(v.decode("utf-8", errors="replace")) for v in values]
    try:
        ident = source_id(id_attribute, ids)
    except (ValueError, UnicodeDecodeError) as exc:
        return dn, f"unreadable {id_attribute}: {exc}"
    name = names[0].decode("utf-8", errors="replace") if names else dn
    return SourceGroup(ident, dn, name, tuple(dict.fromkeys(members)))


def read_groups(conn: ldap3.Connection, source: LdapSource) -> GroupExtraction:
    """Every group in scope."""
    if source.groups is None:
        return GroupExtraction([], [])
    reader = group_reader(conn, source)
    reader.read(source.groups.filter)
    return GroupExtraction(reader.entries, reader.invalid)


def group_reader(conn: ldap3.Connection, source: LdapSource) -> Reader[SourceGroup]:
    """A reader of the groups in scope (ids, names, members)."""
    query = source.groups
    assert query is not None
    wanted = {query.id_attribute or "entryUUID", query.name_attribute}
    if query.members_from == "group" and source.type is DirectoryType.active_directory:
        # what AD answers to a plain read of a big group anyway, asked for explicitly so that
        # directories that would return everything at once (Samba) are read the same way
        wanted.update(f"{a};range=0-{AD_RANGE_SIZE - 1}" for a in query.member_attributes)
    elif query.members_from == "group":
        wanted.update(query.member_attributes)
    return Reader(conn, source, query, wanted, lambda dn, raw: entry_to_group(query, dn, raw, conn))


def member_filter(query: GroupsQuery, dns: list[str]) -> str:
    """The groups of the scope that list any of ``dns`` as a member (values escaped)."""
    terms = "".join(
        f"({attribute}={escape_filter_chars(dn)})"
        for dn in dns
        for attribute in query.member_attributes
    )
    return f"(&{query.filter}(|{terms}))"


def group_fingerprint(source: LdapSource, target: TargetConfig) -> str:
    """What a group watermark is valid for: the directory, the groups query and the target's
    group settings (a change needs a full group pass)."""
    query = source.groups
    document = {
        "url": source.url,
        "groups": query.model_dump(mode="json") if query else None,
        "users": [source.users.base_dn.lower(), source.users.filter],
        "target": [target.group_name_source, target.membership_mode],
    }
    if target.scope is not None and target.scope.groups:  # a new scope: a full group pass
        document["scope"] = target.scope.model_dump(
            mode="json", include={"groups_filter", "group_dns"}
        )
    text = json.dumps(document, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def incremental_groups(query: GroupsQuery) -> bool:
    """Whether a group's own change history says when its members changed: not when members
    come from the users' memberOf, nor when nested groups are flattened (a change deep down
    changes the groups above without touching them)."""
    return query.members_from == "group" and not query.flatten_nested


@directory_task("extract-group-changes-from-LDAP")
def extract_group_changes(
    source: LdapSource, start: Start, member_dns: list[str]
) -> Changes[SourceGroup]:
    """Read the groups changed since ``start`` (all of them on a full pass), plus the groups
    listing one of ``member_dns`` (the users changed or gone this cycle, whose membership on
    the target may change with them). Cached per flow run."""
    conn = connect(source)
    try:
        reader = group_reader(conn, source)
        changes = read_changes(reader, start)
        if not changes.complete and member_dns and source.groups is not None:
            seen = {g.source_id for g in reader.entries}
            before = len(reader.entries)
            for chunk in range(0, len(member_dns), 100):
                reader.read(member_filter(source.groups, member_dns[chunk : chunk + 100]))
            extra = [g for g in reader.entries[before:] if g.source_id not in seen]
            extra = list({g.source_id: g for g in extra}.values())
            changes = replace(
                changes,
                entries=[*reader.entries[:before], *extra],
                searches=reader.searches,
            )
    finally:
        conn.unbind()
    run_logger().info(
        "groups: %s: %d read, %d gone (%d searches)",
        changes.mode,
        len(changes.entries),
        len(changes.deleted),
        changes.searches,
    )
    return changes


@directory_task("extract-groups-from-LDAP")
def extract_groups(source: LdapSource) -> GroupExtraction:
    """Read every group in scope from the directory (cached per flow run)."""
    conn = connect(source)
    try:
        extraction = read_groups(conn, source)
    finally:
        conn.unbind()
    run_logger().info("read %d groups in scope", len(extraction.groups))
    return extraction


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
