"""The ``reconcile`` flow: compare the directory, the state store and the target; repair.

extract users (and groups) → list the target's users and groups (paged, cursors when offered;
kept compact: ids, matching values, a fingerprint of what we manage) → classify every object
(pandas joins, :mod:`tasks.reconcile`) → read the few objects that differ → report (Prefect
artifacts and a CSV of every difference) → unless ``dry_run``: rebuild the state store from the
truth and run the normal plan → guard → load path of ``provision_users`` and
``sync_group_memberships``, which then repairs exactly the differences.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import State

from flows.provision_users import desired_users, sync_target
from flows.sync_group_memberships import open_store, sync_groups_target
from tasks.batching import as_is
from tasks.changes import Changes
from tasks.config import Config, TargetConfig, load_config
from tasks.extract import Extraction, extract_users, mapped_attributes
from tasks.groups import DesiredGroup, GroupExtraction, extract_groups, plan_groups, resolve_groups
from tasks.load import LIST_PAGE_SIZE
from tasks.plan import plan_users
from tasks.reconcile import (
    Difference,
    GroupReconciliation,
    TargetGroup,
    TargetUser,
    UserReconciliation,
    listing_attributes,
    managed_shape,
    reconcile_groups,
    reconcile_users,
    target_user,
)
from tasks.report import final_state, headline, publish
from tasks.scim.client import ScimClient
from tasks.scim.dialect import Capabilities
from tasks.state import StateStore
from tasks.target import discover

SAMPLE_ROWS = 20


def _run_name() -> str:
    target = flow_run.parameters.get("target") or "all-targets"
    dry = "-dry-run" if flow_run.parameters.get("dry_run") else ""
    return f"reconcile-{target}{dry}"


def _page_size(capabilities: Capabilities) -> int:
    return min(LIST_PAGE_SIZE, capabilities.max_page_size or LIST_PAGE_SIZE)


@task(name="list-target-users", cache_policy=NO_CACHE)
def list_target_users(client: ScimClient, capabilities: Capabilities) -> list[TargetUser]:
    """Every user of the target, paged, kept as a compact row each."""
    target = client.target
    shape = managed_shape(target.mapping)
    attributes = listing_attributes(shape, target.user_match_attribute)
    pages = client.list_all(
        client.dialect.users_path, attributes, _page_size(capabilities), cursor=capabilities.cursor
    )
    listed = [target_user(r, shape, target.user_match_attribute, client.dialect) for r in pages]
    get_run_logger().info("listed %d users of %s", len(listed), target.name)
    return listed


@task(name="list-target-groups", cache_policy=NO_CACHE)
def list_target_groups(client: ScimClient, capabilities: Capabilities) -> list[TargetGroup]:
    """Every group of the target with its member ids, paged."""
    dialect = client.dialect
    pages = client.list_all(
        dialect.groups_path,
        ["displayName", "externalId", "members"],
        _page_size(capabilities),
        cursor=capabilities.cursor,
    )
    return [
        TargetGroup(
            str(g.get("id") or ""),
            str(g.get("displayName") or ""),
            str(g["externalId"]) if g.get("externalId") else None,
            frozenset(dialect.member_ids(g)),
        )
        for g in pages
    ]


@task(name="read-differing-users", cache_policy=NO_CACHE)
def read_differing(client: ScimClient, users: UserReconciliation) -> None:
    """Read the users that differ (only those), so repairs diff against their real values."""
    shape = managed_shape(client.target.mapping)
    path = client.dialect.users_path
    with ThreadPoolExecutor(max_workers=client.target.concurrency) as pool:
        for actual in pool.map(lambda scim_id: client.get(path, scim_id), list(users.to_read)):
            users.read(actual, shape)


def differences_frame(differences: list[Difference]) -> pd.DataFrame:
    columns = ["object", "kind", "name", "source_id", "scim_id", "detail"]
    return pd.DataFrame.from_records([asdict(d) for d in differences], columns=columns)


def report_markdown(target: str, dry_run: bool, counts: dict[str, Any], frame: pd.DataFrame) -> str:
    """Counts per class and sample rows per class, for the Prefect UI."""
    mode = "dry run: nothing was changed" if dry_run else "repaired through the sync path"
    lines = [f"# Reconciliation of {target} ({mode})", ""]
    for what in ("users", "groups"):
        if what not in counts:
            continue
        lines += [f"## {what.capitalize()}", "", "| class | count |", "|---|---:|"]
        lines += [f"| {kind} | {count} |" for kind, count in counts[what].items()]
        lines.append("")
    for (obj, kind), rows in frame.groupby(["object", "kind"], sort=False):
        lines += [
            f"## {obj}s: {kind} ({len(rows)})",
            "",
            "| name | SCIM id | detail |",
            "|---|---|---|",
        ]
        for row in rows.head(SAMPLE_ROWS).itertuples():
            lines.append(f"| {row.name} | {row.scim_id} | {row.detail} |")
        if len(rows) > SAMPLE_ROWS:
            lines.append(f"| … {len(rows) - SAMPLE_ROWS} more in the CSV file | | |")
        lines.append("")
    return "\n".join(lines)


def reconcile_target(
    config: Config,
    target: TargetConfig,
    extraction: Extraction,
    groups: GroupExtraction | None,
    store: StateStore,
    *,
    dry_run: bool,
    report_dir: Path,
    allow_mass_deprovisioning: bool,
    approval_timeout: int,
) -> dict[str, Any]:
    """Classify, report, and (unless a dry run) rebuild the state and repair one target."""
    started = time.monotonic()
    log = get_run_logger()
    desired, rejected = desired_users(extraction, target)
    state = store.records(target.name)
    client = ScimClient(target)
    try:
        capabilities = discover(target)
        listed = list_target_users(client, capabilities)
        users = reconcile_users(target, client.dialect, desired, state, listed)
        read_differing(client, as_is(users))
        with_groups = groups is not None and target.sync_groups
        group_result: GroupReconciliation | None = None
        wanted: list[DesiredGroup] = []
        if with_groups:
            assert groups is not None and config.source.groups is not None
            wanted, _ = resolve_groups(groups, extraction.users, config.source.groups)
            group_result = reconcile_groups(
                target,
                wanted,
                users.truth,
                store.groups(target.name),
                list_target_groups(client, capabilities),
            )
    finally:
        client.close()
    counts: dict[str, Any] = {"users": users.counts}
    differences = list(users.differences)
    if group_result is not None:
        counts["groups"] = group_result.counts
        differences += group_result.differences
    frame = differences_frame(differences)
    report_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    csv_path = report_dir / f"reconcile-{target.name}-{stamp}.csv"
    frame.to_csv(csv_path, index=False)
    create_markdown_artifact(
        key=f"reconcile-{_key(target.name)}",
        markdown=report_markdown(target.name, dry_run, counts, frame),
        description=f"{len(frame)} differences on {target.name}",
    )
    create_table_artifact(
        key=f"reconcile-{_key(target.name)}-counts",
        table=[
            {"object": what, "class": kind, "count": count}
            for what, by_kind in counts.items()
            for kind, count in by_kind.items()
        ],
        description=f"reconciliation of {target.name}: objects per class",
    )
    log.info("reconciliation of %s: %s; every difference in %s", target.name, counts, csv_path)
    result: dict[str, Any] = {
        "target": target.name,
        "differences": len(frame),
        "counts": counts,
        "report_file": str(csv_path),
    }
    if dry_run:
        plan = plan_users(target, desired, rejected, users.truth)
        result["would"] = {"users": plan.counts()}
        if group_result is not None:
            group_plan = plan_groups(target, wanted, users.truth, group_result.truth)
            result["would"]["groups"] = group_plan.counts()
    else:
        store.rebuild(
            target.name,
            list(users.truth.values()),
            list(group_result.truth.values()) if group_result is not None else None,
        )
        report = sync_target(
            target,
            extraction,
            store,
            allow_mass_deprovisioning=allow_mass_deprovisioning,
            approval_timeout=approval_timeout,
            transformed=(desired, rejected),
        )
        result["repair"] = report.as_dict()
        if with_groups:
            assert groups is not None
            everyone = Changes(groups.groups, groups.invalid)  # a full pass
            result["group_repair"] = sync_groups_target(
                config, target, extraction.users, everyone, store
            ).as_dict()
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def _key(name: str) -> str:
    """An artifact key from a target name (lowercase letters, digits and dashes)."""
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def reconcile_headline(summary: dict[str, Any]) -> str:
    found = sum(r["differences"] for r in summary["reconciliation"])
    if summary["dry_run"]:
        return f"dry run: {found} differences found, nothing changed"
    return f"{found} differences found; repair: {headline(summary)}"


def run_reconcile(
    config: Config,
    target: str | None,
    *,
    dry_run: bool,
    report_dir: Path,
    allow_mass_deprovisioning: bool = False,
    approval_timeout: int = 0,
) -> dict[str, Any]:
    targets = config.target(target)
    attributes = sorted(mapped_attributes(t.mapping for t in targets))
    extraction = extract_users(config.source, attributes)
    groups = extract_groups(config.source) if config.source.groups is not None else None
    store = StateStore(config.state.url, read_only=True) if dry_run else open_store(config)
    try:
        results = [
            reconcile_target(
                config,
                t,
                extraction,
                groups,
                store,
                dry_run=dry_run,
                report_dir=report_dir,
                allow_mass_deprovisioning=allow_mass_deprovisioning,
                approval_timeout=approval_timeout,
            )
            for t in targets
        ]
    finally:
        store.close()
    summary: dict[str, Any] = {
        "dry_run": dry_run,
        "source_entries": len(extraction.users) + len(extraction.invalid),
        "reconciliation": results,
        "targets": [r["repair"] for r in results if "repair" in r],
    }
    group_repairs = [r["group_repair"] for r in results if "group_repair" in r]
    if group_repairs:
        summary["groups"] = group_repairs
    summary["headline"] = reconcile_headline(summary)
    return summary


@flow(name="reconcile", flow_run_name=_run_name, validate_parameters=True)
def reconcile(
    config_path: str,
    target: str | None = None,
    dry_run: bool = False,
    allow_mass_deprovisioning: bool = False,
    approval_timeout: int = 0,
    report_dir: str | None = None,
) -> State:
    """Compare the directory, the state store and what the targets hold; repair differences.

    Args:
        config_path: the YAML config file (see README.md, "Configuration").
        target: the name of one target, or none for all of them.
        dry_run: report the differences and what would be done; change nothing.
        allow_mass_deprovisioning: let disables/deletes above the guard's limit through.
        approval_timeout: seconds to pause for approval in the Prefect UI when the guard
            trips; 0 holds the deprovisioning back at once.
        report_dir: where the CSV of every difference goes (default: ``reports/`` next to
            the config file).
    """
    config = load_config(config_path)
    directory = Path(report_dir) if report_dir else Path(config_path).resolve().parent / "reports"
    summary = run_reconcile(
        config,
        target,
        dry_run=dry_run,
        report_dir=directory,
        allow_mass_deprovisioning=allow_mass_deprovisioning,
        approval_timeout=approval_timeout,
    )
    if summary["targets"]:
        publish(summary, "reconcile-repair")
    get_run_logger().info("summary: %s", summary["headline"])
    return final_state(summary)
