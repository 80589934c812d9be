"""The SCIM transport: one ``requests.Session`` per target, with auth, timeouts and retries.

This is the only place that talks HTTP to a target. It turns every outcome into the error
taxonomy of :mod:`tasks.errors`; idempotent requests (GET, PUT, PATCH, DELETE) are retried
here on transient failures with exponential backoff, full jitter and ``Retry-After``. A POST is
never blindly re-sent: its caller looks the resource up first (see :mod:`tasks.sync.load`).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from tasks.config import TargetConfig
from tasks.errors import (
    ConfigError,
    FatalError,
    RejectedError,
    ScimError,
    TargetUnreachable,
    TransientError,
    classify_response,
)
from tasks.scim.auth import ClientCredentials
from tasks.scim.dialect import Capabilities, Scim20, dialect_for

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 600.0
MAX_REDIRECTS = 5
"""Same-origin redirects a read follows; a write follows none."""
CHUNK_BYTES = 65536
CURSOR_RESTARTS = 3
"""Times a listing starts again when the target says its cursor is invalid or expired."""


class RateLimiter:
    """At most ``rate`` requests per second to one target, shared by the run's threads.

    A token bucket (burst ``max(1, rate)``): staying under a published quota beats living
    on 429s. ``clock`` and ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.clock = clock
        self.sleep = sleep
        self.updated = clock()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Wait until a request may go."""
        with self._lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            wait = 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate
            self.tokens -= 1
        if wait > 0:
            self.sleep(wait)


def build_session(target: TargetConfig) -> requests.Session:
    """A keep-alive session with the target's auth and TLS settings (secrets resolved here)."""
    for url in target.plaintext_credentials():  # only with allow_insecure_http (else refused)
        log.warning(
            "target %s: credentials are sent UNENCRYPTED to %s (allow_insecure_http: true)",
            target.name,
            safe_url(url),
        )
    session = requests.Session()
    adapter = _PoolKeysOnce(pool_connections=1, pool_maxsize=target.concurrency)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # The environment is read once here, not on every request: requests would look for a
    # ~/.netrc and scan the proxy variables per request (a tenth of a sync's CPU measured
    # here). Proxies (HTTPS_PROXY, NO_PROXY ...) and REQUESTS_CA_BUNDLE still apply; a
    # ~/.netrc never does: credentials come from the config only.
    session.trust_env = False
    session.proxies = dict(requests.utils.get_environ_proxies(target.url))
    auth = target.auth
    if auth.type == "basic" and auth.username and auth.password:
        session.auth = (auth.username, auth.password.resolve().get_secret_value())
    elif auth.type == "bearer" and auth.token:
        token = auth.token.resolve().get_secret_value()
        session.headers["Authorization"] = f"{auth.header_type} {token}"
    session.verify = tls_verify(target)
    return session


class _PoolKeysOnce(HTTPAdapter):
    """requests' adapter with each host's connection-pool key computed once: requests stats
    the CA path (is it a directory?) on every request otherwise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keys: dict[tuple[Any, ...], Any] = {}

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: Any = None
    ) -> Any:
        parts = urlsplit(request.url or "")
        key = (parts.scheme, parts.hostname, parts.port, verify, cert)
        if key not in self._keys:
            self._keys[key] = super().build_connection_pool_key_attributes(request, verify, cert)
        return self._keys[key]


def tls_verify(target: TargetConfig) -> bool | str:
    """The ``verify`` setting of requests for a target (warns when verification is off):
    ``ca_file``, else REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE as requests reads them, else the
    system's CAs."""
    if not target.verify_tls:
        log.warning("TLS certificate verification is OFF for target %s", target.name)
        return False
    if target.ca_file is not None and not os.access(target.ca_file, os.R_OK):
        raise ConfigError(f"targets[{target.name}].ca_file {target.ca_file}: cannot be read")
    if target.ca_file:
        return str(target.ca_file)
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


