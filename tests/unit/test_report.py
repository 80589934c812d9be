"""The terminal summary and the headline."""

from __future__ import annotations

import io

from rich.table import Table

from tasks.report import KINDS, RunSummary, TargetReport, print_summary, text_console
from tasks.sync.plan import Action, Plan, Rejection


def summary_with(user: str, error: str) -> RunSummary:
    plan = Plan("app", rejected=[Rejection("s2", f"uid={user},ou=people", "no userName")])
    report = TargetReport("app", plan.counts(), plan=plan)
    action = Action("create", "s1", user, "new", {"userName": user})
    from tasks.sync.load import Outcome

    report.add(Outcome(action, False, error))
    return RunSummary("sync", targets=[report])


class TestPrintSummary:
    def test_directory_values_are_printed_as_text_never_as_markup(self) -> None:
        """A uid like ``[/bold]`` or ``:smile:`` neither crashes the summary (rich's
        MarkupError) nor turns into a style or an emoji: it is printed as it is."""
        buffer = io.StringIO()
        console = text_console(file=buffer, width=200)
        print_summary(summary_with("[/bold]x:smile:", "HTTP 400: [red]bad[/red]"), console)
        out = buffer.getvalue()
        assert "[/bold]x:smile:" in out
        assert "HTTP 400: [red]bad[/red]" in out
        assert "uid=[/bold]x:smile:,ou=people" in out

    def test_table_cells_are_not_markup_either(self) -> None:
        buffer = io.StringIO()
        table = Table(title="t")
        table.add_row("[/bold]")
        text_console(file=buffer).print(table)
        assert "[/bold]" in buffer.getvalue()


class TestHeadline:
    def test_a_target_not_reached_is_never_in_step(self) -> None:
        report = TargetReport.not_reached("app", "target app (https://x/scim) not reached: 401")
        summary = RunSummary("sync", targets=[report])
        assert summary.headline == "no changes; 1 target not reached (app)"


class TestJsonForm:
    def test_each_command_keeps_the_keys_scripts_read(self) -> None:
        """``--json`` prints :meth:`RunSummary.as_dict`: the keys each command printed when
        summaries were dictionaries, so scripts reading them keep working."""
        from tasks.report import Reconciliation

        report = TargetReport("app", Plan("app").counts(), plan=Plan("app"))
        sync = RunSummary("sync", targets=[report], directory={"mode": "full pass"}).as_dict()
        assert list(sync) == ["source_entries", "directory", "targets", "headline"]
        assert sync["targets"][0]["succeeded"] == {k: 0 for k in KINDS}
        assert sync["headline"] == "no changes; every user in step"
        assert list(RunSummary("groups").as_dict()) == ["groups", "headline"]
        found = Reconciliation("app", 3, {"users": {"in step": 2}}, "r.csv")
        dry = RunSummary("reconcile", reconciliation=[found], dry_run=True).as_dict()
        assert list(dry) == ["dry_run", "source_entries", "reconciliation", "targets", "headline"]
        assert dry["reconciliation"][0]["report_file"] == "r.csv"
        assert dry["headline"] == "dry run: 3 differences found, nothing changed"


def test_prefect_does_not_walk_the_summary_a_flow_returns() -> None:
    """A flow's return value is walked by Prefect for futures, every dataclass field and list
    item; the reports hold the whole plan (2 s at the end of a 10,000-user sync). The
    summary is one node to it, however big its plan."""
    from prefect.utilities.collections import visit_collection

    from tasks.report import final_state

    actions = [Action("create", f"s{n}", f"u{n}", "new", {"userName": f"u{n}"}) for n in range(500)]
    plan = Plan("app", actions=actions)
    summary = RunSummary("sync", targets=[TargetReport("app", plan.counts(), plan=plan)])
    visited: list[object] = []
    visit_collection(final_state(summary), visited.append)
    assert summary in visited
    assert not any(isinstance(v, (TargetReport, Action)) for v in visited)
