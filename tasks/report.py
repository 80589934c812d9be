"""Reporting: progress while loading, and the summary a person reads at the end of a run.

The summary is typed (:class:`RunSummary` of :class:`TargetReport`, :class:`GroupReport` and
:class:`Reconciliation`): the flow returns it, the CLI prints it (``--json``: its JSON form),
and the Prefect artifacts are built from it. It holds user names and reasons, never secrets.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from prefect import State
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from tasks.sync.group_plan import GroupPlan
from tasks.sync.load import Outcome
from tasks.sync.load_groups import GroupOutcome
from tasks.sync.plan import Plan

SAMPLE = 50
"""How many failures, skips and rejections a summary lists in full."""

KINDS = ("create", "update", "disable", "delete")
WRITES = ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class TargetReport:
    """What happened on one target during one run."""

    target: str
    planned: dict[str, int]
    done: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    adopted: int = 0
    adoptions: list[str] = field(default_factory=list)
    """userNames of accounts that were already on the target and were taken over."""
    failures: list[dict[str, str]] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    plan: Plan | None = None
    seconds: float = 0.0
    held_back: int = 0
    """Deprovisionings held back by the mass-deprovisioning guard."""
    unreachable: str = ""
    """Why the run could not reach the target (then nothing else is known of it)."""
    notes: list[str] = field(default_factory=list)
    """What the run learnt about the target and acted on (a PATCH refused: PUT instead)."""

    @classmethod
    def not_reached(cls, target: str, reason: str) -> TargetReport:
        return cls(target=target, planned=Plan(target).counts(), unreachable=reason)

    def add(self, outcome: Outcome) -> None:
        kind = outcome.action.kind
        if outcome.ok:
            self.done[kind] += 1
            self.adopted += outcome.adopted
            if outcome.adopted:
                self.adoptions.append(outcome.action.user_name)
        else:
            self.failed[kind] += 1
            self.failures.append(
                {"user": outcome.action.user_name, "action": kind, "error": outcome.detail}
            )

    @property
    def writes(self) -> int:
        return sum(self.requests[m] for m in WRITES)

    def skipped(self) -> list[dict[str, str]]:
        return [
            {"user": s.user_name, "would": s.would, "reason": s.reason}
            for s in (self.plan.skipped if self.plan else [])[:SAMPLE]
        ]

    def rejected(self) -> list[dict[str, str]]:
        return [
            {"entry": r.dn, "reason": r.reason}
            for r in (self.plan.rejected if self.plan else [])[:SAMPLE]
        ]

    def problems(self) -> int:
        """Users that did not reach the desired state: failed, rejected, held back."""
        return sum(self.failed.values()) + self.planned.get("rejected", 0) + self.held_back

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "planned": self.planned,
            "succeeded": {k: self.done[k] for k in KINDS},
            "failed": {k: self.failed[k] for k in KINDS},
            "adopted": self.adopted,
            "adoptions": self.adoptions[:SAMPLE],
            "failures": self.failures[:SAMPLE],
            "skipped": self.skipped(),
            "rejected": self.rejected(),
            "requests": dict(self.requests),
            "writes": self.writes,
            "seconds": round(self.seconds, 2),
            "held_back": self.held_back,
            "unreachable": self.unreachable,
            "notes": self.notes,
        }


@dataclass
class GroupReport:
    """What happened to one target's groups during one run."""

    target: str
    plan: GroupPlan
    done: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    added: int = 0
    removed: int = 0
    adopted: int = 0
    renamed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    held_back: int = 0
    """Group deletions held back by the mass-deprovisioning guard."""
    unreachable: str = ""
    """Why the run could not reach the target (then nothing else is known of it)."""
    notes: list[str] = field(default_factory=list)
    """What the run learnt about the target and acted on (a PATCH refused: PUT instead)."""

    @classmethod
    def not_reached(cls, target: str, reason: str) -> GroupReport:
        return cls(target, GroupPlan(target), unreachable=reason)

    def add(self, outcome: GroupOutcome) -> None:
        kind = outcome.action.kind
        if outcome.ok:
            self.done[kind] += 1
            self.renamed += outcome.action.rename
            self.added += outcome.added
            self.removed += outcome.removed
            self.adopted += outcome.adopted
        else:
            self.failed[kind] += 1
            self.failures.append(
                {"group": outcome.action.display_name, "action": kind, "error": outcome.detail}
            )

    @property
    def writes(self) -> int:
        return sum(self.requests[m] for m in WRITES)

    def skipped(self) -> list[dict[str, str]]:
        return [
            {"group": s.display_name, "would": s.would, "reason": s.reason}
            for s in self.plan.skipped[:SAMPLE]
        ]

    def not_provisioned(self) -> list[dict[str, Any]]:
        return [
            {"group": name, "members": count}
            for name, count in self.plan.not_provisioned_members.most_common(SAMPLE)
        ]

    def problems(self) -> int:
        """Groups that did not reach the desired state: failed, held back."""
        return sum(self.failed.values()) + self.held_back

    def as_dict(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "target": self.target,
            "planned": plan.counts(),
            "succeeded": {k: self.done[k] for k in GROUP_KINDS},
            "failed": {k: self.failed[k] for k in GROUP_KINDS},
            "renamed": self.renamed,
            "members_added": self.added,
            "members_removed": self.removed,
            "adopted": self.adopted,
            "failures": self.failures[:SAMPLE],
            "skipped": self.skipped(),
            "not_provisioned_members": self.not_provisioned(),
            "warnings": plan.warnings[:SAMPLE],
            "requests": dict(self.requests),
            "writes": self.writes,
            "seconds": round(self.seconds, 2),
            "held_back": self.held_back,
            "unreachable": self.unreachable,
            "notes": self.notes,
        }


