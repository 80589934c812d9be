"""``scim-provisioner``: run a sync through Prefect, or show what a sync would do.

    scim-provisioner sync --config FILE [--target NAME]
    scim-provisioner plan --config FILE [--target NAME]

Exit codes: 0 every user in step; 1 some users failed or were rejected; 2 invalid config or
the run could not start (the reason is printed on one line).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, cast

from rich.console import Console
from rich.table import Table

from tasks.config import Config, load_config
from tasks.errors import ConfigError, ProvisionerError
from tasks.extract import connect, mapped_attributes, read_users
from tasks.plan import Plan, plan_users
from tasks.report import print_summary, problems
from tasks.state import StateStore
from tasks.transform import Rejection, transform_batch

EXIT_OK, EXIT_FAILURES, EXIT_ERROR = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scim-provisioner",
        description="Provision LDAP / Active Directory users into SCIM applications.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("sync", "run the provision_users flow (through Prefect) and print its summary"),
        ("plan", "print what a sync would do; writes nothing, contacts no target"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--config", required=True, metavar="FILE", help="YAML config file")
        sub.add_argument("--target", metavar="NAME", help="only this target (default: all)")
        sub.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def compute_plans(config: Config, target: str | None) -> list[Plan]:
    """Plans for the selected targets, from the directory and a read-only state store."""
    targets = config.target(target)
    conn = connect(config.source)
    try:
        extraction = read_users(conn, config.source, mapped_attributes(t.mapping for t in targets))
    finally:
        conn.unbind()
    store = StateStore(config.state.url, read_only=True)
    plans = []
    try:
        for t in targets:
            desired, rejected = transform_batch(extraction.users, t.mapping)
            rejected += [Rejection("", dn, reason) for dn, reason in extraction.invalid]
            plans.append(plan_users(t, desired, rejected, store.records(t.name)))
    finally:
        store.close()
    return plans


def _print_plans(plans: list[Plan], console: Console) -> None:
    for plan in plans:
        table = Table(title=f"plan for target {plan.target}")
        table.add_column("change")
        table.add_column("user")
        table.add_column("why")
        for action in plan.actions:
            table.add_row(action.kind, action.user_name, action.reason)
        for skipped in plan.skipped:
            table.add_row(f"skip {skipped.would}", skipped.user_name, skipped.reason)
        for rejected in plan.rejected:
            table.add_row("rejected", rejected.dn, rejected.reason)
        console.print(table)
        console.print(", ".join(f"{k}: {v}" for k, v in plan.counts().items()))


def _plan_json(plans: list[Plan]) -> list[dict[str, Any]]:
    return [
        {
            "target": p.target,
            "counts": p.counts(),
            "actions": [
                {"action": a.kind, "user": a.user_name, "why": a.reason} for a in p.actions
            ],
            "skipped": [
                {"would": s.would, "user": s.user_name, "why": s.reason} for s in p.skipped
            ],
            "rejected": [{"entry": r.dn, "why": r.reason} for r in p.rejected],
        }
        for p in plans
    ]


def _sync(config_path: str, target: str | None) -> dict[str, Any]:
    from flows.provision_users import provision_users

    state = provision_users(config_path=config_path, target=target, return_state=True)
    data = state.result(raise_on_failure=False)
    if isinstance(data, BaseException):
        raise data
    return cast(dict[str, Any], data)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    try:
        config = load_config(args.config)
        config.target(args.target)
        if args.command == "plan":
            plans = compute_plans(config, args.target)
            if args.json:
                print(json.dumps(_plan_json(plans), indent=2))
            else:
                _print_plans(plans, console)
            return EXIT_OK
        summary = _sync(args.config, args.target)
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
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary, console)
    return EXIT_FAILURES if problems(summary) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
