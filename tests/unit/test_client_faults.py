"""The SCIM transport and loader under target behaviours a real scim2-server never shows.

The server here is a hand-written fake (a stdlib ``http.server`` on 127.0.0.1): no real SCIM
server answers 429 with ``Retry-After``, drops a response after a successful create, answers
PATCH with 200 and a body, or creates without a ``Location`` header on demand. The real-server
paths are covered by ``tests/integration``; the fault-injection proxy in front of a real server
is planned (issue "Nothing lost under faults").
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tasks.config import TargetConfig
from tasks.errors import FatalError, RejectedError, TargetUnreachable, TransientError
from tasks.scim.client import ScimClient
from tasks.sync.load import Loader
from tasks.sync.plan import Action

Handler = Callable[[BaseHTTPRequestHandler, int], tuple[int, dict[str, str], Any] | None]


class FakeTarget:
    """Answers each request by a script: ``script(request, n)`` → (status, headers, body) or None
    to drop the connection without answering. Records (method, path) of every request."""

    def __init__(self, script: Handler) -> None:
        self.requests: list[tuple[str, str]] = []
        self.users: dict[str, dict[str, Any]] = {}
        fake = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append((self.command, self.path))
                answer = script(self, len(fake.requests))
                if answer is None:
                    self.close_connection = True
                    self.connection.close()
                    return
                status, headers, body = answer
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                data = b"" if body is None else data
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v2"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], FakeTarget]]:
    started: list[FakeTarget] = []

    def start(script: Handler) -> FakeTarget:
        started.append(FakeTarget(script))
        return started[-1]

    yield start
    for fake in started:
        fake.stop()


def client_for(fake: FakeTarget, sleeps: list[float], **options: Any) -> ScimClient:
    target = TargetConfig(name="t", url=fake.url, max_retries=3, timeout=2, **options)
    return ScimClient(target, sleep=sleeps.append)


def listing(*users: dict[str, Any]) -> dict[str, Any]:
    return {"totalResults": len(users), "Resources": list(users)}


def test_429_waits_for_retry_after(serve) -> None:
    """A 429 is retried after exactly the Retry-After the target asked for."""
    fake = serve(lambda r, n: (429, {"Retry-After": "3"}, None) if n == 1 else (200, {}, listing()))
    sleeps: list[float] = []
    assert client_for(fake, sleeps).find("/Users", 'userName eq "a"') == []
    assert sleeps == [3.0]
    assert len(fake.requests) == 2


def test_5xx_is_retried_with_backoff_then_gives_up(serve) -> None:
    fake = serve(lambda r, n: (503, {}, b"<html>busy</html>"))
    sleeps: list[float] = []
    with pytest.raises(TransientError, match="HTTP 503: <html>busy</html>"):
        client_for(fake, sleeps).find("/Users", 'userName eq "a"')
    assert len(fake.requests) == 4  # 1 + max_retries
    assert len(sleeps) == 3 and sleeps[0] <= sleeps[2]


def test_401_is_fatal_and_not_retried(serve) -> None:
    fake = serve(lambda r, n: (401, {}, {"detail": "bad token", "status": "401"}))
    with pytest.raises(FatalError, match="bad token"):
        client_for(fake, []).find("/Users", 'userName eq "a"')
    assert len(fake.requests) == 1


def test_lost_create_response_does_not_duplicate(serve) -> None:
    """The first POST creates the user but its answer is lost; the retry looks up and adopts."""

    def script(request: BaseHTTPRequestHandler, n: int):
        users = fake.users
        if request.command == "GET":
            return 200, {}, listing(*users.values())
        if request.command == "POST":
            users["u1"] = {**request.body, "id": "u1"}  # type: ignore[attr-defined]
            return None  # the write happened; the response is lost
        return 204, {}, None

    fake = serve(script)
    loader = Loader(client_for(fake, []), use_patch=True)
    payload = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "ada"}
    outcome = loader.run(Action("create", "s1", "ada", "new", payload))
    assert outcome.ok and outcome.scim_id == "u1" and outcome.adopted
    assert [m for m, _ in fake.requests].count("POST") == 1


def test_create_without_location_and_patch_with_body(serve) -> None:
    """A 201 with only the id in the body, and a PATCH answered 200 with a body, both succeed."""

    def script(request: BaseHTTPRequestHandler, n: int):
        if request.command == "GET":
            return 200, {}, listing()
        if request.command == "POST":
            return 201, {}, {"id": "new-1", "userName": "ada"}
        return 200, {}, {"id": "new-1", "userName": "ada", "title": "Dr"}

    fake = serve(script)
    loader = Loader(client_for(fake, []), use_patch=True)
    created = loader.run(Action("create", "s1", "ada", "new", {"userName": "ada"}))
    assert created.ok and created.scim_id == "new-1"
    updated = loader.run(
        Action(
            "update",
            "s1",
            "ada",
            "changed",
            {"userName": "ada", "title": "Dr"},
            {"userName": "ada"},
            "new-1",
        )
    )
    assert updated.ok
    assert fake.requests[-1] == ("PATCH", "/v2/Users/new-1")


def test_created_id_from_location_header(serve) -> None:
    """A 201 without a body is read from its Location header."""

    def script(request: BaseHTTPRequestHandler, n: int):
        if request.command == "GET":
            return 200, {}, listing()
        return 201, {"Location": f"{fake.url}/Users/loc-9"}, None

    fake = serve(script)
    outcome = Loader(client_for(fake, []), use_patch=True).run(
        Action("create", "s1", "ada", "new", {"userName": "ada"})
    )
    assert outcome.ok and outcome.scim_id == "loc-9"


def test_rejected_user_keeps_the_targets_message(serve) -> None:
    body = {"status": "400", "scimType": "invalidValue", "detail": "title too long"}
    fake = serve(lambda r, n: (200, {}, listing()) if r.command == "GET" else (400, {}, body))
    outcome = Loader(client_for(fake, []), use_patch=True).run(
        Action("create", "s1", "ada", "new", {"userName": "ada"})
    )
    assert not outcome.ok
    assert outcome.detail == "POST /Users failed: HTTP 400: title too long"


def test_lookup_filter_is_escaped(serve) -> None:
    """A userName crafted to widen the filter stays one quoted value."""
    fake = serve(
        lambda r, n: (200, {}, listing()) if r.command == "GET" else (201, {}, {"id": "x"})
    )
    Loader(client_for(fake, []), use_patch=True).run(
        Action("create", "s1", 'x" or userName pr', "new", {"userName": 'x" or userName pr'})
    )
    from urllib.parse import parse_qs, urlsplit

    query = parse_qs(urlsplit(fake.requests[0][1]).query)
    assert query["filter"] == ['userName eq "x\\" or userName pr"']


def test_bulk_results_are_mapped_back_and_conflicts_retried_one_by_one(serve) -> None:
    """In one Bulk response: a create succeeds, one is rejected with the target's words, one
    conflicts (409) and is then looked up and adopted on its own."""
    from tasks.scim.dialect import Capabilities

    def script(request: BaseHTTPRequestHandler, n: int):
        if request.command == "POST" and request.path.endswith("/Bulk"):
            ops = request.body["Operations"]  # type: ignore[attr-defined]
            statuses = {"ann": "201", "bad": "400", "dup": "409"}
            return (
                200,
                {},
                {
                    "Operations": [
                        {
                            "bulkId": op["bulkId"],
                            "method": "POST",
                            "status": statuses[op["data"]["userName"]],
                            "location": f"{fake.url}/Users/id-{op['data']['userName']}",
                            "response": {"detail": "bad title"}
                            if op["data"]["userName"] == "bad"
                            else {},
                        }
                        for op in ops
                    ]
                },
            )
        if request.command == "GET" and "filter" in request.path:
            return 200, {}, listing({"id": "id-dup", "userName": "dup"})
        return 204, {}, None

    fake = serve(script)
    caps = Capabilities(bulk=True, bulk_max_operations=10, bulk_max_payload=100_000)
    loader = Loader(client_for(fake, []), use_patch=True, bulk=caps)
    loader.index, loader.index_attribute = {}, "userName"
    actions = [
        Action("create", f"s-{name}", name, "new", {"userName": name})
        for name in ("ann", "bad", "dup")
    ]
    outcomes, rest = loader.run_bulk(actions)
    assert {o.action.user_name: (o.ok, o.scim_id) for o in outcomes} == {
        "ann": (True, "id-ann"),
        "bad": (False, None),
    }
    assert next(o for o in outcomes if not o.ok).detail == (
        "POST /Users (in Bulk) failed: HTTP 400: bad title"
    )
    assert [a.user_name for a in rest] == ["dup"]
    adopted = loader.run(rest[0])
    assert adopted.ok and adopted.adopted and adopted.scim_id == "id-dup"


def test_a_bulk_answer_the_store_fails_to_record_does_not_skip_the_others(serve: Any) -> None:
    """Three Bulk requests answered; recording the first fails (the state store went away):
    the other two are still recorded, then the error stops the batch."""
    from tasks.scim.dialect import Capabilities
    from tasks.sync.load import Loader
    from tasks.sync.plan import Action

    def script(request: BaseHTTPRequestHandler, n: int):
        op = request.body["Operations"][0]  # type: ignore[attr-defined]
        name = op["data"]["userName"]
        answer = {"bulkId": op["bulkId"], "method": "POST", "status": "201"}
        return 200, {}, {"Operations": [{**answer, "location": f"{fake.url}/Users/id-{name}"}]}

    fake = serve(script)
    caps = Capabilities(bulk=True, bulk_max_operations=1, bulk_max_payload=100_000)
    loader = Loader(client_for(fake, []), use_patch=True, bulk=caps)
    loader.index, loader.index_attribute = {}, "userName"
    actions = [
        Action("create", f"s-{name}", name, "new", {"userName": name})
        for name in ("ann", "ben", "cid")
    ]
    recorded: list[str] = []

    def record(outcomes: list[Any]) -> None:
        if not recorded:
            recorded.append("failed")
            raise OSError("database is locked")
        recorded.extend(o.action.user_name for o in outcomes)

    with pytest.raises(OSError, match="locked"):
        loader.run_bulk(actions, record)
    assert recorded == ["failed", "ben", "cid"]


def test_bulk_chunks_respect_operations_and_payload_limits() -> None:
    from tasks.scim.dialect import Capabilities
    from tasks.sync.load import bulk_chunks

    ops = [{"method": "POST", "bulkId": f"b{n}", "data": {"x": "y" * 100}} for n in range(25)]
    by_count = list(bulk_chunks(ops, Capabilities(bulk=True, bulk_max_operations=10)))
    assert [len(c) for c in by_count] == [10, 10, 5]
    by_size = list(
        bulk_chunks(ops, Capabilities(bulk=True, bulk_max_operations=100, bulk_max_payload=1000))
    )
    assert all(len(json.dumps(c)) < 1000 for c in by_size) and sum(map(len, by_size)) == 25


def test_a_few_bulk_operations_are_spread_over_concurrency_requests() -> None:
    """800 operations at concurrency 4 go in 4 requests side by side, not one of 800: a Bulk
    endpoint gets the same concurrency as single requests (and a fair trial against them);
    never fewer than 100 a request, and never more than maxOperations."""
    from tasks.scim.dialect import Capabilities
    from tasks.sync.load import bulk_chunks

    ops = [{"method": "POST", "bulkId": f"b{n}", "data": {}} for n in range(800)]
    spread = list(bulk_chunks(ops, Capabilities(bulk=True, bulk_max_operations=1000), 4))
    assert [len(c) for c in spread] == [200, 200, 200, 200]
    few = list(bulk_chunks(ops[:250], Capabilities(bulk=True, bulk_max_operations=1000), 4))
    assert [len(c) for c in few] == [100, 100, 50]
    many = ops * 3  # 2,400: more than 4 full requests hold
    full = list(bulk_chunks(many, Capabilities(bulk=True, bulk_max_operations=300), 4))
    assert [len(c) for c in full] == [300] * 8


def test_listing_follows_rfc9865_cursors(serve) -> None:
    """With cursors, pages are asked with cursor= and nextCursor is followed to the end."""
    from urllib.parse import parse_qs, urlsplit

    pages = {"": (["a", "b"], "c2"), "c2": (["c"], None)}

    def script(request: BaseHTTPRequestHandler, n: int):
        query = parse_qs(urlsplit(request.path).query, keep_blank_values=True)
        names, following = pages[query["cursor"][0]]
        body: dict[str, Any] = listing(*({"id": x, "userName": x} for x in names))
        if following:
            body["nextCursor"] = following
        return 200, {}, body

    fake = serve(script)
    client = client_for(fake, [])
    got = [u["userName"] for u in client.list_all("/Users", ["userName"], 2, cursor=True)]
    assert got == ["a", "b", "c"]
    assert all("cursor=" in path and "startIndex" not in path for _, path in fake.requests)


def test_rate_limiter_keeps_to_the_rate_after_a_burst() -> None:
    """10 requests/s: a burst of 10 goes at once, then one every 0.1 s."""
    from tasks.scim.client import RateLimiter

    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(10, clock=lambda: now[0], sleep=sleep)
    for _ in range(25):
        limiter.acquire()
    assert len(slept) == 15
    assert abs(now[0] - 1.5) < 1e-9


def test_requests_per_second_applies_to_every_request(serve) -> None:
    fake = serve(lambda r, n: (200, {}, listing()))
    sleeps: list[float] = []
    client = client_for(fake, sleeps, requests_per_second=2)
    for _ in range(4):
        client.find("/Users", 'userName eq "a"')
    # a burst of 2, then each request waits its turn (the fake sleep does not pass time)
    assert len(sleeps) == 2 and 0 < sleeps[0] < sleeps[1] <= 1.0


def test_circuit_breaker_stops_a_batch_when_the_target_keeps_failing(serve, tmp_path) -> None:
    """After N requests in a row failed even after retries, the run stops with a clear error
    instead of hammering the target; nothing unconfirmed is recorded."""
    from tasks.errors import FatalError
    from tasks.state.store import StateStore
    from tasks.sync.load import run_batch

    fake = serve(lambda r, n: (503, {}, b"down"))
    client = client_for(fake, [], circuit_breaker=3)
    loader = Loader(client, use_patch=True)
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    actions = [
        Action(
            "update",
            f"s{n}",
            f"u{n}",
            "changed",
            {"userName": f"u{n}", "title": "x"},
            {"userName": f"u{n}"},
            f"id{n}",
        )
        for n in range(30)
    ]
    with pytest.raises(FatalError, match=r"keeps failing: \d+ requests in a row"):
        run_batch(loader, store, actions)
    assert len(fake.requests) < 30 * 4  # far fewer than every user with every retry
    assert store.records("t") == {}
    store.close()


@pytest.mark.parametrize("bulk", [False, True], ids=["one-request-each", "bulk"])
def test_a_fatal_answer_in_one_batch_halts_the_batch_overlapping_it(
    bulk: bool, serve, tmp_path
) -> None:
    """Overlapping batches share the target's threads (in the order they were submitted); a
    fatal answer (401) in the first stops both at once: nothing of either starts after it, the
    first raises, the second returns nothing, and only what the target confirmed is recorded.
    The same with one change per request and with Bulk requests (one operation each)."""
    import time

    from tasks.scim.dialect import Capabilities
    from tasks.state.store import StateStore
    from tasks.sync.load import run_batch

    sent: list[str] = []
    two_in_flight = threading.Event()

    def script(request: BaseHTTPRequestHandler, n: int) -> tuple[int, dict[str, str], Any]:
        body: Any = getattr(request, "body", None)
        operations = body["Operations"] if bulk else [{"path": request.path}]
        sent.extend(op["path"].rsplit("/", 1)[-1] for op in operations)
        if len(sent) >= 2:
            two_in_flight.set()
        if sent[-1] == "id-a0":  # answered while a1 is in flight and b is queued
            time.sleep(0.1)
            return 401, {}, {"detail": "token revoked"}
        time.sleep(0.3)
        if not bulk:
            return 204, {}, None
        answers = [{**op, "status": "200", "location": op["path"]} for op in operations]
        return 200, {}, {"Operations": answers}

    fake = serve(script)
    capabilities = Capabilities(bulk=True, bulk_max_operations=1) if bulk else None
    loader = Loader(client_for(fake, [], concurrency=2), use_patch=True, bulk=capabilities)
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")

    def update(name: str) -> Action:
        return Action(
            "update",
            name,
            name,
            "changed",
            {"userName": name, "title": "x"},
            {"userName": name},
            f"id-{name}",
        )

    results: dict[str, Any] = {}

    def load(batch: str) -> None:
        try:
            results[batch] = run_batch(loader, store, [update(f"{batch}{n}") for n in range(6)])
        except FatalError as exc:
            results[batch] = exc

    with loader.shared_threads():
        first = threading.Thread(target=load, args=("a",))
        first.start()
        assert two_in_flight.wait(5)  # every action of a was queued before b's
        second = threading.Thread(target=load, args=("b",))
        second.start()
        first.join()
        second.join()
    assert isinstance(results["a"], FatalError)
    assert results["b"] == []
    # the write in flight beside the refused one finished; nothing else started
    assert sorted(sent) == ["id-a0", "id-a1"]
    assert [r.user_name for r in store.records("t").values()] == ["a1"]
    store.close()


def test_an_interrupted_load_halts_and_its_batch_ends(serve, tmp_path) -> None:
    """Ctrl-C (or a SIGTERM turned into an exception) in the flow's thread while a batch runs on
    the shared threads: the batch stops after the write in flight (nothing else is sent) and
    its thread ends, rather than waiting forever for actions that never ran."""
    import time

    from tasks.state.store import StateStore
    from tasks.sync.load import run_batch

    def script(request: BaseHTTPRequestHandler, n: int) -> tuple[int, dict[str, str], Any]:
        time.sleep(0.3)
        return 204, {}, None

    fake = serve(script)
    loader = Loader(client_for(fake, [], concurrency=1), use_patch=True)
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    actions = [
        Action("update", n, n, "changed", {"userName": n, "title": "x"}, {"userName": n}, f"id-{n}")
        for n in ("a0", "a1", "a2", "a3")
    ]
    batch = threading.Thread(target=run_batch, args=(loader, store, actions), daemon=True)
    with pytest.raises(KeyboardInterrupt), loader.shared_threads():
        batch.start()
        time.sleep(0.1)
        raise KeyboardInterrupt
    batch.join(5)
    assert not batch.is_alive()
    assert fake.requests == [("PATCH", "/v2/Users/id-a0")]
    assert [r.user_name for r in store.records("t").values()] == ["a0"]
    store.close()


class TestRedirects:
    """Redirects: a write is never followed anywhere; a read only on the same origin."""

    @pytest.mark.parametrize("method", ["PATCH", "PUT", "DELETE"])
    def test_a_redirected_write_fails_naming_the_location(self, serve, method: str) -> None:
        """A gateway's ``302 Location: /login`` to a write is a failure naming the Location,
        and the login page is never fetched (requests would follow it as a GET)."""
        fake = serve(lambda r, n: (302, {"Location": "/login?next=x"}, b"<html>login</html>"))
        client = client_for(fake, [])
        with pytest.raises(
            FatalError, match=r"redirected \(HTTP 302\) to http://127\.0\.0\.1:\d+/login"
        ):
            if method == "PATCH":
                client.patch("/Users", "u1", [{"op": "replace", "path": "active", "value": False}])
            elif method == "PUT":
                client.replace("/Users", "u1", {"userName": "ada"})
            else:
                client.delete("/Users", "u1")
        assert fake.requests == [(method, "/v2/Users/u1")]

    def test_a_post_redirected_to_another_host_sends_nothing_there(self, serve) -> None:
        """A 307 would re-send the user's body (and credentials) to the other host: not done."""
        elsewhere = serve(lambda r, n: (201, {}, {"id": "made-up", "userName": "ada"}))
        fake = serve(lambda r, n: (307, {"Location": f"{elsewhere.url}/Users"}, None))
        with pytest.raises(FatalError, match="redirected"):
            client_for(fake, [], auth={"type": "none"}).create("/Users", {"userName": "ada"})
        assert elsewhere.requests == []

    def test_a_write_answered_with_a_login_page_is_not_confirmed(self, serve) -> None:
        """200 with an HTML page is not a SCIM answer: the write is not taken as done."""
        fake = serve(lambda r, n: (200, {"Content-Type": "text/html"}, b"<html>Sign in</html>"))
        with pytest.raises(FatalError, match="text/html, not a SCIM answer"):
            client_for(fake, []).patch("/Users", "u1", [{"op": "replace", "path": "a", "value": 1}])

    def test_a_read_follows_a_same_origin_redirect(self, serve) -> None:
        def script(request: BaseHTTPRequestHandler, n: int):
            if request.path.startswith("/v2/Users"):
                return 301, {"Location": "/v2/People?filter=x"}, None
            return 200, {}, listing({"id": "u1", "userName": "ada"})

        fake = serve(script)
        assert [u["id"] for u in client_for(fake, []).find("/Users", 'userName eq "ada"')] == ["u1"]
        assert [p for _, p in fake.requests] == [
            "/v2/Users?filter=userName+eq+%22ada%22&count=2",
            "/v2/People?filter=x",
        ]

    def test_a_read_is_not_followed_to_another_host(self, serve) -> None:
        """The credentials stay with the target: a read redirected elsewhere is refused."""
        elsewhere = serve(lambda r, n: (200, {}, listing()))
        fake = serve(lambda r, n: (302, {"Location": f"{elsewhere.url}/Users"}, None))
        with pytest.raises(FatalError, match="to another host"):
            client_for(fake, []).find("/Users", 'userName eq "ada"')
        assert elsewhere.requests == []


