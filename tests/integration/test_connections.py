"""Connections as a user configures them: TLS to the directory, target auth, the state store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from tests.conftest import BASIC, BEARER_TOKEN, LDAP_PASSWORD, sync, target_users, write_config
from tests.support.servers import ScimServer, Slapd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]

POSTGRES = "postgresql://postgres@127.0.0.1:5432"


class TestDirectoryTls:
    def test_starttls_with_ca_verification(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An ldap:// URL upgrades to TLS with StartTLS before binding, verifying the CA."""
        config = write_config(
            tmp_path / "c.yaml", directory, scim, source={"url": directory.ldap_url}
        )
        code, summary = sync(config, capsys)
        assert code == 0, summary
        assert len(target_users(scim)) == 3

    def test_wrong_ca_is_a_clear_error(
        self, tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A server certificate that the configured CA did not sign stops the run, and says TLS."""
        other_ca = tmp_path / "other-ca.pem"
        other_ca.write_text(Path("/etc/ssl/certs/ca-certificates.crt").read_text())
        config = write_config(
            tmp_path / "c.yaml", directory, scim, source={"ca_file": str(other_ca)}
        )
        code, err = sync(config, capsys)
        assert code == 2
        assert "TLS with ldaps://127.0.0.1" in err
        assert target_users(scim) == {}

    def test_wrong_bind_password(
        self,
        tmp_path: Path,
        directory: Slapd,
        scim: ScimServer,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("TEST_LDAP_PASSWORD", "wrong-password-5d1e")
        config = write_config(tmp_path / "c.yaml", directory, scim)
        code, err = sync(config, capsys)
        assert code == 2
        assert "invalid credentials" in err
        assert "wrong-password-5d1e" not in err


class TestTargetAuth:
    @pytest.mark.parametrize("variant", ["bearer", "basic"])
    def test_authenticated_target(
        self,
        variant: str,
        tmp_path: Path,
        directory: Slapd,
        scim_servers,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Bearer and Basic credentials come from the environment; the secret is never printed."""
        scim = scim_servers.get(variant)
        if variant == "bearer":
            monkeypatch.setenv("APP_TOKEN", BEARER_TOKEN)
            auth = {"type": "bearer", "token": {"env": "APP_TOKEN"}}
            request_auth = {"headers": {"Authorization": f"Bearer {BEARER_TOKEN}"}}
        else:
            monkeypatch.setenv("APP_PASSWORD", BASIC[1])
            auth = {"type": "basic", "username": BASIC[0], "password": {"env": "APP_PASSWORD"}}
            request_auth = {"auth": BASIC}
        config = write_config(tmp_path / "c.yaml", directory, scim, auth=auth)
        code, summary = sync(config, capsys)
        assert code == 0, summary
        assert len(target_users(scim, **request_auth)) == 3
        assert BEARER_TOKEN not in str(summary) and BASIC[1] not in str(summary)

    def test_wrong_token_stops_the_run(
        self,
        tmp_path: Path,
        directory: Slapd,
        scim_servers,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A 401 is fatal: the run stops with the reason, nothing is recorded as done."""
        scim = scim_servers.get("bearer")
        monkeypatch.setenv("APP_TOKEN", "not-the-token-8b2c")
        auth = {"type": "bearer", "token": {"env": "APP_TOKEN"}}
        config = write_config(tmp_path / "c.yaml", directory, scim, auth=auth)
        code, err = sync(config, capsys)
        assert code == 2
        assert "HTTP 401" in err
        assert "not-the-token-8b2c" not in err
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
        with engine.connect() as conn:
            assert conn.execute(sa.text("select count(*) from provisioned_users")).scalar() == 0
        engine.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards."""
    name = f"scim_provisioner_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{POSTGRES}/{name}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_postgresql_state_store(
    tmp_path: Path,
    directory: Slapd,
    scim: ScimServer,
    postgres_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The state store works on PostgreSQL: rows written, and a second sync writes nothing."""
    config = write_config(tmp_path / "c.yaml", directory, scim, state_url=postgres_url)
    assert sync(config, capsys)[0] == 0
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("select user_name, status from provisioned_users order by user_name")
        ).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("ada", "active"), ("bob", "active"), ("dee", "active")]
    scim.reset_stats()
    assert sync(config, capsys)[0] == 0
    assert scim.writes() == 0


def test_plan_writes_nothing(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """``plan`` lists the changes, sends nothing to the target and creates no state."""
    from flows.cli import main

    config = write_config(tmp_path / "c.yaml", directory, scim)
    scim.reset_stats()
    assert main(["plan", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "create" in out and "ada" in out and "bob" in out
    assert sum(scim.stats().values()) == 0
    assert not (tmp_path / "state.db").exists()
    assert LDAP_PASSWORD not in out


def test_token_from_a_prefect_secret_block(
    tmp_path: Path, directory: Slapd, scim_servers, capsys: pytest.CaptureFixture[str]
) -> None:
    """A secret reference can name a Prefect Secret block instead of an environment variable."""
    from prefect.blocks.system import Secret

    Secret(value=BEARER_TOKEN).save("test-scim-token", overwrite=True)
    scim = scim_servers.get("bearer")
    auth = {"type": "bearer", "token": {"prefect_secret": "test-scim-token"}}
    config = write_config(tmp_path / "c.yaml", directory, scim, auth=auth)
    code, summary = sync(config, capsys)
    assert code == 0, summary
    assert len(target_users(scim, headers={"Authorization": f"Bearer {BEARER_TOKEN}"})) == 3
    assert BEARER_TOKEN not in capsys.readouterr().out


def test_runs_starting_side_by_side_create_the_postgresql_store_once(postgres_url: str) -> None:
    """Two workers' first runs open an empty PostgreSQL store at the same moment: the tables
    are created once, and neither run fails (unlocked, concurrent CREATE TABLEs collide on
    PostgreSQL's catalog and one of them errors)."""
    from concurrent.futures import ThreadPoolExecutor

    from tasks.state.store import StateStore

    def open_store(_: int) -> None:
        StateStore(postgres_url).close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(open_store, range(8)))
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        tables = {r[0] for r in conn.execute(sa.text("select tablename from pg_tables"))}
    engine.dispose()
    assert {"provisioned_users", "provisioned_groups", "audit_log", "watermarks"} <= tables
