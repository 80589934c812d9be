"""The state store: what was provisioned where, written only after the target confirmed it.

Users, per target and source id: the SCIM id, the userName, the hash and body of the last
payload the target accepted (the body lets an update PATCH exactly what changed and clear what
disappeared), and the status (``active`` or ``disabled``). Groups: the SCIM id, the
displayName and the member SCIM ids we know of. The audit log: one row per write the
provisioner attempted (time, run, target, object, action, ids, outcome, cause), in the same
transaction as the state it changed (a group change can take several requests: the earlier
ones are recorded when confirmed, the last one with the audit entry). SQLite by default;
any SQLAlchemy URL works, and PostgreSQL is tested (``postgresql+psycopg://...``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from tasks.errors import ProvisionerError

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
    sa.Column("version", sa.String(200), nullable=True),
    sa.Column("dn", sa.Text, nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


provisioned_groups = sa.Table(
    "provisioned_groups",
    metadata,
    sa.Column("target", sa.String(200), primary_key=True),
    sa.Column("source_id", sa.String(200), primary_key=True),
    sa.Column("scim_id", sa.String(400), nullable=False),
    sa.Column("display_name", sa.String(1000), nullable=False),
    sa.Column("members", sa.Text, nullable=False),
    sa.Column("foreign_members", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


watermarks = sa.Table(
    "watermarks",
    metadata,
    sa.Column("target", sa.String(200), primary_key=True),
    sa.Column("stream", sa.String(16), primary_key=True),
    sa.Column("method", sa.String(32), nullable=False),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("server", sa.String(400), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
"""Per target and stream (users, groups): how far the directory's changes were provisioned."""


@dataclass(frozen=True, slots=True)
class Watermark:
    """Where the last successful cycle left off in the directory's change history.

    ``value`` is a modifyTimestamp (timestamp methods), a uSNChanged (AD) or a syncrepl cookie;
    ``server`` names the directory instance the value belongs to (AD: the DC's invocationId),
    so a value from another server is never trusted.
    """

    method: str
    value: str
    server: str = ""


audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("run_id", sa.String(64), nullable=True, index=True),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("object", sa.String(16), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("source_id", sa.String(200), nullable=False, index=True),
    sa.Column("name", sa.String(1000), nullable=False),
    sa.Column("scim_id", sa.String(400), nullable=True),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("cause", sa.Text, nullable=False),
)

Outcome = Literal["ok", "failed", "refused"]
"""refused: a sign-in the identity provider turned away (docs/sso.md)."""

SCHEMA_LOCK = 0x5C1A_5747
"""PostgreSQL advisory lock key held while the tables are created or upgraded."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One write the provisioner attempted on a target, and how it ended."""

    object: Literal["user", "group"]
    action: str
    source_id: str
    name: str
    scim_id: str | None
    outcome: Outcome
    cause: str = ""


@dataclass(frozen=True, slots=True)
class AuditRow:
    """An audit entry as stored, with its time, run and target."""

    at: datetime
    run_id: str | None
    target: str
    object: str
    action: str
    source_id: str
    name: str
    scim_id: str | None
    outcome: str
    cause: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "run_id": self.run_id,
            "target": self.target,
            "object": self.object,
            "action": self.action,
            "source_id": self.source_id,
            "name": self.name,
            "scim_id": self.scim_id,
            "outcome": self.outcome,
            "cause": self.cause,
        }


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """What to look for in the audit log; every criterion given must hold."""

    target: str | None = None
    who: str | None = None
    """A source id, SCIM id or name (userName / displayName, case-insensitive)."""
    run_id: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    limit: int = 100


def _user_row(record: StateRecord) -> dict[str, Any]:
    """A ``provisioned_users`` row, without its target and time."""
    return {
        "source_id": record.source_id,
        "scim_id": record.scim_id,
        "user_name": record.user_name,
        "content_hash": record.content_hash,
        "payload": record.body,
        "status": record.status,
        "version": record.version,
        "dn": record.dn,
    }


def _group_row(record: GroupRecord) -> dict[str, Any]:
    """A ``provisioned_groups`` row, without its target and time."""
    return {
        "source_id": record.source_id,
        "scim_id": record.scim_id,
        "display_name": record.display_name,
        "members": json.dumps(sorted(record.members)),
        "foreign_members": json.dumps(sorted(record.foreign)),
    }


