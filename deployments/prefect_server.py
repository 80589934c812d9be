"""A real Prefect server on PostgreSQL, with the project's work pool, deployments and workers.

    python -m deployments.prefect_server start [--port 4200] [--config FILE] [--per-target]
                                               [--workers 1] [--paused]
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

The tests use :class:`PrefectServer` directly, on a free port, with a database of their own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from deployments.deploy import deploy
from deployments.local_servers import REPO_ROOT, Child, log_tail

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


def _answers(url: str) -> bool:
    """Tell whether ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _is_ours(pid: int) -> bool:
    """Tell whether ``pid`` runs, and is a Prefect process (not a reused process id)."""
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"prefect" in command_line


def _halt_pid(pid: int, stop_signal: signal.Signals, timeout: float = STOP_TIMEOUT) -> None:
    """Stop a process another invocation started (so not our child): ``stop_signal``, then
    SIGKILL of its process group when it lingers."""
    if not _is_ours(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, stop_signal)
    deadline = time.monotonic() + timeout
    while _is_ours(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


class PrefectServer:
    """``prefect server start`` on 127.0.0.1:``port`` with PostgreSQL, and process workers on
    the pool ``scim-provisioner``; its files (state, logs, ``PREFECT_HOME``) in ``workdir``.

    :param worker_query_seconds: how often the workers ask for runs (Prefect's default: 10 s).
    :param env: more environment for the server, the workers and their flow runs.
    """

    def __init__(
        self,
        workdir: Path,
        port: int = DEFAULT_PORT,
        *,
        database_url: str = DEFAULT_DATABASE_URL,
        worker_query_seconds: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir.resolve()
        self.port = port
        self.database_url = database_url
        self.worker_query_seconds = worker_query_seconds
        self.extra_env = dict(env or {})
        self.home = self.workdir / "home"
        self.state_file = self.workdir / "state.json"
        self._children: dict[str, Child] = {}
        self._pids: dict[str, int] = {}

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    def environment(self) -> dict[str, str]:
        """The environment of the server, the workers and the ``prefect`` commands run
        against this server."""
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_UI_URL": self.ui_url,
            "PREFECT_UI_API_URL": self.api_url,
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_API_DATABASE_CONNECTION_URL": self.database_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
            "SCIM_PROVISIONER_HOME": str(REPO_ROOT),
            **self.extra_env,
        }
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
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(exist_ok=True)
        ensure_database(self.database_url)
        command = [sys.executable, "-m", "prefect", "server", "start"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        self._spawn("server", command, self.workdir / "server.log")
        self._wait(
            "server",
            lambda: _answers(f"{self.api_url}/health"),
            SERVER_START_TIMEOUT,
        )
        self.create_pool()

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

    def start_worker(self, name: str, *, limit: int | None = None) -> None:
        """Start a process worker on the pool and wait until the server lists it online.

        :param limit: at most this many flow runs at once in this worker.
        """
        if name in self._children or name == "server":
            raise RuntimeError(f"{name} already runs")
        command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL]
        command += ["--type", "process", "--name", name]
        if limit is not None:
            command += ["--limit", str(limit)]
        self._spawn(name, command, self.worker_log(name))
        self._wait(name, lambda: self._worker_online(name), WORKER_START_TIMEOUT)

    def worker_log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def stop_worker(self, name: str) -> None:
        """Stop a worker with SIGINT (it finishes its shutdown; a worker may ignore SIGTERM)."""
        self._halt(name)

    def _halt(self, name: str) -> None:
        """Stop a process of this server with SIGINT, SIGKILL if it lingers; forget it."""
        child = self._children.pop(name, None)
        pid = self._pids.pop(name, None)
        if child is not None:
            child.halt(signal.SIGINT)
        elif pid is not None:
            _halt_pid(pid, signal.SIGINT)
        self._save()

    def stop(self) -> None:
        """Stop every worker, then the server (also those a previous ``start`` left running,
        as recorded in the state file)."""
        self._load()
        for name in [n for n in self._pids if n != "server"]:
            self._halt(name)
        self._halt("server")
        self.state_file.unlink(missing_ok=True)

    def running(self) -> bool:
        """Tell whether the recorded server process runs."""
        self._load()
        pid = self._pids.get("server")
        return pid is not None and _is_ours(pid)

    def status(self) -> dict[str, Any]:
        """What runs: the URLs, the server's health and each process with its id."""
        self._load()
        return {
            "ui": self.ui_url,
            "api": self.api_url,
            "database": self.database_url,
            "healthy": _answers(f"{self.api_url}/health"),
            "processes": {
                name: {"pid": pid, "running": _is_ours(pid)} for name, pid in self._pids.items()
            },
        }

    @contextlib.contextmanager
    def client(self) -> Iterator[SyncPrefectClient]:
        """A Prefect client of this server (whatever PREFECT_API_URL says in this process)."""
        from prefect.client.orchestration import SyncPrefectClient

        with SyncPrefectClient(self.api_url) as client:
            yield client

    # -- internals -----------------------------------------------------------

    def _spawn(self, name: str, command: list[str], log: Path) -> None:
        child = Child.spawn(name, command, log, cwd=REPO_ROOT, env=self.environment())
        self._children[name] = child
        self._pids[name] = child.process.pid
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
        state = {"port": self.port, "database_url": self.database_url, "pids": self._pids}
        self.state_file.write_text(json.dumps(state, indent=2))

    def _load(self) -> None:
        """Take the process ids a previous invocation recorded (for ``stop`` and ``status``)."""
        if self._children or not self.state_file.exists():
            return
        state = json.loads(self.state_file.read_text())
        self._pids = {name: int(pid) for name, pid in state["pids"].items()}

    @classmethod
    def recorded(cls, workdir: Path) -> PrefectServer:
        """The server a previous ``start`` recorded in ``workdir`` (port and database)."""
        state_file = workdir / "state.json"
        if not state_file.exists():
            raise RuntimeError(f"no Prefect server was started from {workdir}")
        state = json.loads(state_file.read_text())
        return cls(workdir, int(state["port"]), database_url=state["database_url"])


def _start(args: argparse.Namespace) -> int:
    server = PrefectServer(args.run_dir, args.port, database_url=args.database_url)
    if args.config is not None and not args.config.exists():
        print(f"server: no such config file: {args.config}", file=sys.stderr)
        return 2
    started = time.monotonic()
    server.start()
    try:
        names = server.deploy(args.config, per_target=args.per_target, paused=args.paused)
        if args.notify_url:
            server.notify_failures(args.notify_url)
        for number in range(1, args.workers + 1):
            server.start_worker(f"worker-{number}")
    except BaseException:
        server.stop()
        raise
    print(f"Prefect server up in {time.monotonic() - started:.0f} s, on PostgreSQL")
    print(f"  UI:          {server.ui_url}")
    print(f"  API:         export PREFECT_API_URL={server.api_url}")
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