class TestReachability:
    def test_discovery_refused_with_401_stops_the_run(self, serve) -> None:
        """Credentials refused at /ServiceProviderConfig are not "no optional features"."""
        fake = serve(lambda r, n: (401, {}, {"detail": "token expired", "status": "401"}))
        with pytest.raises(FatalError, match="token expired"):
            client_for(fake, []).discover()

    def test_probe_names_the_target_and_its_url(self, serve) -> None:
        fake = serve(lambda r, n: (401, {}, {"detail": "bad token", "status": "401"}))
        with pytest.raises(
            TargetUnreachable, match=rf"target t \({fake.url}\) not reached: .*bad token"
        ):
            client_for(fake, []).probe()

    def test_probe_refuses_an_answer_that_is_not_a_scim_list(self, serve) -> None:
        fake = serve(lambda r, n: (200, {}, {"hello": "world"}))
        with pytest.raises(TargetUnreachable, match="did not answer a SCIM list"):
            client_for(fake, []).probe()


def test_a_huge_error_detail_is_cut_everywhere_it_is_kept(serve) -> None:
    """A 20 MB SCIM ``detail`` becomes at most 2,000 characters in the error, and so in the
    outcome the audit log and the summary keep."""
    detail = "x" * 20_000_000
    fake = serve(lambda r, n: (400, {}, {"status": "400", "detail": detail}))
    loader = Loader(client_for(fake, []), use_patch=True)
    payload = {"userName": "ada", "active": False}
    outcome = loader.run(Action("disable", "s1", "ada", "", payload, scim_id="u1"))
    assert not outcome.ok
    assert "HTTP 400: xxx" in outcome.detail
    assert len(outcome.detail) < 2_100


