"""A retried flow run reuses its persisted extract and redoes only what was not confirmed; the
persisted results are kept only while a retry may need them."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.conftest import (
    BEARER_TOKEN,
    PEOPLE,
    ScimServers,
    add_people,
    target_users,
    write_config,
)
from tests.support.servers import Slapd
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]

PAGED_PEOPLE = 200
CUT_AFTER_BYTES = 20_000  # after the TLS handshake, the bind and a few pages of 10 entries


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
    summary = state.result(raise_on_failure=False).as_dict()
    assert state.is_completed(), summary
    users = target_users(scim, headers={"Authorization": f"Bearer {BEARER_TOKEN}"})
    assert sorted(users) == ["ada", "bob", "dee"]
    assert summary["targets"][0]["succeeded"]["create"] == 3
    # completed at last: its persisted read, kept for the retry, is deleted
    assert not (results_folder() / str(state.state_details.flow_run_id)).exists()


def results_folder() -> Path:
    """Where the runs' persisted results go (one folder per flow run)."""
    from prefect.settings import get_current_settings

    from tasks.results import RUNS_FOLDER

    return Path(get_current_settings().results.local_storage_path).expanduser() / RUNS_FOLDER


def test_persisted_results_are_kept_for_a_retry_and_deleted_once_of_no_use(
    tmp_path: Path,
    directory: Slapd,
    scim_servers: ScimServers,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The directory read a run persists (identity data on the disk) stays while a retry may
    use it: a failed run's folder is kept, a completed run's is deleted at its end, so is that
    of a run whose only problem a retry cannot mend (a rejected entry), and a failed run's once
    it is older than ``state.results_retention_days`` (7 by default)."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    from tasks.results import RUNS_FOLDER
    from tests.conftest import sync

    storage = tmp_path / "results"  # this test's own: other runs on the machine stay out of it
    runs = storage / RUNS_FOLDER
    expired = runs / "a-run-failed-8-days-ago"
    expired.mkdir(parents=True)
    (expired / "read").write_bytes(b"persisted entries")
    eight_days_ago = time.time() - 8 * 86_400
    os.utime(expired, (eight_days_ago, eight_days_ago))
    scim = scim_servers.get("bearer")
    auth = {"type": "bearer", "token": {"env": "APP_TOKEN"}}
    config = write_config(tmp_path / "c.yaml", directory, scim, auth=auth)

    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: storage}):
        monkeypatch.setenv("APP_TOKEN", "refused-token")
        code, _ = sync(config, capsys)
        assert code != 0  # the target refused the token: the run failed
        failed = set(runs.iterdir())
        assert len(failed) == 1, failed  # its read is kept for a retry
        assert any(p.is_file() for p in next(iter(failed)).rglob("*"))
        # (the expired folder was deleted by that run's end)

        monkeypatch.setenv("APP_TOKEN", BEARER_TOKEN)
        code, summary = sync(config, capsys)
        assert code == 0, summary
        assert set(runs.iterdir()) == failed  # this run's own folder is gone

        directory.modify(
            f"dn: cn=No Uid,{PEOPLE}\nchangetype: add\nobjectClass: inetOrgPerson\n"
            "cn: No Uid\nsn: U\n"
        )
        code, summary = sync(config, capsys)
        assert code != 0 and len(summary["targets"][0]["rejected"]) == 1, summary
        assert set(runs.iterdir()) == failed  # failed, but a retry would reject it again


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


def test_directory_restarted_in_the_middle_of_a_paged_search_is_retried(
    tmp_path: Path,
    directory: Slapd,
    scim_servers: ScimServers,
    capsys: pytest.CaptureFixture[str],
    fault_report: dict[str, str],
) -> None:
    """slapd restarts while the extract is reading the pages of its search (a proxy in front
    of it restarts it after so many bytes): the dropped connection is an unreachable
    directory, the extract task's retry reads everything again and every user is provisioned
    exactly once."""
    from tests.conftest import sync

    add_people(directory, PAGED_PEOPLE)
    scim = scim_servers.get("open")
    proxy = TcpProxy(
        ("127.0.0.1", directory.ldaps_port), after_bytes=CUT_AFTER_BYTES, action=directory.restart
    )
    fault_report["faults"] = f"slapd restarted after {CUT_AFTER_BYTES:,} bytes of its answers"
    proxy.start()
    try:
        source = {
            "url": f"ldaps://127.0.0.1:{proxy.port}",
            "page_size": 10,
            "receive_timeout": 10,
        }
        config = write_config(tmp_path / "c.yaml", directory, scim, source=source)
        code, summary = sync(config, capsys)
    finally:
        proxy.stop()
    fault_report["injected"] = (
        f"restart after {proxy.fired_at} bytes, {proxy.connections} connections, "
        f"{proxy.from_server:,} bytes in all"
    )
    assert code == 0, summary
    assert proxy.fired_at is not None and proxy.connections == 2
    # the search was cut well before its end: the second one read more than the first
    assert proxy.from_server - proxy.fired_at > proxy.fired_at
    users = requests.get(f"{scim.base_url}/Users", params={"count": "1000"}, timeout=30).json()
    names = Counter(u["userName"] for u in users["Resources"])
    assert max(names.values()) == 1
    assert set(names) == {"ada", "bob", "dee", *(f"p{n:03d}" for n in range(PAGED_PEOPLE))}
    fault_report["outcome"] = f"extract retried, run completed: {len(names)} users, each once"
