"""A real Prefect server on PostgreSQL, as operated in production, for the tests of running the
provisioner through deployments and workers (a pytest plugin: the modules that need it say
``pytest_plugins = ["tests.integration.prefect_server_fixtures"]``, so the session starts it
once).

``prefect_site``: :class:`deployments.prefect_server.PrefectServer` split as for high
availability: two API servers (with the UI) on free ports and the background services apart,
on a PostgreSQL database of their own (dropped afterwards) and Redis messaging (databases
REDIS_DB and the next, emptied before and after), the per-target deployments of
``deployments/prefect.yaml`` for a config with two targets (``app-a`` behind a fault proxy,
``app-b`` direct, each a real scim2-server), schedules registered inactive so that only the
tests start runs. Workers are started by the tests that need them.

``retried_run``: a deployment run of ``provision_users`` that fails for part of the users (the
proxy answers 503 to some /Users requests, the target retries none), the automation's
notification of it at a local webhook, then ``prefect flow-run retry`` (what the UI's Retry
button does) once the faults are gone: the facts measured on the way, for the tests to judge.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import requests
import yaml

from deployments.prefect_server import PrefectServer, drop_database, ensure_database
from deployments.processes import free_port, log_tail
from tasks.state.store import StateStore
from tests.conftest import CUSTOM_URN, LDAP_PASSWORD, add_people, sample_people, write_config
from tests.fault_proxy import FaultProxy
from tests.support.servers import ScimServer, Slapd

POSTGRES = "postgresql://postgres@127.0.0.1:5432"
REDIS_DB = 11  # and 12, for the background services' coordination
REDIS = f"redis://127.0.0.1:6379/{REDIS_DB}"
PEOPLE_ADDED = 37
USERS = PEOPLE_ADDED + 3  # ada, bob and dee of the sample are in scope too (below the
# 50 creates past which the loader lists the target first: every user has its own requests)
FAULT_RATE = 0.3
FAULT_SEED = 5
RUN_TIMEOUT = 180.0
NOTIFICATION_TIMEOUT = 90.0
PROVISION = "provision_users/every-5-minutes-{target}"
TARGETS = ("app-a", "app-b")


class WebhookReceiver:
    """An HTTP endpoint on 127.0.0.1 that keeps the JSON bodies POSTed to it (the failure
    notifications of the automation)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                receiver.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/failures"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, text: str, timeout: float) -> str | None:
        """The first notification whose text contains ``text``, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for body in self.bodies:
                if text in str(body.get("text")):
                    return str(body["text"])
            if time.monotonic() > deadline:
                return None
            time.sleep(0.25)


class UsersFaultProxy(FaultProxy):
    """Faults only on /Users requests: discovery always answers, the users' look-ups and
    writes fail at the proxy's rate (a 503 is answered without forwarding: no write)."""

    def _pick(self, path: str) -> str | None:
        return super()._pick(path) if path.startswith("/v2/Users") else None


