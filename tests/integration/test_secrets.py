"""Secrets stay secret: after a whole sync with known secrets, they are in no log line, no
Prefect result or artifact, no summary and no state-store row."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import BEARER_TOKEN, LDAP_PASSWORD, ScimServers, sync, write_config
from tests.support.servers import Slapd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]


def test_no_secret_in_logs_results_artifacts_or_state(
    tmp_path: Path,
    directory: Slapd,
    scim_servers: ScimServers,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    scim = scim_servers.get("bearer")
    monkeypatch.setenv("APP_TOKEN", BEARER_TOKEN)
    auth = {"type": "bearer", "token": {"env": "APP_TOKEN"}}
    config = write_config(tmp_path / "c.yaml", directory, scim, auth=auth)
    caplog.set_level(logging.DEBUG)
    # a completed run deletes its persisted results at its end (test_flow_retry): kept here,
    # to read them
    monkeypatch.setattr("tasks.results.forget_results", lambda *args: None)
    code, summary = sync(config, capsys)
    assert code == 0, summary
    secrets = (BEARER_TOKEN, LDAP_PASSWORD)
    out, err = capsys.readouterr()
    texts = {"logs": caplog.text, "output": out + err, "summary": str(summary)}
    with get_client(sync_client=True) as client:
        texts["artifacts"] = " ".join(str(a.data) for a in client.read_artifacts())
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():  # users, groups, audit log
            rows = conn.execute(sa.text(f"select * from {table}")).all()
            texts[f"state: {table}"] = str(rows)
    assert "state: audit_log" in texts
    engine.dispose()
    storage = Path(get_current_settings().results.local_storage_path)
    results = b"".join(p.read_bytes() for p in storage.rglob("*") if p.is_file())
    assert results, "expected persisted Prefect results to check"
    for secret in secrets:
        for where, text in texts.items():
            assert secret not in text, f"{where} holds a secret"
        assert secret.encode() not in results, "a persisted Prefect result holds a secret"
