"""The ``provision_users`` flow: directory users → SCIM targets.

extract-from-LDAP (what changed since the targets' watermarks; everyone on the first cycle
or with ``full``) → transform-to-SCIM (batches) → plan → load-to-SCIM (batches) → report;
then, when the config has groups and ``sync_with_users`` is on, the steps of
``sync_group_memberships``. A target's watermark advances only when all its writes succeeded
and the guard held nothing back.

Extract and transform results are persisted and cached per flow run, so retrying a failed run
does not read the directory again; the plan is always made afresh from the state store, so work
that a failed run already confirmed is never redone.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import replace

from prefect import State, flow, get_run_logger
from prefect.runtime import flow_run

from flows.launch import collect_cycles_rarely
from flows.pipeline import (
    GroupReadAhead,
    Mode,
    TargetPipeline,
    cycle_succeeded,
    member_dns,
    name_run,
    open_store,
    read_users,
    run_label,
)
from flows.sync_group_memberships import run_group_sync
from tasks.config import Config, load_config
from tasks.errors import TargetUnreachable
from tasks.report import RunSummary, TargetReport, final_state, publish
from tasks.results import kept_for_retry
from tasks.scim.client import ScimClient
from tasks.scim.target import reached
from tasks.state.store import StateRecord


def _run_name() -> str:
    return run_label(flow_run.parameters, "provision-users")


def run_sync(
    config: Config,
    target: str | None,
    allow_mass_deprovisioning: bool = False,
    approval_timeout: int = 0,
    full: bool = False,
) -> RunSummary:
    """Read the directory's changes once, then plan and load every selected target; return
    the summary. Each target's watermark advances only when its cycle succeeded."""
    targets = config.target(target)
    mode = Mode(allow_mass_deprovisioning, approval_timeout)
    store = open_store(config)
    clients: dict[str, ScimClient] = {}  # each target reached once, kept for the group step
    with ExitStack() as closing:
        closing.callback(store.close)
        read = read_users(config, targets, store, full=full, preview=False)
        changes = read.changes
        name_run("provision-users", changes.complete)
        groups = config.source.groups
        with_groups = groups is not None and groups.sync_with_users
        states: dict[str, dict[str, StateRecord]] = {}  # the first target's, read once
        dns: set[str] = set()
        ahead = None
        if with_groups:  # before the load, which forgets deleted users
            for t in targets:
                state = store.records(t.name, lazy=True)
                dns |= member_dns(read.of(t), state)
                if not states:
                    states[t.name] = state
            if grouped := [t for t in targets if t.sync_groups]:
                ahead = closing.enter_context(
                    GroupReadAhead(config, grouped, store, full=full, users=changes, users_dns=dns)
                )
        reports = []
        for t in targets:
            pipeline = TargetPipeline(t, store, mode)
            state = states.pop(t.name) if t.name in states else store.records(t.name, lazy=True)
            mine = read.of(t)  # narrowed to the target's scope
            started = time.monotonic()
            try:  # nothing is said about a target this run did not reach
                client = clients[t.name] = closing.enter_context(reached(t))
            except TargetUnreachable as exc:  # the other targets go on; the run exits 2
                get_run_logger().error("%s", exc)
                reports.append(TargetReport.not_reached(t.name, str(exc)))
                continue
            step = pipeline.plan_changes(mine, state)
            reports.append(pipeline.apply_users(client, step, started))
        group_reports = (
            run_group_sync(
                config,
                [t for t, r in zip(targets, reports, strict=True) if not r.unreachable],
                store,
                full=full,
                users=changes,
                users_dns=dns,
                mode=mode,
                clients=clients,
                ahead=ahead,
            )
            if with_groups
            else []
        )
        # The user watermark waits for the groups too: the groups of the users changed in this
        # cycle are re-read only in this cycle.
        groups_failed = {g.target for g in group_reports if not cycle_succeeded(g)}
        for t, report in zip(targets, reports, strict=True):
            if changes.watermark is None or t.name in groups_failed:
                continue
            if cycle_succeeded(report):
                mark = replace(changes.watermark, server=read.prints[t.name])
                store.set_watermark(t.name, "users", mark)
    return RunSummary(
        "sync",
        targets=reports,
        groups=group_reports,
        source_entries=len(changes.entries) + len(changes.invalid),
        directory=changes.summary(),
    )


@flow(name="provision_users", flow_run_name=_run_name, validate_parameters=True)
def provision_users(
    config_path: str,
    target: str | None = None,
    allow_mass_deprovisioning: bool = False,
    approval_timeout: int = 0,
    full: bool = False,
) -> State:
    """Provision the directory's users into the SCIM targets of a config file.

    Args:
        config_path: the YAML config file (see docs/configuration.md).
        target: the name of one target, or none for all of them.
        allow_mass_deprovisioning: let disables/deletes above the guard's limit through
            (for unattended runs that were checked otherwise).
        approval_timeout: seconds to pause for an operator's approval in the Prefect UI
            when the guard trips; 0 holds the deprovisioning back at once.
        full: read every user instead of the changes since the last successful cycle.
    """
    collect_cycles_rarely()
    config = load_config(config_path)
    with kept_for_retry(config.state.results_retention_days) as results:
        summary = run_sync(config, target, allow_mass_deprovisioning, approval_timeout, full)
        results.keep = summary.retry_may_help()
    publish(summary, "provision-users")
    get_run_logger().info("summary: %s", summary.headline)
    return final_state(summary)
