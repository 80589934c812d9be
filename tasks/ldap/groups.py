"""Groups read from the directory: ids, names and member DNs (AD's ranged values in full),
the changed ones in an incremental cycle; what a group watermark is valid for. Resolving the
members and planning the targets' changes is ``tasks.sync.group_plan``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace

import ldap3
from ldap3.core import exceptions as ldap_exc
from ldap3.utils.conv import escape_filter_chars

from tasks.config import DirectoryType, GroupsQuery, LdapSource, TargetConfig
from tasks.errors import SourceError
from tasks.ldap.ad import parse_range, ranged_values
from tasks.ldap.changes import Changes, Reader, Start, read_changes
from tasks.ldap.dn import normalize_dn
from tasks.ldap.extract import connect, directory_task, source_id
from tasks.logs import run_logger

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