GROUP_KINDS = ("create", "update", "delete")


@dataclass
class Reconciliation:
    """What reconciling one target found, and what its repair did (or would do)."""

    target: str
    differences: int
    counts: dict[str, dict[str, int]]
    """Objects per class: {"users": {"in step": n, ...}, "groups": {...}}."""
    report_file: str
    would: dict[str, dict[str, int]] = field(default_factory=dict)
    """A dry run: what a repair would do, per object."""
    repair: TargetReport | None = None
    group_repair: GroupReport | None = None
    seconds: float = 0.0
    steps_seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target,
            "differences": self.differences,
            "counts": self.counts,
            "report_file": self.report_file,
        }
        if self.would:
            out["would"] = self.would
        if self.repair is not None:
            out["repair"] = self.repair.as_dict()
        if self.group_repair is not None:
            out["group_repair"] = self.group_repair.as_dict()
        out["seconds"] = self.seconds
        out["steps_seconds"] = self.steps_seconds
        return out


Command = Literal["sync", "groups", "reconcile"]


class RunSummary:
    """What one run did: returned by the flow, printed by the CLI, published as artifacts;
    :meth:`as_dict` is its JSON form (``--json``).

    Not a dataclass on purpose: Prefect walks a flow's return value (every dataclass field,
    list item and dict entry) looking for futures, and the reports hold the whole plan and
    every failure; at 10,000 users that walk took 2 s at the end of each sync. An object of
    a plain class is one node to it.
    """

    __slots__ = (
        "command",
        "directory",
        "dry_run",
        "groups",
        "reconciliation",
        "source_entries",
        "targets",
    )

    def __init__(
        self,
        command: Command,
        targets: list[TargetReport] | None = None,
        groups: list[GroupReport] | None = None,
        source_entries: int = 0,
        directory: dict[str, Any] | None = None,
        reconciliation: list[Reconciliation] | None = None,
        dry_run: bool = False,
    ) -> None:
        self.command = command
        self.targets = targets if targets is not None else []
        self.groups = groups if groups is not None else []
        self.source_entries = source_entries
        self.directory: dict[str, Any] = directory if directory is not None else {}
        """How the directory was read (:meth:`tasks.ldap.changes.Changes.summary`)."""
        self.reconciliation = reconciliation if reconciliation is not None else []
        self.dry_run = dry_run

    def __repr__(self) -> str:
        return f"RunSummary({self.command!r}: {self.headline})"

    def reports(self) -> list[TargetReport | GroupReport]:
        """Every target's users report, then every target's groups report."""
        return [*self.targets, *self.groups]

    def problems(self) -> int:
        """Users and groups that did not reach the desired state (failed, rejected, held
        back), plus one per target the run could not reach."""
        return sum(r.problems() for r in self.reports()) + len(self.unreached())

    def retry_may_help(self) -> bool:
        """Whether retrying this run could bring more into step: a write failed, or a target
        was not reached. Rejected entries and held-back deprovisionings come back the same."""
        return any(sum(r.failed.values()) or r.unreachable for r in self.reports())

    def unreached(self) -> list[str]:
        """Why each target this run could not reach was not reached (one line each)."""
        reasons = [r.unreachable for r in self.reports() if r.unreachable]
        return list(dict.fromkeys(reasons))

    @property
    def headline(self) -> str:
        if self.command != "reconcile":
            return _headline(self)
        found = sum(r.differences for r in self.reconciliation)
        if self.dry_run:
            return f"dry run: {found} differences found, nothing changed"
        return f"{found} differences found; repair: {_headline(self)}"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.command == "reconcile":
            out["dry_run"] = self.dry_run
        if self.command != "groups":
            out["source_entries"] = self.source_entries
        if self.command == "sync":
            out["directory"] = self.directory
        if self.command == "reconcile":
            out["reconciliation"] = [r.as_dict() for r in self.reconciliation]
        if self.command != "groups":
            out["targets"] = [t.as_dict() for t in self.targets]
        if self.groups or self.command == "groups":
            out["groups"] = [g.as_dict() for g in self.groups]
        out["headline"] = self.headline
        return out