@dataclass
class PrefectSite:
    """The server, its deployments, and what the runs provision from and into."""

    server: PrefectServer
    slapd: Slapd
    scim: dict[str, ScimServer]
    proxy: UsersFaultProxy
    webhook: WebhookReceiver
    config: Path
    state_url: str
    deployments: list[str] = field(default_factory=list)

    targets = TARGETS
    users = USERS

    @staticmethod
    def expected_users() -> set[str]:
        """The userNames in scope after :meth:`reset`."""
        return {"ada", "bob", "dee", *(f"p{n:03d}" for n in range(PEOPLE_ADDED))}

    def reset(self) -> None:
        """The sample people plus PEOPLE_ADDED in the directory, empty targets and an empty
        state store, no faults."""
        self.slapd.reload(sample_people())
        add_people(self.slapd, PEOPLE_ADDED)
        for server in self.scim.values():
            server.wipe()
        drop_database(self.state_url)
        ensure_database(self.state_url)
        # The state store's tables exist before runs start side by side: two first runs
        # creating them at once on PostgreSQL collide (UniqueViolation on pg_type), a race of
        # StateStore's create_all that this suite is not about.
        StateStore(self.state_url).close()
        self.proxy.rates = {}

    @contextmanager
    def workers(self, *names: str, limit: int | None = None) -> Iterator[None]:
        """Workers on the pool for the duration of the block, each through the next API
        server; stopped afterwards (SIGINT)."""
        started = []
        try:
            for number, name in enumerate(names):
                self.server.start_worker(name, limit=limit, api=number % len(self.server.ports))
                started.append(name)
            yield
        finally:
            for name in started:
                self.server.stop_worker(name)

    def run(self, target: str) -> UUID:
        """Create a run of the target's ``provision_users`` deployment (as the UI's Run)."""
        with self.server.client() as client:
            deployment = client.read_deployment_by_name(PROVISION.format(target=target))
            run = client.create_flow_run_from_deployment(deployment.id)
        return run.id

    def wait(self, run_id: UUID, *, attempts: int = 1) -> Any:
        """Wait until the run is final after ``attempts`` runs; return it."""
        deadline = time.monotonic() + RUN_TIMEOUT
        with self.server.client() as client:
            while time.monotonic() < deadline:
                run = client.read_flow_run(run_id)
                if run.state is not None and run.state.is_final() and run.run_count >= attempts:
                    return run
                time.sleep(0.5)
        logs = "\n".join(
            f"--- {log.name}:\n{log_tail(log)}" for log in self.server.workdir.glob("*.log")
        )
        pytest.fail(f"flow run {run_id} not final after {RUN_TIMEOUT:.0f} s:\n{logs}")

    def prefect(self, *words: str) -> str:
        """Run a ``prefect`` command against this server; return its output."""
        result = subprocess.run(
            [sys.executable, "-m", "prefect", *words],
            env=self.server.environment(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def target_users(self, target: str) -> list[dict[str, Any]]:
        """Every user on a target (read directly, past the proxy)."""
        url = f"{self.scim[target].base_url}/Users"
        response = requests.get(url, params={"count": "1000"}, timeout=30)
        response.raise_for_status()
        resources: list[dict[str, Any]] = response.json().get("Resources", [])
        return resources


def _site_config(
    path: Path, slapd: Slapd, scim: dict[str, ScimServer], proxy_url: str, state_url: str
) -> Path:
    """The sample config (conftest's) with two targets: app-a through the proxy, app-b."""
    write_config(path, slapd, scim["app-a"], state_url=state_url, max_retries=0, use_bulk="never")
    document = yaml.safe_load(path.read_text())
    first = document["targets"][0]
    document["targets"] = [
        {**first, "name": "app-a", "url": f"{proxy_url}/v2"},
        {**first, "name": "app-b", "url": scim["app-b"].base_url},
    ]
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def prefect_site(tmp_path_factory: pytest.TempPathFactory, slapd: Slapd) -> Iterator[PrefectSite]:
    root = tmp_path_factory.mktemp("prefect-site")
    suffix = uuid.uuid4().hex[:8]
    database_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/scim_prefect_test_{suffix}"
    state_url = f"{POSTGRES}/scim_state_test_{suffix}"
    extension = [{"urn": CUSTOM_URN, "attributes": ["costCenter"]}]
    scim = {name: ScimServer(root / name, user_extensions=extension) for name in TARGETS}
    server = PrefectServer(
        root / "prefect",
        ports=[free_port(), free_port()],
        database_url=database_url,
        redis_url=REDIS,
        worker_query_seconds=1,
        env={"TEST_LDAP_PASSWORD": LDAP_PASSWORD},
    )
    proxy: UsersFaultProxy | None = None
    webhook = WebhookReceiver()
    webhook.start()
    empty_redis()
    try:
        for target in scim.values():
            target.start()
        proxy = UsersFaultProxy(
            scim["app-a"].base_url.removesuffix("/v2"), rates={}, seed=FAULT_SEED
        )
        proxy.start()
        ensure_database(state_url)
        config = _site_config(root / "config.yaml", slapd, scim, proxy.url, state_url)
        server.start()
        site = PrefectSite(server, slapd, scim, proxy, webhook, config, state_url)
        site.deployments = server.deploy(config, per_target=True, paused=True)
        server.notify_failures(webhook.url)
        yield site
    finally:
        server.stop()
        webhook.stop()
        if proxy is not None:
            proxy.stop()
        for target in scim.values():
            target.stop()
        drop_database(database_url)
        drop_database(state_url)
        empty_redis()


def empty_redis() -> None:
    """Empty the Redis databases of the tests' Prefect site."""
    import redis

    for database in (REDIS_DB, REDIS_DB + 1):
        with redis.Redis(host="127.0.0.1", port=6379, db=database) as client:
            client.flushdb()


@dataclass
class RetriedRun:
    """What was measured around a failed deployment run and its retry."""

    run_id: UUID
    first: Any  # the flow run after the first attempt
    final: Any  # ... after the retry
    posts_first: int  # POSTs the target received in the first attempt
    users_first: int  # users on the target after it
    faults: int  # 503s the proxy answered in the first attempt
    stats: dict[str, int]  # the target's requests per method over both attempts
    on_target: list[dict[str, Any]]  # every user on the target at the end
    retry_output: str  # what `prefect flow-run retry` said
    notification: str | None  # what the automation posted to the webhook about attempt 1
    users: int = USERS  # in scope
    expected: set[str] = field(default_factory=PrefectSite.expected_users)  # their userNames
    seconds: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="session")
def retried_run(prefect_site: PrefectSite) -> RetriedRun:
    """A run of provision_users/every-5-minutes-app-a through the faults, retried after."""
    site = prefect_site
    site.reset()
    target = site.scim["app-a"]
    site.proxy.rates = {"5xx": FAULT_RATE}
    seconds = {}
    with site.workers("worker-1"):
        started = time.monotonic()
        run_id = site.run("app-a")
        first = site.wait(run_id)
        seconds["first attempt"] = time.monotonic() - started
        faults = site.proxy.injected["5xx"]
        posts_first = target.stats().get("POST", 0)
        users_first = len(site.target_users("app-a"))
        site.proxy.rates = {}
        started = time.monotonic()
        output = site.prefect("flow-run", "retry", str(run_id))
        final = site.wait(run_id, attempts=2)
        seconds["retry"] = time.monotonic() - started
        # the automation's notification of attempt 1 had the retry's time to arrive
        notification = site.webhook.wait_for(first.name, NOTIFICATION_TIMEOUT)
    return RetriedRun(
        run_id=run_id,
        first=first,
        final=final,
        posts_first=posts_first,
        users_first=users_first,
        faults=faults,
        stats=target.stats(),
        on_target=site.target_users("app-a"),
        retry_output=output,
        notification=notification,
        seconds=seconds,
    )