class TestDeadlineAndSize:
    def test_a_trickling_answer_fails_at_the_request_deadline(self) -> None:
        """A target sending one byte every 0.3 s never hits the per-read timeout; the request
        still ends at ``timeout`` from its start (it held a worker ~40 s with timeout 5)."""
        import socket
        import time

        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        stop = threading.Event()

        def trickle() -> None:
            conn, _ = listener.accept()
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/scim+json\r\n"
                b"Content-Length: 1000\r\n\r\n{"
            )
            while not stop.wait(0.3):
                try:
                    conn.sendall(b" ")
                except OSError:
                    break
            conn.close()

        threading.Thread(target=trickle, daemon=True).start()
        target = TargetConfig(name="t", url=f"http://127.0.0.1:{port}/v2", max_retries=0, timeout=1)
        client = ScimClient(target)
        started = time.monotonic()
        try:
            with pytest.raises(TransientError, match="no complete answer within 1s"):
                client.send("GET", "/Users")
        finally:
            stop.set()
            client.close()
            listener.close()
        assert time.monotonic() - started < 3

    def test_an_answer_over_max_response_bytes_is_not_read_whole(self, serve) -> None:
        big = {"Resources": [], "totalResults": 0, "padding": "x" * 300_000}
        fake = serve(lambda r, n: (200, {}, big))
        client = client_for(fake, [], max_response_bytes=65_536)
        with pytest.raises(RejectedError, match=r"larger than max_response_bytes \(65,536 bytes\)"):
            client.send("GET", "/Users")


