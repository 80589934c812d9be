"""Per-target scope: which of the directory's users and groups each target receives.

PingFederate gives each provisioning channel its own source location and a "Group DN"
option; here a target's ``scope`` narrows the source's users (an LDAP filter, and/or
membership of given groups, nested optional) and groups (a filter, and/or a list of DNs).
The directory's entries are still read once per run for every target; each scoped target
costs one search returning only ids and DNs, evaluated by the directory server (so every
matching rule it knows works, AD's bit-wise ones included), and a read of the groups named
in ``member_of``. A user outside a target's scope is, for that target, gone: deprovisioned
there by the remove action, through the guard, and untouched in the other targets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TypeVar

import ldap3
from ldap3.core import exceptions as ldap_exc

from tasks.config import LdapSource, TargetConfig, TargetScope
from tasks.errors import ConfigError, SourceError, SourceUnavailable
from tasks.ldap.ad import parse_range, ranged_values
from tasks.ldap.changes import Changes, Identified, user_reader
from tasks.ldap.dn import normalize_dn
from tasks.ldap.extract import SourceUser, connect, directory_task, paged_entries, source_id
from tasks.ldap.groups import fetch_range
from tasks.logs import run_logger

E = TypeVar("E", bound=Identified)

MAX_DEPTH = 32
"""Nesting levels followed for ``nested``; deeper groups are not expanded."""
READ_ONE_BY_ONE = 100
"""Users entering a scope read one by one up to this many; more: one search of the scope."""


@dataclass(frozen=True, slots=True)
class Scope:
    """A target's scope as read this run: source ids in it (``None``: not narrowed)."""

    users: frozenset[str] | None = None
    groups: frozenset[str] | None = None
    user_dns: dict[str, str] = field(default_factory=dict)
    """The DN of each user in scope (to read a user entering the scope)."""


def narrow(changes: Changes[E], ids: frozenset[str] | None) -> Changes[E]:
    """The changes as one target sees them: entries outside ``ids`` left out and, in an
    incremental cycle, every provisioned object outside ``ids`` gone (a full pass already
    deprovisions whoever is not among its entries)."""
    if ids is None:
        return changes
    entries = [e for e in changes.entries if e.source_id in ids]
    present = ids if changes.present is None else changes.present & ids
    return replace(changes, entries=entries, present=present)


def _first(raw: dict[str, list[bytes]], name: str) -> list[bytes]:
    wanted = name.lower()
    return next((values for key, values in raw.items() if key.lower() == wanted), [])


def ids_and_dns(
    conn: ldap3.Connection,
    source: LdapSource,
    base_dn: str,
    filter_: str,
    scope: str,
    id_attribute: str,
) -> dict[str, str]:
    """Source id → normalized DN of every entry matching ``filter_``, reading nothing else."""
    found: dict[str, str] = {}
    for dn, raw in paged_entries(conn, source, base_dn, filter_, scope, [id_attribute]):
        values = _first(raw, id_attribute)
        if values:
            found[source_id(id_attribute, values)] = normalize_dn(dn)
    return found


def member_values(conn: ldap3.Connection, dn: str, attributes: Iterable[str]) -> list[str] | None:
    """The normalized member DNs an entry lists (AD's ranged values read in full); ``None``
    when there is no such entry."""
    try:
        conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=list(attributes))
    except (ldap_exc.LDAPNoSuchObjectResult, ldap_exc.LDAPReferralResult):
        return None  # no such entry here (another domain's DN: not expanded)
    except (ldap_exc.LDAPCommunicationError, ldap_exc.LDAPResponseTimeoutError) as exc:
        raise SourceUnavailable(f"reading the members of {dn!r} failed: {exc}") from exc
    except ldap_exc.LDAPException as exc:
        raise SourceError(f"reading the members of {dn!r} failed: {exc}") from exc
    entries = [i for i in conn.response or [] if i.get("type") == "searchResEntry"]
    if not entries:
        return None
    wanted = {a.lower() for a in attributes}
    members: list[str] = []
    for name, values in entries[0].get("raw_attributes", {}).items():
        ranged = parse_range(name)
        if (ranged[0] if ranged else name).lower() not in wanted:
            continue
        if ranged is not None:
            values = ranged_values(name, list(values), fetch_range(conn, dn))
        members += [normalize_dn(v.decode("utf-8", errors="replace")) for v in values]
    return members


