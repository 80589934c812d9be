"""A fault-injecting HTTP proxy for tests: put it between the provisioner and a real SCIM server.

Hand-written because no real component misbehaves on purpose. At seeded, configured rates it
answers a request itself with a 5xx, or a 429 (with or without ``Retry-After``), resets the
connection before forwarding, or forwards the request and then *loses the response* (the write
happened, the client never hears of it), or forwards it and answers with a truncated non-JSON
body, or forwards it and then stalls past the client's timeout before answering (``slow``), or
answers with a load balancer's HTML error page (``html``: a 502 without forwarding, or a 504
after forwarding, as when the balancer gave up on an upstream that did the write). Everything
else is forwarded unchanged. The same seed replays the same faults for the same sequence of
requests.

:attr:`FaultProxy.redirect` makes it a gateway whose session expired: every write is answered
with a redirect (``302 Location: /login``, or a ``307`` to another host) instead of being
forwarded, and ``GET /login`` answers a login page (200, text/html), as in front of real apps.

:attr:`FaultProxy.huge_error` answers writes with a 400 whose ``detail`` is that long;
:attr:`FaultProxy.trickle` sends user reads a byte at a time; :attr:`FaultProxy.oversize` pads
them. :attr:`FaultProxy.stuck_listing` answers every page of a user listing with the first
page and a ``totalResults`` of 10⁹; :attr:`FaultProxy.refuse_attributes` refuses
``attributes=`` with 400.

:attr:`FaultProxy.latency` delays every forwarded request (a target far away),
:attr:`FaultProxy.slow_bulk` every Bulk request (a target whose Bulk is slower than its
single requests); :attr:`FaultProxy.bulk_per_operation` takes Bulk requests one at a time
and each operation that long (a SaaS that queues Bulk jobs: its Bulk is slower than its
single requests at any concurrency).
:attr:`FaultProxy.max_body` answers a request whose body is longer with nginx's 413 page
(``client_max_body_size``).
:attr:`FaultProxy.refuse_patch` answers every PATCH itself (405, 501) and
:attr:`FaultProxy.advertise_patch` claims PATCH support in /ServiceProviderConfig: targets
that misstate what they support.

:meth:`FaultProxy.hold_after` freezes the target as seen from the client: after N more write
requests every request is still forwarded but its answer never comes (for killing the
provisioner while writes it never heard of are done).
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

FAULTS = ("5xx", "429", "reset", "lost", "garbage", "slow", "html")

BAD_GATEWAY = b"""<html>
<head><title>502 Bad Gateway</title></head>
<body>
<center><h1>502 Bad Gateway</h1></center>
<hr><center>nginx</center>
</body>
</html>
"""
TOO_LARGE = BAD_GATEWAY.replace(b"502 Bad Gateway", b"413 Request Entity Too Large")
GATEWAY_TIMEOUT = BAD_GATEWAY.replace(b"502 Bad Gateway", b"504 Gateway Time-out")
LOGIN_PAGE = b"""<!doctype html>
<html><head><title>Sign in</title></head>
<body><form method="post" action="/login"><input name="user"><input name="password"
type="password"><button>Sign in</button></form></body></html>
"""


class FaultProxy:
    """Forwards to ``upstream`` (``http://127.0.0.1:PORT``), injecting faults at ``rates``
    (fault name → probability per request). A ``slow`` answer comes after ``stall`` seconds
    (set it above the client's timeout)."""

    def __init__(
        self, upstream: str, *, rates: dict[str, float], seed: int = 7, stall: float = 2.0
    ) -> None:
        unknown = set(rates) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        self.upstream = upstream.rstrip("/")
        self.rates = rates
        self.random = random.Random(seed)
        self.stall = stall
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self.writes = 0
        self._hold_at: int | None = None
        self.redirect: tuple[int, str] | None = None
        """(status, Location) answered to every write under /v2 instead of forwarding it."""
        self.redirected = 0
        self.huge_error = 0
        """When set, every write is answered 400 with a SCIM ``detail`` this long."""
        self.trickle = 0.0
        """When set, every GET of /Users is answered one byte each ``trickle`` seconds."""
        self.oversize = 0
        """When set, every GET of /Users is answered padded to this many bytes."""
        self.path_map: dict[str, str] = {}
        """Path prefixes served under another name (``/v2/Accounts`` → ``/v2/Users``); a
        request to a mapped-to prefix itself is counted in :attr:`unmapped`."""
        self.unmapped = 0
        self.header_type: str | None = None
        """Accept only ``Authorization: <header_type> <token>`` (401 otherwise), forwarded
        as ``Bearer <token>``."""
        self.max_body = 0
        """When set, a request whose body is longer is answered 413 (nginx's HTML page)."""
        self.too_large = 0
        self.revoke_after: int | None = None
        """When set, this many more writes are forwarded; every later one is answered 401 (the
        token revoked in the middle of a run), counted in :attr:`revoked`."""
        self.revoked = 0
        self.refuse_patch = 0
        """When set, every PATCH is answered with this status (405, 501) without forwarding."""
        self.refused_patches = 0
        self.advertise_patch = False
        """Say PATCH is supported in /ServiceProviderConfig, whatever the server says."""
        self.invalidate_cursors = 0
        """Answer this many GETs that carry a non-empty ``cursor`` with 400 invalidCursor."""
        self.latency = 0.0
        """When set, every forwarded request waits this long first (a target far away)."""
        self.slow_bulk = 0.0
        """When set, every Bulk request waits this long first (a target whose Bulk is slow)."""
        self.bulk_per_operation = 0.0
        """When set, Bulk requests are served one at a time, each waiting this long per
        operation first."""
        self._bulk_queue = threading.Lock()
        self.writes_in_flight = 0
        self.peak_writes_in_flight = 0
        """The most write requests forwarded at once (each counted until its answer came)."""
        self.refuse_attributes = False
        """Answer a GET asking for ``attributes=`` with a SCIM 400, as some servers do."""
        self.stuck_listing = False
        """Answer every page of a ``/Users`` listing with its first page and a ``totalResults``
        of 10⁹ (a listing that never advances)."""
        self.holding = threading.Event()
        """Set when the first answer is held back (see :meth:`hold_after`)."""
        self._released = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._session = requests.Session()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        self.thread.start()

    def hold_after(self, writes: int) -> None:
        """After ``writes`` more write requests (POST, PUT, PATCH, DELETE), forward every
        request but hold its answer back until :meth:`release`: the target does the work, the
        client never hears of it. :attr:`holding` is set when the first answer is held."""
        with self._lock:
            self._hold_at = self.writes + writes
            self._released.clear()

    def release(self) -> None:
        """Stop holding answers back; the held ones are sent (to whoever still listens)."""
        with self._lock:
            self._hold_at = None
        self._released.set()

    def _must_hold(self, method: str) -> bool:
        with self._lock:
            self.requests += 1
            hold = self._hold_at is not None and self.writes >= self._hold_at
            if method != "GET":
                self.writes += 1
        if hold:
            self.holding.set()
        return hold

    def stop(self) -> None:
        self._released.set()
        self._stopped.set()
        self.server.shutdown()
        self.server.server_close()
        self._session.close()

    def _pick(self, path: str) -> str | None:
        if not path.startswith("/v2") or path.startswith("/v2/ServiceProviderConfig"):
            return None
        with self._lock:
            draw = self.random.random()
            for fault, rate in self.rates.items():
                if draw < rate:
                    self.injected[fault] += 1
                    return fault
                draw -= rate
        return None

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> requests.Response:
        if handler.command == "GET":
            return self._forward_one(handler, body)
        with self._lock:
            self.writes_in_flight += 1
            self.peak_writes_in_flight = max(self.peak_writes_in_flight, self.writes_in_flight)
        try:
            return self._forward_one(handler, body)
        finally:
            with self._lock:
                self.writes_in_flight -= 1

    def _forward_one(self, handler: BaseHTTPRequestHandler, body: bytes) -> requests.Response:
        headers = {
            k: v for k, v in handler.headers.items() if k.lower() not in ("host", "content-length")
        }
        if self.header_type is not None and "Authorization" in headers:
            headers["Authorization"] = "Bearer " + headers["Authorization"].split(" ", 1)[1]
        if self.latency:
            time.sleep(self.latency)
        if self.slow_bulk and handler.path.startswith("/v2/Bulk"):
            time.sleep(self.slow_bulk)
        if self.bulk_per_operation and handler.path.startswith("/v2/Bulk"):
            try:
                operations = len(json.loads(body).get("Operations") or [])
            except (ValueError, AttributeError):
                operations = 1
            with self._bulk_queue:
                time.sleep(self.bulk_per_operation * operations)
                return self._send(handler, headers, body)
        return self._send(handler, headers, body)

    def _send(
        self, handler: BaseHTTPRequestHandler, headers: dict[str, str], body: bytes
    ) -> requests.Response:
        return self._session.request(
            handler.command,
            self.upstream + handler.path,
            data=body or None,
            headers=headers,
            timeout=60,
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each answer's body waits ~40 ms for an ACK

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _scim_json(self, status: int, document: dict[str, Any]) -> None:
                self._reply(
                    status, {"Content-Type": "application/scim+json"}, json.dumps(document).encode()
                )

            def _drop(self) -> None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.header_type is not None:
                    given = self.headers.get("Authorization", "")
                    if not given.startswith(f"{proxy.header_type} "):
                        self._scim_json(401, {})
                        return
                for mapped, served in proxy.path_map.items():
                    if self.path.startswith(mapped):
                        self.path = served + self.path[len(mapped) :]
                        for old_path, new_path in proxy.path_map.items():  # inside Bulk bodies
                            body = body.replace(
                                f'"{old_path.removeprefix("/v2")}'.encode(),
                                f'"{new_path.removeprefix("/v2")}'.encode(),
                            )
                        break
                    if self.path.startswith(served):
                        with proxy._lock:
                            proxy.unmapped += 1
                if self.path.startswith("/login"):
                    self._reply(200, {"Content-Type": "text/html; charset=utf-8"}, LOGIN_PAGE)
                    return
                if proxy.advertise_patch and self.path.startswith("/v2/ServiceProviderConfig"):
                    config = proxy._forward(self, body).json()
                    config["patch"] = {"supported": True}
                    self._scim_json(200, config)
                    return
                if proxy.max_body and len(body) > proxy.max_body:
                    with proxy._lock:
                        proxy.too_large += 1
                    self._reply(413, {"Content-Type": "text/html"}, TOO_LARGE)
                    return
                if (
                    proxy.revoke_after is not None
                    and self.command != "GET"
                    and self.path.startswith("/v2")
                ):
                    with proxy._lock:
                        refused = proxy.revoke_after <= 0
                        if refused:
                            proxy.revoked += 1
                        else:
                            proxy.revoke_after -= 1
                    if refused:
                        self._scim_json(401, {"status": "401", "detail": "the token was revoked"})
                        return
                if proxy.refuse_patch and self.command == "PATCH":
                    with proxy._lock:
                        proxy.refused_patches += 1
                    status = proxy.refuse_patch
                    self._scim_json(
                        status, {"status": str(status), "detail": "PATCH is not supported"}
                    )
                    return
                redirect = proxy.redirect
                if redirect and self.command != "GET" and self.path.startswith("/v2"):
                    with proxy._lock:
                        proxy.redirected += 1
                    status, location = redirect
                    self._reply(status, {"Location": location, "Content-Type": "text/html"}, b"")
                    return
                if proxy.huge_error and self.command != "GET" and self.path.startswith("/v2"):
                    self._scim_json(400, {"status": "400", "detail": "x" * proxy.huge_error})
                    return
                users = self.command == "GET" and self.path.startswith("/v2/Users")
                if users and (proxy.trickle or proxy.oversize):
                    page = proxy._forward(self, body).json()
                    if proxy.oversize:
                        page["padding"] = "x" * proxy.oversize
                    self._trickle(json.dumps(page).encode(), proxy.trickle)
                    return
                if proxy._must_hold(self.command):
                    response = proxy._forward(self, body)
                    proxy._released.wait()
                    self._relay(response)
                    return
                if (
                    proxy.invalidate_cursors
                    and self.command == "GET"
                    and re.search(r"[?&]cursor=[^&]", self.path)
                ):
                    with proxy._lock:
                        proxy.invalidate_cursors -= 1
                    error = {"status": "400", "scimType": "invalidCursor", "detail": "cursor"}
                    self._scim_json(400, error)
                    return
                if proxy.refuse_attributes and self.command == "GET" and "attributes=" in self.path:
                    error = {"status": "400", "scimType": "invalidValue", "detail": "attributes"}
                    self._scim_json(400, error)
                    return
                if proxy.stuck_listing and self.command == "GET" and "startIndex=" in self.path:
                    self.path = re.sub(r"startIndex=\d+", "startIndex=1", self.path)
                    response = proxy._forward(self, body)
                    page = response.json()
                    page["totalResults"] = 10**9
                    self._scim_json(200, page)
                    return
                fault = proxy._pick(self.path)
                if fault == "5xx":
                    self._reply(503, {"Content-Type": "text/html"}, b"<html>busy</html>")
                    return
                if fault == "429":
                    self._reply(
                        429, {"Retry-After": "0"} if proxy.random.random() < 0.5 else {}, b""
                    )
                    return
                if fault == "reset":
                    self._drop()
                    return
                if fault == "html" and proxy.random.random() < 0.5:
                    self._reply(502, {"Content-Type": "text/html"}, BAD_GATEWAY)
                    return
                response = proxy._forward(self, body)
                if fault == "html":
                    self._reply(504, {"Content-Type": "text/html; charset=utf-8"}, GATEWAY_TIMEOUT)
                    return
                if fault == "slow":
                    proxy._stopped.wait(proxy.stall)  # the client gave up meanwhile
                if fault == "lost":
                    self._drop()
                    return
                if fault == "garbage":
                    status = 200 if response.status_code == 204 else response.status_code
                    self._reply(status, {"Content-Type": "application/json"}, b'{"Resou')
                    return
                self._relay(response)

            def _trickle(self, data: bytes, pause: float) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/scim+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    if not pause:
                        self.wfile.write(data)
                        return
                    for offset in range(len(data)):
                        if proxy._stopped.wait(pause):
                            return
                        self.wfile.write(data[offset : offset + 1])
                        self.wfile.flush()
                except OSError:  # the client gave up
                    self.close_connection = True

            def _relay(self, response: requests.Response) -> None:
                keep = ("Content-Type", "Location", "ETag")
                headers = {k: response.headers[k] for k in keep if k in response.headers}
                try:
                    self._reply(response.status_code, headers, response.content)
                except OSError:  # the client hung up (timed out, or was killed)
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        return Handler
