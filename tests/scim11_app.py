"""A SCIM 1.1 test server: a thin 1.1 facade over the real scim2-server of ``scim_app``.

No SCIM 1.1 server exists on PyPI, npm or Debian, so this one is hand-written. It keeps
scim2-server's store, filter engine and validation, and translates at the edge:

- paths under ``/v1`` (``/Users``, ``/Groups``, ``/Schemas``, and the plural
  ``/ServiceProviderConfigs`` as well as the singular);
- schema URNs ``urn:scim:schemas:core:1.0`` and ``urn:scim:schemas:extension:enterprise:1.0``
  in both directions, ``application/json`` responses, ``Location`` headers;
- PATCH as a 1.1 partial resource: ``meta.attributes`` removes attributes, values of
  multi-valued attributes are added, and a member with ``"operation": "delete"`` is removed;
- errors as ``{"Errors": [{"description": ..., "code": ...}]}``.

It is served by gunicorn as ``tests.scim11_app:create_app()`` (``ScimServer(app=..., prefix=
"/v1")``); the ``/_test`` instrumentation of ``scim_app`` passes through.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tests.support.scim_app import create_app as create_scim2_app

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

USER_20 = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_20 = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_20 = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
CORE_11 = "urn:scim:schemas:core:1.0"
ENTERPRISE_11 = "urn:scim:schemas:extension:enterprise:1.0"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
TO_11 = {USER_20: CORE_11, GROUP_20: CORE_11, ENTERPRISE_20: ENTERPRISE_11}


def to_20(body: dict[str, Any], core: str) -> dict[str, Any]:
    """A 1.1 resource as scim2-server expects it (``core``: the 2.0 core schema of its type)."""
    out = {ENTERPRISE_20 if k == ENTERPRISE_11 else k: v for k, v in body.items()}
    if "schemas" in body:
        out["schemas"] = [
            core if u == CORE_11 else ENTERPRISE_20 if u == ENTERPRISE_11 else u
            for u in body["schemas"]
        ]
    return out


def to_11(value: Any) -> Any:
    """A 2.0 response body as a 1.1 client expects it (URNs and errors translated)."""
    if isinstance(value, list):
        return [to_11(v) for v in value]
    if isinstance(value, str):
        return value.replace("/v2/", "/v1/") if value.startswith("http") else value
    if not isinstance(value, dict):
        return value
    if "urn:ietf:params:scim:api:messages:2.0:Error" in value.get("schemas", []):
        return {"Errors": [{"description": value.get("detail", ""), "code": value.get("status")}]}
    out = {
        TO_11.get(k, k): TO_11.get(v, v) if k == "id" and isinstance(v, str) else to_11(v)
        for k, v in value.items()
    }
    if isinstance(value.get("schemas"), list):
        out["schemas"] = list(
            dict.fromkeys(TO_11.get(u, CORE_11 if "2.0" in u else u) for u in value["schemas"])
        )
    return out


def patch_to_20(body: dict[str, Any]) -> dict[str, Any]:
    """A 1.1 partial-resource PATCH as a 2.0 PatchOp."""
    ops: list[dict[str, Any]] = []
    for path in (body.get("meta") or {}).get("attributes", []):
        urn, _, attribute = path.rpartition(":")
        if urn == ENTERPRISE_11:
            path = f"{ENTERPRISE_20}:{attribute}"
        ops.append({"op": "remove", "path": path})
    for key, value in body.items():
        if key in ("schemas", "meta", "id"):
            continue
        if isinstance(value, list):
            kept = [
                v for v in value if not (isinstance(v, dict) and v.get("operation") == "delete")
            ]
            for gone in value:
                if isinstance(gone, dict) and gone.get("operation") == "delete":
                    escaped = str(gone["value"]).replace("\\", "\\\\").replace('"', '\\"')
                    ops.append({"op": "remove", "path": f'{key}[value eq "{escaped}"]'})
            if kept:
                ops.append({"op": "add", "path": key, "value": kept})
        elif isinstance(value, dict):
            prefix = (
                f"{ENTERPRISE_20}:"
                if key == ENTERPRISE_11
                else f"{key}:"
                if key.startswith("urn:")
                else f"{key}."
            )
            ops += [{"op": "replace", "path": f"{prefix}{k}", "value": v} for k, v in value.items()]
        else:
            ops.append({"op": "replace", "path": key, "value": value})
    return {"schemas": [PATCH_OP], "Operations": ops}


class Scim11Facade:
    """WSGI middleware speaking SCIM 1.1 outside and 2.0 to the wrapped scim2-server app."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/v1"):
            return self.inner(environ, start_response)  # the /_test instrumentation
        rest = path[len("/v1") :]
        if rest.rstrip("/") == "/ServiceProviderConfigs":
            rest = "/ServiceProviderConfig"
        environ["PATH_INFO"] = "/v2" + rest
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length:
            body = json.loads(environ["wsgi.input"].read(length))
            core = GROUP_20 if rest.startswith("/Groups") else USER_20
            body = patch_to_20(body) if environ["REQUEST_METHOD"] == "PATCH" else to_20(body, core)
            data = json.dumps(body).encode()
            environ["wsgi.input"] = io.BytesIO(data)
            environ["CONTENT_LENGTH"] = str(len(data))
            environ["CONTENT_TYPE"] = "application/scim+json"
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        raw = b"".join(self.inner(environ, capture))
        data = json.dumps(to_11(json.loads(raw))).encode() if raw.strip() else b""
        headers = []
        for name, value in captured["headers"]:
            lower = name.lower()
            if lower == "content-length":
                continue
            if lower == "content-type":
                value = "application/json"
            if lower == "location":
                value = value.replace("/v2/", "/v1/")
            headers.append((name, value))
        headers.append(("Content-Length", str(len(data))))
        start_response(captured["status"], headers)
        return [data]


def create_app() -> Scim11Facade:
    """The 1.1 facade over a fresh scim2-server application (options as ``scim_app``'s)."""
    return Scim11Facade(create_scim2_app())
