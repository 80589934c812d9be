"""The ``sync_group_memberships`` flow: directory groups → SCIM groups, members by PATCH deltas.

extract-groups-from-LDAP (the groups changed since the targets' group watermarks, and, after
a user cycle, the groups of the users it changed; every group on a full pass) → resolve
members (user DNs known to the state store, and the users read in this run) → plan per target
(create / rename / member delta / delete) → load-groups-to-SCIM (batches) → report. A
target's group watermark advances only when all its group writes succeeded.

It runs on its own schedule, and ``provision_users`` runs the same steps right after the users
when ``source.groups.sync_with_users`` is on (the default), so one sync brings both in step.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import State

from tasks.batching import as_is, batches
from tasks.changes import Changes, UserChanges, start_of
from tasks.config import Config, TargetConfig, load_config
from tasks.errors import ConfigError, TargetUnreachable
from tasks.extract import SourceUser, extract_users
from tasks.groups import (
    DesiredGroup,
    GroupExtraction,
    GroupPlan,
    SourceGroup,
    extract_group_changes,
    group_fingerprint,
    incremental_groups,
    plan_groups,
    resolve_groups,
)
from tasks.guard import apply_group_guard
from tasks.load_groups import GroupLoader, load_groups, max_members
from tasks.plan import by_status
from tasks.report import GroupReport, LoadProgress, final_state, headline, publish
from tasks.scim.client import ScimClient
from tasks.state import GroupRecord, StateRecord, StateStore
from tasks.target import discover, reached, uses_group_patch


def _run_name() -> str:
    target = flow_run.parameters.get("target") or "all-targets"
    mode = "full" if flow_run.parameters.get("full") else "incremental"
    return f"sync-group-memberships-{target}-{mode}"


@task(name="plan-groups", cache_policy=NO_CACHE)
def make_group_plan(
    target: TargetConfig,
    desired: list[DesiredGroup],
    users: dict[str, StateRecord],
    groups: dict[str, GroupRecord],
    warnings: list[str],
    gone: set[str] | None = None,
    disabled_members: frozenset[str] = frozenset(),
) -> GroupPlan:
    """Compare the directory's groups with the state store (always fresh: never cached)."""
    plan = plan_groups(target, desired, users, groups, warnings, gone, disabled_members)
    get_run_logger().info("group plan for %s: %s", target.name, plan.counts())
    return plan


def sync_groups_target(
    config: Config,
    target: TargetConfig,
    users: list[SourceUser],
    groups: Changes[SourceGroup],
    store: StateStore,
    *,
    allow_mass_deprovisioning: bool = False,
    approval_timeout: int = 0,
) -> GroupReport:
    """Plan and load one target's groups; return the report.

    ``users``: the users read in this run; the other members are found among the users the
    state store knows (by their DN). Group deletions go through the mass-deprovisioning guard.
    """
    started = time.monotonic()
    with reached(target) as client:  # nothing is said about a target this run did not reach
        return _sync_groups_target(
            config,
            client,
            users,
            groups,
            store,
            started,
            allow_mass_deprovisioning=allow_mass_deprovisioning,
            approval_timeout=approval_timeout,
        )


def _sync_groups_target(
    config: Config,
    client: ScimClient,
    users: list[SourceUser],
    groups: Changes[SourceGroup],
    store: StateStore,
    started: float,
    *,
    allow_mass_deprovisioning: bool,
    approval_timeout: int,
) -> GroupReport:
    target = client.target
    before = dict(client.stats)  # the report counts the group step's requests, not the probe
    query = config.source.groups
    assert query is not None
    records = store.records(target.name, lazy=True)  # no payloads needed
    known = {r.dn: r.source_id for r in by_status(records.values()) if r.dn}  # normalized
    extraction = GroupExtraction(groups.entries, groups.invalid)
    desired, warnings = resolve_groups(extraction, users, query, known)
    state = store.groups(target.name)
    plan = make_group_plan(
        target,
        as_is(desired),
        as_is(records),
        as_is(state),
        warnings,
        as_is(groups.gone(state)),
        as_is(disabled_members(target, records, store)),
    )
    plan, held_back = apply_group_guard(
        target.name,
        plan,
        len(state),
        target.deprovision_guard,
        allow=allow_mass_deprovisioning,
        approval_timeout=approval_timeout,
    )
    report = GroupReport(target.name, plan, held_back=held_back)
    if plan.actions:
        try:
            capabilities = discover(target)
            loader = GroupLoader(
                client,
                store,
                use_patch=uses_group_patch(target, capabilities),
                max_members=max_members(target, capabilities, client.dialect),
                filtering=capabilities.filter,
                managed_users=(r.scim_id for r in records.values()),
                page_size=min(1000, capabilities.max_page_size or 1000),
                cursor=capabilities.cursor,
            )
            artifact = create_progress_artifact(
                progress=0.0, description=f"{len(plan.actions)} group changes into {target.name}"
            )
            progress = LoadProgress(len(plan.actions), f"{target.name} groups", artifact)
            try:
                for number, batch in enumerate(batches(plan.actions, target.batch_size), 1):
                    outcomes = load_groups.with_options(
                        task_run_name=f"load-groups-{target.name}-{number}"
                    )(loader, as_is(batch))
                    for outcome in outcomes:
                        report.add(outcome)
                    progress.advance(len(batch))
            finally:
                progress.close()
                report.notes.extend(loader.patch.notes)
        finally:
            report.requests.update({k: n - before.get(k, 0) for k, n in client.stats.items()})
    report.seconds = time.monotonic() - started
    return report


