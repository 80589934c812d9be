"""Reporting: progress while loading, and the summary a person reads at the end of a run.

The summary is plain data (JSON-ready): the flow returns it, the CLI prints it, and the Prefect
artifacts are built from it. It holds user names and reasons, never secrets.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

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

    def as_dict(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "target": self.target,
            "planned": self.planned,
            "succeeded": {k: self.done[k] for k in KINDS},
            "failed": {k: self.failed[k] for k in KINDS},
            "adopted": self.adopted,
            "adoptions": self.adoptions[:SAMPLE],
            "failures": self.failures[:SAMPLE],
            "skipped": [
                {"user": s.user_name, "would": s.would, "reason": s.reason}
                for s in (plan.skipped if plan else [])[:SAMPLE]
            ],
            "rejected": [
                {"entry": r.dn, "reason": r.reason}
                for r in (plan.rejected if plan else [])[:SAMPLE]
            ],
            "requests": dict(self.requests),
            "writes": sum(self.requests[m] for m in ("POST", "PUT", "PATCH", "DELETE")),
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
            "skipped": [
                {"group": s.display_name, "would": s.would, "reason": s.reason}
                for s in plan.skipped[:SAMPLE]
            ],
            "not_provisioned_members": [
                {"group": name, "members": count}
                for name, count in plan.not_provisioned_members.most_common(SAMPLE)
            ],
            "warnings": plan.warnings[:SAMPLE],
            "requests": dict(self.requests),
            "writes": sum(self.requests[m] for m in ("POST", "PUT", "PATCH", "DELETE")),
            "seconds": round(self.seconds, 2),
            "held_back": self.held_back,
            "unreachable": self.unreachable,
            "notes": self.notes,
        }


GROUP_KINDS = ("create", "update", "delete")


def problems(summary: dict[str, Any]) -> int:
    """Users and groups that did not reach the desired state (failed, rejected, held back),
    plus one per target the run could not reach."""
    users = sum(
        sum(t["failed"].values()) + t["planned"].get("rejected", 0) + t.get("held_back", 0)
        for t in summary.get("targets", [])
    )
    groups = sum(
        sum(g["failed"].values()) + g.get("held_back", 0) for g in summary.get("groups", [])
    )
    return int(users + groups) + len(unreached(summary))


def unreached(summary: dict[str, Any]) -> list[str]:
    """Why each target this run could not reach was not reached (one line each)."""
    reasons = [
        r["unreachable"]
        for r in (*summary.get("targets", []), *summary.get("groups", []))
        if r.get("unreachable")
    ]
    return list(dict.fromkeys(reasons))


def summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
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

    for t in summary.get("targets", []):
        for kind in KINDS:
            row(t["target"], kind, t["planned"][kind], t["succeeded"][kind], t["failed"][kind])
        for other in ("unchanged", "skipped", "rejected", "not provisioned (disabled)"):
            row(t["target"], other, t["planned"][other])
    for g in summary.get("groups", []):
        for kind in GROUP_KINDS:
            row(
                g["target"],
                f"{kind} group",
                g["planned"][kind],
                g["succeeded"][kind],
                g["failed"][kind],
            )
        row(g["target"], "groups renamed", g["planned"]["renames"], g["renamed"])
        row(g["target"], "members added", g["planned"]["members to add"], g["members_added"])
        row(g["target"], "members removed", g["planned"]["members to remove"], g["members_removed"])
        for other in ("unchanged", "skipped", "members not provisioned"):
            row(
                g["target"],
                f"groups: {other}" if other != "members not provisioned" else other,
                g["planned"][other],
            )
    return rows


def _table(title: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = ["", f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for item in rows:
        cells = (str(item[c]).replace("|", "\\|").replace("\n", " ") for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def details_markdown(summary: dict[str, Any]) -> str:
    """Failures, skipped actions and rejected entries, as markdown for a Prefect artifact."""
    lines = [f"# {summary['headline']}", ""]
    for t in summary.get("targets", []):
        lines.append(f"## Users on target `{t['target']}`")
        lines.append(
            f"{t['writes']} write requests, {sum(t['requests'].values())} requests in all, "
            f"{t['seconds']} s; {t['adopted']} existing users adopted."
        )
        lines += [f"- note: {n}" for n in t.get("notes", [])]
        lines += _table("Failed", ("user", "action", "error"), t["failures"])
        lines += _table(
            "Accounts already on the target, adopted",
            ("user",),
            [{"user": name} for name in t.get("adoptions", [])],
        )
        lines += _table("Skipped by a switch", ("user", "would", "reason"), t["skipped"])
        lines += _table("Rejected directory entries", ("entry", "reason"), t["rejected"])
        lines.append("")
    for g in summary.get("groups", []):
        lines.append(f"## Groups on target `{g['target']}`")
        lines.append(
            f"{g['members_added']} members added, {g['members_removed']} removed; "
            f"{g['writes']} write requests, {sum(g['requests'].values())} requests in all, "
            f"{g['seconds']} s; {g['adopted']} existing groups adopted."
        )
        lines += [f"- note: {n}" for n in g.get("notes", [])]
        lines += _table("Failed", ("group", "action", "error"), g["failures"])
        lines += _table("Skipped by a switch", ("group", "would", "reason"), g["skipped"])
        lines += _table(
            "Members that are not provisioned users (left out)",
            ("group", "members"),
            g["not_provisioned_members"],
        )
        lines += _table("Warnings", ("warning",), [{"warning": w} for w in g["warnings"]])
        lines.append("")
    return "\n".join(lines)


def headline(summary: dict[str, Any]) -> str:
    counts: Counter[str] = Counter()
    for t in summary.get("targets", []):
        counts.update(t["succeeded"])
    parts = [f"{counts[k]} {k}d" for k in KINDS if counts[k]]
    held = sum(t.get("held_back", 0) for t in summary.get("targets", []))
    if held:
        parts.append(f"{held} deprovisionings held back by the guard")
    held_groups = sum(g.get("held_back", 0) for g in summary.get("groups", []))
    if held_groups:
        parts.append(f"{held_groups} group deletions held back by the guard")
    groups: Counter[str] = Counter()
    for g in summary.get("groups", []):
        groups.update(g["succeeded"])
        groups["members added"] += g["members_added"]
        groups["members removed"] += g["members_removed"]
    parts += [f"{groups[k]} groups {k}d" for k in GROUP_KINDS if groups[k]]
    renamed = sum(g.get("renamed", 0) for g in summary.get("groups", []))
    if renamed:
        parts.append(f"{renamed} renamed")
    parts += [f"{groups[k]} {k}" for k in ("members added", "members removed") if groups[k]]
    done = ", ".join(parts) or "no changes"
    reports = (*summary.get("targets", []), *summary.get("groups", []))
    missed = sorted({r["target"] for r in reports if r.get("unreachable")})
    bad = problems(summary) - len(unreached(summary))
    one, many = ("user or group", "users or groups") if summary.get("groups") else ("user", "users")
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


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    """A table per run for the terminal."""
    console = console or text_console()
    table = Table(title=Text(summary["headline"]))
    for column in ("target", "action", "planned", "succeeded", "failed"):
        table.add_column(column, justify="left" if column in ("target", "action") else "right")
    for row in summary_rows(summary):
        if row["planned"] or row["succeeded"] or row["action"] in KINDS:
            table.add_row(
                *(Text(str(row[c])) for c in ("target", "action", "planned", "succeeded", "failed"))
            )
    console.print(table)
    for report in (*summary.get("targets", []), *summary.get("groups", [])):
        for note in dict.fromkeys(report.get("notes", [])):
            console.print(labelled("note", "yellow", f"{report['target']}: {note}"))
    for t in summary.get("targets", []):
        for f in t["failures"][:10]:
            line = f"{t['target']}: {f['action']} {f['user']}: {f['error']}"
            console.print(labelled("failed", "red", line))
        for name in t.get("adoptions", [])[:10]:
            line = f"{t['target']}: {name} (an account already on the target, now managed)"
            console.print(labelled("adopted", "yellow", line))
        for r in t["rejected"][:10]:
            console.print(labelled("rejected", "yellow", f"{r['entry']}: {r['reason']}"))
        for s in t["skipped"][:10]:
            console.print(labelled("skipped", "yellow", f"{s['would']} {s['user']}: {s['reason']}"))
    for g in summary.get("groups", []):
        for f in g["failures"][:10]:
            line = f"{g['target']}: {f['action']} group {f['group']}: {f['error']}"
            console.print(labelled("failed", "red", line))
        for s in g["skipped"][:10]:
            line = f"{s['would']} group {s['group']}: {s['reason']}"
            console.print(labelled("skipped", "yellow", line))
        for w in g["warnings"][:10]:
            console.print(labelled("warning", "yellow", f"{g['target']}: {w}"))


def publish(summary: dict[str, Any], key: str) -> None:
    """The run's summary as Prefect artifacts: a table of counts and the details."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_table_artifact(
        key=f"{key}-summary", table=summary_rows(summary), description=summary["headline"]
    )
    create_markdown_artifact(
        key=f"{key}-details",
        markdown=details_markdown(summary),
        description="Failures, skipped actions, rejected entries and warnings",
    )


def final_state(summary: dict[str, Any]) -> State:
    """Completed when everything is in step, Failed (with the same summary) otherwise."""
    from prefect.states import Completed, Failed

    if problems(summary):
        return Failed(message=summary["headline"], data=summary)
    return Completed(message=summary["headline"], data=summary)


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
