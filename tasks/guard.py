"""The mass-deprovisioning guard: halt before a run disables or deletes too many users.

A wrong filter, an emptied OU or a directory outage that looks like mass deletion must not
deprovision everyone. Above the target's limits the deprovisioning part of a run is held back
(reported as skipped, the run ends Failed with the reason) unless an operator approves it:
in the Prefect UI, where the paused run shows a form with the counts and a sample, or for
unattended runs with an explicit override.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from prefect import get_run_logger, pause_flow_run
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput

from tasks.config import DeprovisionGuard
from tasks.plan import Plan, Skipped

SAMPLE = 20


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    exceeded: bool
    count: int
    managed: int
    limit: str

    @property
    def reason(self) -> str:
        share = self.count / self.managed if self.managed else 1.0
        return (
            f"held back by the mass-deprovisioning guard: this run would disable or delete "
            f"{self.count} of {self.managed} managed users ({share:.0%}; limit {self.limit})"
        )


def check_deprovisioning(plan: Plan, managed: int, guard: DeprovisionGuard) -> GuardVerdict:
    """Whether the plan deprovisions more users than the guard allows."""
    count = sum(1 for a in plan.actions if a.kind in ("disable", "delete"))
    limit = f"{guard.max_count} users or {guard.max_share:.0%}"
    share = count / managed if managed else 1.0
    exceeded = guard.enabled and (
        count > guard.max_count or (count >= guard.min_count and share > guard.max_share)
    )
    return GuardVerdict(exceeded, count, managed, limit)


def hold_back(plan: Plan, verdict: GuardVerdict) -> Plan:
    """The plan without its disables and deletes, which become skipped with the reason."""
    held = [a for a in plan.actions if a.kind in ("disable", "delete")]
    kept = [a for a in plan.actions if a.kind not in ("disable", "delete")]
    skipped = [Skipped(a.source_id, a.user_name, a.kind, verdict.reason) for a in held]
    return replace(plan, actions=kept, skipped=[*plan.skipped, *skipped])


class MassDeprovisioningApproval(RunInput):
    """Approve the disables and deletes this run would make?"""

    approve: bool = False


def approval_request(target: str, plan: Plan, verdict: GuardVerdict) -> str:
    """The markdown the paused run shows above the approval form."""
    sample = [a for a in plan.actions if a.kind in ("disable", "delete")][:SAMPLE]
    lines = [
        f"### Target `{target}`: approve mass deprovisioning?",
        "",
        f"This run would **disable or delete {verdict.count} of {verdict.managed}** managed "
        f"users, above the guard's limit ({verdict.limit}). Check the directory and the "
        "source filter before approving. Rejecting (or letting the pause time out) holds "
        "the deprovisioning back; everything else in the run goes on.",
        "",
        "| user | action | why |",
        "|---|---|---|",
        *(f"| {a.user_name} | {a.kind} | {a.reason} |" for a in sample),
    ]
    return "\n".join(lines)


def apply_guard(
    target: str,
    plan: Plan,
    managed: int,
    guard: DeprovisionGuard,
    *,
    allow: bool,
    approval_timeout: int,
) -> tuple[Plan, int]:
    """The plan to carry out and how many deprovisionings were held back.

    Over the limit: ``allow`` lets it through (the CLI's explicit override); otherwise, with
    ``approval_timeout`` > 0 the flow run pauses for that long with an approval form in the
    Prefect UI; without approval the disables and deletes are held back.
    """
    verdict = check_deprovisioning(plan, managed, guard)
    if not verdict.exceeded or allow:
        return plan, 0
    logger = get_run_logger()
    if approval_timeout > 0:
        logger.warning(
            "%s: waiting up to %ss for approval in the UI", verdict.reason, approval_timeout
        )
        form = MassDeprovisioningApproval.with_initial_data(
            description=approval_request(target, plan, verdict), approve=False
        )
        try:
            answer = pause_flow_run(
                wait_for_input=form, timeout=approval_timeout, key=f"guard-{target}"
            )
        except FlowPauseTimeout:
            answer = None
        if answer is not None and answer.approve:
            logger.warning("target %s: mass deprovisioning approved by an operator", target)
            return plan, 0
    logger.error("target %s: %s", target, verdict.reason)
    return hold_back(plan, verdict), verdict.count
