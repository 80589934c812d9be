"""The ``sync_group_memberships`` flow: directory groups → SCIM groups, members by PATCH deltas.

extract-from-LDAP (users: ids and DNs) + extract-groups-from-LDAP → resolve members → plan per
target (create / rename / member delta / delete) → load-groups-to-SCIM (batches) → report.

It runs on its own schedule, and ``provision_users`` runs the same steps right after the users
when ``source.groups.sync_with_users`` is on (the default), so one sync brings both in step.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import State

from tasks.batching import as_is, batches
from tasks.config import Config, TargetConfig, load_config
from tasks.errors import ConfigError
from tasks.extract import Extraction, extract_users
from tasks.groups import (
    DesiredGroup,
    GroupExtraction,
    GroupPlan,
    extract_groups,
    plan_groups,
    resolve_groups,
)
from tasks.load_groups import GroupLoader, load_groups, max_members
from tasks.report import GroupReport, LoadProgress, final_state, headline, publish
from tasks.scim.client import ScimClient
from tasks.state import GroupRecord, StateRecord, StateStore
from tasks.target import discover, uses_patch


def _run_name() -> str:
    target = flow_run.parameters.get("target") or "all-targets"
    return f"sync-group-memberships-{target}"


@task(name="plan-groups", cache_policy=NO_CACHE)
def make_group_plan(
    target: TargetConfig,
    desired: list[DesiredGroup],
    users: dict[str, StateRecord],
    groups: dict[str, GroupRecord],
    warnings: list[str],
) -> GroupPlan:
    """Compare the directory's groups with the state store (always fresh: never cached)."""
    plan = plan_groups(target, desired, users, groups, warnings)
    get_run_logger().info("group plan for %s: %s", target.name, plan.counts())
    return plan


def sync_groups_target(
    config: Config,
    target: TargetConfig,
    users: Extraction,
    groups: GroupExtraction,
    store: StateStore,
) -> GroupReport:
    """Plan and load one target's groups; return the report."""
    started = time.monotonic()
    query = config.source.groups
    assert query is not None
    desired, warnings = resolve_groups(groups, users.users, query)
    plan = make_group_plan(
        target,
        as_is(desired),
        as_is(store.records(target.name)),
        as_is(store.groups(target.name)),
        warnings,
    )
    report = GroupReport(target.name, plan)
    if plan.actions:
        client = ScimClient(target)
        try:
            capabilities = discover(target)
            loader = GroupLoader(
                client,
                store,
                use_patch=uses_patch(target, capabilities),
                max_members=max_members(target, capabilities, client.dialect),
                filtering=capabilities.filter,
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
        finally:
            report.requests.update(client.stats)
            client.close()
    report.seconds = time.monotonic() - started
    return report


def open_store(config: Config) -> StateStore:
    """The state store of this flow run (its audit entries carry the run's id)."""
    run_id = flow_run.get_id()
    return StateStore.for_run(config.state.url, run_id, config.state.audit_retention_days)


def run_group_sync(
    config: Config, targets: list[TargetConfig], users: Extraction, store: StateStore
) -> list[dict[str, Any]]:
    """Read the groups once and sync them to every target that takes groups."""
    wanted = [t for t in targets if t.sync_groups]
    if config.source.groups is None or not wanted:
        return []
    groups = extract_groups(config.source)
    return [sync_groups_target(config, t, users, groups, store).as_dict() for t in wanted]


@flow(name="sync_group_memberships", flow_run_name=_run_name, validate_parameters=True)
def sync_group_memberships(config_path: str, target: str | None = None) -> State:
    """Bring the SCIM targets' groups and memberships in step with the directory's groups.

    :param config_path: the YAML config file (see README.md, "Configuration").
    :param target: the name of one target, or none for all of them.
    """
    config = load_config(config_path)
    if config.source.groups is None:
        raise ConfigError("the config has no source.groups section: there are no groups to sync")
    targets = config.target(target)
    users = extract_users(config.source, [])
    store = open_store(config)
    try:
        summary: dict[str, Any] = {"groups": run_group_sync(config, targets, users, store)}
    finally:
        store.close()
    summary["headline"] = headline(summary)
    publish(summary, "sync-group-memberships")
    get_run_logger().info("summary: %s", summary["headline"])
    return final_state(summary)