def test_a_409_on_a_target_without_filters_adopts_from_a_listing(serve) -> None:
    """A target that cannot filter, no listing made yet (no create was planned), a create
    answered 409: the loader lists the target to find the user and adopts it (before:
    AttributeError on Loader.capabilities, set only by a listing)."""

    def script(request: BaseHTTPRequestHandler, n: int):
        if request.command == "GET":
            assert "filter=" not in request.path  # it cannot filter
            if request.path.startswith("/v2/Users/u1"):
                return 200, {}, {"id": "u1", "userName": "ada"}
            return 200, {}, listing({"id": "u1", "userName": "ada"})
        if request.command == "POST":
            return 409, {}, {"status": "409", "scimType": "uniqueness"}
        return 204, {}, None

    fake = serve(script)
    loader = Loader(client_for(fake, []), use_patch=True, filtering=False)
    payload = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "ada"}
    loader.index = {}  # a listing made before ada existed on the target
    outcome = loader.run(Action("create", "s1", "ada", "new", payload))
    assert outcome.ok and outcome.adopted and outcome.scim_id == "u1"


def test_a_translated_error_keeps_its_cause() -> None:
    """The one-line message is ours; the cause (requests' exception, with the socket error)
    stays chained for the run's log (it was dropped with ``from None``)."""
    import requests as http

    target = TargetConfig(name="t", url="http://127.0.0.1:9/v2", max_retries=0, timeout=2)
    client = ScimClient(target)
    try:
        with pytest.raises(TransientError, match="connection error") as caught:
            client.send("GET", "/Users")
    finally:
        client.close()
    assert isinstance(caught.value.__cause__, http.ConnectionError)


