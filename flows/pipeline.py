"""One target's pipeline, the one path every entry point takes: plan → guard → load.

``sync`` (users, then groups), ``groups``, ``plan``, reconcile's dry run and its repair all
build a :class:`TargetPipeline` per target and call :meth:`~TargetPipeline.plan_users` then
:meth:`~TargetPipeline.apply_users`, and :meth:`~TargetPipeline.plan_groups` then
:meth:`~TargetPipeline.apply_groups`. ``plan`` is the same run in :class:`Mode` ``preview``:
the same directory reads from the same watermarks, the same plans and the same guard, and
nothing written (so it prints exactly what the next ``sync`` would do). What the directory
says is read once per run for every target, by :func:`read_users` and :func:`read_groups`.

Prefect appears only here at the edges (tasks for the UI's graph, progress artifacts, the
guard's pause); the decisions are the pure functions of ``tasks/``.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run

from flows import heartbeats
from tasks.batching import as_is, batches
from tasks.config import Config, GroupsQuery, TargetConfig
from tasks.ldap.changes import (
    Changes,
    UserChanges,
    extract_changes,
    start_of,
    user_start,
)
from tasks.ldap.extract import Extraction, SourceUser, extract_users
from tasks.ldap.groups import (
    GroupExtraction,
    SourceGroup,
    extract_group_changes,
    group_fingerprint,
    incremental_groups,
)
from tasks.ldap.scope import Scope, narrow, read_entering, read_scopes, scoped
from tasks.logs import run_logger
from tasks.report import GroupReport, LoadProgress, TargetReport
from tasks.scim.client import ScimClient
from tasks.scim.dialect import Capabilities, dialect_for
from tasks.scim.target import discover, uses_bulk, uses_group_patch, uses_patch
from tasks.state.store import GroupRecord, StateRecord, StateStore, Status
from tasks.sync.group_plan import DesiredGroup, GroupPlan, plan_groups, resolve_groups
from tasks.sync.guard import apply_group_guard, apply_guard
from tasks.sync.load import BULK_SPREAD_MIN, Loader, Outcome, load_batch
from tasks.sync.load_groups import GroupLoader, load_groups, max_members, members_per_create
from tasks.sync.plan import Action, Plan, by_status, plan_users
from tasks.sync.transform import DesiredUser, Rejection, transform_batch, transform_users

heartbeats.install()  # every flow run of this process: heartbeats that stop with the run

TRANSFORM_BATCH = 10000
P = TypeVar("P", Plan, GroupPlan)


@dataclass(frozen=True, slots=True)
class Mode:
    """How a run treats the guard and the targets."""

    allow_mass_deprovisioning: bool = False
    approval_timeout: int = 0
    preview: bool = False
    """``plan``: no flow run, nothing written, the guard says what it would hold back."""


# -- reading the directory once for every target ---------------------------------------------


@dataclass(frozen=True, slots=True)
class UserRead:
    """The users the directory says changed (or every user in scope, on a full pass)."""

    changes: UserChanges
    prints: dict[str, str]
    """Per target, what its watermark is valid for (the next cycle's starting point)."""
    scopes: dict[str, Scope] = field(default_factory=dict)
    """The scoped targets' users in scope."""

    def of(self, target: TargetConfig) -> UserChanges:
        """The changes as this target sees them (narrowed to its scope)."""
        scope = self.scopes.get(target.name)
        return narrow(self.changes, scope.users if scope else None)


def read_users(
    config: Config, targets: list[TargetConfig], store: StateStore, *, full: bool, preview: bool
) -> UserRead:
    """Read the users changed since the targets' watermarks, once for all of them; for the
    targets with a scope, which users are in it, and the users who entered it without
    changing themselves (added to a group the scope names)."""
    source = config.source
    attributes, prints, start = user_start(config, targets, store, full=full)
    changes = (extract_changes.fn if preview else extract_changes)(source, attributes, start)
    narrowed = scoped(targets, users=True)
    if not narrowed:
        return UserRead(changes, prints)
    scopes = (read_scopes.fn if preview else read_scopes)(source, narrowed)
    if not changes.complete:
        seen = {u.source_id for u in changes.entries}
        entering: dict[str, str] = {}
        for t in narrowed:
            # in scope, not read this cycle and not active on the target: new to the scope,
            # or back in it after leaving (disabled by the remove action): read them
            scope = scopes[t.name]
            active = store.source_ids(t.name, status="active")
            for ident in (scope.users or frozenset()) - active - seen:
                entering[ident] = scope.user_dns[ident]
        if entering:
            read = read_entering.fn if preview else read_entering
            users, invalid = read(
                source, attributes, sorted(entering.values()), source.users.filter
            )
            changes = replace(
                changes,
                entries=[*changes.entries, *users],
                invalid=[*changes.invalid, *invalid],
            )
    return UserRead(changes, prints, scopes)


@dataclass(frozen=True, slots=True)
class GroupRead:
    """The groups to plan (the changed ones in an incremental cycle) and the users their
    members are looked up among."""

    groups: Changes[SourceGroup]
    users: list[SourceUser]
    prints: dict[str, str]
    scopes: dict[str, Scope] = field(default_factory=dict)
    """The scoped targets' groups in scope."""

    def of(self, target: TargetConfig) -> Changes[SourceGroup]:
        """The groups as this target sees them (narrowed to its scope)."""
        scope = self.scopes.get(target.name)
        return narrow(self.groups, scope.groups if scope else None)


def read_groups(
    config: Config,
    targets: list[TargetConfig],
    store: StateStore,
    *,
    full: bool,
    preview: bool,
    users: UserChanges | None = None,
    users_dns: Iterable[str] = (),
) -> GroupRead:
    """Read the groups (the changed ones, in an incremental cycle) once for every target
    that takes groups; ``users``: the user cycle this follows, if any, and ``users_dns`` the
    DNs of the users it changed or found gone (:func:`member_dns`)."""
    query = config.source.groups
    assert query is not None
    source = config.source
    method = source.change_detection if incremental_groups(query) else "full"
    prints = {t.name: group_fingerprint(source, t) for t in targets}
    marks = {t.name: store.watermark(t.name, "groups") for t in targets}
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
    extract = extract_group_changes.fn if preview else extract_group_changes
    groups = extract(source, start, sorted(users_dns))
    read: list[SourceUser] = users.entries if users is not None else []
    if (users is None or not users.complete) and (
        query.members_from == "user_member_of" or any(store.lacks_dns(t.name) for t in targets)
    ):
        # memberOf of every user is needed, or the state store does not know every
        # provisioned user's DN yet (a store from before DNs were kept)
        read = (extract_users.fn if preview else extract_users)(source, []).users
    narrowed = scoped(targets, users=False)
    scopes = (read_scopes.fn if preview else read_scopes)(source, narrowed) if narrowed else {}
    return GroupRead(groups, read, prints, scopes)


class GroupReadAhead:
    """A sync's group read (:func:`read_groups`), started before its users load and taken
    when the groups are planned: the directory is read while the users go to the targets,
    which leaves the provisioner mostly waiting for their answers. The read is the one the
    group step would make afterwards, from the same inputs: the user cycle, the DNs it changed
    or found gone (taken before the load) and the group watermarks, which the user load does
    not move. Its tasks run in the flow run (the context is carried to the reading thread, as
    Prefect's thread-pool task runner does); an error it raises is raised where it is taken.
    Before the load, :meth:`~StateStore.lacks_dns` may still be true of a store from before
    DNs were kept where it would not be after: the read then takes every user, a superset.
    """

    def __init__(
        self,
        config: Config,
        targets: list[TargetConfig],
        store: StateStore,
        *,
        full: bool,
        users: UserChanges,
        users_dns: Iterable[str],
    ) -> None:
        self.targets = [t.name for t in targets]
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-read")
        self._read: Future[GroupRead] | None = self._pool.submit(
            contextvars.copy_context().run,
            read_groups,
            config,
            targets,
            store,
            full=full,
            preview=False,
            users=users,
            users_dns=tuple(users_dns),  # as they are now (read_groups sorts them)
        )

    def take(self, targets: list[TargetConfig]) -> GroupRead | None:
        """The read, when it was made for exactly these targets; ``None`` when a target was
        found unreachable meanwhile (the group step reads again for the others, and an error
        of this read, which covered that target too, is not theirs)."""
        read, self._read = self._read, None
        if read is None or [t.name for t in targets] != self.targets:
            return None
        return read.result()

    def __enter__(self) -> GroupReadAhead:
        return self

    def __exit__(self, failed: type[BaseException] | None, *_: object) -> None:
        """Wait for the read at the end of a run; a run that failed (or was interrupted) does
        not wait for a read nobody will take."""
        self._pool.shutdown(wait=failed is None, cancel_futures=True)


def member_dns(users: UserChanges, records: dict[str, StateRecord]) -> set[str]:
    """DNs of the users an incremental user cycle changed, or found gone among one target's
    ``records``: the groups listing them are read again (a user's membership on the target
    follows its status). Take them before the user load forgets deleted users."""
    if users.complete:
        return set()
    dns = {u.dn for u in users.entries}
    dns.update(d for sid in users.gone(records) or () if (d := records[sid].dn))
    return dns


# -- one target -------------------------------------------------------------------------------


@dataclass(slots=True)
class UserStep:
    """One target's user plan after the guard, with what its follow-up plan needs."""

    plan: Plan
    held_back: int
    desired: list[DesiredUser]
    rejected: list[Rejection]
    gone: set[str] | None
    expired: frozenset[str]
    state: dict[str, StateRecord]


@dataclass(slots=True)
class GroupStep:
    """One target's group plan after the guard."""

    plan: GroupPlan
    held_back: int
    records: dict[str, StateRecord] = field(default_factory=dict)
    """The user records the members were resolved against."""


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


class TargetPipeline:
    """Plan and apply one target's users and groups; the state store is passed in, the
    target's client is passed to the apply steps (a preview has none)."""

    def __init__(self, target: TargetConfig, store: StateStore, mode: Mode = Mode()) -> None:
        self.target = target
        self.store = store
        self.mode = mode

    # -- users ----------------------------------------------------------------------------

    def transform(self, extraction: Extraction) -> tuple[list[DesiredUser], list[Rejection]]:
        """Every extracted user as this target's SCIM user, in batches (one task each)."""
        target = self.target
        rejected = [Rejection("", dn, reason) for dn, reason in extraction.invalid]
        if self.mode.preview:
            dialect = dialect_for(target.scim_version, target.dialect)
            desired, bad = transform_batch(extraction.users, target.mapping, dialect)
            return desired, rejected + bad
        futures = [
            transform_users.submit(
                as_is(batch), target.mapping, target.scim_version, target.dialect
            )
            for batch in batches(extraction.users, TRANSFORM_BATCH)
        ]
        desired = []
        for future in futures:
            ok, bad = future.result()
            desired += ok
            rejected += bad
        return desired, rejected

    def plan_users(
        self,
        desired: list[DesiredUser],
        rejected: list[Rejection],
        *,
        changes: UserChanges | None = None,
        state: dict[str, StateRecord] | None = None,
    ) -> UserStep:
        """The users' plan, through the guard. ``desired``: every user in scope, or with
        ``changes`` of an incremental cycle the changed ones (``changes`` says who is gone);
        ``state``: the target's records when the caller has them (else read here)."""
        target, store = self.target, self.store
        if state is None:
            state = store.records(target.name, lazy=True)
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
        plan = self._plan(desired, rejected, state, gone, expired)
        plan, held_back = self._guard(apply_guard, plan, len(state))
        return UserStep(plan, held_back, desired, rejected, gone, expired, state)

    def plan_changes(self, mine: UserChanges, state: dict[str, StateRecord]) -> UserStep:
        """The users' plan from what the directory read says of this target (``mine``:
        :meth:`UserRead.of`): transformed, then :meth:`plan_users`."""
        desired, rejected = self.transform(Extraction(mine.entries, mine.invalid))
        changed = None if mine.complete else mine
        return self.plan_users(desired, rejected, changes=changed, state=state)

    def _guard(self, apply: Callable[..., tuple[P, int]], plan: P, managed: int) -> tuple[P, int]:
        """The mass-deprovisioning guard on a user or group plan, as this run's mode says."""
        return apply(
            self.target.name,
            plan,
            managed,
            self.target.deprovision_guard,
            allow=self.mode.allow_mass_deprovisioning,
            approval_timeout=self.mode.approval_timeout,
            preview=self.mode.preview,
        )

    def _plan(
        self,
        desired: list[DesiredUser],
        rejected: list[Rejection],
        state: dict[str, StateRecord],
        gone: set[str] | None,
        expired: frozenset[str],
    ) -> Plan:
        if self.mode.preview:
            return plan_users(self.target, desired, rejected, state, gone, expired)
        return make_plan(
            self.target, as_is(desired), as_is(rejected), as_is(state), as_is(gone), as_is(expired)
        )

    def apply_users(self, client: ScimClient, step: UserStep, started: float) -> TargetReport:
        """Load the plan; references to users created in this run (a manager) are filled in
        by a second, small plan after the creates."""
        target, store, plan = self.target, self.store, step.plan
        report = TargetReport(target=target.name, planned=plan.counts(), plan=plan)
        report.held_back = step.held_back
        store.update_dns(target.name, plan.moved)
        if plan.actions:
            capabilities = discover(target)
            loader = Loader(
                client,
                use_patch=uses_patch(target, capabilities),
                managed_ids=(r.scim_id for r in step.state.values()),
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
                    follow_up = self._plan(
                        step.desired, step.rejected, state, step.gone, step.expired
                    )
                    updates = [a for a in follow_up.actions if a.kind == "update"]
                    report.planned["update"] += len(updates)
                    if updates:
                        load_actions(loader, store, updates, report, "references")
            finally:
                report.notes.extend(loader.patch.notes)
        report.seconds = time.monotonic() - started
        return report

    # -- groups ---------------------------------------------------------------------------

    def plan_groups(
        self,
        query: GroupsQuery,
        read: GroupRead,
        records: dict[str, StateRecord],
        groups: dict[str, GroupRecord] | None = None,
        deprovisioning: frozenset[str] = frozenset(),
    ) -> GroupStep:
        """The groups' plan, through the guard; ``records``: the target's users as they are
        after the user step (as they would be, in a preview); ``groups``: the target's group
        records when the caller has them (reconcile's truth), else read here."""
        target, store = self.target, self.store
        known = {r.dn: r.source_id for r in by_status(records.values()) if r.dn}  # normalized
        mine = read.of(target)
        extraction = GroupExtraction(mine.entries, mine.invalid)
        desired, warnings = resolve_groups(extraction, read.users, query, known)
        state = store.groups(target.name) if groups is None else groups
        gone = mine.gone(state)
        keep = disabled_members(target, records, store) - deprovisioning
        if self.mode.preview:
            plan = plan_groups(target, desired, records, state, warnings, gone, keep)
        else:
            plan = make_group_plan(
                target, as_is(desired), as_is(records), as_is(state), warnings, gone, keep
            )
        plan, held_back = self._guard(apply_group_guard, plan, len(state))
        return GroupStep(plan, held_back, records)

    def apply_groups(self, client: ScimClient, step: GroupStep, started: float) -> GroupReport:
        target, plan = self.target, step.plan
        before = dict(client.stats)  # the report counts the group step's requests, not the probe
        report = GroupReport(target.name, plan, held_back=step.held_back)
        if plan.actions:
            try:
                capabilities = discover(target)
                loader = GroupLoader(
                    client,
                    self.store,
                    use_patch=uses_group_patch(target, capabilities),
                    max_members=max_members(target, capabilities, client.dialect),
                    filtering=capabilities.filter,
                    managed_users=(r.scim_id for r in step.records.values()),
                    page_size=min(1000, capabilities.max_page_size or 1000),
                    cursor=capabilities.cursor,
                    create_members=members_per_create(target, client.dialect),
                )
                creates = sum(1 for a in plan.actions if a.kind == "create")
                if loader.prefetch(creates):
                    run_logger().info(
                        "listed the groups of %s to match %d creates", target.name, creates
                    )
                artifact = create_progress_artifact(
                    progress=0.0,
                    description=f"{len(plan.actions)} group changes into {target.name}",
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
                    report.notes.extend(loader.patch.notes + loader.notes)
            finally:
                report.requests.update(requests_since(client, before))
        report.seconds = time.monotonic() - started
        return report


def requests_since(client: ScimClient, before: dict[str, int]) -> dict[str, int]:
    """The client's requests by method since ``before``, a copy of its ``stats``."""
    return {k: n - before.get(k, 0) for k, n in client.stats.items()}


BULK_TRIAL_MIN = 400
"""From this many changes, Bulk is measured against one request per change before use."""
BULK_TRIAL_MAX = 800
"""Changes loaded each way by the trial, at most: the way that loses costs its time (a slow
Bulk took 10 s for 2,000 changes that single requests carried in 4 s); the Bulk share goes
in ``concurrency`` requests side by side."""
BULK_TRIAL_FIRST = 200
"""Changes loaded each way first, at least (and at least ``concurrency`` Bulk requests' worth,
:data:`~tasks.sync.load.BULK_SPREAD_MIN` operations each, so that Bulk is measured with as
many requests side by side as single requests are: 400 at the default concurrency of 4); when
one way is :data:`BULK_TRIAL_CLEAR` times the other's rate there, the trial ends (the loser's
other changes are not worth measuring)."""
BULK_TRIAL_CLEAR = 1.25
"""How much faster one way must be after the first share for the trial to end there. Measured
ratios of 1.4-1.55 (a slow Bulk 146-193/s against 210-300/s one request each; scim2-server's
Bulk 356/s against 252/s) went on to the second step at 1.5, whose 400 more changes each way
cost the losing way 0.5-0.8 s at 10,000 users; a first share misjudged by 25 % would choose a
way at most a few percent slower."""


def load_actions(
    loader: Loader, store: StateStore, actions: list[Action], report: TargetReport, label: str
) -> None:
    """Load actions in batches (one task each), with a progress bar and a progress artifact.
    With Bulk advertised and many changes, a first share is loaded both ways and the faster
    way carries the rest (:func:`bulk_trial`). The rest goes in overlapping batches: the next
    batch's task starts while this one's last writes are in flight, both sharing the target's
    ``concurrency`` threads (:meth:`~tasks.sync.load.Loader.shared_threads`), so that a
    batch's end (its task run's own work, the progress artifact) no longer leaves the target
    idle: ~40 ms each, 19 times for 10,000 users (docs/performance.md)."""
    name = loader.target.name
    artifact = create_progress_artifact(
        progress=0.0, description=f"{label}: {len(actions)} changes into {name}"
    )
    progress = LoadProgress(len(actions), name, artifact)
    before = dict(loader.client.stats)
    number = 0

    Running = tuple[PrefectFuture[list[Outcome]], list[Action]]  # a batch's task and its actions

    def start(batch: list[Action]) -> Running:
        nonlocal number
        number += 1
        run = load_batch.with_options(task_run_name=f"load-{name}-{label}-{number}")
        return run.submit(loader, store, as_is(batch), f"{label}-{number}"), batch

    def finish(running: Running) -> int:
        """Wait for a batch; count its outcomes in the report; return its confirmed ones."""
        future, batch = running
        outcomes = future.result()
        for outcome in outcomes:
            report.add(outcome)
        progress.advance(len(batch))
        return sum(1 for o in outcomes if o.ok)

    def load(batch: list[Action]) -> tuple[int, float]:
        """Load one batch alone; return its confirmed changes and the seconds it took."""
        started = time.monotonic()
        confirmed = finish(start(batch))
        return confirmed, time.monotonic() - started

    try:
        if loader.bulk is not None and len(actions) >= BULK_TRIAL_MIN:
            actions = bulk_trial(loader, actions, load, report)
        size = loader.target.batch_size
        if loader.bulk is not None:  # room for `concurrency` Bulk requests in flight per batch
            size = max(size, loader.target.concurrency * (loader.bulk.bulk_max_operations or 1))
        with loader.shared_threads():
            running: list[Running] = []
            try:
                for batch in batches(actions, size):
                    if loader.halted.is_set():  # a running batch stopped the load: no more
                        break
                    running.append(start(batch))
                    if len(running) == 2:  # the next batch started: wait for this one
                        finish(running[0])
                        running.pop(0)
                while running:
                    finish(running[0])
                    running.pop(0)
            except BaseException:
                loader.halted.set()  # a batch stopped the load (or the run was interrupted)
                for rest in running:  # each batch returns once halted; what it confirmed counts
                    with contextlib.suppress(Exception):
                        finish(rest)
                raise
    finally:
        report.requests.update(requests_since(loader.client, before))
        progress.close()


def bulk_trial(
    loader: Loader,
    actions: list[Action],
    load: Callable[[list[Action]], tuple[int, float]],
    # returns the confirmed changes of the batch it loaded and the seconds it took
    report: TargetReport,
) -> list[Action]:
    """Bulk only where it pays: load a first share of the changes in Bulk requests and the
    next share one request each (both are real, confirmed writes), keep the faster way for
    the rest and say so in the report; return the rest. A target's Bulk is often slower than
    its single requests: advertised is not the same as faster. The share is measured in two
    steps; when the first (:data:`BULK_TRIAL_FIRST` each way) is clear, the second is not
    made."""
    bulk = loader.bulk
    assert bulk is not None
    share = min(len(actions) // 4, BULK_TRIAL_MAX)
    first = min(share, max(BULK_TRIAL_FIRST, loader.target.concurrency * BULK_SPREAD_MIN))
    # confirmed changes and seconds, each way; a rate counts confirmed changes only (a Bulk
    # endpoint quick to refuse must not win)
    done = {"bulk": [0, 0.0], "single": [0, 0.0]}
    start = 0
    for end in (2 * first, 2 * share):  # the first step, then the rest of the share
        if end <= start:
            break
        # every other change each way: both shares hold the same kinds of change (the plan
        # lists creates first, deprovisionings last)
        trial, start = actions[start:end], end
        for way, part in (("bulk", trial[0::2]), ("single", trial[1::2])):
            loader.bulk = bulk if way == "bulk" else None
            confirmed, seconds = load(part)
            done[way][0] += confirmed
            done[way][1] += seconds
        bulk_rate, single_rate = (n / max(s, 1e-6) for n, s in done.values())
        if max(bulk_rate, single_rate) >= BULK_TRIAL_CLEAR * min(bulk_rate, single_rate):
            break
    rest, measured = actions[start:], start // 2
    faster = bulk_rate > single_rate
    loader.bulk = bulk if faster else None
    way = "Bulk requests" if faster else "one request per change"
    report.notes.append(
        f"Bulk measured on {measured} changes at {bulk_rate:.0f}/s, one request per change on "
        f"{measured} at {single_rate:.0f}/s: {way} for the other {len(rest)}"
    )
    run_logger().info("target %s: %s", loader.target.name, report.notes[-1])
    return rest


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


def projected_users(state: dict[str, StateRecord], plan: Plan) -> dict[str, StateRecord]:
    """The user records as they would be after the plan ran (new users get placeholder ids):
    what a preview resolves group members against."""
    projected = dict(state)
    for action in plan.actions:
        if action.kind == "delete":
            projected.pop(action.source_id, None)
            continue
        payload = action.payload or {}
        status: Status = "active" if payload.get("active", True) else "disabled"
        scim_id = action.scim_id or f"(new: {action.user_name})"
        projected[action.source_id] = StateRecord(
            action.source_id, scim_id, action.user_name, "", payload, status, dn=action.dn
        )
    return projected


def cycle_succeeded(report: TargetReport | GroupReport) -> bool:
    """Whether a target's watermark may advance: every write confirmed, nothing held back,
    the target reached."""
    return not sum(report.failed.values()) and not report.held_back and not report.unreachable


# -- the run ----------------------------------------------------------------------------------


def open_store(config: Config) -> StateStore:
    """The state store of this flow run (its audit entries carry the run's id)."""
    run_id = flow_run.get_id()
    return StateStore.for_run(config.state.url, run_id, config.state.audit_retention_days)


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
        run_logger().warning("could not rename the flow run to %s: %s", name, exc)


def run_label(parameters: dict[str, Any], prefix: str) -> str:
    """A flow run's name before it knows what pass it is (:func:`name_run` corrects it)."""
    target = parameters.get("target") or "all-targets"
    return f"{prefix}-{target}-{'full' if parameters.get('full') else 'incremental'}"


@dataclass(slots=True)
class TargetPreview:
    """What the next sync would do on one target (``plan``)."""

    users: Plan
    groups: GroupPlan | None
    directory: dict[str, Any]
    """How the directory was read (incremental or full, why, how many users)."""
    held_back: int = 0
    groups_held_back: int = 0


def preview(config: Config, target: str | None, *, full: bool = False) -> list[TargetPreview]:
    """What the next ``sync`` would do: the same reads from the same watermarks, the same
    plans and guard, with a read-only state store; no target is contacted, nothing written.
    Group members are resolved against the user records as the user plan would leave them."""
    targets = config.target(target)
    mode = Mode(preview=True)
    store = StateStore(config.state.url, read_only=True)
    try:
        read = read_users(config, targets, store, full=full, preview=True)
        query = config.source.groups
        with_groups = query is not None and query.sync_with_users
        dns: set[str] = set()
        steps = []
        for t in targets:
            pipeline = TargetPipeline(t, store, mode)
            state = store.records(t.name, lazy=True)
            mine = read.of(t)  # narrowed to the target's scope
            if with_groups:
                dns |= member_dns(mine, state)
            steps.append(pipeline.plan_changes(mine, state))
        directory = read.changes.summary()
        previews = [TargetPreview(s.plan, None, directory, s.held_back) for s in steps]
        wanted = [t for t in targets if t.sync_groups]
        if with_groups and query is not None and wanted:
            groups = read_groups(
                config, wanted, store, full=full, preview=True, users=read.changes, users_dns=dns
            )
            for t, step, shown in zip(targets, steps, previews, strict=True):
                if t.sync_groups:
                    records = projected_users(step.state, step.plan)
                    leaving = frozenset(
                        a.source_id for a in step.plan.actions if a.kind == "disable"
                    )
                    group_step = TargetPipeline(t, store, mode).plan_groups(
                        query, groups, records, deprovisioning=leaving
                    )
                    shown.groups = group_step.plan
                    shown.groups_held_back = group_step.held_back
    finally:
        store.close()
    return previews
