"""Reporting: progress while loading, and the summary a person reads at the end of a run.

The summary is plain data (JSON-ready): the flow returns it, the CLI prints it, and the Prefect
artifacts are built from it. It holds user names and reasons, never secrets.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tasks.load import Outcome
from tasks.plan import Plan

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
    failures: list[dict[str, str]] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    plan: Plan | None = None
    seconds: float = 0.0

    def add(self, outcome: Outcome) -> None:
        kind = outcome.action.kind
        if outcome.ok:
            self.done[kind] += 1
            self.adopted += outcome.adopted
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
        }


def problems(summary: dict[str, Any]) -> int:
    """Users that did not reach the desired state: failed writes and rejected entries."""
    return sum(
        sum(t["failed"].values()) + t["planned"].get("rejected", 0) for t in summary["targets"]
    )


def summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target and action: planned, succeeded, failed."""
    rows = []
    for t in summary["targets"]:
        for kind in KINDS:
            rows.append(
                {
                    "target": t["target"],
                    "action": kind,
                    "planned": t["planned"][kind],
                    "succeeded": t["succeeded"][kind],
                    "failed": t["failed"][kind],
                }
            )
        for other in ("unchanged", "skipped", "rejected", "not provisioned (disabled)"):
            rows.append(
                {
                    "target": t["target"],
                    "action": other,
                    "planned": t["planned"][other],
                    "succeeded": "",
                    "failed": "",
                }
            )
    return rows


def details_markdown(summary: dict[str, Any]) -> str:
    """Failures, skipped actions and rejected entries, as markdown for a Prefect artifact."""
    lines = [f"# {summary['headline']}", ""]
    for t in summary["targets"]:
        lines.append(f"## Target `{t['target']}`")
        lines.append(
            f"{t['writes']} write requests, {sum(t['requests'].values())} requests in all, "
            f"{t['seconds']} s; {t['adopted']} existing users adopted."
        )
        for title, key, columns in (
            ("Failed", "failures", ("user", "action", "error")),
            ("Skipped by a switch", "skipped", ("user", "would", "reason")),
            ("Rejected directory entries", "rejected", ("entry", "reason")),
        ):
            rows = t[key]
            if not rows:
                continue
            lines += ["", f"### {title}", "", "| " + " | ".join(columns) + " |"]
            lines.append("|" + "---|" * len(columns))
            for row in rows:
                cells = (str(row[c]).replace("|", "\\|").replace("\n", " ") for c in columns)
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def headline(summary: dict[str, Any]) -> str:
    counts: Counter[str] = Counter()
    for t in summary["targets"]:
        counts.update({k: v for k, v in t["succeeded"].items()})
    done = ", ".join(f"{counts[k]} {k}d" for k in KINDS if counts[k]) or "no changes"
    bad = problems(summary)
    if not bad:
        return f"{done}; every user in step"
    return f"{done}; {bad} user{'s' if bad > 1 else ''} with problems"


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    """A table per run for the terminal."""
    console = console or Console(stderr=False)
    table = Table(title=f"provision_users: {summary['headline']}")
    for column in ("target", "action", "planned", "succeeded", "failed"):
        table.add_column(column, justify="left" if column in ("target", "action") else "right")
    for row in summary_rows(summary):
        if row["planned"] or row["action"] in KINDS:
            table.add_row(
                *(str(row[c]) for c in ("target", "action", "planned", "succeeded", "failed"))
            )
    console.print(table)
    for t in summary["targets"]:
        for f in t["failures"][:10]:
            console.print(
                f"[red]failed[/red] {t['target']}: {f['action']} {f['user']}: {f['error']}"
            )
        for r in t["rejected"][:10]:
            console.print(f"[yellow]rejected[/yellow] {r['entry']}: {r['reason']}")
        for s in t["skipped"][:10]:
            console.print(f"[yellow]skipped[/yellow] {s['would']} {s['user']}: {s['reason']}")


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

            update_progress_artifact(self.artifact_id, progress=100.0 * self.done / self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
