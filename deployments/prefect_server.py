"""A real Prefect server on PostgreSQL, with the project's work pool, deployments and workers.

    python -m deployments.prefect_server start [--port 4200] [--config FILE] [--per-target]
                                               [--workers 1] [--paused] [--notify-url URL]
                                               [--api-servers 1] [--redis URL]
    python -m deployments.prefect_server status
    python -m deployments.prefect_server stop [--drop-database]

(``deployments/server-start.sh`` and ``server-stop.sh`` install what is missing first.)

``start`` creates the PostgreSQL database if it is missing (``--database-url``, default
``postgresql+asyncpg://postgres@127.0.0.1:5432/scim_provisioner_prefect``; never SQLite: it
answers "database is locked" under load), starts ``prefect server start`` on 127.0.0.1 with
the UI calling the API on the same port, waits until it is healthy, creates the process work
pool ``scim-provisioner``, registers ``deployments/prefect.yaml`` (:mod:`deployments.deploy`)
and starts the workers. Their process ids, ports and logs are kept in the run directory
(``.prefect-server/``, with ``PREFECT_HOME`` in ``home/``: result storage, so a retried run
finds its persisted extract); ``stop`` stops the workers (SIGINT: a worker may ignore
SIGTERM), then the server. The workers and the flow runs they start inherit the environment
of ``start``: export the config's secrets before it.

With ``--redis`` or ``--api-servers N`` the server side is split as for high availability
(:class:`PrefectServer`). The tests use :class:`PrefectServer` directly, on free ports, with
a database of their own.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from deployments.deploy import deploy
from deployments.processes import REPO_ROOT, Child, answers_ok, log_tail

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

POOL = "scim-provisioner"
DEFAULT_PORT = 4200
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/scim_provisioner_prefect"
RUN_DIRECTORY = REPO_ROOT / ".prefect-server"
AUTOMATION = "scim-provisioner: notify failed runs"
NOTIFY_BLOCK = "scim-provisioner-failures"
NOTIFY_BODY = (
    "{{ flow.name }}/{{ deployment.name }}: {{ flow_run.state.message }}\n{{ flow_run|ui_url }}"
)
SERVER_START_TIMEOUT = 120.0  # a new database is migrated first
WORKER_START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
SERVER, API, SERVICES = "prefect-server", "prefect-api", "prefect-services"  # process names


def _psycopg_url(database_url: str, database: str | None = None) -> tuple[str, str]:
    """The libpq URL of an SQLAlchemy PostgreSQL URL (on ``database`` if given) and the name of
    the database it names."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if not url.drivername.startswith("postgresql"):
        raise ValueError(f"not a PostgreSQL URL: {url.render_as_string(hide_password=True)}")
    if not url.database:
        raise ValueError("the database URL names no database")
    libpq = url.set(drivername="postgresql", database=database or url.database)
    return libpq.render_as_string(hide_password=False), url.database


def ensure_database(database_url: str) -> bool:
    """Create the PostgreSQL database of ``database_url`` if it is missing; tell whether it was
    created. Connects to the server's ``postgres`` database to do so."""
    maintenance, name = _psycopg_url(database_url, "postgres")
    with psycopg.connect(maintenance, autocommit=True, connect_timeout=10) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if exists:
            return False
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return True


def drop_database(database_url: str) -> None:
    """Drop the PostgreSQL database of ``database_url`` (its connections closed first)."""
    maintenance, name = _psycopg_url(database_url, "postgres")
    with psycopg.connect(maintenance, autocommit=True, connect_timeout=10) as connection:
        statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        connection.execute(statement.format(sql.Identifier(name)))


def _started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or None when it does not run."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])  # state, ..., starttime (field 22)


