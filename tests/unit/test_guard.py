"""The mass-deprovisioning guard's arithmetic."""

from tasks.config import DeprovisionGuard
from tasks.sync.guard import check_deprovisioning, hold_back
from tasks.sync.plan import Action, Plan


def plan_with(disables: int, creates: int = 1) -> Plan:
    actions = [Action("disable", f"d{n}", f"d{n}", "gone") for n in range(disables)]
    actions += [Action("create", f"c{n}", f"c{n}", "new") for n in range(creates)]
    return Plan(target="t", actions=actions)


def test_count_and_share_limits() -> None:
    guard = DeprovisionGuard(max_count=50, max_share=0.10, min_count=10)
    assert not check_deprovisioning(plan_with(9), 20, guard).exceeded  # 45 %, but only 9
    assert check_deprovisioning(plan_with(11), 100, guard).exceeded  # 11 %
    assert not check_deprovisioning(plan_with(10), 100, guard).exceeded  # exactly 10 %
    assert check_deprovisioning(plan_with(51), 10_000, guard).exceeded  # over 50
    assert not check_deprovisioning(plan_with(51), 10_000, DeprovisionGuard(enabled=False)).exceeded


def test_held_back_deprovisioning_is_skipped_with_the_reason() -> None:
    verdict = check_deprovisioning(plan_with(11), 100, DeprovisionGuard())
    held = hold_back(plan_with(11), verdict)
    assert [a.kind for a in held.actions] == ["create"]
    assert len(held.skipped) == 11
    assert "11 of 100 managed users (11%" in held.skipped[0].reason