class TestReviewFindings:
    """Found by a review of this session's change; each fails without its fix."""

    def test_an_answer_without_a_length_cut_at_the_deadline_is_not_taken_as_complete(
        self,
    ) -> None:
        """HTTP/1.0 with no Content-Length ends when the connection closes: cut by the deadline,
        the body must not read as a complete empty answer ("no such user" → a duplicate)."""
        import socket

        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        stop = threading.Event()

        def stall() -> None:
            conn, _ = listener.accept()
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/scim+json\r\n\r\n")
            stop.wait(10)
            conn.close()

        threading.Thread(target=stall, daemon=True).start()
        target = TargetConfig(name="t", url=f"http://127.0.0.1:{port}/v2", max_retries=0, timeout=1)
        client = ScimClient(target)
        try:
            with pytest.raises(TransientError, match="no complete answer within 1s"):
                client.find("/Users", 'userName eq "ada"')
        finally:
            stop.set()
            client.close()
            listener.close()

    def test_one_bulk_operation_refused_with_403_fails_alone(self, serve: Any) -> None:
        """The other operations the target confirmed in the same Bulk answer are kept."""
        from tasks.scim.dialect import Capabilities

        def script(request: BaseHTTPRequestHandler, n: int):
            ops = request.body["Operations"]  # type: ignore[attr-defined]
            return (
                200,
                {},
                {
                    "Operations": [
                        {
                            "bulkId": op["bulkId"],
                            "method": "POST",
                            "status": "403" if op["data"]["userName"] == "root" else "201",
                            "location": f"{fake.url}/Users/id-{op['data']['userName']}",
                        }
                        for op in ops
                    ]
                },
            )

        fake = serve(script)
        caps = Capabilities(bulk=True, bulk_max_operations=10, bulk_max_payload=100_000)
        loader = Loader(client_for(fake, []), use_patch=True, bulk=caps)
        loader.index, loader.index_attribute = {}, "userName"
        actions = [
            Action("create", f"s-{name}", name, "new", {"userName": name})
            for name in ("ann", "root")
        ]
        outcomes, rest = loader.run_bulk(actions)
        assert {o.action.user_name: o.ok for o in outcomes} == {"ann": True, "root": False}
        assert rest == []


