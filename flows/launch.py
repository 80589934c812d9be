"""The ``scim-provisioner`` command's entry point: starts Prefect's temporary server first.

With no Prefect server configured, Prefect starts a temporary one when the first flow runs:
the command then waits for its own imports (~1.5 s), for Prefect's server module to be
imported just to spawn that server (~1.5 s), then for the server to boot (~3 s), one after
the other. Here the same server (Prefect's own app, the same ``PREFECT_HOME`` database, so
the same run history in the UI) is spawned before anything heavy is imported, and boots while
the provisioner loads. Only the standard library is imported before the spawn.
"""

from __future__ import annotations

import atexit
import gc
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deployments.processes import answers_ok, free_port  # the standard library only

RUNS_FLOWS = ("sync", "groups", "reconcile")


class EarlyServer:
    """Prefect's temporary API server, spawned as Prefect spawns it, stopped at the end."""

    def __init__(self) -> None:
        spec = importlib.util.find_spec("prefect")
        assert spec is not None and spec.submodule_search_locations
        package = Path(next(iter(spec.submodule_search_locations)))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.started_at = datetime.now(UTC)
        """When the server was spawned (runs created since are this command's)."""
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # events stored within 0.1 s rather than 5 s: :meth:`settle` waits for the last
            "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "0.1",
        }
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(package.parent)]
        command += ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
        self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL
        )

    def ready(self, timeout: float = 60.0) -> str:
        """Wait until the server answers its health check; return its API URL."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError("Prefect's temporary server exited while starting")
            if answers_ok(f"{self.url}/health", timeout=2):
                return self.url
            time.sleep(0.05)
        raise RuntimeError(f"Prefect's temporary server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is None:
            return
        self.settle()
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def settle(self, timeout: float = 5.0) -> None:
        """Wait, up to ``timeout`` seconds, until the server has stored the event of each
        finished flow run's final state (``prefect.flow-run.Completed``, ``.Failed``, ...).

        The server publishes that event while it answers the run's last state change, and its
        event persister stores events in batches from a queue (here every 0.1 s): stopped
        just after a run ended, on a loaded machine, it lost the run's last event from the
        history its database keeps (seen once in CI, on a machine running at half speed).
        Asked of the server's API: 0.08-0.16 s at the end of a command. A server that does
        not answer is not waited for."""
        deadline = time.monotonic() + timeout
        try:
            runs = self._api("flow_runs/filter", {"sort": "EXPECTED_START_TIME_DESC", "limit": 50})
            ours = [
                (run["id"], run["state"]["name"])
                for run in runs
                if datetime.fromisoformat(run["created"]) >= self.started_at
                and (run.get("state") or {}).get("type") in FINAL_STATES
            ]
        except (OSError, ValueError, KeyError, TypeError):
            return
        for run_id, state in ours:
            wanted = {
                "filter": {
                    "resource": {"id": [f"prefect.flow-run.{run_id}"]},
                    "event": {"name": [f"prefect.flow-run.{state}"]},
                },
                "limit": 1,
            }
            while time.monotonic() < deadline:
                try:
                    if self._api("events/filter", wanted)["events"]:
                        break
                except (OSError, ValueError, KeyError):
                    return
                time.sleep(0.05)

    def _api(self, path: str, body: dict[str, object]) -> Any:
        request = urllib.request.Request(
            f"{self.url}/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.loads(response.read())


FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def configured_elsewhere() -> bool:
    """Whether a Prefect API URL may be set outside the environment: in the active profile,
    a ``prefect.toml``, ``pyproject.toml``'s ``[tool.prefect]`` or a ``.env`` here. Then
    Prefect decides, as always (checked without importing Prefect)."""
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml")
    profiles = profiles.expanduser()
    if profiles.exists():
        try:
            data = tomllib.loads(profiles.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            return True
        active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
        if "PREFECT_API_URL" in data.get("profiles", {}).get(active, {}):
            return True
    if Path("prefect.toml").exists():
        return True
    for name, marker in ((".env", "PREFECT_API_URL"), ("pyproject.toml", "[tool.prefect")):
        try:
            if marker in Path(name).read_text(errors="replace"):
                return True
        except OSError:
            continue
    return False


def collect_cycles_rarely() -> None:
    """Let Python's cycle collector run every 50,000 new objects instead of every 700.

    A run makes millions of small acyclic objects (entries, payloads, records), which
    reference counting frees; the collector only finds cycles, yet at Python's default it ran
    every 700 new objects and walked the run's growing heap again and again: reading 50,000
    users took ~4.3 s with it, ~2.7 s like this (docs/performance.md). Called by the command
    and by each flow (a deployment's run is its own process).
    """
    gc.set_threshold(50_000, 20, 100)


def main() -> int:
    collect_cycles_rarely()
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
    early = None
    if (
        command in RUNS_FLOWS
        and not os.environ.get("PREFECT_API_URL")
        and not configured_elsewhere()
    ):
        early = EarlyServer()
        # The whole process uses it: set before Prefect is imported, since Prefect's
        # background services (events, logs) run in their own threads and read the
        # process's settings. Stopped at exit, after those services have sent the run's
        # last events and logs to it (they drain first); SIGTERM exits the same way.
        os.environ["PREFECT_API_URL"] = early.url
        atexit.register(early.stop)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if command == "sync":  # on a configured server too: the read overlaps the imports
        _prefetch_users(sys.argv[1:])
    from flows.cli import main as cli_main

    code = cli_main(early=early)
    if command in RUNS_FLOWS:
        exit_now(code)
    return code


def exit_now(code: int) -> None:
    """Exit once everything is said and saved, without the interpreter's teardown: the exit
    functions run (Prefect's services send the run's last logs and events, the temporary
    server stops), the output is flushed, then the process ends. Freeing a large run's objects
    one by one took seconds after the summary was printed (~1.5 s at 50,000 users), for
    nothing: the state store committed each write when it was confirmed."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _prefetch_users(argv: list[str]) -> None:
    """Start the sync's directory read now, while Prefect is imported and (with no server
    configured) the temporary server boots; the flow's extract task takes the result
    (tasks.ldap.changes.prefetch_users). Needs no Prefect import; whatever is unclear here is
    left to the command, which reports it."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    parser.add_argument("--target")
    parser.add_argument("--full", action="store_true")
    known, _ = parser.parse_known_args(argv)
    if not known.config:
        return
    try:
        from tasks.config import load_config
        from tasks.ldap.changes import prefetch_users

        config = load_config(known.config)
    except Exception:  # the command says what is wrong with the config, in one line
        return
    prefetch_users(config, known.target, full=known.full)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
