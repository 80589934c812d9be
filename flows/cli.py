"""``scim-provisioner``: run a sync through Prefect, or show what a sync would do.

    scim-provisioner sync --config FILE [--target NAME]     users (and groups, if configured)
    scim-provisioner groups --config FILE [--target NAME]   groups and memberships only
    scim-provisioner plan --config FILE [--target NAME]     what a sync would do
    scim-provisioner reconcile --config FILE [--dry-run]   compare with the target; repair
    scim-provisioner audit --config FILE [--user WHO] [--since 24h] ...   the audit log
    scim-provisioner check --config FILE [--target NAME]   is everything ready for a run?

Exit codes: 0 everything in step; 1 some users or groups failed or entries were rejected;
2 invalid config, or the run could not start or had to stop (the reason on one line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tasks.config import Config, load_config
from tasks.errors import ConfigError, ProvisionerError
from tasks.report import RunSummary, labelled, print_summary, text_console
from tasks.state.store import AuditQuery, AuditRow, StateStore
from tasks.sync.group_plan import GroupAction

if TYPE_CHECKING:
    from flows.launch import EarlyServer
    from flows.pipeline import TargetPreview

EXIT_OK, EXIT_FAILURES, EXIT_ERROR = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scim-provisioner",
        description="Provision LDAP / Active Directory users into SCIM applications.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("sync", "run the provision_users flow (through Prefect) and print its summary"),
        ("groups", "run the sync_group_memberships flow (through Prefect): groups only"),
        (
            "plan",
            "print what the next sync would do (the same reads, plans and guard); writes "
            "nothing, contacts no target",
        ),
        ("audit", "search the audit log: one entry per write attempted, newest first"),
        (
            "check",
            "check everything a run needs: secrets, files, the directory (bind, base DNs, "
            "entries per filter), the state store, each target with its credentials and "
            "/Schemas; writes nothing",
        ),
        (
            "reconcile",
            "run the reconcile flow (through Prefect): compare the directory, the state store "
            "and the target, report every difference and repair them",
        ),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--config", required=True, metavar="FILE", help="YAML config file")
        sub.add_argument("--target", metavar="NAME", help="only this target (default: all)")
        sub.add_argument("--json", action="store_true", help="print the result as JSON")
        if name in ("sync", "groups", "reconcile"):
            sub.add_argument(
                "--verbose",
                action="store_true",
                help="print Prefect's tracebacks in the terminal too (always in the run's log)",
            )
        if name == "reconcile":
            sub.add_argument(
                "--dry-run", action="store_true", help="report the differences; change nothing"
            )
            sub.add_argument(
                "--report-dir",
                metavar="DIR",
                help="where the CSV of every difference goes (default: reports/ by the config)",
            )
        if name in ("sync", "groups", "plan"):
            sub.add_argument(
                "--full",
                action="store_true",
                help="read every user and group instead of the changes since the last cycle",
            )
        if name in ("sync", "groups", "reconcile"):
            sub.add_argument(
                "--allow-mass-deprovisioning",
                action="store_true",
                help="let disables/deletes of users and deletes of groups above the guard's "
                "limit through (unattended runs)",
            )
        if name == "audit":
            sub.add_argument(
                "--user", metavar="WHO", help="a source id, SCIM id, userName or group name"
            )
            sub.add_argument("--run", metavar="ID", help="one Prefect flow run's id")
            sub.add_argument(
                "--action", choices=["create", "update", "disable", "delete", "sign-in", "sso"]
            )
            sub.add_argument("--outcome", choices=["ok", "failed", "refused"])
            sub.add_argument(
                "--since", metavar="WHEN", type=since, help="24h, 7d, 30m or an ISO date/time"
            )
            sub.add_argument("--limit", type=int, default=100, help="at most this many entries")
    text = (
        "the SAML 2.0 identity provider for the targets with an sso block (docs/sso.md): "
        "serve it, or print its metadata for the applications"
    )
    sub = commands.add_parser("sso", help=text, description=text)
    sub.add_argument("action", choices=["serve", "metadata"])
    sub.add_argument("--config", required=True, metavar="FILE", help="YAML config file")
    return parser


def since(text: str) -> datetime:
    """``30m``, ``24h``, ``7d`` ago, or an ISO date or date-time (UTC unless it says)."""
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration like 24h / 7d / 30m nor an ISO date"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def print_reconciliation(summary: RunSummary, console: Console) -> None:
    """Objects per class and target, where the CSV is, then the repair's summary."""
    for result in summary.reconciliation:
        table = Table(title=Text(f"reconciliation of {result.target}"))
        for column in ("object", "class", "count"):
            table.add_column(column, justify="right" if column == "count" else "left")
        for what, by_kind in result.counts.items():
            for kind, count in by_kind.items():
                style = "" if kind == "in step" or not count else "yellow"
                table.add_row(what, Text(kind, style=style), str(count))
        console.print(table)
        console.print(f"every difference: {result.report_file}")
        for what, counts in result.would.items():
            planned = ", ".join(f"{k}: {v}" for k, v in counts.items() if v)
            console.print(f"a repair would do ({what}): {planned or 'nothing'}")
    if summary.targets:
        print_summary(summary, console)
    else:
        console.print(summary.headline)


