"""The ``scim-provisioner`` command itself (its console script, flows/launch.py), with no
Prefect server configured: Prefect's temporary server is spawned before the heavy imports,
used for the run (its history in PREFECT_HOME, as Prefect's own temporary server keeps it),
and stopped when the command ends; a sync reads the directory while that server boots (and,
with a server configured, while Prefect is imported)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LDAP_PASSWORD, target_users, write_config
from tests.support.servers import ScimServer, Slapd

pytestmark = [pytest.mark.integration]


def processes_with(home: Path) -> list[int]:
    """The processes whose environment names this PREFECT_HOME."""
    marker = f"PREFECT_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def sync_command(config: Path, **prefect: str) -> subprocess.CompletedProcess[str]:
    """``scim-provisioner sync --config`` as its own process, with none of this process's
    Prefect settings but ``prefect`` (e.g. PREFECT_HOME, PREFECT_API_URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(prefect, PREFECT_SERVER_ANALYTICS_ENABLED="false", TEST_LDAP_PASSWORD=LDAP_PASSWORD)
    command = Path(sys.executable).with_name("scim-provisioner")
    return subprocess.run(
        [str(command), "sync", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_command_runs_on_an_early_temporary_server_and_stops_it(
    tmp_path: Path, directory: Slapd, scim: ScimServer
) -> None:
    home = tmp_path / "prefect-home"
    done = sync_command(write_config(tmp_path / "c.yaml", directory, scim), PREFECT_HOME=str(home))
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(target_users(scim)) == {"ada", "bob", "dee"}
    assert "Starting temporary server" not in done.stderr  # Prefect did not start its own
    # the run's history, where Prefect keeps it: the flow run and its logs (sent by Prefect's
    # background services before the server was stopped)
    with sqlite3.connect(home / "prefect.db") as db:
        runs = db.execute("select count(*) from flow_run").fetchone()[0]
        logs = db.execute("select count(*) from log").fetchone()[0]
        messages = [row[0] for row in db.execute("select message from log")]
        events = [row[0] for row in db.execute("select event from events")]
    assert runs == 1 and logs > 5, (runs, logs)
    assert "prefect.flow-run.Completed" in events
    # no flow-run heartbeats: nothing watches a server that lives as long as the command, and
    # Prefect's heartbeat thread held up the end of every run by up to a second
    assert "prefect.flow-run.heartbeat" not in events
    # the directory was read while the server booted, and the flow's extract task took it
    read = [m for m in messages if "users read" in m]
    assert len(read) == 1 and "read while Prefect started" in read[0], read
    assert processes_with(home) == []  # the server stopped with the command


@pytest.mark.usefixtures("prefect")
def test_a_sync_on_a_configured_server_reads_the_directory_while_prefect_loads(
    tmp_path: Path, directory: Slapd, scim: ScimServer
) -> None:
    """With a Prefect server configured (a deployment's, here the test session's) there is no
    server to wait for, but importing Prefect still takes seconds: the directory read starts
    first and the flow's extract task takes it, as with the temporary server."""
    from prefect.settings import PREFECT_API_URL

    config = write_config(tmp_path / "c.yaml", directory, scim)
    done = sync_command(config, PREFECT_API_URL=str(PREFECT_API_URL.value()))
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(target_users(scim)) == {"ada", "bob", "dee"}
    read = [line for line in done.stderr.splitlines() if "users read" in line]
    assert len(read) == 1 and "read while Prefect started" in read[0], read
