"""A retried flow run reuses its persisted extract and redoes only what was not confirmed."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from deployments.local_servers import Slapd
from tests.conftest import BEARER_TOKEN, ScimServers, target_users, write_config

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]


def test_retry_uses_the_cached_extract_and_creates_no_duplicate(
    tmp_path: Path,
    directory: Slapd,
    scim_servers: ScimServers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attempt 1 extracts, then the target refuses the token and the run fails. Before the
    retry the token is fixed and slapd is stopped: attempt 2 can only succeed from the
    persisted extract, and it provisions every user exactly once."""
    from flows.provision_users import provision_users

    scim = scim_servers.get("bearer")
    monkeypatch.setenv("APP_TOKEN", "wrong-token-for-attempt-1")
    auth = {"type": "bearer", "token": {"env": "APP_TOKEN"}}
    config = write_config(tmp_path / "c.yaml", directory, scim, auth=auth)

    def repair_between_attempts() -> None:
        deadline = time.monotonic() + 60
        while scim.stats()["GET"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # attempt 1 reached the target (and got a 401)
        time.sleep(0.5)
        directory.stop()
        os.environ["APP_TOKEN"] = BEARER_TOKEN

    repair = threading.Thread(target=repair_between_attempts)
    repair.start()
    try:
        state = provision_users.with_options(retries=1, retry_delay_seconds=4)(
            config_path=str(config), return_state=True
        )
    finally:
        repair.join()
    summary = state.result(raise_on_failure=False)
    assert state.is_completed(), summary
    users = target_users(scim, headers={"Authorization": f"Bearer {BEARER_TOKEN}"})
    assert sorted(users) == ["ada", "bob", "dee"]
    assert summary["targets"][0]["succeeded"]["create"] == 3


def test_directory_down_at_the_start_is_retried(
    tmp_path: Path, directory: Slapd, scim_servers: ScimServers, capsys: pytest.CaptureFixture[str]
) -> None:
    """slapd is down when the run starts and back a moment later: the extract task's retry
    (on an unreachable directory only) succeeds and the run completes."""
    from tests.conftest import sync

    scim = scim_servers.get("open")
    config = write_config(tmp_path / "c.yaml", directory, scim)
    directory.stop()
    restart = threading.Timer(1.0, directory.restart)
    restart.start()
    try:
        code, summary = sync(config, capsys)
    finally:
        restart.join()
    assert code == 0, summary
    assert sorted(target_users(scim)) == ["ada", "bob", "dee"]
