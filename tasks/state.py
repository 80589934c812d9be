"""The state store: what was provisioned where, written only after the target confirmed it.

Per target and source id: the SCIM id, the userName, the hash and body of the last payload the
target accepted (the body lets an update PATCH exactly what changed and clear what disappeared),
and the status (``active`` or ``disabled``). SQLite by default; any SQLAlchemy URL works, and
PostgreSQL is tested (``postgresql+psycopg://...``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

Status = Literal["active", "disabled"]

metadata = sa.MetaData()

provisioned_users = sa.Table(
    "provisioned_users",
    metadata,
    sa.Column("target", sa.String(200), primary_key=True),
    sa.Column("source_id", sa.String(200), primary_key=True),
    sa.Column("scim_id", sa.String(400), nullable=False),
    sa.Column("user_name", sa.String(400), nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


_DELETE_ONE = sa.delete(provisioned_users).where(
    (provisioned_users.c.target == sa.bindparam("k_target"))
    & (provisioned_users.c.source_id == sa.bindparam("k_source_id"))
)


@dataclass(frozen=True, slots=True)
class StateRecord:
    source_id: str
    scim_id: str
    user_name: str
    content_hash: str
    payload: dict[str, Any]
    status: Status


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for the store's URL (``postgresql://`` means the psycopg 3 driver)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = sa.create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class StateStore:
    """Reads and writes provisioning state; one instance per run, shared by its tasks."""

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.read_only = read_only
        if not read_only:
            metadata.create_all(self.engine)

    def records(self, target: str) -> dict[str, StateRecord]:
        """Every user provisioned to ``target``, by source id."""
        if self.read_only and not self._has_table():
            return {}
        t = provisioned_users
        query = sa.select(
            t.c.source_id, t.c.scim_id, t.c.user_name, t.c.content_hash, t.c.payload, t.c.status
        ).where(t.c.target == target)
        with self.engine.connect() as conn:
            return {
                row.source_id: StateRecord(
                    row.source_id,
                    row.scim_id,
                    row.user_name,
                    row.content_hash,
                    json.loads(row.payload),
                    row.status,
                )
                for row in conn.execute(query)
            }

    def apply(self, target: str, saves: list[StateRecord], removals: list[str]) -> None:
        """Record confirmed writes in one transaction: ``saves`` replace, ``removals`` forget.

        Call only with writes the target confirmed.
        """
        self._check_writable()
        if not saves and not removals:
            return
        now = datetime.now(UTC)
        keys = [{"k_target": target, "k_source_id": sid} for sid in removals]
        keys += [{"k_target": target, "k_source_id": r.source_id} for r in saves]
        rows = [
            {
                "target": target,
                "source_id": r.source_id,
                "scim_id": r.scim_id,
                "user_name": r.user_name,
                "content_hash": r.content_hash,
                "payload": json.dumps(r.payload, sort_keys=True),
                "status": r.status,
                "updated_at": now,
            }
            for r in saves
        ]
        with self.engine.begin() as conn:
            conn.execute(_DELETE_ONE, keys)
            if rows:
                conn.execute(sa.insert(provisioned_users), rows)

    def _has_table(self) -> bool:
        """Whether the store exists, without creating an SQLite file as a side effect."""
        if self.engine.dialect.name == "sqlite":
            database = self.engine.url.database
            if database and database != ":memory:" and not Path(database).exists():
                return False
        return sa.inspect(self.engine).has_table(provisioned_users.name)

    def _check_writable(self) -> None:
        if self.read_only:
            raise RuntimeError("this state store was opened read-only")

    def close(self) -> None:
        self.engine.dispose()