def _delete_one(table: sa.Table) -> sa.Delete:
    return sa.delete(table).where(
        (table.c.target == sa.bindparam("k_target"))
        & (table.c.source_id == sa.bindparam("k_source_id"))
    )


@dataclass(slots=True, init=False, eq=False)
class StateRecord:
    """A user provisioned to a target: ids, name, the hash and body of the last payload the
    target accepted, status, ETag and DN.

    The body is kept as its JSON text and decoded on each access of :attr:`payload`: a run
    holds every record of a target, and only the few that change need their body (a decoded
    payload costs several times its text in memory). Records read with
    ``StateStore.records(target, lazy=True)`` fetch their body from the store on first use.
    """

    source_id: str
    scim_id: str
    user_name: str
    content_hash: str
    _body: str | Callable[[], str]
    status: Status
    version: str | None
    """The target's ETag of the user after our last write, when it has ETags."""
    dn: str | None
    """The entry's DN when it was last seen, normalized (``tasks.ldap.dn.normalize_dn``): it
    resolves references and group members without reading every user."""

    def __init__(
        self,
        source_id: str,
        scim_id: str,
        user_name: str,
        content_hash: str,
        payload: dict[str, Any] | str | Callable[[], str],
        status: Status,
        version: str | None = None,
        dn: str | None = None,
    ) -> None:
        self.source_id = source_id
        self.scim_id = scim_id
        self.user_name = user_name
        self.content_hash = content_hash
        if isinstance(payload, dict):
            payload = json.dumps(payload, sort_keys=True)
        self._body = payload
        self.status = status
        self.version = version
        self.dn = dn

    @property
    def body(self) -> str:
        """The payload as canonical JSON text."""
        if not isinstance(self._body, str):
            self._body = self._body()
        return self._body

    @body.setter
    def body(self, text: str) -> None:
        self._body = text

    @property
    def loaded(self) -> bool:
        """Whether the body is in memory (not still to fetch from the store)."""
        return isinstance(self._body, str)

    @property
    def payload(self) -> dict[str, Any]:
        """The last payload the target accepted (a new dict on each access)."""
        return cast(dict[str, Any], json.loads(self.body))

    def _key(self) -> tuple[Any, ...]:
        return (
            self.source_id,
            self.scim_id,
            self.user_name,
            self.content_hash,
            self.body,
            self.status,
            self.version,
            self.dn,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StateRecord) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]


class UserRow(NamedTuple):
    """A state record without its payload: what a reconciliation joins on."""

    source_id: str
    scim_id: str
    user_name: str
    content_hash: str
    status: str
    dn: str | None


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """A group provisioned to a target and the members we know it has.

    ``members`` are the SCIM ids the group has as far as we know; ``foreign`` those of them we
    did not add (additive mode only: they are never removed).
    """

    source_id: str
    scim_id: str
    display_name: str
    members: frozenset[str]
    foreign: frozenset[str] = frozenset()