def _halt_pid(pid: int, started: int, stop_signal: signal.Signals) -> None:
    """Stop a process another invocation started (so not our child), if it is still that
    process (same start time, not a reused id): ``stop_signal``, then SIGKILL of its process
    group when it lingers."""
    if _started(pid) != started:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, stop_signal)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _started(pid) == started and time.monotonic() < deadline:
        time.sleep(0.1)
    if _started(pid) == started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def redis_environment(redis_url: str) -> dict[str, str]:
    """The settings that put Prefect's server side on Redis (prefect-redis): events and their
    ordering, the cache, concurrency leases, and the background services' coordination
    (docket, on the next database number)."""
    url = urllib.parse.urlsplit(redis_url)
    if url.scheme != "redis" or not url.hostname:
        raise ValueError(f"not a redis://host:port/db URL: {redis_url}")
    database = int(url.path.strip("/") or 0)
    port = url.port or 6379
    return {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_HOST": url.hostname,
        "PREFECT_REDIS_MESSAGING_PORT": str(port),
        "PREFECT_REDIS_MESSAGING_DB": str(database),
        "PREFECT_SERVER_DOCKET_URL": f"redis://{url.hostname}:{port}/{database + 1}",
    }


class PrefectServer:
    """``prefect server start`` on 127.0.0.1:``port`` with PostgreSQL, and process workers on
    the pool ``scim-provisioner``; its files (state, logs, ``PREFECT_HOME``) in ``workdir``.

    With ``redis_url`` or several ``ports``, the server side is split as for high
    availability: the database migrated once, one API server (with the UI, ``--no-services``)
    per port, one ``prefect server services start``, all on Redis messaging.

    :param ports: the API servers' ports (default: ``port``).
    :param worker_query_seconds: how often the workers ask for runs (Prefect's default: 10 s).
    :param env: more environment for the server, the workers and their flow runs.
    """

    def __init__(
        self,
        workdir: Path,
        port: int = DEFAULT_PORT,
        *,
        ports: Sequence[int] = (),
        database_url: str = DEFAULT_DATABASE_URL,
        redis_url: str | None = None,
        worker_query_seconds: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir.resolve()
        self.ports = list(ports) or [port]
        self.port = self.ports[0]
        self.database_url = database_url
        self.redis_url = redis_url
        self.worker_query_seconds = worker_query_seconds
        self.extra_env = dict(env or {})
        self.home = self.workdir / "home"
        self.state_file = self.workdir / "state.json"
        self._children: dict[str, Child] = {}
        self._pids: dict[str, tuple[int, int]] = {}  # name → (process id, start time)

    @property
    def separated(self) -> bool:
        """Whether the API servers and the background services run apart (on Redis)."""
        return self.redis_url is not None or len(self.ports) > 1

    def ui_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    @property
    def ui_url(self) -> str:
        return self.ui_urls()[0]

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    def environment(self, api: int = 0) -> dict[str, str]:
        """The environment of the server side, the workers and the ``prefect`` commands,
        talking to API server number ``api`` (from 0)."""
        ui_url = self.ui_urls()[api]
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": f"{ui_url}/api",
            "PREFECT_UI_URL": ui_url,
            "PREFECT_UI_API_URL": f"{ui_url}/api",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.ports[api]),
            "PREFECT_API_DATABASE_CONNECTION_URL": self.database_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
            "SCIM_PROVISIONER_HOME": str(REPO_ROOT),
            **(redis_environment(self.redis_url) if self.redis_url else {}),
            **self.extra_env,
        }
        if self.separated:
            env["PREFECT_API_DATABASE_MIGRATE_ON_START"] = "false"
        if self.worker_query_seconds is not None:
            env["PREFECT_WORKER_QUERY_SECONDS"] = str(self.worker_query_seconds)
        return env

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Create the database if missing, start the server, wait until it is healthy and
        create the work pool.

        :raises RuntimeError: When the server is already running or does not start.
        """
        if self.running():
            raise RuntimeError(f"a Prefect server of {self.workdir} already runs: {self.ui_url}")
        self._pids = {}  # what a previous start recorded has stopped
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(exist_ok=True)
        ensure_database(self.database_url)
        try:
            self._start_processes()
            self.create_pool()
        except BaseException:
            self.stop()
            raise

    def _start_processes(self) -> None:
        """The server, or the API servers one after the other (each registers Prefect's block
        types as it starts: at once, they collide) and then the background services."""
        if not self.separated:
            names = [SERVER]
        else:
            self._migrate()
            names = [f"{API}-{number + 1}" for number in range(len(self.ports))]
        for number, name in enumerate(names):
            command = [sys.executable, "-m", "prefect", "server", "start"]
            command += ["--host", "127.0.0.1", "--port", str(self.ports[number])]
            if self.separated:
                command.append("--no-services")
            self._spawn(name, command, self.workdir / f"{name}.log", api=number)
            health = f"{self.ui_urls()[number]}/api/health"
            self._wait(name, functools.partial(answers_ok, health, 2), SERVER_START_TIMEOUT)
        if self.separated:
            command = [sys.executable, "-m", "prefect", "server", "services", "start"]
            self._spawn(SERVICES, command, self.workdir / f"{SERVICES}.log")

    def _migrate(self) -> None:
        """Bring the database to Prefect's schema once, before the API servers start."""
        result = subprocess.run(
            [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=SERVER_START_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"prefect server database upgrade failed:\n{result.stderr}")

    def create_pool(self) -> None:
        """Create the process work pool ``scim-provisioner`` unless it exists."""
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.exceptions import ObjectAlreadyExists
        from prefect.workers.process import ProcessWorker

        pool = WorkPoolCreate(
            name=POOL,
            type="process",
            base_job_template=ProcessWorker.get_default_base_job_template(),
            description="Runs the SCIM Provisioner's flows in local processes.",
        )
        with self.client() as client, contextlib.suppress(ObjectAlreadyExists):
            client.create_work_pool(pool)

    def deploy(
        self, config: Path | None = None, *, per_target: bool = False, paused: bool = False
    ) -> list[str]:
        """Register deployments/prefect.yaml (see :mod:`deployments.deploy`); return the
        ``flow/deployment`` names."""
        return deploy(config=config, per_target=per_target, paused=paused, env=self.environment())

    def notify_failures(self, webhook_url: str) -> None:
        """Create (or replace) the automation :data:`AUTOMATION`: every flow run of the
        project's deployments (tag ``scim-provisioner``) that ends Failed or Crashed is POSTed
        to ``webhook_url`` as ``{"text": ...}`` (what Slack, Mattermost or Teams incoming
        webhooks read): the run, its deployment, its state message and its page in the UI. The
        URL is kept as a secret of the block :data:`NOTIFY_BLOCK`."""
        from prefect.blocks.notifications import CustomWebhookNotificationBlock
        from prefect.events.actions import SendNotification
        from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
        from prefect.settings import PREFECT_API_URL, temporary_settings

        webhook = CustomWebhookNotificationBlock(
            name="scim-provisioner",
            url="{{webhook_url}}",
            json_data={"text": "{{subject}}\n{{body}}"},
            secrets={"webhook_url": webhook_url},
        )
        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            block_id = webhook.save(NOTIFY_BLOCK, overwrite=True)
        automation = AutomationCore(
            name=AUTOMATION,
            description="A run of a scim-provisioner deployment failed or crashed.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={
                    "prefect.resource.role": "tag",
                    "prefect.resource.id": f"prefect.tag.{POOL}",
                },
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[
                SendNotification(
                    block_document_id=block_id,
                    subject="SCIM Provisioner: {{ flow_run.name }} {{ flow_run.state.name }}",
                    body=NOTIFY_BODY,
                )
            ],
        )
        with self.client() as client:
            for existing in client.read_automations_by_name(AUTOMATION):
                client.delete_automation(existing.id)
            client.create_automation(automation)

    def start_worker(self, name: str, *, limit: int | None = None, api: int = 0) -> None:
        """Start a process worker on the pool and wait until the server lists it online.

        :param limit: at most this many flow runs at once in this worker.
        :param api: the number of the API server it talks to (from 0).
        """
        if name in self._children or name.startswith("prefect-"):
            raise RuntimeError(f"{name} already runs, or is a name of the server's processes")
        command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL]
        command += ["--type", "process", "--name", name]
        if limit is not None:
            command += ["--limit", str(limit)]
        self._spawn(name, command, self.worker_log(name), api=api)
        self._wait(name, lambda: self._worker_online(name), WORKER_START_TIMEOUT)

    def worker_log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def stop_worker(self, name: str) -> None:
        """Stop a worker with SIGINT (it finishes its shutdown; a worker may ignore SIGTERM)."""
        self._halt(name)

    def _halt(self, name: str) -> None:
        """Stop a process of this server with SIGINT, SIGKILL if it lingers; forget it."""
        child = self._children.pop(name, None)
        recorded = self._pids.pop(name, None)
        if child is not None:
            child.halt(signal.SIGINT)
        elif recorded is not None:
            _halt_pid(*recorded, signal.SIGINT)
        self._save()

    def stop(self) -> None:
        """Stop every worker, then the server (also those a previous ``start`` left running,
        as recorded in the state file)."""
        self._load()
        workers = [n for n in self._pids if not n.startswith("prefect-")]
        for name in [
            *workers,
            SERVICES,
            SERVER,
            *(n for n in list(self._pids) if n.startswith(API)),
        ]:
            self._halt(name)
        self.state_file.unlink(missing_ok=True)

    def running(self) -> bool:
        """Tell whether the recorded server process runs."""
        self._load()
        return any(
            _started(pid) == started
            for name, (pid, started) in self._pids.items()
            if name.startswith("prefect-")
        )

    def status(self) -> dict[str, Any]:
        """What runs: the URLs, the server's health and each process with its id."""
        self._load()
        return {
            "ui": self.ui_urls(),
            "redis": self.redis_url,
            "database": self.database_url,
            "healthy": answers_ok(f"{self.api_url}/health", 2),
            "processes": {
                name: {"pid": pid, "running": _started(pid) == started}
                for name, (pid, started) in self._pids.items()
            },
        }

    @contextlib.contextmanager
    def client(self, api: int = 0) -> Iterator[SyncPrefectClient]:
        """A Prefect client of API server number ``api`` (whatever PREFECT_API_URL says in
        this process)."""
        from prefect.client.orchestration import SyncPrefectClient

        with SyncPrefectClient(f"{self.ui_urls()[api]}/api") as client:
            yield client

    # -- internals -----------------------------------------------------------

    def _spawn(self, name: str, command: list[str], log: Path, *, api: int = 0) -> None:
        child = Child.spawn(name, command, log, cwd=REPO_ROOT, env=self.environment(api))
        self._children[name] = child
        pid = child.process.pid
        self._pids[name] = (pid, _started(pid) or 0)
        self._save()

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float) -> None:
        """Wait until ``ready``; if the process exits or times out, stop it and raise."""
        child = self._children[name]
        deadline = time.monotonic() + timeout
        while not ready():
            problem = None
            if child.process.poll() is not None:
                problem = f"exited with status {child.process.returncode}"
            elif time.monotonic() > deadline:
                problem = f"did not come up within {timeout:.0f} s"
            if problem:
                self._halt(name)
                raise RuntimeError(f"Prefect {name} {problem}:\n{log_tail(child.log_path)}")
            time.sleep(0.2)

    def _worker_online(self, name: str) -> bool:
        from prefect.client.schemas.objects import WorkerStatus

        with self.client() as client:
            workers = client.read_workers_for_work_pool(POOL)
        return any(w.name == name and w.status == WorkerStatus.ONLINE for w in workers)

    def _save(self) -> None:
        state = {
            "ports": self.ports,
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "pids": self._pids,
        }
        self.state_file.write_text(json.dumps(state, indent=2))

    def _load(self) -> None:
        """Take the process ids a previous invocation recorded (for ``stop`` and ``status``)."""
        if self._children or not self.state_file.exists():
            return
        state = json.loads(self.state_file.read_text())
        self._pids = {
            name: (int(pid), int(started)) for name, (pid, started) in state["pids"].items()
        }

    @classmethod
    def recorded(cls, workdir: Path) -> PrefectServer:
        """The server a previous ``start`` recorded in ``workdir`` (port and database)."""
        state_file = workdir / "state.json"
        if not state_file.exists():
            raise RuntimeError(f"no Prefect server was started from {workdir}")
        state = json.loads(state_file.read_text())
        return cls(
            workdir,
            ports=state["ports"],
            database_url=state["database_url"],
            redis_url=state["redis_url"],
        )


