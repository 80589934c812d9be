"""SCIM dialects: what differs between SCIM versions and vendors, in one object each.

A dialect owns media types, URNs, endpoint paths, filter quoting, PATCH shapes and the reading of
discovery documents. The loader asks the dialect; it never branches on versions itself.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
CORE_11 = "urn:scim:schemas:core:1.0"
ENTERPRISE_11 = "urn:scim:schemas:extension:enterprise:1.0"

_EQUALITY_TEMPLATE = re.compile(r'^\s*([A-Za-z][A-Za-z0-9_-]*)\s+eq\s+"%s"\s*$', re.IGNORECASE)


def name_key(user_name: str) -> str:
    """What makes two userNames the same name: NFC "josé" and NFD "josé" (and other
    compatibility forms, and case) look alike to people and to many targets, so they compare
    equal (NFKC, then case folding)."""
    return unicodedata.normalize("NFKC", user_name).casefold()


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the target says it supports; nothing optional is assumed when it says nothing."""

    patch: bool = False
    filter: bool = False
    filter_max_results: int | None = None
    etag: bool = False
    bulk: bool = False
    bulk_max_operations: int | None = None
    bulk_max_payload: int | None = None
    cursor: bool = False
    """RFC 9865 cursor pagination."""
    max_page_size: int | None = None
    """pagination.maxPageSize (RFC 9865), the largest page a listing may ask for."""

    @classmethod
    def from_service_provider_config(cls, doc: Any) -> Capabilities:
        """Read ``/ServiceProviderConfig``; a missing or malformed part means unsupported."""
        if not isinstance(doc, dict):
            return cls()

        def supported(name: str) -> bool:
            part = doc.get(name)
            return isinstance(part, dict) and part.get("supported") is True

        pagination = doc.get("pagination")
        if not isinstance(pagination, dict):
            pagination = {}
        page_size = pagination.get("maxPageSize")

        def positive(name: str, key: str) -> int | None:
            value = doc[name].get(key) if supported(name) else None
            return value if isinstance(value, int) and value > 0 else None

        return cls(
            patch=supported("patch"),
            filter=supported("filter"),
            filter_max_results=positive("filter", "maxResults"),
            etag=supported("etag"),
            bulk=supported("bulk") and positive("bulk", "maxOperations") is not None,
            bulk_max_operations=positive("bulk", "maxOperations"),
            bulk_max_payload=positive("bulk", "maxPayloadSize"),
            cursor=pagination.get("cursor") is True,
            max_page_size=page_size if isinstance(page_size, int) and page_size > 0 else None,
        )


def _flatten(payload: dict[str, Any]) -> dict[str, Any]:
    """Attribute paths → values; complex single-valued attributes are split into sub-paths.

    ``name.givenName`` for core complex attributes, ``urn:...:User:department`` for extension
    attributes; multi-valued attributes stay whole (they are replaced as a whole).
    """
    flat: dict[str, Any] = {}
    for key, value in payload.items():
        if key in ("schemas", "id", "meta"):
            continue
        if isinstance(value, dict):
            separator = ":" if key.startswith("urn:") else "."
            for sub, sub_value in value.items():
                flat[f"{key}{separator}{sub}"] = sub_value
        else:
            flat[key] = value
    return flat


