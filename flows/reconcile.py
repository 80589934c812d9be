"""The ``reconcile`` flow: compare the directory, the state store and the target; repair.

list each target's users and groups (paged, cursors when offered; one compact row per user:
ids, matching values, a fingerprint of what we manage) and read its state records (without
payloads) → stream the directory in batches past them, transforming and classifying each batch
at once; only users that may differ are kept whole
(:class:`tasks.reconcile.classify.UserReconciler`; pandas joins link them) → read the few
target users that differ → report (Prefect artifacts and a CSV of every difference) → unless
``dry_run``: correct the state records that differ from the truth and run the per-target
pipeline (flows/pipeline.py) on the differing users only, users then groups, which repairs
exactly the differences; a dry run asks the same pipeline what it would do.

Memory grows by a few hundred bytes per user in step (see docs/performance.md); a user that
differs is held whole (a few kilobytes).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import State, flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.launch import collect_cycles_rarely
from flows.pipeline import (
    TRANSFORM_BATCH,
    GroupRead,
    Mode,
    TargetPipeline,
    open_store,
)
from tasks.batching import as_is
from tasks.config import Config, TargetConfig, load_config
from tasks.errors import SourceUnavailable, retry_on
from tasks.ldap.changes import Changes, UserChanges
from tasks.ldap.extract import SourceUser, connect, mapped_attributes, stream_users
from tasks.ldap.groups import GroupExtraction, extract_groups
from tasks.ldap.scope import Scope, read_scopes
from tasks.reconcile.classify import (
    Difference,
    GroupReconciliation,
    StateTable,
    TargetGroup,
    TargetTable,
    UserReconciler,
    UserReconciliation,
    listing_attributes,
    managed_shape,
    reconcile_groups,
    target_user,
)
from tasks.report import (
    GroupReport,
    LoadProgress,
    Reconciliation,
    RunSummary,
    TargetReport,
    final_state,
    publish,
)
from tasks.results import kept_for_retry
from tasks.scim.client import ScimClient
from tasks.scim.dialect import Capabilities, dialect_for
from tasks.scim.target import discover
from tasks.state.store import GroupRecord, StateRecord, StateStore
from tasks.sync.group_plan import DesiredGroup, display_name, resolve_groups
from tasks.sync.load import LIST_PAGE_SIZE
from tasks.sync.transform import Rejection, transform_batch

PROGRESS_EVERY = 20_000
SAMPLE_ROWS = 20


def _run_name() -> str:
    target = flow_run.parameters.get("target") or "all-targets"
    dry = "-dry-run" if flow_run.parameters.get("dry_run") else ""
    return f"reconcile-{target}{dry}"


def _page_size(capabilities: Capabilities) -> int:
    return min(LIST_PAGE_SIZE, capabilities.max_page_size or LIST_PAGE_SIZE)


@task(name="list-target-users", cache_policy=NO_CACHE)
def list_target_users(client: ScimClient, capabilities: Capabilities) -> TargetTable:
    """Every user of the target, paged, kept as a compact row each."""
    target = client.target
    shape = managed_shape(target.mapping)
    attributes = listing_attributes(shape, target.user_match_attribute)
    pages = client.list_all(
        client.dialect.users_path, attributes, _page_size(capabilities), cursor=capabilities.cursor
    )
    table = TargetTable()
    for resource in pages:
        table.add(target_user(resource, shape, target.user_match_attribute, client.dialect))
    table.seal()
    get_run_logger().info("listed %d users of %s", len(table), target.name)
    return table


@task(name="read-state", cache_policy=NO_CACHE)
def read_state(store: StateStore, target: str) -> StateTable:
    """The target's state records without their payloads, compact."""
    table = StateTable(store.user_rows(target))
    get_run_logger().info("read %d state records of %s", len(table), target)
    return table


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


EVERY_PAIR_UP_TO = 5_000
"""On a target that never returns members (AWS), every provisioned user is asked about every
group when there are at most this many pairs; above, only the expected and recorded ones."""


