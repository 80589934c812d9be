"""``scim-provisioner check``: everything a run needs, tried before the first run.

Each check gives one finding (a line: what was checked and what was found); a problem names
the file, key, target or URL. Nothing is written anywhere: the directory is searched for
entry counts only, each target gets its reachability probe and its discovery reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from tasks.config import Config, SecretRef, TargetConfig, load_config
from tasks.errors import ProvisionerError, TargetUnreachable
from tasks.ldap.extract import connect, paged_entries
from tasks.scim.client import ScimClient, safe_url
from tasks.scim.target import reached, unknown_extension_attributes
from tasks.state.store import make_engine


@dataclass(frozen=True, slots=True)
class Finding:
    ok: bool
    subject: str
    """What was checked: ``config``, ``source``, ``state``, ``target NAME``."""
    text: str


def _secrets(config: Config) -> Iterator[tuple[str, SecretRef]]:
    if config.source.bind_password is not None:
        yield "source.bind_password", config.source.bind_password
    for t in config.targets:
        auth = t.auth
        for key in ("password", "token", "client_secret"):
            ref = getattr(auth, key)
            if ref is not None:
                yield f"targets[{t.name}].auth.{key}", ref


def check_secrets(config: Config) -> list[Finding]:
    """Every secret the config refers to can be read (its value is never shown)."""
    findings = []
    for key, ref in _secrets(config):
        where = (
            f"environment variable {ref.env}"
            if ref.env
            else f"Prefect Secret {ref.prefect_secret!r}"
        )
        try:
            ref.resolve()
        except ProvisionerError as exc:
            findings.append(Finding(False, "config", f"{key}: {exc}"))
        else:
            findings.append(Finding(True, "config", f"{key}: {where} is set"))
    return findings


def check_files(config: Config) -> list[Finding]:
    """Every file the config names can be read."""
    files = [("source.ca_file", config.source.ca_file)]
    files += [(f"targets[{t.name}].ca_file", t.ca_file) for t in config.targets]
    findings = []
    for key, path in files:
        if path is None:
            continue
        readable = os.access(path, os.R_OK)
        text = f"{key}: {path} is readable" if readable else f"{key}: {path} cannot be read"
        findings.append(Finding(readable, "config", text))
    return findings


def check_source(config: Config) -> list[Finding]:
    """Bind to the directory, then count the entries each configured search finds."""
    source = config.source
    try:
        conn = connect(source)
    except ProvisionerError as exc:
        return [Finding(False, "source", str(exc))]
    findings = [
        Finding(True, "source", f"bound to {source.url} as {source.bind_dn or '(anonymous)'}")
    ]
    searches = [("users", source.users.base_dn, source.users.filter, source.users.scope)]
    if source.groups is not None:
        groups = source.groups
        searches.append(("groups", groups.base_dn, groups.filter, groups.scope))
    try:
        for what, base, filter_, scope in searches:
            try:
                count = sum(1 for _ in paged_entries(conn, source, base, filter_, scope, ["1.1"]))
            except ProvisionerError as exc:
                findings.append(Finding(False, "source", f"{what}: {exc}"))
                continue
            text = f"{what}: {count} entries under {base!r} match {filter_}"
            findings.append(Finding(count > 0, "source", text + ("" if count else ": none")))
    finally:
        conn.unbind()
    return findings


def check_target(target: TargetConfig) -> list[Finding]:
    """Reach the target with its credentials, read what it supports, check the mapping's
    extension attributes against its /Schemas."""
    try:
        with reached(target) as client:
            return _target_findings(target, client)
    except TargetUnreachable as exc:
        return [Finding(False, f"target {target.name}", str(exc))]


def _target_findings(target: TargetConfig, client: ScimClient) -> list[Finding]:
    subject = f"target {target.name}"
    users = client.users_at_probe
    findings = [
        Finding(
            True,
            subject,
            f"{safe_url(target.url)} answers with these credentials"
            + (f" ({users} users there now)" if users is not None else ""),
        )
    ]
    try:
        capabilities = client.discover()
        schemas = client.schemas()
    except ProvisionerError as exc:
        return [*findings, Finding(False, subject, f"discovery failed: {exc}")]
    findings.append(Finding(True, subject, f"supports: {capabilities}"))
    if schemas is None:
        findings.append(
            Finding(True, subject, "publishes no /Schemas: extension attributes unchecked")
        )
        return findings
    unknown = unknown_extension_attributes(target.mapping, schemas, client.dialect)
    if unknown:
        text = f"the mapping uses attributes its /Schemas does not define: {', '.join(unknown)}"
        findings.append(Finding(False, subject, text))
    else:
        findings.append(Finding(True, subject, "every mapped extension attribute is defined"))
    return findings


def check_state(config: Config) -> list[Finding]:
    """The state store can be opened (a SQLite file's folder written)."""
    url = config.state.url
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(str(parsed.database)).parent
        ok = os.access(folder, os.W_OK)
        where = f"SQLite file {parsed.database}"
        return [
            Finding(
                ok, "state", f"{where}: " + ("folder writable" if ok else f"{folder} not writable")
            )
        ]
    engine = make_engine(url)
    try:
        with engine.connect():
            pass
    except sa.exc.SQLAlchemyError as exc:
        shown = parsed.render_as_string(hide_password=True)
        return [
            Finding(False, "state", f"state.url {shown}: cannot connect ({exc.__class__.__name__})")
        ]
    finally:
        engine.dispose()
    shown = parsed.render_as_string(hide_password=True)
    return [Finding(True, "state", f"state.url {shown}: connected")]


def run_checks(path: str | Path, target: str | None = None) -> list[Finding]:
    """Every check, in the order a run needs them; a config that does not load ends it."""
    try:
        config = load_config(path)
        targets = config.target(target)
    except ProvisionerError as exc:
        return [Finding(False, "config", str(exc))]
    findings = [Finding(True, "config", f"{path}: valid")]
    findings += check_secrets(config)
    findings += check_files(config)
    findings += check_source(config)
    findings += check_state(config)
    for t in targets:
        findings += check_target(t)
    return findings
