"""A SCIM target that behaves as AWS IAM Identity Center documents, for tests: a proxy in front
of a real scim2-server.

Hand-written because AWS's service cannot run here. It follows AWS's SCIM documentation
("Considerations for using SCIM" and the SCIM API reference of IAM Identity Center):

- ``GET /Groups/{id}`` and ``GET /Groups`` never return ``members``; membership is asked with
  ``GET /Groups?filter=id eq "G" and members eq "U"`` (the group, or no result);
- filters: only ``eq``, joined by ``and`` (anything else: 400);
- no Bulk (``/Bulk`` answers 404, the service provider configuration says unsupported);
- at most 100 members per CreateGroup and 100 membership changes per PatchGroup (more: 400);
  PatchGroup refuses replacing or removing all members (400); there is no PutGroup (400);
- pages of at most 100 resources.

Everything else is forwarded to the real server unchanged. :attr:`AwsLikeProxy.requests`
counts requests per method and path kind.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

MEMBERSHIP = re.compile(r'^\s*id eq "([^"]+)" and members? eq "([^"]+)"\s*$')
EQ_ONLY = re.compile(
    r'^\s*[A-Za-z.:_0-9]+ eq "(?:[^"\\]|\\.)*"(\s+and\s+[A-Za-z.:_0-9]+ eq "(?:[^"\\]|\\.)*")*\s*$'
)
MAX_PAGE = 100
MAX_MEMBERS_PER_PATCH = 100


class AwsLikeProxy:
    """Serves AWS IAM Identity Center's SCIM behaviour at :attr:`url` (``…/v2``) in front of
    ``upstream`` (a scim2-server root URL, ``http://127.0.0.1:PORT``)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._session = requests.Session()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v2"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._session.close()

    def _upstream(self, method: str, path: str, body: bytes = b"", **params: str) -> Any:
        response = self._session.request(
            method,
            self.upstream + path + (f"?{urlencode(params)}" if params else ""),
            data=body or None,
            headers={"Content-Type": "application/scim+json"} if body else {},
            timeout=60,
        )
        return response

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each answer's body waits ~40 ms for an ACK

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/scim+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, detail: str) -> None:
                error = "urn:ietf:params:scim:api:messages:2.0:Error"
                self._reply(status, {"schemas": [error], "status": str(status), "detail": detail})

            def _relay(self, response: requests.Response) -> None:
                self.send_response(response.status_code)
                for key in ("Content-Type", "Location", "ETag"):
                    if key in response.headers:
                        self.send_header(key, response.headers[key])
                self.send_header("Content-Length", str(len(response.content)))
                self.end_headers()
                self.wfile.write(response.content)

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                path = parts.path
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                kind = "Groups" if "/Groups" in path else "Users" if "/Users" in path else path
                with proxy._lock:
                    proxy.requests[f"{self.command} {kind}"] += 1
                if path.startswith("/v2/Bulk"):
                    self._error(404, "Bulk is not supported")
                    return
                if path.startswith("/v2/ServiceProviderConfig"):
                    config = proxy._upstream("GET", path).json()
                    config["bulk"] = {"supported": False, "maxOperations": 0, "maxPayloadSize": 0}
                    config["filter"] = {"supported": True, "maxResults": MAX_PAGE}
                    self._reply(200, config)
                    return
                if self.command == "GET":
                    self._get(path, query)
                    return
                if self.command == "PUT" and path.startswith("/v2/Groups/"):
                    self._error(400, "the operation is not supported (no PutGroup)")
                    return
                creating = self.command == "POST" and path == "/v2/Groups"
                members = json.loads(body or b"{}").get("members") if creating else None
                if creating and len(members or []) > MAX_MEMBERS_PER_PATCH:
                    self._error(400, f"at most {MAX_MEMBERS_PER_PATCH} members per request")
                    return
                if self.command == "PATCH" and path.startswith("/v2/Groups/"):
                    operations = json.loads(body or b"{}").get("Operations", [])
                    on_members = [
                        o for o in operations if str(o.get("path", "")).startswith("members")
                    ]
                    if any(
                        o.get("op", "").lower() == "replace"
                        or (
                            o.get("op", "").lower() == "remove"
                            and o.get("path") == "members"
                            and not o.get("value")
                        )
                        for o in on_members
                    ):
                        self._error(400, "replacing or removing all members is not supported")
                        return
                    values = sum(
                        len(o["value"]) if isinstance(o.get("value"), list) else 1
                        for o in on_members
                    )
                    if values > MAX_MEMBERS_PER_PATCH:
                        self._error(400, f"at most {MAX_MEMBERS_PER_PATCH} members per request")
                        return
                self._relay(proxy._upstream(self.command, path, body, **query))

            def _get(self, path: str, query: dict[str, str]) -> None:
                filter_ = query.get("filter")
                if filter_ is not None:
                    membership = MEMBERSHIP.match(filter_)
                    if membership and path == "/v2/Groups":
                        group_id, user_id = membership.groups()
                        group = proxy._upstream("GET", f"{path}/{group_id}")
                        members = group.json().get("members", []) if group.ok else []
                        found = [
                            _without_members(group.json())
                            for m in members
                            if m.get("value") == user_id
                        ][:1]
                        self._reply(200, _listing(found, len(found)))
                        return
                    if not EQ_ONLY.match(filter_):
                        self._error(400, "only eq filters joined by and are supported")
                        return
                if "count" in query:
                    query["count"] = str(min(int(query["count"]), MAX_PAGE))
                response = proxy._upstream("GET", path, **query)
                if not path.startswith("/v2/Groups") or not response.ok:
                    self._relay(response)
                    return
                answer = response.json()
                if "Resources" in answer:
                    answer["Resources"] = [_without_members(g) for g in answer["Resources"]]
                else:
                    answer = _without_members(answer)
                self._reply(200, answer)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        return Handler


def _without_members(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k != "members"}


def _listing(resources: list[dict[str, Any]], total: int) -> dict[str, Any]:
    return {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": total,
        "itemsPerPage": len(resources),
        "startIndex": 1,
        "Resources": resources,
    }