@task(name="verify-group-members", cache_policy=NO_CACHE)
def verify_members(
    client: ScimClient,
    listed: list[TargetGroup],
    wanted: list[DesiredGroup],
    active: dict[str, str],
    state: dict[str, GroupRecord],
    provisioned: frozenset[str],
) -> list[TargetGroup]:
    """The listed groups with their true members, on a target whose group reads never carry
    them (AWS): each member a group may have (the directory's, those the state store
    recorded, and, in small tenants, every active provisioned user: ``provisioned``, their
    SCIM ids) is asked with ``members eq``."""
    target, dialect = client.target, client.dialect
    recorded = {r.scim_id: r for r in state.values()}
    by_source = {g.source_id: g for g in wanted}
    by_name = {display_name(g, target): g for g in wanted}
    everyone = frozenset(provisioned)
    small = len(listed) * len(everyone) <= EVERY_PAIR_UP_TO
    pairs: list[tuple[str, str]] = []
    for group in listed:
        record = recorded.get(group.scim_id)
        desired = (
            by_source.get(record.source_id)
            if record is not None
            else by_source.get(group.external_id or "") or by_name.get(group.display_name)
        )
        candidates = set(record.members) if record is not None else set()
        if desired is not None:
            candidates |= {active[m] for m in desired.members if m in active}
        if small:
            candidates |= everyone
        pairs += [(group.scim_id, user) for user in sorted(candidates)]

    def member(pair: tuple[str, str]) -> bool:
        return bool(client.find(dialect.groups_path, dialect.membership_filter(*pair)))

    with ThreadPoolExecutor(max_workers=target.concurrency) as pool:
        answers = list(pool.map(member, pairs))
    members: dict[str, set[str]] = {}
    for (group_id, user), yes in zip(pairs, answers, strict=True):
        if yes:
            members.setdefault(group_id, set()).add(user)
    get_run_logger().info(
        "%s returns no group members: asked %d memberships of %d groups one by one%s",
        target.name,
        len(pairs),
        len(listed),
        ""
        if small
        else " (the expected and recorded ones only: members nobody expects "
        "cannot be found on such a target)",
    )
    return [replace(g, members=frozenset(members.get(g.scim_id, ()))) for g in listed]


@dataclass(slots=True)
class Side:
    """What one target holds, listed before the directory streams past."""

    target: TargetConfig
    client: ScimClient
    capabilities: Capabilities
    listed: TargetTable
    state: StateTable
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of this target's steps (listing, state), for the summary."""
    scope: Scope = field(default_factory=Scope)
    """The users and groups in the target's scope (``None``: not narrowed)."""

    def in_scope(self, users: list[SourceUser]) -> list[SourceUser]:
        wanted = self.scope.users
        return users if wanted is None else [u for u in users if u.source_id in wanted]


@dataclass(slots=True)
class Streamed:
    """What the directory stream left: per target a reconciler, and the rejections."""

    reconcilers: dict[str, UserReconciler]
    rejected: dict[str, list[Rejection]]
    members: list[SourceUser]
    """Every user with only its DN and group membership (when groups are reconciled)."""
    entries: int = 0


def _slim(user: SourceUser, member_of: str | None) -> SourceUser:
    kept = {member_of: user.attributes.get(member_of, [])} if member_of else {}
    return SourceUser(user.source_id, user.dn, kept, user.disabled)