def test_a_hung_ldaps_server_is_unreachable_not_a_tls_mistake() -> None:
    """A TLS handshake that times out said "check ca_file" (no retry, no failover)."""
    import socket

    from tasks.config import parse_config
    from tasks.errors import SourceUnavailable
    from tasks.ldap.extract import connect

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    config = parse_config(
        {
            "source": {
                "url": f"ldaps://127.0.0.1:{port}",
                "connect_timeout": 1,
                "users": {"base_dn": "ou=people,dc=x"},
            },
            "targets": [{"name": "app", "url": "https://app.example.org/scim/v2"}],
        }
    )
    try:
        with pytest.raises(SourceUnavailable):
            connect(config.source)
    finally:
        listener.close()


def test_a_big_group_on_a_target_without_patch_is_created_in_one_post(
    serve: Any, tmp_path: Any
) -> None:
    """Without PATCH, the members past max_members were still sent by PATCH: the group was
    created part-filled and reported failed. Now one POST carries them all."""
    from tasks.state.store import StateStore
    from tasks.sync.group_plan import GroupAction
    from tasks.sync.load_groups import GroupLoader

    def script(request: BaseHTTPRequestHandler, n: int):
        if request.command == "GET":
            return 200, {}, listing()
        if request.command == "POST":
            return 201, {}, {**request.body, "id": "g1"}  # type: ignore[attr-defined]
        return 501, {}, {"status": "501", "detail": "no PATCH"}

    fake = serve(script)
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    loader = GroupLoader(client_for(fake, []), store, use_patch=False, max_members=2)
    members = frozenset(f"u{n}" for n in range(5))
    outcome = loader.run(GroupAction("create", "g-src", "staff", members))
    store.close()
    assert outcome.ok and outcome.added == 5
    assert [m for m, _ in fake.requests] == ["GET", "POST"]


