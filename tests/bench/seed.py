"""Prepare a target and a state store of N users without sending N requests.

A million users cannot be loaded through SCIM for a benchmark (about 25 minutes at the target's
raw Bulk capacity here). Instead the directory is read and transformed by the provisioner's own
code (``stream_users``, ``transform_batch``), and what a finished initial load leaves behind is
written directly: each user as a resource of the scim2-server's SQLite storage
(``tests.support.scim_sqlite.seed``) and as a record of the state store. A reconciliation then
finds every user in step, as after a real load (checked at 10,000 users against a target
loaded over HTTP: the same result).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.config import load_config
from tasks.ldap.dn import normalize_dn
from tasks.ldap.extract import connect, mapped_attributes, stream_users
from tasks.scim.dialect import dialect_for
from tasks.state.store import StateRecord, StateStore
from tasks.sync.transform import content_hash, transform_batch
from tests.support.scim_sqlite import seed

NAMESPACE = uuid.UUID("6f1c1e0a-4b7e-4c38-9d55-3b1f0f6c2a11")
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"


def seed_provisioned(config_path: Path, storage_file: Path, batch: int = 10_000) -> dict[str, Any]:
    """Write every user of the config's directory to the target's SQLite storage and to the
    state store, as a finished initial load would have; return counts and seconds."""
    started = time.perf_counter()
    config = load_config(config_path)
    target = config.targets[0]
    dialect = dialect_for(target.scim_version, target.dialect)
    attributes = sorted(mapped_attributes([target.mapping]))
    store = StateStore(config.state.url)
    stamp = datetime.now(UTC).isoformat()
    seeded = 0
    conn = connect(config.source)
    try:
        for page in stream_users(conn, config.source, attributes, batch):
            desired, rejected = transform_batch(page.users, target.mapping, dialect)
            if rejected:
                raise SystemExit(f"seeding: {len(rejected)} users rejected: {rejected[0]}")
            resources, records = [], []
            for user in desired:
                scim_id = str(uuid.uuid5(NAMESPACE, user.source_id))
                payload = user.payload
                resources.append(
                    {
                        "schemas": [USER_SCHEMA],
                        **dialect.to_wire(payload),
                        "id": scim_id,
                        "meta": {"resourceType": "User", "created": stamp, "lastModified": stamp},
                    }
                )
                records.append(
                    StateRecord(
                        user.source_id,
                        scim_id,
                        user.user_name,
                        content_hash(payload),
                        payload,
                        "disabled" if payload.get("active") is False else "active",
                        dn=normalize_dn(user.dn),
                    )
                )
            seeded += seed(storage_file, resources)
            store.correct(target.name, records, [])
    finally:
        conn.unbind()
        store.close()
    return {"users": seeded, "seconds": round(time.perf_counter() - started, 1)}