@task(
    name="extract-and-classify-users",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=retry_on(SourceUnavailable),
    cache_policy=NO_CACHE,
    persist_result=False,
)
def classify_users(
    config: Config, sides: list[Side], store: StateStore, attributes: list[str]
) -> Streamed:
    """Stream the directory in batches: transform each batch for every target and classify it
    at once (:class:`tasks.reconcile.classify.UserReconciler`), keeping whole only the users
    that may differ. A retry (the directory went away) starts the stream again from the
    beginning."""
    log = get_run_logger()
    source = config.source
    groups = source.groups
    keep_members = groups is not None and any(s.target.sync_groups for s in sides)
    member_of = (
        groups.member_of_attribute.lower()
        if groups is not None and groups.members_from == "user_member_of"
        else None
    )
    dialects = {s.target.name: dialect_for(s.target.scim_version, s.target.dialect) for s in sides}
    streamed = Streamed(
        {
            s.target.name: UserReconciler(
                s.target,
                dialects[s.target.name],
                s.listed,
                s.state,
                partial(store.records_of, s.target.name),
            )
            for s in sides
        },
        {s.target.name: [] for s in sides},
        [],
    )
    warned = 0
    expected = max([len(s.state) for s in sides] + [len(s.listed) for s in sides] + [1])
    progress = LoadProgress(
        expected,
        "directory entries classified",
        create_progress_artifact(
            progress=0.0, description=f"reconcile: reading about {expected} directory entries"
        ),
    )
    unreported = 0
    conn = connect(source)
    try:
        for batch in stream_users(conn, source, attributes, TRANSFORM_BATCH):
            streamed.entries += len(batch.users) + len(batch.invalid)
            unreported += len(batch.users) + len(batch.invalid)
            if unreported >= PROGRESS_EVERY:
                progress.advance(unreported)
                unreported = 0
            invalid = [Rejection("", dn, reason) for dn, reason in batch.invalid]
            for side in sides:
                name = side.target.name
                mine = side.in_scope(batch.users)
                desired, bad = transform_batch(mine, side.target.mapping, dialects[name])
                streamed.reconcilers[name].add(desired, bad)
                streamed.rejected[name] += invalid + bad
            if keep_members:
                streamed.members += [_slim(u, member_of) for u in batch.users]
            for user in batch.users:
                if user.warnings and warned < 20:
                    warned += 1
                    log.warning("%s: %s", user.dn, "; ".join(user.warnings))
        again = {name: r.link() for name, r in streamed.reconcilers.items()}
        wanted = set().union(*again.values())
        if wanted:  # rare: in-step users whose manager was re-linked or moved
            log.info("reading %d users again: their references changed", len(wanted))
            for batch in stream_users(conn, source, attributes, TRANSFORM_BATCH):
                everyone = [u for u in batch.users if u.source_id in wanted]
                for side in sides:
                    name = side.target.name
                    chosen = side.in_scope(everyone)
                    if chosen:
                        desired, _ = transform_batch(chosen, side.target.mapping, dialects[name])
                        streamed.reconcilers[name].recheck(
                            u for u in desired if u.source_id in again[name]
                        )
        progress.advance(unreported)
    finally:
        progress.close()
        conn.unbind()
    log.info("read and classified %d directory entries", streamed.entries)
    return streamed


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


@dataclass(slots=True)
class Found:
    """One target classified: its users, its groups (when reconciled) and what resolves them."""

    users: UserReconciliation
    rejected: list[Rejection]
    groups: GroupReconciliation | None = None
    everyone: GroupRead | None = None
    """Every group in the target's scope, for the group plan."""
    active: dict[str, str] = field(default_factory=dict)
    """Source id → SCIM id of the active members, as the target's truth says."""


def classify_target(
    config: Config,
    side: Side,
    streamed: Streamed,
    groups: GroupExtraction | None,
    store: StateStore,
) -> Found:
    """Classify one target's users (reading the few that differ) and groups."""
    target, client = side.target, side.client
    reconciler = streamed.reconcilers[target.name]
    users = reconciler.classify()
    read_differing(client, as_is(users))
    found = Found(users, streamed.rejected[target.name])
    query = config.source.groups
    if groups is None or query is None or not target.sync_groups:
        return found
    if side.scope.groups is not None:  # the target's groups only
        mine = [g for g in groups.groups if g.source_id in side.scope.groups]
        groups = GroupExtraction(mine, groups.invalid)
    found.everyone = GroupRead(Changes(groups.groups, groups.invalid), streamed.members, {})
    wanted, _ = resolve_groups(groups, streamed.members, query)
    members = set().union(*(g.members for g in wanted)) if wanted else set()
    found.active = reconciler.active_scim_ids(members, users.truth)
    listed = list_target_groups(client, side.capabilities)
    state = store.groups(target.name)
    if not client.dialect.members_readable:  # AWS: members are asked, never listed
        table = side.state
        provisioned = frozenset(table.scim_ids[i] for i in range(len(table)) if table.active[i])
        listed = verify_members(client, listed, wanted, found.active, state, provisioned)
    found.groups = reconcile_groups(target, wanted, found.active, state, listed)
    return found