class Scim20:
    """SCIM 2.0 (RFC 7643/7644).

    Payloads inside the provisioner are SCIM 2.0-shaped; a dialect turns them into what its
    targets expect on the wire (:meth:`to_wire`, :meth:`patch_body`) and back
    (:meth:`from_wire`).
    """

    name = "scim2.0"
    media_type = "application/scim+json"
    users_path = "/Users"
    groups_path = "/Groups"
    service_provider_config_paths: tuple[str, ...] = ("/ServiceProviderConfig",)

    @staticmethod
    def escape_filter_value(value: str) -> str:
        """Escape a value for the inside of a quoted SCIM filter string (``\\`` and ``"``)."""
        return value.replace("\\", "\\\\").replace('"', '\\"')

    def match_filter(self, template: str, value: str) -> str:
        """The configured lookup filter with its ``%s`` replaced by the escaped value."""
        return template.replace("%s", self.escape_filter_value(value))

    def equality_attribute(self, template: str) -> str | None:
        """The attribute of a plain ``attr eq "%s"`` filter template, else ``None``.

        Only such a filter can be answered from a listing of the target instead of a query.
        """
        match = _EQUALITY_TEMPLATE.match(template)
        return match.group(1) if match else None

    def match_key(self, attribute: str, value: str) -> str:
        """How two values of a matching attribute compare: userName ignores case (RFC 7643)
        and Unicode normalisation (:func:`name_key`)."""
        return name_key(value) if attribute == "userName" else value

    def patch_operations(self, old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
        """PATCH operations turning ``old`` into ``new``: replace what changed, remove what left."""
        before, after = _flatten(old), _flatten(new)
        ops: list[dict[str, Any]] = [
            {"op": "remove", "path": path} for path in before if path not in after
        ]
        ops += [
            {"op": "replace", "path": path, "value": value}
            for path, value in after.items()
            if before.get(path) != value
        ]
        return ops

    def patch_body(self, operations: list[dict[str, Any]]) -> dict[str, Any]:
        return {"schemas": [PATCH_OP], "Operations": operations}

    max_members_per_request: int | None = None
    """A vendor's documented limit of member changes per PATCH, if any."""
    removes_by_value_list = False
    """Members are removed with one ``remove`` carrying a value list (Entra's form; SCIM 1.1's
    ``operation: delete`` entries are built from it)."""

    def wire_urn(self, urn: str) -> str:
        """The schema URN the target uses for one of ours."""
        return urn

    def normalize_user(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The desired user as this target can hold it (before hashing and diffing)."""
        return payload

    def adjust(self, capabilities: Capabilities) -> Capabilities:
        """Capabilities as this dialect knows them better than the target's discovery."""
        return capabilities

    def to_wire(self, body: dict[str, Any]) -> dict[str, Any]:
        """A resource body as the target expects it."""
        return body

    def from_wire(self, resource: dict[str, Any]) -> dict[str, Any]:
        """A resource the target returned, SCIM 2.0-shaped."""
        return resource

    def replace_body(self, scim_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "id": scim_id}

    def group_body(
        self, display_name: str, external_id: str, members: Iterable[str]
    ) -> dict[str, Any]:
        """A whole group (POST, PUT) with these member SCIM ids."""
        return {
            "schemas": [GROUP_SCHEMA],
            "displayName": display_name,
            "externalId": external_id,
            "members": [{"value": member} for member in sorted(members)],
        }

    def member_operations(self, add: Iterable[str], remove: Iterable[str]) -> list[dict[str, Any]]:
        """PATCH operations adding and removing members: each removal names its member with a
        filter (RFC 7644), or all of them in one value list (:attr:`removes_by_value_list`)."""
        removed = sorted(remove)
        ops: list[dict[str, Any]]
        if self.removes_by_value_list:
            ops = [{"op": "remove", "path": "members", "value": [{"value": m} for m in removed]}]
            ops = ops if removed else []
        else:
            ops = [
                {"op": "remove", "path": f'members[value eq "{self.escape_filter_value(m)}"]'}
                for m in removed
            ]
        added = sorted(add)
        if added:
            ops.append({"op": "add", "path": "members", "value": [{"value": m} for m in added]})
        return ops

    def rename_operations(self, display_name: str, external_id: str) -> list[dict[str, Any]]:
        return [
            {"op": "replace", "path": "displayName", "value": display_name},
            {"op": "replace", "path": "externalId", "value": external_id},
        ]

    def bulk_body(self, operations: list[dict[str, Any]]) -> dict[str, Any]:
        """A Bulk request (RFC 7644 §3.7) carrying these operations; never fail-fast, so every
        operation gets its own result."""
        return {"schemas": [BULK_REQUEST], "Operations": operations}

    def bulk_results(self, body: Any) -> list[tuple[str, int, dict[str, Any], str]]:
        """(bulkId, status, response body, location) of each operation of a Bulk response, in
        order. A status given as ``{"code": ...}`` (SCIM 1.1) is understood too."""
        results = []
        operations = body.get("Operations") if isinstance(body, dict) else None
        for op in operations or []:
            if not isinstance(op, dict):
                continue
            status = op.get("status")
            if isinstance(status, dict):
                status = status.get("code")
            try:
                code = int(str(status))
            except ValueError:
                code = 500
            response = op.get("response")
            body_of: dict[str, Any] = response if isinstance(response, dict) else {}
            results.append(
                (str(op.get("bulkId") or ""), code, body_of, str(op.get("location") or ""))
            )
        return results

    members_readable = True
    """The target returns a group's ``members`` when asked; when not (AWS), the state store's
    record of what was added is the member list, checked by :meth:`membership_filter`."""

    def membership_filter(self, group_id: str, user_id: str) -> str:
        """A filter finding the group only when the user is one of its members."""
        return (
            f'id eq "{self.escape_filter_value(group_id)}" and '
            f'members eq "{self.escape_filter_value(user_id)}"'
        )

    def member_ids(self, group: dict[str, Any]) -> set[str]:
        """The member ids of a group resource as the target returned it."""
        members = group.get("members") or []
        return {str(m["value"]) for m in members if isinstance(m, dict) and m.get("value")}

    def list_resources(self, body: Any) -> list[dict[str, Any]]:
        """The resources of a ListResponse (an empty or odd answer is no resources)."""
        if not isinstance(body, dict):
            return []
        resources = body.get("Resources") or []
        return [r for r in resources if isinstance(r, dict)]


_URNS_11 = {USER_SCHEMA: CORE_11, GROUP_SCHEMA: CORE_11, ENTERPRISE_SCHEMA: ENTERPRISE_11}


class Scim11(Scim20):
    """SCIM 1.1: ``urn:scim:schemas:core:1.0``, ``application/json``, ``/ServiceProviderConfigs``,
    PATCH as a partial resource (``meta.attributes`` lists the attributes to remove; a member
    is removed with ``"operation": "delete"``), errors as ``{"Errors": [...]}`` (understood by
    :func:`tasks.errors.error_detail`)."""

    name = "scim1.1"
    media_type = "application/json"
    removes_by_value_list = True
    service_provider_config_paths = ("/ServiceProviderConfigs", "/ServiceProviderConfig")

    def wire_urn(self, urn: str) -> str:
        return _URNS_11.get(urn, urn)

    def adjust(self, capabilities: Capabilities) -> Capabilities:
        """Bulk is not spoken in 1.1 here: changes go one request each."""
        return replace(capabilities, bulk=False)

    def to_wire(self, body: dict[str, Any]) -> dict[str, Any]:
        out = {self.wire_urn(k) if k.startswith("urn:") else k: v for k, v in body.items()}
        if "schemas" in body:
            out["schemas"] = list(dict.fromkeys(self.wire_urn(u) for u in body["schemas"]))
        return out

    def from_wire(self, resource: dict[str, Any]) -> dict[str, Any]:
        out = dict(resource)
        if ENTERPRISE_11 in out:
            out[ENTERPRISE_SCHEMA] = out.pop(ENTERPRISE_11)
        return out

    def patch_body(self, operations: list[dict[str, Any]]) -> dict[str, Any]:
        """The 1.1 partial resource doing what the (2.0-style) operations describe."""
        body: dict[str, Any] = {"schemas": [CORE_11]}
        removed: list[str] = []
        for op in operations:
            path, value = op["path"], op.get("value")
            if path == "members":
                entries = [
                    {**member, "operation": "delete"} if op["op"] == "remove" else member
                    for member in value or []
                ]
                body.setdefault("members", []).extend(entries)
            elif op["op"] == "remove":
                removed.append(self._wire_path(path))
            else:
                if isinstance(value, list):  # a multi-valued attribute replaced as a whole
                    removed.append(self._wire_path(path))
                self._set(body, path, value)
        if removed:
            body["meta"] = {"attributes": removed}
        return body

    def _wire_path(self, path: str) -> str:
        if path.startswith("urn:"):
            urn, _, attribute = path.rpartition(":")
            return f"{self.wire_urn(urn)}:{attribute}"
        return path

    def _set(self, body: dict[str, Any], path: str, value: Any) -> None:
        if path.startswith("urn:"):
            urn, _, attribute = path.rpartition(":")
            body.setdefault(self.wire_urn(urn), {})[attribute] = value
        elif "." in path:
            parent, _, attribute = path.partition(".")
            body.setdefault(parent, {})[attribute] = value
        else:
            body[path] = value


MULTI_VALUED = ("emails", "phoneNumbers", "addresses", "ims", "photos", "x509Certificates")


class AwsIdentityCenter(Scim20):
    """AWS IAM Identity Center: at most 100 member changes per PATCH, one value per
    multi-valued user attribute (the primary one is kept), no Bulk, pages of at most 100, and
    group reads that never return ``members`` (membership is asked with
    ``id eq "G" and members eq "U"``)."""

    name = "aws"
    max_members_per_request = 100
    members_readable = False

    def normalize_user(self, payload: dict[str, Any]) -> dict[str, Any]:
        out = dict(payload)
        for key in MULTI_VALUED:
            values = out.get(key)
            if isinstance(values, list) and len(values) > 1:
                primary = [v for v in values if isinstance(v, dict) and v.get("primary")]
                out[key] = (primary or values)[:1]
        return out

    def adjust(self, capabilities: Capabilities) -> Capabilities:
        pages = min(capabilities.max_page_size or 100, 100)
        return replace(capabilities, bulk=False, bulk_max_operations=None, max_page_size=pages)


class EntraCompatible(Scim20):
    """For targets built to what Microsoft Entra ID sends: capitalised PATCH ops, booleans as
    the strings "True"/"False", members removed with a value list."""

    name = "entra"
    removes_by_value_list = True

    def patch_body(self, operations: list[dict[str, Any]]) -> dict[str, Any]:
        ops = []
        for op in operations:
            entra = {**op, "op": op["op"].capitalize()}
            if isinstance(op.get("value"), bool):
                entra["value"] = "True" if op["value"] else "False"
            ops.append(entra)
        return {"schemas": [PATCH_OP], "Operations": ops}


class SlackLike(Scim11):
    """A Slack-like SCIM 1.1 target: the plural /ServiceProviderConfigs, application/json."""

    name = "slack"


PROFILES: dict[tuple[str, str], type[Scim20]] = {
    ("generic", "2.0"): Scim20,
    ("generic", "1.1"): Scim11,
    ("aws", "2.0"): AwsIdentityCenter,
    ("entra", "2.0"): EntraCompatible,
    ("slack", "1.1"): SlackLike,
}


def dialect_for(
    version: str,
    profile: str = "generic",
    *,
    users_path: str | None = None,
    groups_path: str | None = None,
) -> Scim20:
    """The dialect of a SCIM version and vendor profile (the config validates the pair), with
    the target's own endpoint paths when it has other ones than /Users and /Groups."""
    dialect = PROFILES[(profile, version)]()
    if users_path:
        dialect.users_path = users_path
    if groups_path:
        dialect.groups_path = groups_path
    return dialect
