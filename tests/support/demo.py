"""The demo: a local slapd with sample people, a local scim2-server, and one sync through Prefect.

Run it with ``bash deployments/demo.sh`` (which installs what is missing first). Everything it
makes lives in ``.demo/`` at the repository root; the servers stop when it ends, unless
``--keep`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import requests
import yaml
from rich.console import Console
from rich.table import Table

from tests.support.servers import ScimServer, Slapd, ou_ldif, person_ldif

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = "dc=example,dc=org"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
DEMO_TOKEN = "demo-bearer-token"
DEMO_LDAP_PASSWORD = "demo-admin-password"

GIVEN = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "John", "Radia", "Ken"]
FAMILY = [
    "Lovelace",
    "Turing",
    "Hopper",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Backus",
    "Perlman",
]
DEPARTMENTS = ["Engineering", "Research", "Operations", "Finance"]


def sample_directory(count: int = 30) -> str:
    """Deterministic sample people (every tenth one locked: nsAccountLock: TRUE) and one group
    per department with its people as members."""
    entries = [ou_ldif(PEOPLE)]
    departments: dict[str, list[str]] = {d: [] for d in DEPARTMENTS}
    for n in range(count):
        given, family = GIVEN[n % len(GIVEN)], FAMILY[n % len(FAMILY)]
        uid = f"{given[0]}{family}{n}".lower()
        entries.append(
            person_ldif(
                uid,
                given_name=given,
                surname=family,
                mail=[f"{uid}@example.org"],
                ou_dn=PEOPLE,
                extra={
                    "title": ["Engineer" if n % 3 else "Manager"],
                    "telephoneNumber": [f"+1 555 01{n:02d}"],
                    "employeeNumber": [str(1000 + n)],
                    "departmentNumber": [DEPARTMENTS[n % len(DEPARTMENTS)]],
                },
                locked=n % 10 == 9,
            )
        )
        departments[DEPARTMENTS[n % len(DEPARTMENTS)]].append(f"uid={uid},{PEOPLE}")
    entries.append(ou_ldif(GROUPS))
    for name, members in departments.items():
        if members:
            lines = [f"dn: cn={name},{GROUPS}", "objectClass: groupOfNames", f"cn: {name}"]
            entries.append("\n".join(lines + [f"member: {m}" for m in members]) + "\n\n")
    return "".join(entries)


def write_config(workdir: Path, slapd: Slapd, scim: ScimServer) -> Path:
    config = {
        "source": {
            "url": slapd.ldaps_url,
            "ca_file": str(slapd.tls.ca_cert),
            "bind_dn": slapd.admin_dn,
            "bind_password": {"env": "DEMO_LDAP_PASSWORD"},
            "users": {"base_dn": PEOPLE, "filter": "(objectClass=inetOrgPerson)"},
            "groups": {"base_dn": GROUPS},
            "account_status": {"method": "flag", "attribute": "nsAccountLock"},
        },
        "state": {"url": "sqlite:///state.db"},
        "targets": [
            {
                "name": "demo-app",
                "url": scim.base_url,
                "auth": {"type": "bearer", "token": {"env": "DEMO_SCIM_TOKEN"}},
            }
        ],
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def show_target(scim: ScimServer, console: Console) -> None:
    response = requests.get(
        f"{scim.base_url}/Users",
        params={"count": "1000", "sortBy": "userName"},
        headers={"Authorization": f"Bearer {DEMO_TOKEN}"},
        timeout=10,
    )
    users = response.json().get("Resources", [])
    table = Table(title=f"Users now in the SCIM application ({len(users)})")
    for column in ("userName", "displayName", "email", "title", "department", "active"):
        table.add_column(column)
    enterprise = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
    for user in users[:12]:
        table.add_row(
            user["userName"],
            user.get("displayName", ""),
            (user.get("emails") or [{}])[0].get("value", ""),
            user.get("title", ""),
            user.get(enterprise, {}).get("department", ""),
            str(user.get("active")),
        )
    console.print(table)
    if len(users) > 12:
        console.print(f"… and {len(users) - 12} more")
    groups = (
        requests.get(
            f"{scim.base_url}/Groups",
            params={"count": "1000", "sortBy": "displayName"},
            headers={"Authorization": f"Bearer {DEMO_TOKEN}"},
            timeout=10,
        )
        .json()
        .get("Resources", [])
    )
    names = {u["id"]: u["userName"] for u in users}
    table = Table(title=f"Groups now in the SCIM application ({len(groups)})")
    table.add_column("displayName")
    table.add_column("members")
    for group in groups:
        members = sorted(names.get(m["value"], m["value"]) for m in group.get("members", []))
        table.add_row(group["displayName"], f"{len(members)}: " + ", ".join(members))
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=30, help="sample people (default 30)")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave slapd and the SCIM server running until Ctrl-C or SIGTERM",
    )
    args = parser.parse_args(argv)
    # SIGTERM (kill, a service manager) stops the servers as Ctrl-C does: the finally below
    # and Prefect's exit handlers (its temporary server) run on SystemExit, not on a bare kill.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    console = Console()
    workdir = ROOT / ".demo"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    os.environ["DEMO_LDAP_PASSWORD"] = DEMO_LDAP_PASSWORD
    os.environ["DEMO_SCIM_TOKEN"] = DEMO_TOKEN
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    slapd = Slapd(workdir / "slapd", suffix=SUFFIX, admin_password=DEMO_LDAP_PASSWORD)
    scim = ScimServer(workdir / "scim", bearer_token=DEMO_TOKEN)
    from flows.cli import main as cli

    try:
        console.print("[bold]Starting a local OpenLDAP slapd with sample people…[/bold]")
        slapd.start(sample_directory(args.users))
        console.print(f"  {slapd.ldaps_url} ({args.users} people under {PEOPLE})")
        console.print("[bold]Starting a local SCIM 2.0 application (scim2-server)…[/bold]")
        scim.start()
        console.print(f"  {scim.base_url}")
        config = write_config(workdir, slapd, scim)
        env_file = workdir / "env"
        env_file.write_text(
            f"export DEMO_LDAP_PASSWORD={DEMO_LDAP_PASSWORD} DEMO_SCIM_TOKEN={DEMO_TOKEN}\n"
        )
        console.print(f"[bold]Running provision_users through Prefect[/bold] (config: {config})")
        code = cli(["sync", "--config", str(config)])
        show_target(scim, console)
        console.print(
            "\nSee the run, its task runs and its summary artifacts in the Prefect UI:\n"
            f"  {sys.executable} -m prefect server start   then open http://127.0.0.1:4200/runs\n"
            "Run the sync again (no change, so no write), while the servers run (--keep):\n"
            f"  source {env_file}; {Path(sys.executable).parent / 'scim-provisioner'} "
            f"sync --config {config}"
        )
        if args.keep:
            console.print(f"\nServers running; press Ctrl-C (or kill {os.getpid()}) to stop them.")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
        return code
    finally:
        scim.stop()
        slapd.stop()
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
