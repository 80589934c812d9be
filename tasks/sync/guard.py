"""The mass-deprovisioning guard: halt before a run disables or deletes too many users, or
deletes too many groups.

A wrong filter, an emptied OU or a directory outage that looks like mass deletion must not
deprovision everyone, nor delete every group (``groups.base_dn`` pointed at an empty OU).
Groups are counted against the target's managed groups with the same limits, and a run that
would delete every managed group (two or more) halts whatever the limits. Above the target's
limits the deprovisioning part of a run is held back (reported as skipped, the run ends
Failed with the reason) unless an operator approves it:
in the Prefect UI, where the paused run shows a form with the counts and a sample, or for
unattended runs with an explicit override.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from prefect import get_run_logger, pause_flow_run
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput

from tasks.config import DeprovisionGuard
from tasks.sync.group_plan import GroupPlan, GroupSkip
from tasks.sync.plan import Plan, Skipped

SAMPLE = 20


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    exceeded: bool
    count: int
    managed: int
    limit: str
    what: str = "disable or delete"
    objects: str = "users"

    @property
    def reason(self) -> str:
        share = self.count / self.managed if self.managed else 1.0
        return (
            f"held back by the mass-deprovisioning guard: this run would {self.what} "
            f"{self.count} of {self.managed} managed {self.objects} ({share:.0%}; "
            f"limit {self.limit})"
        )


def _exceeds(count: int, managed: int, guard: DeprovisionGuard) -> bool:
    share = count / managed if managed else 1.0
    return guard.enabled and (
        count > guard.max_count or (count >= guard.min_count and share > guard.max_share)
    )


def check_deprovisioning(plan: Plan, managed: int, guard: DeprovisionGuard) -> GuardVerdict:
    """Whether the plan deprovisions more users than the guard allows."""
    count = sum(1 for a in plan.actions if a.kind in ("disable", "delete"))
    limit = f"{guard.max_count} users or {guard.max_share:.0%}"
    return GuardVerdict(_exceeds(count, managed, guard), count, managed, limit)


def check_group_deletions(plan: GroupPlan, managed: int, guard: DeprovisionGuard) -> GuardVerdict:
    """Whether the plan deletes more groups than the guard allows, or every managed group."""
    count = sum(1 for a in plan.actions if a.kind == "delete")
    limit = f"{guard.max_count} groups or {guard.max_share:.0%}, and never all of them"
    every = guard.enabled and count >= 2 and count >= managed
    exceeded = _exceeds(count, managed, guard) or every
    return GuardVerdict(exceeded, count, managed, limit, "delete", "groups")


def hold_back(plan: Plan, verdict: GuardVerdict) -> Plan:
    """The plan without its disables and deletes, which become skipped with the reason."""
    held = [a for a in plan.actions if a.kind in ("disable", "delete")]
    kept = [a for a in plan.actions if a.kind not in ("disable", "delete")]
    skipped = [Skipped(a.source_id, a.user_name, a.kind, verdict.reason) for a in held]
    return replace(plan, actions=kept, skipped=[*plan.skipped, *skipped])


class MassDeprovisioningApproval(RunInput):
    """Approve the disables and deletes this run would make?"""

    approve: bool = False


def approval_request(
    target: str, verdict: GuardVerdict, sample: Sequence[tuple[str, str, str]]
) -> str:
    """The markdown the paused run shows above the approval form; ``sample``: (name, action,
    why) of some of the held changes."""
    noun = verdict.objects[:-1]
    lines = [
        f"### Target `{target}`: approve mass deprovisioning of {verdict.objects}?",
        "",
        f"This run would **{verdict.what} {verdict.count} of {verdict.managed}** managed "
        f"{verdict.objects}, above the guard's limit ({verdict.limit}). Check the directory "
        "and the source filter or base DN before approving. Rejecting (or letting the pause "
        "time out) holds these changes back; everything else in the run goes on.",
        "",
        f"| {noun} | action | why |",
        "|---|---|---|",
        *(f"| {name} | {kind} | {why} |" for name, kind, why in sample[:SAMPLE]),
    ]
    return "\n".join(lines)


def approved(
    target: str,
    verdict: GuardVerdict,
    sample: Sequence[tuple[str, str, str]],
    *,
    allow: bool,
    approval_timeout: int,
    preview: bool = False,
) -> bool:
    """Whether the guarded changes may go: under the limit, ``allow`` (the CLI's explicit
    override), or an operator's approval in the Prefect UI while the flow run pauses for
    ``approval_timeout`` seconds (0: no pause, held back at once). With ``preview``
    (``plan``): what a run would decide without asking anyone, logging nothing."""
    if not verdict.exceeded or allow:
        return True
    if preview:
        return False
    logger = get_run_logger()
    if approval_timeout > 0:
        logger.warning(
            "%s: waiting up to %ss for approval in the UI", verdict.reason, approval_timeout
        )
        form = MassDeprovisioningApproval.with_initial_data(
            description=approval_request(target, verdict, sample), approve=False
        )
        key = f"guard-{target}" if verdict.objects == "users" else f"guard-groups-{target}"
        try:
            answer = pause_flow_run(wait_for_input=form, timeout=approval_timeout, key=key)
        except FlowPauseTimeout:
            answer = None
        if answer is not None and answer.approve:
            logger.warning(
                "target %s: mass deprovisioning of %s approved by an operator",
                target,
                verdict.objects,
            )
            return True
    logger.error("target %s: %s", target, verdict.reason)
    return False


def apply_guard(
    target: str,
    plan: Plan,
    managed: int,
    guard: DeprovisionGuard,
    *,
    allow: bool,
    approval_timeout: int,
    preview: bool = False,
) -> tuple[Plan, int]:
    """The user plan to carry out and how many deprovisionings were held back; with
    ``preview`` (``plan``), what a run would hold back without asking anyone."""
    verdict = check_deprovisioning(plan, managed, guard)
    sample = [
        (a.user_name, a.kind, a.reason) for a in plan.actions if a.kind in ("disable", "delete")
    ]
    if approved(
        target, verdict, sample, allow=allow, approval_timeout=approval_timeout, preview=preview
    ):
        return plan, 0
    return hold_back(plan, verdict), verdict.count


def apply_group_guard(
    target: str,
    plan: GroupPlan,
    managed: int,
    guard: DeprovisionGuard,
    *,
    allow: bool,
    approval_timeout: int,
    preview: bool = False,
) -> tuple[GroupPlan, int]:
    """The group plan to carry out and how many group deletions were held back (with
    ``preview``: would be, without asking anyone)."""
    verdict = check_group_deletions(plan, managed, guard)
    sample = [
        (a.display_name, "delete", "no longer in the directory's groups in scope")
        for a in plan.actions
        if a.kind == "delete"
    ]
    if approved(
        target, verdict, sample, allow=allow, approval_timeout=approval_timeout, preview=preview
    ):
        return plan, 0
    kept = [a for a in plan.actions if a.kind != "delete"]
    held = [
        GroupSkip(a.display_name, "delete", verdict.reason)
        for a in plan.actions
        if a.kind == "delete"
    ]
    return replace(plan, actions=kept, skipped=[*plan.skipped, *held]), verdict.count
