"""Nothing lost when the provisioner process is killed: SIGKILL in the middle of a load, then
the same flow run retried from Prefect, as the UI's Retry button does.

The first attempt is the real command (``python -m flows.cli sync``) in a child process that
reports to the session's Prefect server. It talks to the SCIM server through the tests' proxy,
which, once the target has received a good part of the POSTs, still forwards every request but
holds the answers back: the kill then lands deterministically while users exist on the target
that the provisioner never heard of (the worst moment). Prefect would mark the run Crashed; the
Retry button then forces it to ``Scheduled``/``AwaitingRetry``, and a worker executes it again
with Prefect's engine entry point (``python -m prefect.flow_engine ENTRYPOINT`` with
``PREFECT__FLOW_RUN_ID``), which this test runs in a new child process.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import requests

from deployments.processes import REPO_ROOT, Child, log_tail
from tests.conftest import add_people, write_config
from tests.fault_proxy import FaultProxy
from tests.support.servers import ScimServer, Slapd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]

PEOPLE_ADDED = 300
USERS = PEOPLE_ADDED + 3  # the sample's ada, bob and dee are in scope too
KILL_AFTER_POSTS = 125  # in the middle of the 7th batch of 20
ENTRYPOINT = "flows/provision_users.py:provision_users"  # as in deployments/prefect.yaml


def child_environment() -> dict[str, str]:
    """The environment of a provisioner process: this session's Prefect server and results."""
    import prefect.settings

    settings = prefect.settings.get_current_settings().to_environment_variables(exclude_unset=True)
    return {
        **os.environ,
        **settings,
        "PREFECT_API_URL": str(prefect.settings.PREFECT_API_URL.value()),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(
            prefect.settings.PREFECT_RESULTS_LOCAL_STORAGE_PATH.value()
        ),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def spawn(command: list[str], log: Path, env: dict[str, str]) -> Child:
    """A provisioner process in its own process group, its output appended to ``log``."""
    return Child.spawn("the provisioner", command, log, cwd=REPO_ROOT, env=env)


def wait_for(condition: Any, what: str, process: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            pytest.fail(
                f"the provisioner exited ({process.returncode}) before {what}:\n{log_tail(log)}"
            )
        time.sleep(0.05)
    pytest.fail(f"timed out waiting until {what}:\n{log_tail(log)}")


def running_flow_run(config: Path) -> UUID | None:
    """The id of the running provision_users flow run of this config, if there is one yet."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    running = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
    )
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["provision_users"])),
            flow_run_filter=running,
        )
    return next((r.id for r in runs if r.parameters.get("config_path") == str(config)), None)


def state_rows(db: Path) -> list[tuple[str, str, str]]:
    """(source_id, scim_id, user_name) of every user in the state store."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT source_id, scim_id, user_name FROM provisioned_users WHERE target = 'app'"
        ).fetchall()


def all_target_users(scim: ScimServer) -> list[dict[str, Any]]:
    response = requests.get(f"{scim.base_url}/Users", params={"count": "10000"}, timeout=30)
    response.raise_for_status()
    resources: list[dict[str, Any]] = response.json().get("Resources", [])
    return resources


def test_sigkill_mid_load_then_retry_from_prefect_provisions_everyone_once(
    tmp_path: Path,
    directory: Slapd,
    scim: ScimServer,
    proxy: FaultProxy,
    fault_report: dict[str, str],
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import AwaitingRetry, Crashed

    add_people(directory, PEOPLE_ADDED)
    config = write_config(
        tmp_path / "c.yaml",
        directory,
        scim,
        url=f"{proxy.url}/v2",
        use_bulk="never",
        batch_size=20,
        timeout=30,
    )
    db = tmp_path / "state.db"
    env = child_environment()
    log = tmp_path / "provisioner.log"

    # Attempt 1: the real command, killed in the middle of the load.
    fault_report["faults"] = f"SIGKILL of the provisioner after {KILL_AFTER_POSTS} of {USERS} POSTs"
    proxy.hold_after(KILL_AFTER_POSTS)
    first = spawn([sys.executable, "-m", "flows.cli", "sync", "--config", str(config)], log, env)
    try:
        flow_run_id = wait_for(
            lambda: running_flow_run(config), "its flow run is Running", first.process, log
        )
        wait_for(
            proxy.holding.is_set,
            f"the target received {KILL_AFTER_POSTS} POSTs",
            first.process,
            log,
        )
        time.sleep(0.5)  # the other threads' requests are done on the target, unanswered too
    finally:
        first.halt(signal.SIGKILL)  # the process, then its process group
    assert first.process.returncode == -signal.SIGKILL, log_tail(log)
    proxy.release()

    # The state store is never ahead of the target.
    posts = scim.stats().get("POST", 0)
    assert KILL_AFTER_POSTS < posts < USERS, f"killed after {posts} POSTs: not mid-load"
    on_target = {u["id"]: u for u in all_target_users(scim)}
    rows = state_rows(db)
    assert rows, "nothing recorded before the kill: the test would prove nothing"
    ahead = [name for _, scim_id, name in rows if scim_id not in on_target]
    assert not ahead, f"recorded but not on the target: {ahead}"
    recorded = len(rows)
    fault_report["injected"] = (
        f"killed with {len(on_target)} users on the target, {recorded} in the state store"
    )
    assert len(on_target) > recorded  # the held ones at least: the retry has work to adopt

    # Prefect would mark the run Crashed; the UI's Retry button then forces AwaitingRetry.
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
        assert state is not None and state.is_running()  # as a killed process leaves it
        client.set_flow_run_state(
            flow_run_id, Crashed(message="the provisioner process was killed"), force=True
        )
        client.set_flow_run_state(
            flow_run_id, AwaitingRetry(message="Retry from the UI"), force=True
        )

    # Attempt 2: a new process executes the same flow run, as a worker would.
    retry_env = {**env, "PREFECT__FLOW_RUN_ID": str(flow_run_id)}
    second = spawn([sys.executable, "-m", "prefect.flow_engine", ENTRYPOINT], log, retry_env)
    try:
        second.process.wait(120)
    finally:
        second.halt(signal.SIGKILL)  # only if it is still running
    assert second.process.returncode == 0, log_tail(log)

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.state is not None and flow_run.state.is_completed(), (
        flow_run.state,
        log_tail(log),
    )
    assert flow_run.run_count >= 2

    users = all_target_users(scim)
    names = Counter(u["userName"] for u in users)
    external_ids = Counter(u.get("externalId") for u in users)
    assert max(names.values()) == 1, [n for n, c in names.items() if c > 1]
    assert max(external_ids.values()) == 1, [e for e, c in external_ids.items() if c > 1]
    expected = {"ada", "bob", "dee", *(f"p{n:03d}" for n in range(PEOPLE_ADDED))}
    assert set(names) == expected

    by_id = {u["id"]: u for u in users}
    rows = state_rows(db)
    assert len(rows) == len(users)
    for source_id, scim_id, user_name in rows:
        assert scim_id in by_id, user_name
        assert by_id[scim_id]["userName"] == user_name
        assert by_id[scim_id]["externalId"] == source_id
    assert scim.stats()["POST"] == USERS  # no user was ever POSTed twice
    fault_report["outcome"] = (
        f"the run retried from Prefect (run_count {flow_run.run_count}) Completed: {USERS} "
        f"users, each once; {len(on_target) - recorded} unrecorded ones adopted, not re-created"
    )
