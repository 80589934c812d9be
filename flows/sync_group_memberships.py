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
from contextlib import ExitStack
from dataclasses import replace

from prefect import State, flow, get_run_logger
from prefect.runtime import flow_run

from flows.launch import collect_cycles_rarely
from flows.pipeline import (
    GroupRead,
    GroupReadAhead,
    Mode,
    TargetPipeline,
    cycle_succeeded,
    name_run,
    open_store,
    read_groups,
    run_label,
)
from tasks.config import Config, TargetConfig, load_config
from tasks.errors import ConfigError, TargetUnreachable
from tasks.ldap.changes import UserChanges
from tasks.report import GroupReport, RunSummary, final_state, publish
from tasks.results import kept_for_retry
from tasks.scim.client import ScimClient
from tasks.scim.target import reached
from tasks.state.store import StateStore


def _run_name() -> str:
    return run_label(flow_run.parameters, "sync-group-memberships")


def sync_groups_target(
    config: Config,
    target: TargetConfig,
    read: GroupRead,
    store: StateStore,
    mode: Mode,
    client: ScimClient | None = None,
) -> GroupReport:
    """Plan and load one target's groups (members resolved against the user records as they
    are now, after any user step); return the report. ``client``: the target reached by the
    user step of this run (else it is reached here)."""
    query = config.source.groups
    assert query is not None
    started = time.monotonic()
    pipeline = TargetPipeline(target, store, mode)
    with ExitStack() as closing:
        if client is None:  # nothing is said about a target this run did not reach
            client = closing.enter_context(reached(target))
        records = store.records(target.name, lazy=True)  # no payloads needed
        step = pipeline.plan_groups(query, read, records)
        return pipeline.apply_groups(client, step, started)


def run_group_sync(
    config: Config,
    targets: list[TargetConfig],
    store: StateStore,
    *,
    full: bool = False,
    users: UserChanges | None = None,
    users_dns: Iterable[str] = (),
    mode: Mode | None = None,
    clients: dict[str, ScimClient] | None = None,
    ahead: GroupReadAhead | None = None,
) -> list[GroupReport]:
    """Read the groups (the changed ones, in an incremental cycle) once and sync them to every
    target that takes groups; ``users``: the user cycle this follows, if any, and
    ``users_dns`` the DNs of the users it changed or found gone (taken before the user load
    forgot deleted users); ``ahead``: that read, started during the user load."""
    wanted = [t for t in targets if t.sync_groups]
    if config.source.groups is None or not wanted:
        return []
    read = ahead.take(wanted) if ahead is not None else None
    if read is None:
        read = read_groups(
            config, wanted, store, full=full, preview=False, users=users, users_dns=users_dns
        )
    if users is None:  # a user cycle names its run itself
        name_run("sync-group-memberships", read.groups.complete)
    reports = []
    for t in wanted:
        try:
            client = (clients or {}).get(t.name)
            report = sync_groups_target(config, t, read, store, mode or Mode(), client)
        except TargetUnreachable as exc:  # the other targets go on; the run exits 2
            get_run_logger().error("%s", exc)
            report = GroupReport.not_reached(t.name, str(exc))
        reports.append(report)
        if read.groups.watermark is not None and cycle_succeeded(report):
            mark = replace(read.groups.watermark, server=read.prints[t.name])
            store.set_watermark(t.name, "groups", mark)
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
    collect_cycles_rarely()
    config = load_config(config_path)
    if config.source.groups is None:
        raise ConfigError("the config has no source.groups section: there are no groups to sync")
    targets = config.target(target)
    store = open_store(config)
    with kept_for_retry(config.state.results_retention_days) as results:
        try:
            reports = run_group_sync(
                config,
                targets,
                store,
                full=full,
                mode=Mode(allow_mass_deprovisioning, approval_timeout),
            )
        finally:
            store.close()
        summary = RunSummary("groups", groups=reports)
        results.keep = summary.retry_may_help()
    publish(summary, "sync-group-memberships")
    get_run_logger().info("summary: %s", summary.headline)
    return final_state(summary)
