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
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import State

from flows.sync_group_memberships import member_dns, name_run, open_store, run_group_sync
from tasks.batching import as_is, batches
from tasks.changes import UserChanges, as_extraction, extract_changes, fingerprint, start_of
from tasks.config import Config, TargetConfig, load_config
from tasks.errors import TargetUnreachable
from tasks.extract import Extraction, mapped_attributes
from tasks.guard import apply_guard
from tasks.load import Loader, load_batch
from tasks.plan import Action, Plan, plan_users
from tasks.report import LoadProgress, TargetReport, final_state, headline, publish
from tasks.scim.client import ScimClient
from tasks.scim.dialect import Capabilities
from tasks.state import StateRecord, StateStore
from tasks.target import discover, reached, uses_bulk, uses_patch
from tasks.transform import DesiredUser, Rejection, transform_users

TRANSFORM_BATCH = 2000


def _run_name() -> str:
    target = flow_run.parameters.get("target") or "all-targets"
    mode = "full" if flow_run.parameters.get("full") else "incremental"
    return f"provision-users-{target}-{mode}"


def desired_users(
    extraction: Extraction, target: TargetConfig
) -> tuple[list[DesiredUser], list[Rejection]]:
    """Transform every extracted user for one target, in batches (cached per flow run)."""
    futures = [
        transform_users.submit(as_is(batch), target.mapping, target.scim_version, target.dialect)
        for batch in batches(extraction.users, TRANSFORM_BATCH)
    ]
    desired: list[DesiredUser] = []
    rejected = [Rejection("", dn, reason) for dn, reason in extraction.invalid]
    for future in futures:
        ok, bad = future.result()
        desired += ok
        rejected += bad
    return desired, rejected


@task(name="plan", cache_policy=NO_CACHE)
def make_plan(
    target: TargetConfig,
    desired: list[DesiredUser],
    rejected: list[Rejection],
    state: dict[str, StateRecord],
    gone: set[str] | None = None,
    expired: frozenset[str] = frozenset(),
) -> Plan:
    """Compare the desired users with the state store (always fresh: never cached)."""
    plan = plan_users(target, desired, rejected, state, gone, expired)
    get_run_logger().info("plan for %s: %s", target.name, plan.counts())
    return plan


@task(name="index-target-users", cache_policy=NO_CACHE)
def index_target(loader: Loader, creates: int, capabilities: Capabilities) -> None:
    """Before many creates, list the target's users once instead of one look-up per create."""
    if loader.prefetch(creates, capabilities):
        get_run_logger().info(
            "listed %d users of %s to match %d creates",
            len(loader.index or {}),
            loader.target.name,
            creates,
        )


def load_actions(
    loader: Loader, store: StateStore, actions: list[Action], report: TargetReport, label: str
) -> None:
    """Load actions in batches (one task each), with a progress bar and a progress artifact."""
    name = loader.target.name
    artifact = create_progress_artifact(
        progress=0.0, description=f"{label}: {len(actions)} changes into {name}"
    )
    progress = LoadProgress(len(actions), name, artifact)
    size = loader.target.batch_size
    if loader.bulk is not None:  # room for `concurrency` Bulk requests in flight per batch
        size = max(size, loader.target.concurrency * (loader.bulk.bulk_max_operations or 1))
    try:
        for number, batch in enumerate(batches(actions, size), 1):
            result = load_batch.with_options(task_run_name=f"load-{name}-{label}-{number}")(
                loader, store, as_is(batch), f"{label}-{number}"
            )
            for outcome in result.outcomes:
                report.add(outcome)
            report.requests.update(result.requests)
            progress.advance(len(batch))
    finally:
        progress.close()


def sync_target(
    target: TargetConfig,
    extraction: Extraction,
    store: StateStore,
    *,
    allow_mass_deprovisioning: bool = False,
    approval_timeout: int = 0,
    changes: UserChanges | None = None,
    transformed: tuple[list[DesiredUser], list[Rejection]] | None = None,
    state: dict[str, StateRecord] | None = None,
) -> TargetReport:
    """Plan and load one target; return its report.

    ``extraction`` holds every user in scope, or, with ``changes`` of an incremental cycle,
    the changed users (``changes`` then says which provisioned users are gone);
    ``transformed``: the extraction already transformed for this target (not done again);
    ``state``: the target's records, when the caller has just read them.
    References to users created in this run (a manager) cannot be resolved in the first plan;
    when there are such references, a second, small plan after the creates fills them in.
    """
    started = time.monotonic()
    with reached(target) as client:  # nothing is said about a target this run did not reach
        return _sync_target(
            client,
            extraction,
            store,
            started,
            allow_mass_deprovisioning=allow_mass_deprovisioning,
            approval_timeout=approval_timeout,
            changes=changes,
            transformed=transformed,
            state=state,
        )