def write_report(target: str, dry_run: bool, found: Found, report_dir: Path) -> Reconciliation:
    """The CSV of every difference, and the Prefect artifacts: counts and samples."""
    counts: dict[str, Any] = {"users": found.users.counts}
    differences = list(found.users.differences)
    if found.groups is not None:
        counts["groups"] = found.groups.counts
        differences += found.groups.differences
    frame = differences_frame(differences)
    report_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    csv_path = report_dir / f"reconcile-{target}-{stamp}.csv"
    frame.to_csv(csv_path, index=False)
    create_markdown_artifact(
        key=f"reconcile-{_key(target)}",
        markdown=report_markdown(target, dry_run, counts, frame),
        description=f"{len(frame)} differences on {target}",
    )
    create_table_artifact(
        key=f"reconcile-{_key(target)}-counts",
        table=[
            {"object": what, "class": kind, "count": count}
            for what, by_kind in counts.items()
            for kind, count in by_kind.items()
        ],
        description=f"reconciliation of {target}: objects per class",
    )
    get_run_logger().info(
        "reconciliation of %s: %s; every difference in %s", target, counts, csv_path
    )
    return Reconciliation(target, len(frame), counts, str(csv_path))


def predict(
    config: Config, pipeline: TargetPipeline, reconciler: UserReconciler, found: Found
) -> dict[str, dict[str, int]]:
    """What a repair would do, asked of the pipeline in preview: the state store is not
    corrected, so the plan is given the truth records."""
    users, gone = found.users, _gone(found.users)
    desired = [reconciler.partly_resolved(u) for u in users.desired]
    taken = reconciler.names_taken(desired, users)
    refused = {r.source_id for r in taken}
    desired = [u for u in desired if u.source_id not in refused]
    rejected = [*found.rejected, *taken]
    step = pipeline.plan_users(desired, rejected, changes=gone, state=dict(users.truth))
    would = {"users": {**step.plan.counts()}}
    would["users"]["unchanged"] += users.unchanged
    query = config.source.groups
    if found.groups is not None and found.everyone is not None and query is not None:
        members = {
            sid: StateRecord(sid, scim_id, "", "", "{}", "active")
            for sid, scim_id in found.active.items()
        }
        truth = dict(found.groups.truth)
        would["groups"] = pipeline.plan_groups(query, found.everyone, members, truth).plan.counts()
    return would


def repair(
    config: Config, pipeline: TargetPipeline, client: ScimClient, found: Found
) -> tuple[TargetReport, GroupReport | None]:
    """Correct the state records that differ from the truth, then run the pipeline on the
    differing users and the target's groups: exactly the differences are repaired."""
    target, store = pipeline.target, pipeline.store
    store.correct(target.name, list(found.users.truth.values()), found.users.drop)
    if found.groups is not None:
        store.rebuild_groups(target.name, list(found.groups.truth.values()))
    started = time.monotonic()
    step = pipeline.plan_users(found.users.desired, found.rejected, changes=_gone(found.users))
    report = pipeline.apply_users(client, step, started)
    query = config.source.groups
    if found.everyone is None or query is None:
        return report, None
    records = store.records(target.name, lazy=True)
    group_step = pipeline.plan_groups(query, found.everyone, records)
    return report, pipeline.apply_groups(client, group_step, started)


def _gone(users: UserReconciliation) -> UserChanges:
    return Changes([], [], complete=False, deleted=frozenset(users.gone), mode="reconcile")