class ScimClient:
    """Requests to one SCIM target.

    ``stats`` counts every HTTP request sent, per method, retries included.
    """

    def __init__(
        self,
        target: TargetConfig,
        session: requests.Session | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.target = target
        self.dialect: Scim20 = dialect_for(
            target.scim_version,
            target.dialect,
            users_path=target.users_path,
            groups_path=target.groups_path,
        )
        self.session = session if session is not None else build_session(target)
        self.session.headers.update({"Accept": f"{self.dialect.media_type}, application/json"})
        self.credentials = (
            ClientCredentials.shared(target.auth, tls_verify(target))
            if target.auth.type == "oauth2_client_credentials"
            else None
        )
        self.stats: Counter[str] = Counter()
        self.limiter = (
            RateLimiter(target.requests_per_second, sleep=sleep)
            if target.requests_per_second
            else None
        )
        self._lock = threading.Lock()
        self.users_at_probe: int | None = None
        """How many users the target held when :meth:`probe` reached it (before any write)."""
        self.failures_in_a_row = 0
        self.sleep = sleep

    def close(self) -> None:
        self.session.close()

    # -- transport -------------------------------------------------------------------------

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER)
        ceiling = min(self.target.max_backoff, 0.5 * 2.0 ** (attempt - 1))
        return random.uniform(0.5, 1.0) * ceiling

    def send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        retry: bool = True,
        if_match: str | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """Send one request; return (status, parsed JSON body or None, headers).

        Raises a :class:`~tasks.errors.ScimError` subclass for every unsuccessful outcome.
        """
        try:
            result = self._send_retrying(method, path, body, params, retry, if_match)
        except TransientError:
            self._failed_in_a_row()
            raise
        with self._lock:
            self.failures_in_a_row = 0
        return result

    def _failed_in_a_row(self) -> None:
        """The circuit breaker: after ``circuit_breaker`` requests in a row failed even after
        their retries, stop the run (a target that keeps failing gets no more load)."""
        with self._lock:
            self.failures_in_a_row += 1
            tripped = self.failures_in_a_row >= self.target.circuit_breaker
        if tripped:
            raise FatalError(
                f"target {self.target.name} keeps failing: {self.failures_in_a_row} requests in "
                "a row failed after their retries; the run stops here (circuit breaker)"
            )

    def _send_retrying(
        self,
        method: str,
        path: str,
        body: Any,
        params: dict[str, str] | None,
        retry: bool,
        if_match: str | None,
    ) -> tuple[int, Any, dict[str, str]]:
        url = f"{self.target.url}{path}"
        what = f"{method} {path}"
        attempts = 1 + (self.target.max_retries if retry else 0)
        renewed = False
        for attempt in range(1, attempts + 1):
            try:
                return self._send_once(method, url, what, body, params, if_match)
            except FatalError as exc:
                if exc.status != 401 or self.credentials is None or renewed:
                    raise
                renewed = True  # the token was refused: one new token, one more try
                return self._send_once(method, url, what, body, params, if_match)
            except TransientError as exc:
                if attempt == attempts:
                    raise
                delay = self.backoff(attempt, exc.retry_after)
                log.info("%s; retry %d/%d in %.1fs", exc, attempt, attempts - 1, delay)
                with self._lock:
                    self.stats["retries"] += 1
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _send_once(
        self,
        method: str,
        url: str,
        what: str,
        body: Any,
        params: dict[str, str] | None,
        if_match: str | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {"Content-Type": self.dialect.media_type} if body is not None else {}
        if if_match is not None:
            headers["If-Match"] = if_match
        if self.credentials is not None:
            headers["Authorization"] = self.credentials.authorization()
        if self.limiter is not None:
            self.limiter.acquire()
        with self._lock:
            self.stats[method] += 1
        try:
            response = self._request(method, url, what, body, params, headers)
        except requests.Timeout as exc:
            raise TransientError(
                f"{what} failed: no answer within {self.target.timeout:g}s"
            ) from exc
        except requests.ConnectionError as exc:
            raise TransientError(f"{what} failed: connection error ({_reason(exc)})") from exc
        except requests.RequestException as exc:
            raise RejectedError(f"{what} failed: {_reason(exc)}") from exc
        status = response.status_code
        content = response.content
        if status == 401 and self.credentials is not None:
            self.credentials.refused(headers["Authorization"])
        if status >= 400:
            raise classify_response(status, content, dict(response.headers), what)
        if not 200 <= status < 300:
            raise FatalError(f"{what} answered HTTP {status}, not a SCIM answer", status=status)
        if not content.strip():
            return status, None, dict(response.headers)
        try:
            parsed = response.json()
        except ValueError as exc:
            kind = response.headers.get("Content-Type", "no content type").split(";")[0]
            if method != "GET" and "json" not in kind:  # a login page, a gateway's answer
                raise FatalError(
                    f"{what} answered HTTP {status} with {kind}, not a SCIM answer: the write "
                    f"is not confirmed (is {self.target.url} the SCIM endpoint, and are the "
                    "credentials still accepted?)",
                    status=status,
                ) from exc
            raise TransientError(  # garbled: whether a write happened is found out again
                f"{what} answered HTTP {status} with {kind} that does not parse", status=status
            ) from exc
        return status, parsed, dict(response.headers)

    def _request(
        self,
        method: str,
        url: str,
        what: str,
        body: Any,
        params: dict[str, str] | None,
        headers: dict[str, str],
    ) -> requests.Response:
        """One request and its whole answer, within the target's ``timeout`` from start to
        the last byte (a deadline, not per read: a target trickling a byte at a time cannot
        hold a worker) and at most ``max_response_bytes`` long."""
        started = time.monotonic()
        response = self._exchange(method, url, what, body, params, headers)
        try:
            self._load_body(response, what, started)
        finally:
            response.close()  # back to the pool: the body was read whole
        return response

    def _load_body(self, response: requests.Response, what: str, started: float) -> None:
        limit = self.target.max_response_bytes
        deadline = started + self.target.timeout
        watched = WATCHDOG.watch(deadline, response)
        content = bytearray()
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                content += chunk
                if len(content) > limit:
                    raise RejectedError(
                        f"{what} failed: the answer is larger than max_response_bytes "
                        f"({limit:,} bytes) of target {self.target.name}; not read further",
                        status=response.status_code,
                    )
        except requests.RequestException as exc:
            if time.monotonic() >= deadline:
                raise TransientError(
                    f"{what} failed: no complete answer within {self.target.timeout:g}s"
                ) from exc
            raise
        finally:
            cut = not WATCHDOG.release(watched)
        if cut or time.monotonic() >= deadline:  # an answer without a length just ends when cut
            raise TransientError(
                f"{what} failed: no complete answer within {self.target.timeout:g}s"
            )
        response._content = bytes(content)

    def _exchange(
        self,
        method: str,
        url: str,
        what: str,
        body: Any,
        params: dict[str, str] | None,
        headers: dict[str, str],
    ) -> requests.Response:
        """Send a request and read its status and headers, redirects handled here rather than
        by requests.

        A write is never redirected: its answer must come from the URL that was called (a
        gateway's ``302 Location: /login`` would otherwise turn into a GET of the login page,
        and a 307 would send the user's data to another host). A read follows at most
        :data:`MAX_REDIRECTS` redirects on the same origin (scheme, host and port), so the
        credentials never go to another host.
        """
        response = self._transmit(method, url, headers, body, params)
        for _ in range(MAX_REDIRECTS):
            if not response.is_redirect:
                return response
            response.close()
            location = urljoin(response.url, response.headers.get("Location", ""))
            try:
                same_origin = _origin(location) == _origin(url)
                shown = safe_url(location)
            except ValueError:  # a port that is not a number
                raise FatalError(
                    f"{what} was redirected (HTTP {response.status_code}) to a malformed URL",
                    status=response.status_code,
                ) from None
            if method != "GET":
                raise FatalError(
                    f"{what} was redirected (HTTP {response.status_code}) to {shown}: "
                    "a write is not followed to another URL and is not confirmed; check the "
                    f"URL of target {self.target.name} and that its credentials are accepted",
                    status=response.status_code,
                )
            if not same_origin:
                raise FatalError(
                    f"{what} was redirected (HTTP {response.status_code}) to another host, "
                    f"{shown}: not followed (the credentials stay with "
                    f"{safe_url(self.target.url)})",
                    status=response.status_code,
                )
            response = self._transmit("GET", location, headers)
        if response.is_redirect:
            response.close()
            raise FatalError(f"{what} was redirected more than {MAX_REDIRECTS} times")
        return response

    def _transmit(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> requests.Response:
        """One request through the session's adapter, its answer not yet read, no redirect
        followed: what ``session.request(..., allow_redirects=False, stream=True)`` does,
        without the steps this client never needs on every request (merging the environment's
        settings and the session's hooks, asking where a redirect would lead). The session's
        headers, auth, cookies, TLS settings and proxies apply as there. ~0.1 ms of CPU less
        a request (a create: 0.46 -> 0.36 ms), an eighth of what a sync spends on a user
        (docs/performance.md).
        """
        session = self.session
        merged = requests.structures.CaseInsensitiveDict(session.headers)
        merged.update(headers)
        request = requests.PreparedRequest()
        request.prepare(
            method=method,
            url=url,
            headers=merged,
            params=params,
            auth=session.auth,
            cookies=session.cookies,
            json=body,
        )
        response = session.get_adapter(url).send(
            request,
            stream=True,
            timeout=self.target.timeout,
            verify=True if session.verify is None else session.verify,
            cert=session.cert,
            proxies=session.proxies,
        )
        if "Set-Cookie" in response.headers:  # kept for the next requests, as a session does
            jar, raw = session.cookies, response.raw
            requests.cookies.extract_cookies_to_jar(jar, request, raw)  # type: ignore[no-untyped-call,unused-ignore]
        return response

    # -- SCIM operations -------------------------------------------------------------------

    def probe(self) -> None:
        """One authenticated request proving the target reachable and accepting this run's
        credentials: ``GET /Users?count=1`` must be answered with a SCIM list.

        Raises :class:`~tasks.errors.TargetUnreachable` naming the target and its URL.
        """
        where = f"target {self.target.name} ({safe_url(self.target.url)})"
        try:
            _, body, _ = self.send(
                "GET", self.dialect.users_path, params={"startIndex": "1", "count": "1"}
            )
        except ScimError as exc:
            raise TargetUnreachable(f"{where} not reached: {exc}", status=exc.status) from exc
        if not isinstance(body, dict) or not (
            "totalResults" in body or "Resources" in body or "schemas" in body
        ):
            raise TargetUnreachable(
                f"{where} not reached: GET {self.dialect.users_path} did not answer a SCIM list"
            )
        total = body.get("totalResults")
        self.users_at_probe = total if isinstance(total, int) else None

    def discover(self) -> Capabilities:
        """Read ``/ServiceProviderConfig``; when the target has none (or refuses to show it)
        assume no optional feature. Credentials refused (401) stop the run."""
        for path in self.dialect.service_provider_config_paths:
            try:
                _, body, _ = self.send("GET", path)
            except TransientError:
                raise
            except FatalError as exc:
                if exc.status != 403:
                    raise
                log.warning(
                    "discovery at %s refused (%s); assuming no optional features", path, exc
                )
                continue
            except ScimError as exc:
                log.warning("discovery at %s failed (%s); assuming no optional features", path, exc)
                continue
            return self.dialect.adjust(Capabilities.from_service_provider_config(body))
        return self.dialect.adjust(Capabilities())

    def schemas(self) -> dict[str, set[str]] | None:
        """Attribute names (lower-case) per schema URN from ``/Schemas``; ``None`` when the
        target does not publish them (nothing is assumed then)."""
        try:
            _, body, _ = self.send("GET", "/Schemas")
        except (RejectedError, TransientError) as exc:
            log.info("no usable /Schemas (%s): extension attributes are not checked", exc)
            return None
        resources = self.dialect.list_resources(body)
        if not resources and isinstance(body, list):  # some 1.1 targets answer a bare list
            resources = [r for r in body if isinstance(r, dict)]
        return {
            str(r["id"]): {
                str(a.get("name", "")).lower()
                for a in r.get("attributes") or []
                if isinstance(a, dict)
            }
            for r in resources
            if r.get("id")
        } or None

    def find(self, path: str, filter_: str) -> list[dict[str, Any]]:
        """Resources of ``path`` (``/Users``, ``/Groups``) matching a filter (at most 2 asked:
        enough to tell one from ambiguous)."""
        _, body, _ = self.send("GET", path, params={"filter": filter_, "count": "2"})
        return [self.dialect.from_wire(r) for r in self.dialect.list_resources(body)]

    def count(self, path: str) -> int | None:
        """How many resources ``path`` holds (``totalResults``), if the target says."""
        _, body, _ = self.send("GET", path, params={"count": "1"})
        total = body.get("totalResults") if isinstance(body, dict) else None
        return total if isinstance(total, int) else None

    def list_all(
        self, path: str, attributes: list[str], page_size: int, *, cursor: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Every resource of ``path`` once, page by page: by RFC 9865 cursors (``cursor`` /
        ``nextCursor``) when the target offers them, else by ``startIndex``/``count``.

        A cursor the target calls ``invalidCursor`` or ``expiredCursor`` restarts the listing
        from the beginning (at most :data:`CURSOR_RESTARTS` times); what was listed already is
        not yielded again. A listing that does not advance (a page of ids already seen, a
        cursor handed back again, more resources than the first page's ``totalResults``
        promised, allowing for growth) raises :class:`FatalError`: acting on a partial or
        endless listing could create duplicates, and looping forever helps nobody.
        """
        start, next_cursor = 1, ""
        asked = ",".join(attributes)
        seen: set[str] = set()
        cursors: set[str] = set()
        cap: int | None = None
        promised = 0
        restarts = 0
        replaying = False  # after a restart, pages of what was listed already are expected
        while True:
            params = {"count": str(page_size), **({"attributes": asked} if asked else {})}
            if cursor:
                params["cursor"] = next_cursor
            else:
                params["startIndex"] = str(start)
            try:
                _, body, _ = self.send("GET", path, params=params)
            except RejectedError as exc:
                if (
                    cursor
                    and next_cursor
                    and exc.scim_type in ("invalidCursor", "expiredCursor")
                    and restarts < CURSOR_RESTARTS
                ):
                    restarts += 1
                    log.warning(
                        "target %s: cursor of the listing of %s refused (%s); listing again "
                        "from the start (%d of %d)",
                        self.target.name,
                        path,
                        exc.scim_type,
                        restarts,
                        CURSOR_RESTARTS,
                    )
                    next_cursor, replaying = "", True
                    cursors.clear()
                    continue
                if exc.status != 400 or not asked or seen:
                    raise
                log.warning(
                    "target %s refused a listing of %s with attributes= (%s); listing whole "
                    "resources instead",
                    self.target.name,
                    path,
                    exc,
                )
                asked = ""
                continue
            page = self.dialect.list_resources(body)
            total = body.get("totalResults") if isinstance(body, dict) else None
            if cap is None and isinstance(total, int):
                promised, cap = total, 2 * total + 10 * page_size  # room for new resources
            ids = {str(r.get("id")) for r in page if r.get("id") is not None}
            if page and ids and ids <= seen and not replaying:
                raise FatalError(
                    f"listing {path} of target {self.target.name} does not advance: the page at "
                    f"{'cursor ' + repr(next_cursor) if cursor else f'startIndex {start}'} holds "
                    f"only resources already listed ({len(seen)} so far); stopped"
                )
            replaying = replaying and ids <= seen
            fresh = [r for r in page if str(r.get("id")) not in seen or r.get("id") is None]
            seen |= ids
            if cap is not None and len(seen) > cap:
                raise FatalError(
                    f"listing {path} of target {self.target.name} goes on past {cap} resources "
                    f"(its first page said {promised}); stopped"
                )
            yield from (self.dialect.from_wire(r) for r in fresh)
            if cursor:
                following = body.get("nextCursor") if isinstance(body, dict) else None
                if not page or not following:
                    return
                if str(following) in cursors:
                    raise FatalError(
                        f"listing {path} of target {self.target.name} does not advance: cursor "
                        f"{str(following)!r} was handed out before; stopped"
                    )
                next_cursor = str(following)
                cursors.add(next_cursor)
                continue
            start += len(page)
            if not page or not isinstance(total, int) or start > total:
                return

    def get(self, path: str, scim_id: str, attributes: list[str] | None = None) -> dict[str, Any]:
        params = {"attributes": ",".join(attributes)} if attributes else None
        _, body, _ = self.send("GET", f"{path}/{scim_id}", params=params)
        if not isinstance(body, dict):
            raise TransientError(f"GET {path}/{scim_id} answered no resource")
        return self.dialect.from_wire(body)

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a resource (never re-sent here: the caller looks up first); return it."""
        _, created, headers = self.send("POST", path, body=self.dialect.to_wire(body), retry=False)
        if not isinstance(created, dict) or not created.get("id"):
            location = headers.get("Location", "")
            if location:
                return {**body, "id": location.rstrip("/").rsplit("/", 1)[-1]}
            raise TransientError(f"POST {path} answered without the new resource's id")
        return self.dialect.from_wire(created)

    def replace(
        self, path: str, scim_id: str, body: dict[str, Any], version: str | None = None
    ) -> str | None:
        """PUT a whole resource (``If-Match: version`` when given); return its new ETag."""
        wire = self.dialect.to_wire(self.dialect.replace_body(scim_id, body))
        _, answer, headers = self.send("PUT", f"{path}/{scim_id}", body=wire, if_match=version)
        return etag_of(answer, headers)

    def patch(
        self,
        path: str,
        scim_id: str,
        operations: list[dict[str, Any]],
        version: str | None = None,
    ) -> str | None:
        """PATCH a resource (``If-Match: version`` when given); return its new ETag."""
        body = self.dialect.patch_body(operations)
        _, answer, headers = self.send("PATCH", f"{path}/{scim_id}", body=body, if_match=version)
        return etag_of(answer, headers)

    def delete(self, path: str, scim_id: str) -> None:
        self.send("DELETE", f"{path}/{scim_id}")


def etag_of(resource: Any, headers: dict[str, str]) -> str | None:
    """A resource's version: the ETag header, else ``meta.version`` of the body."""
    if headers.get("ETag"):
        return headers["ETag"]
    meta = resource.get("meta") if isinstance(resource, dict) else None
    version = meta.get("version") if isinstance(meta, dict) else None
    return str(version) if version else None


class Watchdog:
    """One thread for every request of the process: cuts the connection of an answer still
    being read at its deadline, so the read blocked in the sending thread fails at once.

    Registering costs a heap push under a lock (a timer thread per request cost ~0.4 ms).
    """

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._deadlines: list[tuple[float, int]] = []
        self._watched: dict[int, requests.Response] = {}
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, response: requests.Response) -> int:
        """Cut ``response`` at ``deadline`` (monotonic) unless released first."""
        with self._wake:
            key = next(self._keys)
            self._watched[key] = response
            heapq.heappush(self._deadlines, (deadline, key))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="scim-deadlines")
                self._thread.daemon = True
                self._thread.start()
            if self._deadlines[0][1] == key:
                self._wake.notify()
        return key

    def release(self, key: int) -> bool:
        """Stop watching; ``False`` when the deadline had already cut the response."""
        with self._wake:
            return self._watched.pop(key, None) is not None

    def _run(self) -> None:
        with self._wake:
            while True:
                while self._deadlines and self._deadlines[0][1] not in self._watched:
                    heapq.heappop(self._deadlines)  # released: forget it
                if not self._deadlines:
                    self._wake.wait()
                    continue
                deadline, key = self._deadlines[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                heapq.heappop(self._deadlines)
                response = self._watched.pop(key)
                with contextlib.suppress(Exception):
                    response.raw.shutdown()


WATCHDOG = Watchdog()


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of a URL (the default port made explicit)."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def safe_url(url: str) -> str:
    """A URL fit for a message: without user info, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _reason(exc: Exception) -> str:
    """A short cause for a requests exception, without URLs that might carry credentials."""
    cause: BaseException = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    return type(cause).__name__