def print_audit(rows: list[AuditRow], console: Console) -> None:
    table = Table(title=f"audit log: {len(rows)} entries, newest first")
    for column in ("time (UTC)", "target", "action", "who", "SCIM id", "outcome", "cause"):
        table.add_column(column)
    for row in rows:
        outcome = Text(row.outcome, style="" if row.outcome == "ok" else "red")
        table.add_row(
            row.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            row.target,
            f"{row.action} {row.object}",
            row.name,
            row.scim_id or "",
            outcome,
            row.cause,
        )
    console.print(table)


def _group_change(action: GroupAction) -> str:
    parts = []
    if action.rename:
        parts.append("rename")
    if action.kind != "delete":
        if action.add:
            parts.append(f"+{len(action.add)} members")
        if action.remove:
            parts.append(f"-{len(action.remove)} members")
    return ", ".join(parts)


def _print_plans(plans: list[TargetPreview], console: Console) -> None:
    if plans:
        read = plans[0].directory
        console.print(
            f"directory: {read['mode']}, {read['read']} users read, {read['gone']} gone; "
            "the state store's view: no target was contacted"
        )
    for plan in plans:
        users = plan.users
        table = Table(title=Text(f"plan for target {users.target}"))
        table.add_column("change")
        table.add_column("user or group")
        table.add_column("why")
        for action in users.actions:
            table.add_row(action.kind, action.user_name, action.reason)
        for skipped in users.skipped:
            table.add_row(f"skip {skipped.would}", skipped.user_name, skipped.reason)
        for rejected in users.rejected:
            table.add_row("rejected", rejected.dn, rejected.reason)
        groups = plan.groups
        if groups is not None:
            for group in groups.actions:
                table.add_row(f"{group.kind} group", group.display_name, _group_change(group))
            for gskip in groups.skipped:
                table.add_row(f"skip {gskip.would} group", gskip.display_name, gskip.reason)
        console.print(table)
        console.print("users: " + ", ".join(f"{k}: {v}" for k, v in users.counts().items()))
        if users.deferred:
            console.print(
                f"{users.deferred} users refer to users this sync creates (a manager): "
                "updated right after the creates"
            )
        if plan.held_back:
            console.print(
                labelled("guard", "red", f"{plan.held_back} deprovisionings would be held back")
            )
        if groups is not None:
            console.print("groups: " + ", ".join(f"{k}: {v}" for k, v in groups.counts().items()))
            if plan.groups_held_back:
                console.print(
                    labelled(
                        "guard",
                        "red",
                        f"{plan.groups_held_back} group deletions would be held back",
                    )
                )
            for warning in groups.warnings:
                console.print(labelled("warning", "yellow", warning))


