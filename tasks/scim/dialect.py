"""SCIM dialects: what differs between SCIM versions and vendors, in one object each.

A dialect owns media types, URNs, endpoint paths, filter quoting, PATCH shapes and the reading of
discovery documents. The loader asks the dialect; it never branches on versions itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"

_EQUALITY_TEMPLATE = re.compile(r'^\s*([A-Za-z][A-Za-z0-9_-]*)\s+eq\s+"%s"\s*$', re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the target says it supports; nothing optional is assumed when it says nothing."""

    patch: bool = False
    filter: bool = False
    filter_max_results: int | None = None
    etag: bool = False

    @classmethod
    def from_service_provider_config(cls, doc: Any) -> Capabilities:
        """Read ``/ServiceProviderConfig``; a missing or malformed part means unsupported."""
        if not isinstance(doc, dict):
            return cls()

        def supported(name: str) -> bool:
            part = doc.get(name)
            return isinstance(part, dict) and part.get("supported") is True

        max_results = doc.get("filter", {}).get("maxResults") if supported("filter") else None
        return cls(
            patch=supported("patch"),
            filter=supported("filter"),
            filter_max_results=max_results if isinstance(max_results, int) else None,
            etag=supported("etag"),
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
    """SCIM 2.0 (RFC 7643/7644)."""

    name = "scim2.0"
    media_type = "application/scim+json"
    users_path = "/Users"
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
        """How two values of a matching attribute compare: userName ignores case (RFC 7643)."""
        return value.casefold() if attribute == "userName" else value

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

    def disable_operations(self) -> list[dict[str, Any]]:
        return [{"op": "replace", "path": "active", "value": False}]

    def replace_body(self, scim_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "id": scim_id}

    def list_resources(self, body: Any) -> list[dict[str, Any]]:
        """The resources of a ListResponse (an empty or odd answer is no resources)."""
        if not isinstance(body, dict):
            return []
        resources = body.get("Resources") or []
        return [r for r in resources if isinstance(r, dict)]


DIALECTS: dict[str, type[Scim20]] = {"2.0": Scim20}


def dialect_for(version: str) -> Scim20:
    return DIALECTS[version]()