def members_of(
    conn: ldap3.Connection,
    group_dns: Iterable[str],
    attributes: Iterable[str],
    *,
    nested: bool,
    users: set[str],
) -> set[str]:
    """Normalized DNs of the members of these groups; with ``nested``, of the groups they
    list too (cycles and depth bounded). ``users``: DNs known to be users (not expanded)."""
    attributes = list(attributes)
    members: set[str] = set()
    seen: set[str] = set()
    level = [normalize_dn(dn) for dn in group_dns]
    for depth in range(MAX_DEPTH):
        following: list[str] = []
        for dn in level:
            if dn in seen:
                continue
            seen.add(dn)
            values = member_values(conn, dn, attributes)
            if values is None:
                if depth == 0:
                    raise ConfigError(f"scope.member_of: there is no group {dn!r} in the directory")
                continue
            members.update(values)
            if nested:
                following += [m for m in values if m not in users and m not in seen]
        if not following:
            break
        level = following
    return members


def read_scope(conn: ldap3.Connection, source: LdapSource, scope: TargetScope) -> Scope:
    """The ids (and DNs) of the users and groups in one target's scope."""
    users: frozenset[str] | None = None
    dns: dict[str, str] = {}
    if scope.users:
        query = source.users
        filter_ = f"(&{query.filter}{scope.users_filter})" if scope.users_filter else query.filter
        id_attribute = query.id_attribute or "entryUUID"
        found = ids_and_dns(conn, source, query.base_dn, filter_, query.scope, id_attribute)
        if scope.member_of:
            attributes = (
                source.groups.member_attributes
                if source.groups is not None
                else ("member", "uniqueMember")
            )
            wanted = members_of(
                conn, scope.member_of, attributes, nested=scope.nested, users=set(found.values())
            )
            found = {ident: dn for ident, dn in found.items() if dn in wanted}
        users, dns = frozenset(found), found
    groups: frozenset[str] | None = None
    if scope.groups and source.groups is not None:
        query_g = source.groups
        filter_ = (
            f"(&{query_g.filter}{scope.groups_filter})" if scope.groups_filter else query_g.filter
        )
        id_attribute = query_g.id_attribute or "entryUUID"
        found = ids_and_dns(conn, source, query_g.base_dn, filter_, query_g.scope, id_attribute)
        if scope.group_dns:
            listed = {normalize_dn(dn) for dn in scope.group_dns}
            found = {ident: dn for ident, dn in found.items() if dn in listed}
        groups = frozenset(found)
    return Scope(users, groups, dns)


def scoped(targets: Iterable[TargetConfig], *, users: bool) -> list[TargetConfig]:
    """The targets whose scope narrows users (``users``) or groups."""
    return [
        t for t in targets if t.scope is not None and (t.scope.users if users else t.scope.groups)
    ]


@directory_task("read-target-scopes")
def read_scopes(source: LdapSource, targets: list[TargetConfig]) -> dict[str, Scope]:
    """Each scoped target's users and groups in scope (one connection for all of them)."""
    conn = connect(source)
    scopes: dict[str, Scope] = {}
    try:
        for t in targets:
            if t.scope is None:
                continue
            try:
                scopes[t.name] = read_scope(conn, source, t.scope)
            except (SourceError, ConfigError) as exc:
                raise type(exc)(
                    f"targets[{t.name}].{exc}"
                    if isinstance(exc, ConfigError)
                    else f"target {t.name}: {exc}"
                ) from exc
    finally:
        conn.unbind()
    for name, scope in scopes.items():
        run_logger().info(
            "scope of %s: %s users, %s groups",
            name,
            "all" if scope.users is None else len(scope.users),
            "all" if scope.groups is None else len(scope.groups),
        )
    return scopes


@directory_task("read-users-entering-scope")
def read_entering(
    source: LdapSource, attributes: list[str], dns: list[str], filter_: str
) -> tuple[list[SourceUser], list[tuple[str, str]]]:
    """The users who entered a target's scope without changing themselves (added to a group
    in ``member_of``, say): one by one by DN when few, else one search of ``filter_``."""
    conn = connect(source)
    try:
        reader = user_reader(conn, source, attributes)
        if len(dns) <= READ_ONE_BY_ONE:
            for dn in dns:
                for found, raw in reader.search(source.users.filter, reader.wanted, base=dn):
                    if normalize_dn(found) == dn:
                        reader.add(found, raw)
        else:
            wanted = set(dns)
            for found, raw in reader.search(filter_, reader.wanted):
                if normalize_dn(found) in wanted:
                    reader.add(found, raw)
    finally:
        conn.unbind()
    return reader.entries, reader.invalid