def _plan_json(plans: list[TargetPreview]) -> list[dict[str, Any]]:
    out = []
    for plan in plans:
        users = plan.users
        item: dict[str, Any] = {
            "target": users.target,
            "directory": plan.directory,
            "counts": users.counts(),
            "held_back": plan.held_back,
            "deferred": users.deferred,
            "actions": [
                {"action": a.kind, "user": a.user_name, "why": a.reason} for a in users.actions
            ],
            "skipped": [
                {"would": s.would, "user": s.user_name, "why": s.reason} for s in users.skipped
            ],
            "rejected": [{"entry": r.dn, "why": r.reason} for r in users.rejected],
        }
        if plan.groups is not None:
            item["groups"] = {
                "counts": plan.groups.counts(),
                "held_back": plan.groups_held_back,
                "actions": [
                    {
                        "action": g.kind,
                        "group": g.display_name,
                        "add": len(g.add) if g.kind != "delete" else 0,
                        "remove": len(g.remove) if g.kind != "delete" else 0,
                        "rename": g.rename,
                    }
                    for g in plan.groups.actions
                ],
                "skipped": [
                    {"would": s.would, "group": s.display_name, "why": s.reason}
                    for s in plan.groups.skipped
                ],
                "warnings": plan.groups.warnings,
            }
        out.append(item)
    return out


class _NoTracebacks(logging.Filter):
    """Keeps Prefect's tracebacks off the terminal: the failing run's one-line reason is
    printed by the CLI, the traceback stays in the Prefect run's log (``--verbose`` shows it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.name.startswith("prefect"))


def _terminal_without_tracebacks() -> None:
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, _NoTracebacks) for f in handler.filters
        ):
            handler.addFilter(_NoTracebacks())


class RunFailed(ProvisionerError):
    """A flow run ended with an error; carries the run's id for the one-line message."""

    def __init__(self, cause: BaseException, run_id: Any) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.run_id = run_id


def _run(args: argparse.Namespace, early: EarlyServer | None = None) -> RunSummary:
    """Run the command's flow through Prefect and return its summary; ``early``: Prefect's
    temporary server, spawned at the start of the command (:mod:`flows.launch`), which the
    flow waits for (a sync's directory read started meanwhile, there)."""
    import prefect  # noqa: F401  (configures Prefect's logging, which is adjusted next)

    if not args.verbose:
        _terminal_without_tracebacks()
    if early is None:
        return _run_flow(args)
    early.ready()
    # Flow-run heartbeats let a running server notice a run that died; this server lives only
    # as long as the command, so none is watching: none are sent.
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return _run_flow(args)


def _run_flow(args: argparse.Namespace) -> RunSummary:
    if args.command == "reconcile":
        from flows.reconcile import reconcile

        state = reconcile(
            config_path=args.config,
            target=args.target,
            dry_run=args.dry_run,
            allow_mass_deprovisioning=args.allow_mass_deprovisioning,
            report_dir=args.report_dir,
            return_state=True,
        )
    elif args.command == "groups":
        from flows.sync_group_memberships import sync_group_memberships

        state = sync_group_memberships(
            config_path=args.config,
            target=args.target,
            full=args.full,
            allow_mass_deprovisioning=args.allow_mass_deprovisioning,
            return_state=True,
        )
    else:
        from flows.provision_users import provision_users

        state = provision_users(
            config_path=args.config,
            target=args.target,
            allow_mass_deprovisioning=args.allow_mass_deprovisioning,
            full=args.full,
            return_state=True,
        )
    data = state.result(raise_on_failure=False)
    if isinstance(data, BaseException):
        raise RunFailed(data, state.state_details.flow_run_id) from data
    if not isinstance(data, RunSummary):
        raise ProvisionerError(f"the flow run returned {type(data).__name__}, not a summary")
    return data