def _sync_target(
    client: ScimClient,
    extraction: Extraction,
    store: StateStore,
    started: float,
    *,
    allow_mass_deprovisioning: bool,
    approval_timeout: int,
    changes: UserChanges | None,
    transformed: tuple[list[DesiredUser], list[Rejection]] | None,
    state: dict[str, StateRecord] | None,
) -> TargetReport:
    target = client.target
    desired, rejected = transformed or desired_users(extraction, target)
    state = state if state is not None else store.records(target.name, lazy=True)
    gone = changes.gone(state) if changes is not None else None
    # the bodies the plan diffs against (changed users, leavers), in a few queries
    differing = [
        record
        for user in desired
        if (record := state.get(user.source_id)) and record.content_hash != user.content_hash
    ]
    if gone is None:  # a full pass: whoever is not in it is deprovisioned
        seen = {u.source_id for u in desired} | {r.source_id for r in rejected}
        leaving = [r for source_id, r in state.items() if source_id not in seen]
    else:
        leaving = [state[g] for g in gone if g in state]
    store.load_bodies(target.name, [*differing, *leaving])
    expired = disabled_too_long(target, state, store)
    plan = make_plan(
        target, as_is(desired), as_is(rejected), as_is(state), as_is(gone), as_is(expired)
    )
    plan, held_back = apply_guard(
        target.name,
        plan,
        len(state),
        target.deprovision_guard,
        allow=allow_mass_deprovisioning,
        approval_timeout=approval_timeout,
    )
    report = TargetReport(target=target.name, planned=plan.counts(), plan=plan)
    report.held_back = held_back
    store.update_dns(target.name, plan.moved)
    if plan.actions:
        capabilities = discover(target)
        loader = Loader(
            client,
            use_patch=uses_patch(target, capabilities),
            managed_ids=(r.scim_id for r in state.values()),
            bulk=capabilities if uses_bulk(target, capabilities) else None,
            etag=capabilities.etag,
            filtering=capabilities.filter,
            capabilities=capabilities,
        )
        creates = sum(1 for a in plan.actions if a.kind == "create")
        index_target(loader, creates, capabilities)
        try:
            load_actions(loader, store, plan.actions, report, "batch")
            if plan.deferred and report.done["create"]:
                state = store.records(target.name, lazy=True)
                follow_up = make_plan(
                    target,
                    as_is(desired),
                    as_is(rejected),
                    as_is(state),
                    as_is(gone),
                    as_is(expired),
                )
                updates = [a for a in follow_up.actions if a.kind == "update"]
                report.planned["update"] += len(updates)
                if updates:
                    load_actions(loader, store, updates, report, "references")
        finally:
            report.notes.extend(loader.patch.notes)
    report.seconds = time.monotonic() - started
    return report


def disabled_too_long(
    target: TargetConfig, state: dict[str, StateRecord], store: StateStore
) -> frozenset[str]:
    """The users this provisioner disabled more than ``delete_disabled_after_days`` ago (by
    the audit log) and still disabled: due for deletion (disable now, delete later)."""
    days = target.delete_disabled_after_days
    if days is None or target.remove_action != "disable":
        return frozenset()
    disabled = [sid for sid, record in state.items() if record.status == "disabled"]
    cutoff = datetime.now(UTC) - timedelta(days=days)
    since = store.disabled_since(target.name, disabled)
    return frozenset(sid for sid, moment in since.items() if moment <= cutoff)


def cycle_succeeded(report: TargetReport) -> bool:
    """Whether a target's watermark may advance: every write confirmed, nothing held back."""
    return not sum(report.failed.values()) and not report.held_back


def run_sync(
    config: Config,
    target: str | None,
    allow_mass_deprovisioning: bool = False,
    approval_timeout: int = 0,
    full: bool = False,
) -> dict[str, Any]:
    """Read the directory's changes once, then plan and load every selected target; return
    the summary. Each target's watermark advances only when its cycle succeeded."""
    targets = config.target(target)
    attributes = sorted(mapped_attributes(t.mapping for t in targets))
    store = open_store(config)
    try:
        prints = {t.name: fingerprint(config.source, t, attributes) for t in targets}
        marks = {t.name: store.watermark(t.name, "users") for t in targets}
        start = start_of(config.source.change_detection, marks, prints, full=full)  # type: ignore[arg-type]
        changes = extract_changes(config.source, attributes, start)
        name_run("provision-users", changes.complete)
        extraction = as_extraction(changes)
        groups = config.source.groups
        with_groups = groups is not None and groups.sync_with_users
        dns: set[str] = set()
        reports = []
        for t in targets:
            state = store.records(t.name, lazy=True)
            if with_groups:  # before the load, which forgets deleted users
                dns |= member_dns(changes, state)
            try:
                report = sync_target(
                    t,
                    extraction,
                    store,
                    allow_mass_deprovisioning=allow_mass_deprovisioning,
                    approval_timeout=approval_timeout,
                    changes=None if changes.complete else changes,
                    state=state,
                )
            except TargetUnreachable as exc:  # the other targets go on; the run exits 2
                get_run_logger().error("%s", exc)
                report = TargetReport.not_reached(t.name, str(exc))
            reports.append(report)
        group_reports = (
            run_group_sync(
                config,
                [t for t, r in zip(targets, reports, strict=True) if not r.unreachable],
                store,
                full=full,
                users=changes,
                users_dns=dns,
                allow_mass_deprovisioning=allow_mass_deprovisioning,
                approval_timeout=approval_timeout,
            )
            if with_groups
            else []
        )
        # The user watermark waits for the groups too: the groups of the users changed in this
        # cycle are re-read only in this cycle.
        groups_failed = {
            g["target"]
            for g in group_reports
            if sum(g["failed"].values()) or g["held_back"] or g["unreachable"]
        }
        for t, report in zip(targets, reports, strict=True):
            if changes.watermark is None or t.name in groups_failed or report.unreachable:
                continue
            if cycle_succeeded(report):
                store.set_watermark(
                    t.name, "users", replace(changes.watermark, server=prints[t.name])
                )
    finally:
        store.close()
    summary: dict[str, Any] = {
        "source_entries": len(extraction.users) + len(extraction.invalid),
        "directory": changes.summary(),
        "targets": [r.as_dict() for r in reports],
    }
    if group_reports:
        summary["groups"] = group_reports
    summary["headline"] = headline(summary)
    return summary


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
    config = load_config(config_path)
    summary = run_sync(config, target, allow_mass_deprovisioning, approval_timeout, full)
    publish(summary, "provision-users")
    get_run_logger().info("summary: %s", summary["headline"])
    return final_state(summary)