def summary_rows(summary: RunSummary) -> list[dict[str, Any]]:
    """One row per target and action: planned, succeeded, failed."""
    rows: list[dict[str, Any]] = []

    def row(target: str, action: str, planned: Any, succeeded: Any = "", failed: Any = "") -> None:
        rows.append(
            {
                "target": target,
                "action": action,
                "planned": planned,
                "succeeded": succeeded,
                "failed": failed,
            }
        )

    for t in summary.targets:
        for kind in KINDS:
            row(t.target, kind, t.planned[kind], t.done[kind], t.failed[kind])
        for other in ("unchanged", "skipped", "rejected", "not provisioned (disabled)"):
            row(t.target, other, t.planned[other])
    for g in summary.groups:
        planned = g.plan.counts()
        for kind in GROUP_KINDS:
            row(g.target, f"{kind} group", planned[kind], g.done[kind], g.failed[kind])
        row(g.target, "groups renamed", planned["renames"], g.renamed)
        row(g.target, "members added", planned["members to add"], g.added)
        row(g.target, "members removed", planned["members to remove"], g.removed)
        for other in ("unchanged", "skipped", "members not provisioned"):
            label = f"groups: {other}" if other != "members not provisioned" else other
            row(g.target, label, planned[other])
    return rows


def _table(title: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = ["", f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for item in rows:
        cells = (str(item[c]).replace("|", "\\|").replace("\n", " ") for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def details_markdown(summary: RunSummary) -> str:
    """Failures, skipped actions and rejected entries, as markdown for a Prefect artifact."""
    lines = [f"# {summary.headline}", ""]
    for t in summary.targets:
        lines.append(f"## Users on target `{t.target}`")
        lines.append(
            f"{t.writes} write requests, {sum(t.requests.values())} requests in all, "
            f"{round(t.seconds, 2)} s; {t.adopted} existing users adopted."
        )
        lines += [f"- note: {n}" for n in t.notes]
        lines += _table("Failed", ("user", "action", "error"), t.failures[:SAMPLE])
        lines += _table(
            "Accounts already on the target, adopted",
            ("user",),
            [{"user": name} for name in t.adoptions[:SAMPLE]],
        )
        lines += _table("Skipped by a switch", ("user", "would", "reason"), t.skipped())
        lines += _table("Rejected directory entries", ("entry", "reason"), t.rejected())
        lines.append("")
    for g in summary.groups:
        lines.append(f"## Groups on target `{g.target}`")
        lines.append(
            f"{g.added} members added, {g.removed} removed; "
            f"{g.writes} write requests, {sum(g.requests.values())} requests in all, "
            f"{round(g.seconds, 2)} s; {g.adopted} existing groups adopted."
        )
        lines += [f"- note: {n}" for n in g.notes]
        lines += _table("Failed", ("group", "action", "error"), g.failures[:SAMPLE])
        lines += _table("Skipped by a switch", ("group", "would", "reason"), g.skipped())
        lines += _table(
            "Members that are not provisioned users (left out)",
            ("group", "members"),
            g.not_provisioned(),
        )
        warnings = [{"warning": w} for w in g.plan.warnings[:SAMPLE]]
        lines += _table("Warnings", ("warning",), warnings)
        lines.append("")
    return "\n".join(lines)


def _headline(summary: RunSummary) -> str:
    counts: Counter[str] = Counter()
    for t in summary.targets:
        counts.update(t.done)
    parts = [f"{counts[k]} {k}d" for k in KINDS if counts[k]]
    held = sum(t.held_back for t in summary.targets)
    if held:
        parts.append(f"{held} deprovisionings held back by the guard")
    held_groups = sum(g.held_back for g in summary.groups)
    if held_groups:
        parts.append(f"{held_groups} group deletions held back by the guard")
    groups: Counter[str] = Counter()
    for g in summary.groups:
        groups.update(g.done)
        groups["members added"] += g.added
        groups["members removed"] += g.removed
    parts += [f"{groups[k]} groups {k}d" for k in GROUP_KINDS if groups[k]]
    renamed = sum(g.renamed for g in summary.groups)
    if renamed:
        parts.append(f"{renamed} renamed")
    parts += [f"{groups[k]} {k}" for k in ("members added", "members removed") if groups[k]]
    done = ", ".join(parts) or "no changes"
    missed = sorted({r.target for r in summary.reports() if r.unreachable})
    bad = summary.problems() - len(summary.unreached())
    one, many = ("user or group", "users or groups") if summary.groups else ("user", "users")
    trouble = f"{bad} {_plural(bad, one, many)} with problems"
    if missed:  # never "in step" about a target this run did not reach
        named = f"{len(missed)} {_plural(len(missed), 'target')} not reached ({', '.join(missed)})"
        return f"{done}; {named}" + (f", {trouble}" if bad else "")
    if not bad:
        return f"{done}; every {one.replace(' or ', ' and ')} in step"
    return f"{done}; {trouble}"


def _plural(count: int, one: str, many: str | None = None) -> str:
    return one if count == 1 else (many or f"{one}s")


def text_console(**options: Any) -> Console:
    """A console that prints data as text: directory values like ``[/bold]`` or ``:smile:``
    are never read as rich markup or emoji (styles come from :class:`Text` labels only)."""
    return Console(markup=False, emoji=False, highlight=False, **options)


def labelled(label: str, style: str, text: str) -> Text:
    """``label`` in ``style``, then ``text`` as it is."""
    return Text.assemble((label, style), " ", text)


def print_summary(summary: RunSummary, console: Console | None = None) -> None:
    """A table per run for the terminal."""
    console = console or text_console()
    table = Table(title=Text(summary.headline))
    for column in ("target", "action", "planned", "succeeded", "failed"):
        table.add_column(column, justify="left" if column in ("target", "action") else "right")
    for row in summary_rows(summary):
        if row["planned"] or row["succeeded"] or row["action"] in KINDS:
            table.add_row(
                *(Text(str(row[c])) for c in ("target", "action", "planned", "succeeded", "failed"))
            )
    console.print(table)
    for report in summary.reports():
        for note in dict.fromkeys(report.notes):
            console.print(labelled("note", "yellow", f"{report.target}: {note}"))
    for t in summary.targets:
        for f in t.failures[:10]:
            line = f"{t.target}: {f['action']} {f['user']}: {f['error']}"
            console.print(labelled("failed", "red", line))
        for name in t.adoptions[:10]:
            line = f"{t.target}: {name} (an account already on the target, now managed)"
            console.print(labelled("adopted", "yellow", line))
        for r in t.rejected()[:10]:
            console.print(labelled("rejected", "yellow", f"{r['entry']}: {r['reason']}"))
        for s in t.skipped()[:10]:
            console.print(labelled("skipped", "yellow", f"{s['would']} {s['user']}: {s['reason']}"))
    for g in summary.groups:
        for f in g.failures[:10]:
            line = f"{g.target}: {f['action']} group {f['group']}: {f['error']}"
            console.print(labelled("failed", "red", line))
        for s in g.skipped()[:10]:
            line = f"{s['would']} group {s['group']}: {s['reason']}"
            console.print(labelled("skipped", "yellow", line))
        for w in g.plan.warnings[:10]:
            console.print(labelled("warning", "yellow", f"{g.target}: {w}"))


def publish(summary: RunSummary, key: str) -> None:
    """The run's summary as Prefect artifacts: a table of counts and the details."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_table_artifact(
        key=f"{key}-summary", table=summary_rows(summary), description=summary.headline
    )
    create_markdown_artifact(
        key=f"{key}-details",
        markdown=details_markdown(summary),
        description="Failures, skipped actions, rejected entries and warnings",
    )


def final_state(summary: RunSummary) -> State:
    """Completed when everything is in step, Failed (with the same summary) otherwise."""
    from prefect.states import Completed, Failed

    if summary.problems():
        return Failed(message=summary.headline, data=summary)
    return Completed(message=summary.headline, data=summary)


class LoadProgress:
    """A terminal progress bar (when attached to one) and a Prefect progress artifact."""

    def __init__(self, total: int, description: str, artifact_id: Any = None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.artifact_id = artifact_id
        self._bar: Progress | None = None
        if sys.stderr.isatty() and total:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.start()
            self._task = self._bar.add_task(description, total=total)

    def advance(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        if self.artifact_id is not None:
            from prefect.artifacts import update_progress_artifact

            progress = min(100.0, 100.0 * self.done / self.total)  # a total may be a guess
            update_progress_artifact(self.artifact_id, progress=progress)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
