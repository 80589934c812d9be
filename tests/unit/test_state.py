"""The state store's lean reads: lazy bodies, payload-free rows, corrections."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tasks.state.store import StateRecord, StateStore


def test_lazy_records_fetch_their_bodies_when_used(tmp_path: Path) -> None:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    records = [
        StateRecord(f"id-{n}", f"scim-{n}", f"u{n}", f"h{n}", {"userName": f"u{n}"}, "active")
        for n in range(3)
    ]
    store.correct("t", records, [])
    lazy = store.records("t", lazy=True)
    assert not any(r.loaded for r in lazy.values())
    assert lazy["id-0"].payload == {"userName": "u0"} and lazy["id-0"].loaded
    store.load_bodies("t", [lazy["id-1"], lazy["id-2"]])
    assert lazy["id-1"].loaded and lazy["id-2"].body == records[2].body
    assert lazy == store.records("t")
    store.correct("t", [], ["id-0"])
    assert set(store.records("t")) == {"id-1", "id-2"}
    assert [r.source_id for r in store.user_rows("t")] == ["id-1", "id-2"]
    assert set(store.records_of("t", ["id-2", "id-9"])) == {"id-2"}


def test_a_new_state_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """The state store holds personal data: a new SQLite file (and its WAL) is 0600 even
    under a permissive umask."""
    old = os.umask(0o022)
    try:
        store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
        store.apply("app", [], [], [])
        store.close()
    finally:
        os.umask(old)
    for name in ("state.db", "state.db-wal"):
        path = tmp_path / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name


def test_a_user_back_in_scope_then_provisioned_disabled_is_not_deprovisioned(
    tmp_path: Path,
) -> None:
    """disabled_since answers only when the latest confirmed write is a disable; pruning the
    audit log keeps the disable of a user still disabled."""
    from datetime import UTC, datetime, timedelta

    import sqlalchemy as sa

    from tasks.state.store import AuditEntry, audit_log

    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    for sid in ("back", "gone"):
        record = StateRecord(sid, f"scim-{sid}", sid, "h", {"userName": sid}, "disabled")
        store.apply("app", [record], [], [AuditEntry("user", "disable", sid, sid, None, "ok")])
    store.apply("app", [], [], [AuditEntry("user", "update", "back", "back", None, "ok")])
    assert set(store.disabled_since("app", ["back", "gone"])) == {"gone"}
    with store.engine.begin() as conn:  # everything a year old
        conn.execute(sa.update(audit_log).values(at=datetime.now(UTC) - timedelta(days=365)))
    store.prune_audit(datetime.now(UTC) - timedelta(days=180))
    assert set(store.disabled_since("app", ["back", "gone"])) == {"gone"}
    store.close()