def reconcile_target(
    config: Config,
    side: Side,
    streamed: Streamed,
    groups: GroupExtraction | None,
    store: StateStore,
    *,
    dry_run: bool,
    report_dir: Path,
    allow_mass_deprovisioning: bool,
    approval_timeout: int,
) -> Reconciliation:
    """Classify, report, and (unless a dry run) correct the state and repair one target."""
    started = time.monotonic()
    target = side.target
    found = classify_target(config, side, streamed, groups, store)
    result = write_report(target.name, dry_run, found, report_dir)
    mode = Mode(allow_mass_deprovisioning, approval_timeout, preview=dry_run)
    pipeline = TargetPipeline(target, store, mode)
    if dry_run:
        result.would = predict(config, pipeline, streamed.reconcilers[target.name], found)
    else:  # the client listed the target moments ago: it is reached
        result.repair, result.group_repair = repair(config, pipeline, side.client, found)
    result.seconds = round(time.monotonic() - started, 3)
    result.steps_seconds = {**side.seconds, "report_and_repair": result.seconds}
    return result


def _key(name: str) -> str:
    """An artifact key from a target name (lowercase letters, digits and dashes)."""
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def run_reconcile(
    config: Config,
    target: str | None,
    *,
    dry_run: bool,
    report_dir: Path,
    allow_mass_deprovisioning: bool = False,
    approval_timeout: int = 0,
) -> RunSummary:
    """List each target and read its state, stream the directory past them, then report and
    repair target by target."""
    targets = config.target(target)
    attributes = sorted(mapped_attributes(t.mapping for t in targets))
    groups = extract_groups(config.source) if config.source.groups is not None else None
    store = StateStore(config.state.url, read_only=True) if dry_run else open_store(config)
    sides: list[Side] = []
    scoped_targets = [t for t in targets if t.scope and (t.scope.users or t.scope.groups)]
    try:
        scopes = read_scopes(config.source, scoped_targets) if scoped_targets else {}
        for t in targets:
            client = ScimClient(t)
            side = Side(t, client, discover(t), TargetTable(), StateTable(()))
            side.scope = scopes.get(t.name, Scope())
            sides.append(side)
            started = time.monotonic()
            side.listed = list_target_users(client, side.capabilities)
            side.seconds["list_target_users"] = round(time.monotonic() - started, 1)
            started = time.monotonic()
            side.state = read_state(store, t.name)
            side.seconds["read_state"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        streamed = classify_users(config, as_is(sides), store, attributes)
        for side in sides:
            side.seconds["read_and_classify_directory"] = round(time.monotonic() - started, 1)
        results = [
            reconcile_target(
                config,
                side,
                streamed,
                groups,
                store,
                dry_run=dry_run,
                report_dir=report_dir,
                allow_mass_deprovisioning=allow_mass_deprovisioning,
                approval_timeout=approval_timeout,
            )
            for side in sides
        ]
    finally:
        for side in sides:
            side.client.close()
        store.close()
    return RunSummary(
        "reconcile",
        targets=[r.repair for r in results if r.repair is not None],
        groups=[r.group_repair for r in results if r.group_repair is not None],
        source_entries=streamed.entries,
        reconciliation=results,
        dry_run=dry_run,
    )


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
        config_path: the YAML config file (see docs/configuration.md).
        target: the name of one target, or none for all of them.
        dry_run: report the differences and what would be done; change nothing.
        allow_mass_deprovisioning: let disables/deletes above the guard's limit through.
        approval_timeout: seconds to pause for approval in the Prefect UI when the guard
            trips; 0 holds the deprovisioning back at once.
        report_dir: where the CSV of every difference goes (default: ``reports/`` next to
            the config file).
    """
    collect_cycles_rarely()
    config = load_config(config_path)
    directory = Path(report_dir) if report_dir else Path(config_path).resolve().parent / "reports"
    with kept_for_retry(config.state.results_retention_days) as results:
        summary = run_reconcile(
            config,
            target,
            dry_run=dry_run,
            report_dir=directory,
            allow_mass_deprovisioning=allow_mass_deprovisioning,
            approval_timeout=approval_timeout,
        )
        results.keep = summary.retry_may_help()
    if summary.targets:
        publish(summary, "reconcile-repair")
    get_run_logger().info("summary: %s", summary.headline)
    return final_state(summary)