def test_the_environment_is_read_once_and_a_netrc_never(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Proxies from the environment still apply (read when the client is built, for the
    target's host); a ~/.netrc entry for the target's host is never sent as credentials."""
    import requests

    from tasks.scim.client import build_session

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text("machine app.example.org login stolen password secret\n")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "direct.example")
    session = build_session(TargetConfig(name="t", url="https://app.example.org/scim/v2"))
    assert session.trust_env is False
    assert session.proxies.get("https") == "http://proxy.example:3128"
    request = requests.Request("GET", "https://app.example.org/scim/v2/Users")
    assert "Authorization" not in session.prepare_request(request).headers
    direct = build_session(TargetConfig(name="d", url="https://direct.example/scim/v2"))
    assert "https" not in direct.proxies


class TestSessionSettingsOnEveryRequest:
    """The client sends through the session's adapter itself (not ``session.request``): the
    session's headers, Basic auth, cookies and proxies must still reach the wire."""

    def test_basic_auth_headers_and_a_cookie_the_target_set_are_sent(
        self, serve, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A load balancer's stickiness cookie set on the first answer comes back on the
        next request, with the Basic credentials and the SCIM Accept header."""
        seen: list[dict[str, str]] = []

        def script(request: BaseHTTPRequestHandler, n: int):
            seen.append(dict(request.headers))
            cookie = {"Set-Cookie": "AWSALB=node-7; Path=/"} if n == 1 else {}
            return 200, {"Content-Type": "application/scim+json", **cookie}, listing()

        fake = serve(script)
        monkeypatch.setenv("SCIM_PASSWORD", "s3cret")
        auth = {"type": "basic", "username": "prov", "password": {"env": "SCIM_PASSWORD"}}
        client = client_for(fake, [], auth=auth)
        client.find("/Users", 'userName eq "ada"')
        client.find("/Users", 'userName eq "bob"')
        assert "Cookie" not in seen[0]
        assert seen[1]["Cookie"] == "AWSALB=node-7"
        for headers in seen:
            assert headers["Authorization"] == "Basic cHJvdjpzM2NyZXQ="  # prov:s3cret
            assert headers["Accept"].startswith("application/scim+json")

    def test_a_request_goes_through_the_proxy_of_the_environment(
        self, serve, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """HTTP_PROXY read when the client was built is where the request goes (as an
        absolute URL to the target, the way a forward proxy receives it)."""
        proxy = serve(lambda r, n: (200, {"Content-Type": "application/scim+json"}, listing()))
        for name in ("HTTP_PROXY", "http_proxy"):  # the lower case one wins where both are set
            monkeypatch.setenv(name, proxy.url.removesuffix("/v2"))
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "REQUEST_METHOD"):
            monkeypatch.delenv(name, raising=False)
        target = TargetConfig(name="t", url="http://scim.example.invalid/v2", timeout=2)
        ScimClient(target).find("/Users", 'userName eq "ada"')
        assert proxy.requests == [
            ("GET", "http://scim.example.invalid/v2/Users?filter=userName+eq+%22ada%22&count=2")
        ]