def name_run(prefix: str, full: bool) -> None:
    """Name the flow run after the pass it turned out to be: a first cycle, a new filter or a
    full user pass is a full pass though nobody asked for one (``--full``)."""
    target = flow_run.parameters.get("target") or "all-targets"
    name = f"{prefix}-{target}-{'full' if full else 'incremental'}"
    run_id = flow_run.get_id()
    if run_id is None or flow_run.get_name() == name:
        return
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(UUID(run_id), name=name)
    except Exception as exc:  # a name is not worth failing a run for
        get_run_logger().warning("could not rename the flow run to %s: %s", name, exc)


def disabled_members(
    target: TargetConfig, records: dict[str, StateRecord], store: StateStore
) -> frozenset[str]:
    """With ``disabled_users_keep_groups``: the users provisioned disabled (pre-hires, locked
    accounts in scope), who keep their groups; never those this provisioner deprovisioned
    (their confirmed ``disable`` is in the audit log)."""
    if not (target.provision_disabled_users and target.disabled_users_keep_groups):
        return frozenset()
    disabled = [sid for sid, record in records.items() if record.status == "disabled"]
    deprovisioned = store.disabled_since(target.name, disabled)
    return frozenset(sid for sid in disabled if sid not in deprovisioned)


def open_store(config: Config) -> StateStore:
    """The state store of this flow run (its audit entries carry the run's id)."""
    run_id = flow_run.get_id()
    return StateStore.for_run(config.state.url, run_id, config.state.audit_retention_days)


def member_dns(users: UserChanges, records: dict[str, StateRecord]) -> set[str]:
    """DNs of the users an incremental user cycle changed, or found gone among one target's
    ``records``: the groups listing them are read again (a user's membership on the target
    follows its status). Take them before the user load forgets deleted users."""
    if users.complete:
        return set()
    dns = {u.dn for u in users.entries}
    dns.update(d for sid in users.gone(records) or () if (d := records[sid].dn))
    return dns


def run_group_sync(
    config: Config,
    targets: list[TargetConfig],
    store: StateStore,
    *,
    full: bool = False,
    users: UserChanges | None = None,
    users_dns: Iterable[str] = (),
    allow_mass_deprovisioning: bool = False,
    approval_timeout: int = 0,
) -> list[dict[str, Any]]:
    """Read the groups (the changed ones, in an incremental cycle) once and sync them to every
    target that takes groups; ``users``: the user cycle this follows, if any, and
    ``users_dns`` the DNs of the users it changed or found gone (:func:`member_dns`, taken
    before the user load forgot deleted users)."""
    wanted = [t for t in targets if t.sync_groups]
    query = config.source.groups
    if query is None or not wanted:
        return []
    source = config.source
    method = source.change_detection if incremental_groups(query) else "full"
    prints = {t.name: group_fingerprint(source, t) for t in wanted}
    marks = {t.name: store.watermark(t.name, "groups") for t in wanted}
    # a full user pass says nothing of which users changed: their groups are all read again
    after_full_users = users is not None and users.complete
    start = start_of(
        method,  # type: ignore[arg-type]
        marks,
        prints,
        full=full or after_full_users,
        full_because=(
            "a full pass was asked for (--full)" if full else "the user cycle was a full pass"
        ),
    )
    groups = extract_group_changes(source, start, sorted(users_dns))
    if users is None:  # a user cycle names its run itself
        name_run("sync-group-memberships", groups.complete)
    read: list[SourceUser] = users.entries if users is not None else []
    if (users is None or not users.complete) and (
        query.members_from == "user_member_of" or any(store.lacks_dns(t.name) for t in wanted)
    ):
        # memberOf of every user is needed, or the state store does not know every
        # provisioned user's DN yet (a store from before DNs were kept)
        read = extract_users(source, []).users
    reports = []
    for t in wanted:
        try:
            report = sync_groups_target(
                config,
                t,
                read,
                groups,
                store,
                allow_mass_deprovisioning=allow_mass_deprovisioning,
                approval_timeout=approval_timeout,
            )
        except TargetUnreachable as exc:  # the other targets go on; the run exits 2
            get_run_logger().error("%s", exc)
            report = GroupReport.not_reached(t.name, str(exc))
        reports.append(report.as_dict())
        done = not sum(report.failed.values()) and not report.held_back and not report.unreachable
        if groups.watermark is not None and done:
            store.set_watermark(t.name, "groups", replace(groups.watermark, server=prints[t.name]))
    return reports


@flow(name="sync_group_memberships", flow_run_name=_run_name, validate_parameters=True)
def sync_group_memberships(
    config_path: str,
    target: str | None = None,
    full: bool = False,
    allow_mass_deprovisioning: bool = False,
    approval_timeout: int = 0,
) -> State:
    """Bring the SCIM targets' groups and memberships in step with the directory's groups.

    Args:
        config_path: the YAML config file (see docs/configuration.md).
        target: the name of one target, or none for all of them.
        full: read every group instead of the changes since the last successful cycle.
        allow_mass_deprovisioning: let group deletions above the guard's limit through
            (for unattended runs that were checked otherwise).
        approval_timeout: seconds to pause for an operator's approval in the Prefect UI
            when the guard trips; 0 holds the deletions back at once.
    """
    config = load_config(config_path)
    if config.source.groups is None:
        raise ConfigError("the config has no source.groups section: there are no groups to sync")
    targets = config.target(target)
    store = open_store(config)
    try:
        summary: dict[str, Any] = {
            "groups": run_group_sync(
                config,
                targets,
                store,
                full=full,
                allow_mass_deprovisioning=allow_mass_deprovisioning,
                approval_timeout=approval_timeout,
            )
        }
    finally:
        store.close()
    summary["headline"] = headline(summary)
    publish(summary, "sync-group-memberships")
    get_run_logger().info("summary: %s", summary["headline"])
    return final_state(summary)
