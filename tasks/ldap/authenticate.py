"""A person's directory password checked by an LDAP bind, for the sign-in page of the IdP.

The person is found with the source's own service account and id attribute (so the id is
the very source id the state store keys on) under the users' base DN, without the users'
filter (someone a filter leaves out has no application to get into, and is told so rather
than "wrong password"), then the same connection binds as the
person's DN with the password they typed: over the source's TLS settings, never logged, and
never with an empty password (an LDAP "unauthenticated bind" would succeed).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import ldap3
from ldap3.core import exceptions as ldap_exc
from ldap3.utils.conv import escape_filter_chars

from tasks.config import DirectoryType, LdapSource
from tasks.ldap.extract import SourceUser, connect, entry_to_user, user_attributes


@dataclass(frozen=True, slots=True)
class SignIn:
    """How a password check ended: ``ok`` with the person's entry, or why not."""

    outcome: Literal["ok", "unknown", "wrong_password", "ambiguous"]
    user: SourceUser | None = None


def login_attribute(source: LdapSource, configured: str | None) -> str:
    """The attribute people type as their login: configured, or uid / sAMAccountName."""
    if configured:
        return configured
    return "sAMAccountName" if source.type is DirectoryType.active_directory else "uid"


def check_password(
    source: LdapSource, attribute: str, login: str, password: str, mapped: set[str]
) -> SignIn:
    """Find the entry whose ``attribute`` is ``login`` among the source's users and bind as it.

    :param mapped: directory attributes to read for the person (the released attributes).
    :raises SourceError: the directory is unreachable, or the service account is refused.
    """
    if not login or not password:
        return SignIn("unknown" if not login else "wrong_password")
    conn = connect(source)
    try:
        query = source.users
        search_filter = f"({attribute}={escape_filter_chars(login)})"
        conn.search(
            query.base_dn,
            search_filter,
            search_scope=ldap3.SUBTREE if query.scope == "subtree" else ldap3.LEVEL,
            attributes=sorted(user_attributes(source, {*mapped, attribute})),
            size_limit=2,
        )
        entries = [r for r in conn.response or [] if r.get("type") == "searchResEntry"]
        if not entries:
            return SignIn("unknown")
        if len(entries) > 1:
            return SignIn("ambiguous")
        user = entry_to_user(source, entries[0]["dn"], entries[0]["raw_attributes"])
        if not isinstance(user, SourceUser):
            return SignIn("unknown")
        try:
            conn.rebind(user=user.dn, password=password)
        except ldap_exc.LDAPInvalidCredentialsResult:
            return SignIn("wrong_password", user)
        except ldap_exc.LDAPBindError:
            return SignIn("wrong_password", user)
        return SignIn("ok", user)
    except ldap_exc.LDAPSizeLimitExceededResult:
        return SignIn("ambiguous")
    finally:
        with contextlib.suppress(ldap_exc.LDAPException, OSError):
            conn.unbind()


def read_person(source: LdapSource, dn: str, mapped: set[str]) -> SourceUser | None:
    """The entry at ``dn`` as it is now (its account status and released attributes), with
    the service account; None when it is gone.

    :raises SourceError: the directory is unreachable (the caller fails closed).
    """
    conn = connect(source)
    try:
        try:
            conn.search(
                dn,
                "(objectClass=*)",
                search_scope=ldap3.BASE,
                attributes=sorted(user_attributes(source, mapped)),
            )
        except ldap_exc.LDAPNoSuchObjectResult:
            return None
        entries = [r for r in conn.response or [] if r.get("type") == "searchResEntry"]
        if not entries:
            return None
        user = entry_to_user(source, entries[0]["dn"], entries[0]["raw_attributes"])
        return user if isinstance(user, SourceUser) else None
    finally:
        with contextlib.suppress(ldap_exc.LDAPException, OSError):
            conn.unbind()