def _start(args: argparse.Namespace) -> int:
    ports = [args.port + number for number in range(args.api_servers)]
    server = PrefectServer(
        args.run_dir, ports=ports, database_url=args.database_url, redis_url=args.redis
    )
    if args.config is not None and not args.config.exists():
        print(f"server: no such config file: {args.config}", file=sys.stderr)
        return 2
    started = time.monotonic()
    server.start()
    try:
        names = server.deploy(args.config, per_target=args.per_target, paused=args.paused)
        if args.notify_url:
            server.notify_failures(args.notify_url)
        for number in range(args.workers):
            server.start_worker(f"worker-{number + 1}", api=number % len(ports))
    except BaseException:
        server.stop()
        raise
    print(f"Prefect server up in {time.monotonic() - started:.0f} s, on PostgreSQL")
    print(f"  UI:          {', '.join(server.ui_urls())}")
    print(f"  API:         export PREFECT_API_URL={server.api_url}")
    if server.separated:
        print(f"  on Redis:    {server.redis_url}, background services in their own process")
    print(f"  work pool:   {POOL}, {args.workers} worker(s); logs in {server.workdir}")
    print("  deployments: " + ", ".join(names))
    if args.notify_url:
        print(f"  automation:  '{AUTOMATION}' posts failed and crashed runs to the webhook")
    if args.config is None:
        print("  config_path: as in deployments/prefect.yaml (give --config FILE to change it)")
    return 0


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.prefect_server",
        description="Start, inspect or stop the project's Prefect server, pool and workers.",
    )
    parser.add_argument(
        "--run-dir", type=Path, default=RUN_DIRECTORY, help="state, logs and PREFECT_HOME"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start the server, the pool and the workers")
    start.add_argument("--port", type=int, default=DEFAULT_PORT)
    start.add_argument(
        "--database-url",
        default=os.environ.get("SCIM_PROVISIONER_PREFECT_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="postgresql+asyncpg://... (env SCIM_PROVISIONER_PREFECT_DATABASE_URL)",
    )
    start.add_argument("--config", type=Path, help="the config file the deployments use")
    start.add_argument(
        "--per-target", action="store_true", help="one deployment per target of --config"
    )
    start.add_argument("--paused", action="store_true", help="register the schedules inactive")
    start.add_argument("--workers", type=int, default=1, help="workers on the pool (1)")
    start.add_argument(
        "--api-servers", type=int, default=1, help="API servers on --port, --port + 1, ... (1)"
    )
    start.add_argument(
        "--redis", metavar="URL", help="Redis messaging (redis://127.0.0.1:6379/0; prefect-redis)"
    )
    start.add_argument(
        "--notify-url",
        default=os.environ.get("SCIM_PROVISIONER_NOTIFY_URL"),
        help="a webhook that gets every failed or crashed run (env SCIM_PROVISIONER_NOTIFY_URL)",
    )
    commands.add_parser("status", help="what runs, and where")
    stop = commands.add_parser("stop", help="stop the workers, then the server")
    stop.add_argument(
        "--drop-database", action="store_true", help="and drop its PostgreSQL database"
    )
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    try:
        if args.command == "start":
            args.run_dir = run_dir
            return _start(args)
        server = PrefectServer.recorded(run_dir)
        if args.command == "status":
            print(json.dumps(server.status(), indent=2))
            return 0
        server.stop()
        if args.drop_database:
            drop_database(server.database_url)
        print("Prefect workers and server stopped")
        return 0
    except (RuntimeError, ValueError, OSError, psycopg.Error) as error:
        print(f"server: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_main())
