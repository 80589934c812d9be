"""Transform: directory entries → desired SCIM 2.0 users, by the target's attribute mapping.

The mapping has the shape of the SCIM JSON it produces. Each leaf is a *source expression*:

- ``uid``                an LDAP attribute (the first value for a single-valued SCIM attribute);
- ``"{givenName} {sn}"`` a template over LDAP attributes (missing ones render empty);
- ``$id`` / ``$dn``      the entry's stable source id / its DN;
- ``=Employee``          a constant; ``title || =Staff`` a default when empty; ``lower(mail)``,
                         ``upper(…)``, ``trim(…)`` (the grammar: :mod:`tasks.expressions`);
- ``@manager``           a reference: the SCIM id, on this target, of the directory user whose
                         DN the LDAP attribute holds (for the enterprise ``manager.value``).
                         Until that user is provisioned the attribute is left out (see
                         :func:`tasks.sync.plan.resolve_references`).

A list of ``{value, type, primary}`` rules builds a multi-valued attribute (emails, phoneNumbers):
every value of the source attribute becomes an entry, so nothing is dropped. Keys that are schema
URNs hold extension attributes (enterprise or custom). An attribute whose source is empty is left
out of the payload, which is what lets an update clear it on the target.

An entry is rejected, with a reason naming what to fix, when it has no userName or when the mapping
reads a value that is binary data (not UTF-8 text); a user bigger than the target's
``max_user_bytes`` is rejected by the plan (:func:`oversize_reason`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import expressions
from tasks.config import CORE_USER_SCHEMA, MultiValuedRule
from tasks.ldap.dn import normalize_dn
from tasks.ldap.extract import SourceUser, mapped_attributes
from tasks.scim.dialect import Scim20, dialect_for

_TEMPLATE_FIELD = re.compile(r"\{([^{}]+)\}")

REFERENCE = "$dn-reference"
"""Key of the placeholder a ``@attribute`` mapping leaves in a payload until it is resolved."""


@dataclass(frozen=True, slots=True)
class DesiredUser:
    """What a directory entry should look like on a target."""

    source_id: str
    dn: str
    payload: dict[str, Any]
    disabled: bool

    @property
    def user_name(self) -> str:
        return str(self.payload["userName"])

    @property
    def content_hash(self) -> str:
        return content_hash(self.payload)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A directory entry that cannot be provisioned, and why."""

    source_id: str
    dn: str
    reason: str