def _check(args: argparse.Namespace, console: Console) -> int:
    """``check``: one line per finding; exit 0 when nothing is wrong, 2 otherwise."""
    from tasks.check import run_checks

    findings = run_checks(args.config, args.target)
    problems_found = [f for f in findings if not f.ok]
    if args.json:
        print(json.dumps([{"ok": f.ok, "subject": f.subject, "text": f.text} for f in findings]))
    else:
        for f in findings:
            label, style = ("ok", "green") if f.ok else ("PROBLEM", "red")
            console.print(labelled(f"{label:7}", style, f"{f.subject}: {f.text}"), soft_wrap=True)
        if problems_found:
            count = len(problems_found)
            console.print(f"{count} {'problem' if count == 1 else 'problems'} found")
        else:
            console.print("everything checked is ready: plan, then sync")
    return EXIT_ERROR if problems_found else EXIT_OK


def main(argv: list[str] | None = None, early: EarlyServer | None = None) -> int:
    args = _parser().parse_args(argv)
    # Prefect's anonymous telemetry: off in the temporary server the CLI may start (these
    # machines have no internet: every run printed "Failed to send telemetry").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    console = text_console()
    if args.command == "check":
        return _check(args, console)
    try:
        config = load_config(args.config)
        if args.command == "sso":
            return _sso(args.action, config)
        config.target(args.target)
        if args.command == "audit":
            store = StateStore(config.state.url, read_only=True)
            try:
                rows = store.audit_rows(
                    AuditQuery(
                        target=args.target,
                        who=args.user,
                        run_id=args.run,
                        action=args.action,
                        outcome=args.outcome,
                        since=args.since,
                        limit=args.limit,
                    )
                )
            finally:
                store.close()
            if args.json:
                print(json.dumps([r.as_dict() for r in rows], indent=2))
            else:
                print_audit(rows, console)
            return EXIT_OK
        if args.command == "plan":
            from flows.pipeline import preview

            plans = preview(config, args.target, full=args.full)
            if args.json:
                print(json.dumps(_plan_json(plans), indent=2))
            else:
                _print_plans(plans, console)
            return EXIT_OK
        if args.command == "groups" and config.source.groups is None:
            raise ConfigError(
                "the config has no source.groups section: there are no groups to sync"
            )
        summary = _run(args, early)
    except RunFailed as failed:
        cause = failed.cause
        where = f" (flow run {failed.run_id}; its log holds the traceback)"
        if isinstance(cause, ConfigError):
            print(f"scim-provisioner: {cause}{where}", file=sys.stderr)
        elif isinstance(cause, ProvisionerError):
            print(f"scim-provisioner: {args.command} failed: {cause}{where}", file=sys.stderr)
        else:
            print(
                f"scim-provisioner: {args.command} failed unexpectedly: {cause!r}{where}",
                file=sys.stderr,
            )
        return EXIT_ERROR
    except ConfigError as exc:
        print(f"scim-provisioner: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ProvisionerError as exc:
        print(f"scim-provisioner: {args.command} failed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # a bug: the traceback is in the log above / the Prefect run
        print(f"scim-provisioner: {args.command} failed unexpectedly: {exc!r}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    elif args.command == "reconcile":
        print_reconciliation(summary, console)
    else:
        print_summary(summary, console)
    missed = summary.unreached()
    for reason in missed:  # the other targets were served; the run still could not finish
        print(f"scim-provisioner: {args.command}: {reason}", file=sys.stderr)
    if missed:
        return EXIT_ERROR
    return EXIT_FAILURES if summary.problems() else EXIT_OK


def _sso(action: str, config: Config) -> int:
    from flows.sso import serve
    from tasks.sso.service import SignOnService

    if action == "serve":
        return serve(config)
    service = SignOnService(config)
    try:
        print(service.idp.metadata())
    finally:
        service.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