def _aware(moment: datetime) -> datetime:
    """SQLite gives naive datetimes back; they were stored as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _private_sqlite_file(url: str) -> None:
    """Create a SQLite state file readable by its owner only (0600): it holds personal data.
    SQLite gives its -wal and -shm files the database file's permissions."""
    parsed = sa.engine.make_url(url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return
    if not os.path.exists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def make_engine(url: str) -> Engine:
    """An engine for the store's URL (``postgresql://`` means the psycopg 3 driver)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if sa.engine.make_url(url).get_backend_name() == "sqlite":
        # a file: nothing drops the connection, so no ping before each use (a query each)
        engine = sa.create_engine(url)
    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class StateStore:
    """Reads and writes provisioning state; one instance per run, shared by its tasks."""

    def __init__(self, url: str, *, read_only: bool = False, run_id: str | None = None) -> None:
        """:param run_id: the flow run whose writes this store records (in the audit log)."""
        self.url = url
        self.run_id = run_id
        if not read_only:
            _private_sqlite_file(url)
        self.engine = make_engine(url)
        self._writes: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if self.engine.dialect.name == "sqlite" else contextlib.nullcontext()
        )
        """SQLite takes one writer at a time: the run's threads take turns here, where SQLite
        would make them retry after sleeps of 1 to 100 ms (its busy handler)."""
        self.read_only = read_only
        self._present: set[tuple[str, str]] | None = None
        if not read_only:
            self._create_or_upgrade()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        """A write transaction (one writer at a time on SQLite)."""
        with self._writes, self.engine.begin() as conn:
            yield conn

    @classmethod
    def for_run(cls, url: str, run_id: str | None, audit_retention_days: int) -> StateStore:
        """The store a flow run writes to: its audit entries carry the run id, and entries
        older than the retention are pruned first."""
        store = cls(url, run_id=run_id)
        store.prune_audit(datetime.now(UTC) - timedelta(days=audit_retention_days))
        return store

    def records(self, target: str, *, lazy: bool = False) -> dict[str, StateRecord]:
        """Every user provisioned to ``target``, by source id. ``lazy``: without their bodies,
        each fetched on first use (a plan needs the bodies of the few users that change; a
        million bodies cost a gigabyte)."""
        if self.read_only and not self._has_table(provisioned_users):
            return {}
        out: dict[str, StateRecord] = {}
        with self.engine.connect() as conn:
            # fetched 5,000 rows at a time (one at a time cost ~5 µs a row more)
            for rows in conn.execute(self._records_query(target, lazy=lazy)).partitions(5000):
                for row in rows:
                    record = self._record(target, row, lazy=lazy)
                    out[record.source_id] = record
        return out

    def _records_query(self, target: str, *, lazy: bool = False) -> sa.Select[Any]:
        t = provisioned_users
        return sa.select(
            t.c.source_id,
            t.c.scim_id,
            t.c.user_name,
            t.c.content_hash,
            sa.null().label("payload") if lazy else t.c.payload,
            t.c.status,
            self._optional(t.c.version),
            self._optional(t.c.dn),
        ).where(t.c.target == target)

    def _record(self, target: str, row: Any, *, lazy: bool = False) -> StateRecord:
        """A row of :meth:`_records_query` as a record; unpacked as a tuple (a Row's
        attributes cost ~1 µs each: 0.8 s for 47,500 records)."""
        sid, scim, name, digest, payload, status, version, dn = row
        text = partial(self._body, target, sid) if lazy else payload
        return StateRecord(sid, scim, name, digest, text, status, version, dn)

    def user_rows(self, target: str) -> Iterator[UserRow]:
        """Every user provisioned to ``target`` without its payload, streamed (a million rows
        are never held at once, neither here nor in the database driver)."""
        t = provisioned_users
        if self.read_only and not self._has_table(t):
            return
        query = sa.select(
            t.c.source_id,
            t.c.scim_id,
            t.c.user_name,
            t.c.content_hash,
            t.c.status,
            self._optional(t.c.dn),
        ).where(t.c.target == target)
        with self.engine.connect() as conn:
            for row in conn.execution_options(yield_per=5000).execute(query):
                yield UserRow(
                    row.source_id, row.scim_id, row.user_name, row.content_hash, row.status, row.dn
                )

    def source_ids(self, target: str, *, status: Status | None = None) -> frozenset[str]:
        """The source ids of the users provisioned to ``target`` (with ``status`` only)."""
        t = provisioned_users
        if self.read_only and not self._has_table(t):
            return frozenset()
        query = sa.select(t.c.source_id).where(t.c.target == target)
        if status is not None:
            query = query.where(t.c.status == status)
        with self.engine.connect() as conn:
            return frozenset(conn.execute(query).scalars())

    def load_bodies(self, target: str, records: Iterable[StateRecord]) -> None:
        """Fetch the bodies of these lazily read records at once (500 a query) rather than
        one query each on first use."""
        t = provisioned_users
        waiting = {r.source_id: r for r in records if not r.loaded}
        ids = sorted(waiting)
        if not ids:
            return
        with self.engine.connect() as conn:
            for at in range(0, len(ids), 500):
                query = sa.select(t.c.source_id, t.c.payload).where(
                    (t.c.target == target) & t.c.source_id.in_(ids[at : at + 500])
                )
                for source_id, body in conn.execute(query):
                    waiting[source_id].body = body

    def _body(self, target: str, source_id: str) -> str:
        t = provisioned_users
        query = sa.select(t.c.payload).where((t.c.target == target) & (t.c.source_id == source_id))
        with self.engine.connect() as conn:
            body = conn.execute(query).scalar()
        if body is None:
            raise ProvisionerError(
                f"the state record of {source_id} on {target} was deleted meanwhile"
            )
        return str(body)

    def records_of(self, target: str, source_ids: Iterable[str]) -> dict[str, StateRecord]:
        """The records of these source ids (those the store has), read in chunks."""
        t = provisioned_users
        wanted = sorted(set(source_ids))
        out: dict[str, StateRecord] = {}
        if not wanted or (self.read_only and not self._has_table(t)):
            return out
        with self.engine.connect() as conn:
            for at in range(0, len(wanted), 500):
                query = self._records_query(target).where(t.c.source_id.in_(wanted[at : at + 500]))
                for row in conn.execute(query):
                    out[row.source_id] = self._record(target, row)
        return out

    def disabled_since(self, target: str, source_ids: Iterable[str]) -> dict[str, datetime]:
        """When each of these users was deprovisioned by the provisioner: its latest confirmed
        write in the audit log is a ``disable`` (a later create or update, e.g. a user back in
        scope, then provisioned disabled, means it is not deprovisioned); for those that are.
        The audit pruning keeps a disabled user's writes while the user stays disabled."""
        t = audit_log
        wanted = sorted(set(source_ids))
        latest: dict[str, tuple[datetime, int, str]] = {}
        if not wanted or (self.read_only and not self._has_table(t)):
            return {}
        with self.engine.connect() as conn:
            for at in range(0, len(wanted), 500):
                query = sa.select(t.c.source_id, t.c.at, t.c.id, t.c.action).where(
                    t.c.target == target,
                    t.c.object == "user",
                    t.c.action.in_(("create", "update", "disable")),
                    t.c.outcome == "ok",
                    t.c.source_id.in_(wanted[at : at + 500]),
                )
                for source_id, moment, number, action in conn.execute(query):
                    entry = (_aware(moment), int(number), str(action))
                    if source_id not in latest or entry[:2] > latest[source_id][:2]:
                        latest[source_id] = entry
        return {sid: when for sid, (when, _, action) in latest.items() if action == "disable"}

    def correct(self, target: str, records: list[StateRecord], removals: list[str]) -> None:
        """Replace the records of these users and delete those of ``removals``, in one
        transaction (a reconciliation correcting only the rows that differ from the truth)."""
        self._replace(provisioned_users, target, [_user_row(r) for r in records], removals, [])

    def apply(
        self,
        target: str,
        saves: list[StateRecord],
        removals: list[str],
        audit: list[AuditEntry] | None = None,
    ) -> None:
        """Record confirmed user writes in one transaction: ``saves`` replace, ``removals``
        forget, ``audit`` is appended to the audit log. Call only with writes the target
        confirmed (failed ones belong in ``audit`` only)."""
        rows = [_user_row(r) for r in saves]
        self._replace(provisioned_users, target, rows, removals, audit or [])

    def lacks_dns(self, target: str) -> bool:
        """Whether some user of ``target`` has no DN recorded (written by a version that did
        not keep them)."""
        t = provisioned_users
        if self.read_only and not self._has_table(t):
            return False
        query = sa.select(t.c.source_id).where((t.c.target == target) & t.c.dn.is_(None)).limit(1)
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def update_dns(self, target: str, dns: dict[str, str]) -> None:
        """Record the new DN of users moved in the directory whose target user needed no
        write (``dns``: source id → DN)."""
        self._check_writable()
        if not dns:
            return
        t = provisioned_users
        statement = (
            sa.update(t)
            .where(
                (t.c.target == sa.bindparam("k_target")) & (t.c.source_id == sa.bindparam("k_id"))
            )
            .values(dn=sa.bindparam("new_dn"))
        )
        with self._transaction() as conn:
            conn.execute(
                statement, [{"k_target": target, "k_id": k, "new_dn": v} for k, v in dns.items()]
            )

    def watermark(self, target: str, stream: str) -> Watermark | None:
        """The watermark of ``target``'s ``stream`` (users or groups), if a cycle left one."""
        t = watermarks
        if self.read_only and not self._has_table(t):
            return None
        query = sa.select(t.c.method, t.c.value, t.c.server).where(
            (t.c.target == target) & (t.c.stream == stream)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return Watermark(row.method, row.value, row.server) if row is not None else None

    def set_watermark(self, target: str, stream: str, mark: Watermark | None) -> None:
        """Store (or, with ``None``, forget) the watermark of ``target``'s ``stream``; call only
        when every write of the cycle it ends was confirmed. An upsert: two runs ending at once
        (a group flow and a user flow syncing groups) do not collide."""
        self._check_writable()
        t = watermarks
        key = (t.c.target == target) & (t.c.stream == stream)
        with self._transaction() as conn:
            if mark is None:
                conn.execute(sa.delete(t).where(key))
                return
            values = {
                "target": target,
                "stream": stream,
                "method": mark.method,
                "value": mark.value,
                "server": mark.server,
                "updated_at": datetime.now(UTC),
            }
            name = conn.dialect.name
            if name not in ("postgresql", "sqlite"):
                conn.execute(sa.delete(t).where(key))
                conn.execute(sa.insert(t), values)
                return
            insert = (postgresql.insert if name == "postgresql" else sqlite.insert)(t)
            conn.execute(
                insert.values(**values).on_conflict_do_update(
                    index_elements=[t.c.target, t.c.stream],
                    set_={
                        c: insert.excluded[c] for c in ("method", "value", "server", "updated_at")
                    },
                )
            )

    def groups(self, target: str) -> dict[str, GroupRecord]:
        """Every group provisioned to ``target``, by source id."""
        t = provisioned_groups
        if self.read_only and not self._has_table(t):
            return {}
        query = sa.select(
            t.c.source_id, t.c.scim_id, t.c.display_name, t.c.members, t.c.foreign_members
        ).where(t.c.target == target)
        with self.engine.connect() as conn:
            return {
                row.source_id: GroupRecord(
                    row.source_id,
                    row.scim_id,
                    row.display_name,
                    frozenset(json.loads(row.members)),
                    frozenset(json.loads(row.foreign_members)),
                )
                for row in conn.execute(query)
            }

    def apply_groups(
        self,
        target: str,
        saves: list[GroupRecord],
        removals: list[str],
        audit: list[AuditEntry] | None = None,
    ) -> None:
        """Record confirmed group writes in one transaction, as :meth:`apply` does for users."""
        rows = [_group_row(g) for g in saves]
        self._replace(provisioned_groups, target, rows, removals, audit or [])

    def rebuild_groups(self, target: str, groups: list[GroupRecord]) -> None:
        """Replace every group the store holds for ``target`` by records rebuilt from the
        target's truth, in one transaction (users are corrected row by row: :meth:`correct`)."""
        self._check_writable()
        stamp = {"target": target, "updated_at": datetime.now(UTC)}
        t = provisioned_groups
        with self._transaction() as conn:
            conn.execute(sa.delete(t).where(t.c.target == target))
            if groups:
                conn.execute(sa.insert(t), [{**_group_row(g), **stamp} for g in groups])

    def audit(self, target: str, entries: list[AuditEntry]) -> None:
        """Append to the audit log (for attempts that changed no state: failures)."""
        self._replace(provisioned_users, target, [], [], entries)

    def _replace(
        self,
        table: sa.Table,
        target: str,
        rows: list[dict[str, Any]],
        removals: list[str],
        audit: list[AuditEntry],
    ) -> None:
        """Delete the rows of these source ids, insert the new ones and append the audit
        entries, in one transaction."""
        self._check_writable()
        if not rows and not removals and not audit:
            return
        now = datetime.now(UTC)
        keys = [{"k_target": target, "k_source_id": sid} for sid in removals]
        keys += [{"k_target": target, "k_source_id": row["source_id"]} for row in rows]
        with self._transaction() as conn:
            if keys:
                conn.execute(_delete_one(table), keys)
            if rows:
                conn.execute(
                    sa.insert(table), [{**row, "target": target, "updated_at": now} for row in rows]
                )
            if audit:
                conn.execute(
                    sa.insert(audit_log),
                    [
                        {
                            "at": now,
                            "run_id": self.run_id,
                            "target": target,
                            "object": e.object,
                            "action": e.action,
                            "source_id": e.source_id,
                            "name": e.name,
                            "scim_id": e.scim_id,
                            "outcome": e.outcome,
                            "cause": e.cause,
                        }
                        for e in audit
                    ],
                )

    def audit_rows(self, query: AuditQuery) -> list[AuditRow]:
        """Audit entries matching ``query``, newest first."""
        t = audit_log
        if self.read_only and not self._has_table(t):
            return []
        select = sa.select(t).order_by(t.c.id.desc()).limit(query.limit)
        if query.target:
            select = select.where(t.c.target == query.target)
        if query.who:
            who = query.who
            select = select.where(
                (t.c.source_id == who)
                | (t.c.scim_id == who)
                | (sa.func.lower(t.c.name) == who.lower())
            )
        if query.run_id:
            select = select.where(t.c.run_id == query.run_id)
        if query.action:
            select = select.where(t.c.action == query.action)
        if query.outcome:
            select = select.where(t.c.outcome == query.outcome)
        if query.since:
            select = select.where(t.c.at >= query.since)
        with self.engine.connect() as conn:
            return [
                AuditRow(
                    _aware(row.at),
                    row.run_id,
                    row.target,
                    row.object,
                    row.action,
                    row.source_id,
                    row.name,
                    row.scim_id,
                    row.outcome,
                    row.cause,
                )
                for row in conn.execute(select)
            ]

    def prune_audit(self, older_than: datetime) -> int:
        """Delete audit entries older than ``older_than``; return how many. The confirmed
        writes of a user still disabled are kept: they tell a deprovisioned user from one
        provisioned disabled (:meth:`disabled_since`)."""
        self._check_writable()
        t, u = audit_log, provisioned_users
        still_disabled = (
            sa.select(u.c.source_id)
            .where(u.c.target == t.c.target, u.c.source_id == t.c.source_id)
            .where(u.c.status == "disabled")
            .exists()
        )
        kept = (
            (t.c.object == "user")
            & t.c.action.in_(("create", "update", "disable"))
            & (t.c.outcome == "ok")
            & still_disabled
        )
        with self._transaction() as conn:
            result = conn.execute(sa.delete(t).where(t.c.at < older_than, ~kept))
            return int(result.rowcount or 0)

    def _create_or_upgrade(self) -> None:
        """Create the tables, and bring a store made by an earlier version up to date (new
        nullable columns), in one transaction. On PostgreSQL an advisory lock makes runs
        starting side by side on an empty database wait for each other (two concurrent
        CREATE TABLEs collide on the catalog's unique index); SQLite locks the file itself."""
        with self._transaction() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
            metadata.create_all(conn)
            inspector = sa.inspect(conn)
            for table in metadata.sorted_tables:
                present = {c["name"] for c in inspector.get_columns(table.name)}
                for column in table.columns:
                    if column.name not in present and column.nullable:
                        kind = column.type.compile(dialect=conn.dialect)
                        conn.execute(
                            sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")
                        )

    def _optional(self, column: sa.Column[Any]) -> Any:
        """A column added by a later version: NULL when a read-only store (which is never
        upgraded, e.g. for ``plan`` or ``audit``) does not have it yet."""
        if not self.read_only:
            return column
        if self._present is None:
            inspector = sa.inspect(self.engine)
            self._present = {
                (table, c["name"])
                for table in inspector.get_table_names()
                for c in inspector.get_columns(table)
            }
        if (column.table.name, column.name) in self._present:
            return column
        return sa.null().label(column.name)

    def _has_table(self, table: sa.Table) -> bool:
        """Whether the store exists, without creating an SQLite file as a side effect."""
        if self.engine.dialect.name == "sqlite":
            database = self.engine.url.database
            if database and database != ":memory:" and not Path(database).exists():
                return False
        return sa.inspect(self.engine).has_table(table.name)

    def _check_writable(self) -> None:
        if self.read_only:
            raise RuntimeError("this state store was opened read-only")

    def close(self) -> None:
        self.engine.dispose()