def content_hash(payload: dict[str, Any]) -> str:
    """A stable hash of a SCIM payload (key order does not matter)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def evaluate(expression: str, user: SourceUser) -> list[str]:
    """Every value a source expression yields for one entry (empty list when none): the
    values of its first alternative that yields any (:mod:`tasks.expressions`)."""
    for alternative in expressions.alternatives(expression):
        values = _evaluate(alternative, user)
        if values:
            return values
    return []


def _evaluate(expression: str, user: SourceUser) -> list[str]:
    function, inner = expressions.call(expression)
    if function is not None:
        return [v for v in (function(value) for value in _evaluate(inner, user)) if v]
    if expression.startswith("="):
        return [expression[1:]] if expression[1:] else []
    if expression == "$id":
        return [user.source_id]
    if expression == "$dn":
        return [user.dn]
    if "{" in expression:
        rendered = _TEMPLATE_FIELD.sub(
            lambda m: next(iter(user.attributes.get(m.group(1).lower(), [])), ""), expression
        )
        rendered = " ".join(rendered.split())
        return [rendered] if rendered else []
    return [v for v in user.attributes.get(expression.lower(), []) if v.strip()]


def _multi_valued(rules: list[MultiValuedRule], user: SourceUser) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    seen: set[tuple[str | None, str]] = set()
    has_primary = False
    for rule in rules:
        for index, value in enumerate(evaluate(rule.value, user)):
            if (rule.type, value) in seen:
                continue
            seen.add((rule.type, value))
            entry: dict[str, Any] = {"value": value}
            if rule.type is not None:
                entry["type"] = rule.type
            if rule.display is not None:
                display = evaluate(rule.display, user)
                if display:
                    entry["display"] = display[0]
            if rule.primary and index == 0 and not has_primary:
                entry["primary"] = True
                has_primary = True
            entries.append(entry)
    return entries


def _build(mapping: dict[str, Any], user: SourceUser) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, rule in mapping.items():
        value: Any
        if isinstance(rule, str) and rule.startswith("@"):
            values = evaluate(rule[1:], user)
            value = {REFERENCE: normalize_dn(values[0])} if values else None
        elif isinstance(rule, str):
            values = evaluate(rule, user)
            value = values[0] if values else None
        elif isinstance(rule, list):
            value = _multi_valued(rule, user)
        else:
            value = _build(rule, user)
        if value:
            out[key] = value
    return out


def _binary_in_mapping(user: SourceUser, mapping: dict[str, Any]) -> str | None:
    """Why the entry cannot be built when the mapping reads a value that is binary data (left
    out by the extraction: sending the rest would silently drop or clear it on the target)."""
    if not user.binary:
        return None
    read = {name.lower(): name for name in mapped_attributes([mapping])}
    found = [(read[name], size) for name, size in user.binary if name in read]
    if not found:
        return None
    name, size = found[0]
    more = f" ({len(found)} such values)" if len(found) > 1 else ""
    return (
        f"attribute {name} holds binary data (a value of {size:,} bytes that is not UTF-8 "
        f"text){more}, which a SCIM string cannot carry; fix the entry or map a text attribute"
    )


def build_user(user: SourceUser, mapping: dict[str, Any]) -> DesiredUser:
    """The desired SCIM user for one entry; raise ``ValueError`` when it cannot be built."""
    binary = _binary_in_mapping(user, mapping)
    if binary is not None:
        raise ValueError(binary)
    attributes = _build(mapping, user)
    if not attributes.get("userName"):
        raise ValueError("no value for userName (check the entry and the userName mapping)")
    extensions = sorted(k for k in attributes if k.startswith("urn:"))
    payload = {"schemas": [CORE_USER_SCHEMA, *extensions], **attributes}
    payload["active"] = not user.disabled
    return DesiredUser(user.source_id, user.dn, payload, user.disabled)


def payload_bytes(value: Any) -> int:
    """The size of a SCIM value as a JSON request body, in bytes (as ``requests`` sends it)."""
    return len(json.dumps(value).encode())


def oversize_reason(payload: dict[str, Any], limit: int) -> str | None:
    """Why a user's payload is too big for a target (``max_user_bytes``), or ``None``.

    The reason names the size, the limit and the largest attribute, so the entry can be fixed.
    """
    size = payload_bytes(payload)
    if size <= limit:
        return None
    parts: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, dict):
            separator = ":" if key.startswith("urn:") else "."
            parts.update({f"{key}{separator}{sub}": v for sub, v in value.items()})
        else:
            parts[key] = value
    largest = max(parts, key=lambda path: payload_bytes(parts[path]))
    return (
        f"the SCIM user is {size:,} bytes, over this target's max_user_bytes of {limit:,}: "
        f"not sent (largest attribute: {largest}, {payload_bytes(parts[largest]):,} bytes)"
    )


def transform_batch(
    users: Iterable[SourceUser], mapping: dict[str, Any], dialect: Scim20 | None = None
) -> tuple[list[DesiredUser], list[Rejection]]:
    """Build every user of a batch (as the target's dialect can hold them); a bad entry is
    rejected with its reason, the others go on."""
    desired: list[DesiredUser] = []
    rejected: list[Rejection] = []
    for user in users:
        try:
            built = build_user(user, mapping)
            if dialect is not None:
                built = replace(built, payload=dialect.normalize_user(built.payload))
            desired.append(built)
        except ValueError as exc:
            rejected.append(Rejection(user.source_id, user.dn, str(exc)))
    return desired, rejected


@task(name="transform-to-SCIM", cache_policy=NO_CACHE, persist_result=False)
def transform_users(
    users: list[SourceUser], mapping: dict[str, Any], version: str, profile: str
) -> tuple[list[DesiredUser], list[Rejection]]:
    """Map one batch of directory entries to desired SCIM users of one target's dialect."""
    return transform_batch(users, mapping, dialect_for(version, profile))
