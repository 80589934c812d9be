"""Benchmark: a whole ``scim-provisioner sync`` (users and groups, the command as a user runs
it), side by side in one run with the target's raw capacity and a hand-written script.

    .venv/bin/python -m tests.bench.whole --users 10000 [--groups 300] [--concurrency 4]

Starts its own slapd (``slapadd -q``: N users, every 20th locked; G groups, one holding
every active user, the others ~50 members each) and scim2-server (gunicorn), then measures:

1. **raw**: bare ``POST /Users`` of the payloads the provisioner sends, ``concurrency`` at a
   time on keep-alive sessions: the target's capacity, in writes/s, measured before and again
   after the others (the higher counts: the machine is shared, and a slow spell during one
   sample would flatter every ratio);
2. **script**: :data:`SCRIPT`, a sequential script as an administrator would write it (ldap3
   paged search, requests, one POST per active user, one POST per group with its members),
   run as its own process into an empty target;
3. **sync**: ``scim-provisioner sync --config FILE`` as its own process into an empty target
   (no ``PREFECT_API_URL``: the temporary Prefect server it starts is part of its time), with
   Bulk as the target advertises it and with ``use_bulk: never``; on scim2-server also with
   ``use_bulk: never`` on a Prefect server already running (as a deployment's would be: no
   server to start).

Each writes the same users and groups; the figure compared is users/s of the whole command
(N / wall time). The raw bound for the same writes is N / (writes / raw writes/s). Goals
(issue 19): sync ≥ 0.9 x the raw bound and ≥ 1.5 x the script. Prints one JSON document, then
a table flagging every missed goal. Not part of the test run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.bench.bench_users import PEOPLE, raw_capacity
from tests.bench.run import machine
from tests.fault_proxy import FaultProxy
from tests.support.servers import ScimServer, Slapd, ou_ldif, person_ldif

GROUPS = "ou=groups,dc=example,dc=org"
LOCKED_EVERY = 20
ALL_USERS = "(objectClass=inetOrgPerson)"
LATENCY_USERS = "(&(objectClass=inetOrgPerson)(uid=user0001*))"
"""The users of the latency scenario: user0001000 to user0001999 (1,000 of them)."""

SCRIPT = r"""
import sys, time, ldap3, requests
ldap_url, ca, bind_dn, password, scim, users = sys.argv[1:7]
tls = ldap3.Tls(ca_certs_file=ca)
conn = ldap3.Connection(ldap3.Server(ldap_url, use_ssl=True, tls=tls), bind_dn, password,
                        auto_bind=True)
session = requests.Session()
ids = {}
search = conn.extend.standard.paged_search
for e in search("ou=people,dc=example,dc=org", users,
        attributes=["uid", "cn", "givenName", "sn", "mail", "nsAccountLock"], paged_size=1000,
        generator=True):
    a = e["attributes"]
    if a.get("nsAccountLock") in (True, "TRUE", ["TRUE"]):
        continue
    user = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": a["uid"][0],
            "displayName": a["cn"][0], "name": {"givenName": a["givenName"][0],
            "familyName": a["sn"][0]}, "emails": [{"value": a["mail"][0], "primary": True}],
            "active": True}
    r = session.post(scim + "/Users", json=user); r.raise_for_status()
    ids[e["dn"].lower()] = r.json()["id"]
users_done = time.perf_counter()
for e in search("ou=groups,dc=example,dc=org", "(objectClass=groupOfNames)",
        attributes=["cn", "member"], paged_size=1000, generator=True):
    members = [{"value": ids[m.lower()]} for m in e["attributes"]["member"] if m.lower() in ids]
    group = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
             "displayName": e["attributes"]["cn"][0], "members": members}
    session.post(scim + "/Groups", json=group).raise_for_status()
print("groups_seconds", time.perf_counter() - users_done)
"""
"""The hand-written script: 33 lines, sequential, no state, no retries, no guard; it prints
how long its group phase took."""


def uid(n: int) -> str:
    return f"user{n:07d}"


def directory(users: int, groups: int) -> tuple[str, int, int]:
    """The LDIF; the active users; the memberships of active users."""
    people = ou_ldif(PEOPLE) + "".join(
        person_ldif(
            uid(n),
            given_name=f"Given{n}",
            surname=f"Family{n}",
            mail=[f"{uid(n)}@example.org"],
            ou_dn=PEOPLE,
            extra={"title": ["Engineer"], "employeeNumber": [str(n)]},
            locked=n % LOCKED_EVERY == LOCKED_EVERY - 1,
        )
        for n in range(users)
    )
    active = [n for n in range(users) if n % LOCKED_EVERY != LOCKED_EVERY - 1]
    ldif = [ou_ldif(GROUPS)]
    memberships = 0
    for g in range(groups):
        members = range(users) if g == 0 else range(g * 37 % users, users, max(1, users // 50))
        chosen = list(members)[: users if g == 0 else 50]
        memberships += sum(1 for n in chosen if n % LOCKED_EVERY != LOCKED_EVERY - 1)
        lines = "".join(f"member: uid={uid(n)},{PEOPLE}\n" for n in chosen)
        ldif.append(f"dn: cn=group{g:04d},{GROUPS}\nobjectClass: groupOfNames\n")
        ldif.append(f"cn: group{g:04d}\n{lines}\n")
    return people + "".join(ldif), len(active), memberships


def config(
    path: Path, slapd: Slapd, scim: ScimServer, users: str = ALL_USERS, **target: Any
) -> Path:
    document = {
        "source": {
            "url": slapd.ldaps_url,
            "ca_file": str(slapd.tls.ca_cert),
            "bind_dn": slapd.admin_dn,
            "bind_password": {"env": "BENCH_LDAP_PASSWORD"},
            "users": {"base_dn": PEOPLE, "filter": users},
            "account_status": {"method": "flag", "attribute": "nsAccountLock"},
            "groups": {"base_dn": GROUPS},
        },
        "state": {"url": f"sqlite:///{path.with_suffix('.db')}"},
        "targets": [
            {
                "name": "bench",
                "url": scim.base_url,
                "mapping": {
                    "userName": "uid",
                    "externalId": "$id",
                    "displayName": "cn",
                    "name": {"givenName": "givenName", "familyName": "sn"},
                    "emails": [{"value": "mail", "type": "work", "primary": True}],
                },
                **target,
            }
        ],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


CPU: dict[str, float] = {}
"""CPU seconds of the last :func:`timed` command, by process: the command itself, its Prefect
server (sampled every 0.25 s: the last quarter second is counted as the command's), the SCIM
server and slapd (all their processes)."""
OUTPUT: list[str] = [""]
"""What the last :func:`timed` command printed on its standard output."""
SERVERS: dict[str, int] = {}
"""The process ids of the servers whose CPU is counted: name -> root pid."""


def processes() -> dict[int, tuple[int, float, str]]:
    """Every live process: pid -> (parent pid, CPU seconds, command line)."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[int, float, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[int(entry.name)] = (
            int(fields[1]),
            (int(fields[11]) + int(fields[12])) / tick,
            command,
        )
    return found


def descendants(root: int, table: dict[int, tuple[int, float, str]]) -> list[int]:
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += [child for child, (parent, _, _) in table.items() if parent == pid]
    return found


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of a live process and all its live descendants."""
    table = processes()
    return sum(table[pid][1] for pid in descendants(root, table) if pid in table)


def timed(command: list[str], env: dict[str, str], cwd: Path | None = None) -> float:
    import resource
    import threading

    before = {name: tree_cpu(pid) for name, pid in SERVERS.items()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    server: dict[int, float] = {}  # the command's Prefect server (uvicorn), sampled

    def sample() -> None:
        while process.poll() is None:
            table = processes()
            for pid in descendants(process.pid, table):
                if pid != process.pid and pid in table and "uvicorn" in table[pid][2]:
                    server[pid] = table[pid][1]
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    OUTPUT[:] = [stdout]
    seconds = time.perf_counter() - started
    sampler.join(timeout=2)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.clear()
    whole = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    prefect_server = sum(server.values())
    CPU["provisioner"] = round(whole - prefect_server, 1)
    CPU["its Prefect server"] = round(prefect_server, 1)
    for name, pid in SERVERS.items():
        CPU[name] = round(tree_cpu(pid) - before[name], 1)
    if process.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({process.returncode}): {stderr[-2000:]}")
    return seconds


def startup(
    command: list[str],
    config_file: Path,
    slapd: Slapd,
    env: dict[str, str],
    cwd: Path | None = None,
) -> dict[str, float]:
    """Seconds from the command's start to its first directory connection (through a TCP
    proxy in front of slapd), and its wall time; the config's directory URL is pointed at the
    proxy for the run."""
    import threading

    from tests.tcp_proxy import TcpProxy

    proxy = TcpProxy(("127.0.0.1", slapd.ldaps_port), after_bytes=1 << 62, action=lambda: None)
    proxy.start()
    document = yaml.safe_load(config_file.read_text())
    document["source"]["url"] = f"ldaps://127.0.0.1:{proxy.port}"
    probe = config_file.with_name(f"startup-{config_file.name}")
    probe.write_text(yaml.safe_dump(document, sort_keys=False))
    first: list[float] = []
    started = time.perf_counter()

    def watch() -> None:
        while not first and time.perf_counter() - started < 120:
            if proxy.connections:
                first.append(time.perf_counter() - started)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        wall = timed([*command, "--config", str(probe)], env, cwd)
    finally:
        watcher.join(timeout=1)
        proxy.stop()
    return {"to_first_directory_read": round(first[0], 2) if first else -1, "wall": round(wall, 2)}


def counted(scim: ScimServer) -> dict[str, int]:
    return {method: n for method, n in scim.stats().items() if n}


class Endpoint:
    """Where the commands write: the SCIM server itself, or a proxy in front of it that makes
    it another target (slower Bulk, latency)."""

    def __init__(self, name: str, url: str, what: str) -> None:
        self.name = name
        self.base_url = url
        self.what = what


def measure(
    endpoint: Endpoint,
    scim: ScimServer,
    slapd: Slapd,
    work: Path,
    env: dict[str, str],
    args: argparse.Namespace,
    *,
    users: str,
    count: int,
    syncs: dict[str, dict[str, Any]],
    raw_sample: int,
) -> dict[str, Any]:
    """The raw POST capacity of ``endpoint``, the script and each sync of ``syncs`` (name ->
    target options) into it, each into an empty target, and their ratios (:func:`ratios`)
    for the ``count`` users the filter ``users`` selects."""
    result: dict[str, Any] = {"target": endpoint.what}
    scim.wipe()
    raw = raw_capacity(endpoint, raw_sample, args.concurrency)  # type: ignore[arg-type]
    result["raw_writes_per_s_samples"] = [round(raw, 1)]

    scim.wipe()
    script = work / "script.py"
    script.write_text(SCRIPT)
    ldap = [slapd.ldaps_url, str(slapd.tls.ca_cert), slapd.admin_dn, slapd.admin_password]
    seconds = timed([sys.executable, str(script), *ldap, endpoint.base_url, users], env)
    result["script"] = {
        "seconds": round(seconds, 2),
        "groups_seconds": round(float(OUTPUT[0].split()[-1]), 2),
        "requests": counted(scim),
        "cpu_seconds": dict(CPU),
    }
    cli_command, cwd = command_of(args, env)
    for name, options in syncs.items():
        scim.wipe()
        options = dict(options)
        run_env = dict(env)
        if api := options.pop(PREFECT_API, None):  # this sync runs on a running Prefect server
            run_env["PREFECT_API_URL"] = api
        path = config(
            work / f"{endpoint.name}-{name}.yaml",
            slapd,
            scim,
            users=users,
            url=endpoint.base_url,
            concurrency=args.concurrency,
            **options,
        )
        seconds = timed([*cli_command, "sync", "--json", "--config", str(path)], run_env, cwd)
        summary = json.loads(OUTPUT[0])
        users_report, groups_report = summary["targets"][0], summary["groups"][0]
        result[name] = {
            "seconds": round(seconds, 2),
            "users_seconds": users_report["seconds"],
            "created": users_report["succeeded"]["create"],
            "groups_seconds": groups_report["seconds"],
            "notes": users_report["notes"],
            "requests": counted(scim),
            "cpu_seconds": dict(CPU),
        }
    # The raw capacity again, after the others: a slow spell of the shared machine during one
    # sample would flatter every ratio to it (a 50,000-user run once sampled 383 POSTs/s where
    # the target takes ~580); the higher sample is the capacity compared with.
    scim.wipe()
    again = raw_capacity(endpoint, raw_sample, args.concurrency)  # type: ignore[arg-type]
    result["raw_writes_per_s_samples"].append(round(again, 1))
    result["raw_writes_per_s"] = max(result["raw_writes_per_s_samples"])
    ratios(result, count, list(syncs))
    return result


PREFECT_API = "prefect_api_url"
"""In a sync's options: run it on this running Prefect server instead of the command's own."""

SYNCS = {
    "sync_bulk_auto": "Bulk as measured",
    "sync_no_bulk": "one request per change",
    "sync_no_bulk_running_server": "one request per change, on a running Prefect server",
}


@contextlib.contextmanager
def running_prefect() -> Iterator[str]:
    """A Prefect server that is already running when a sync starts (Prefect's own app on
    the usual database, as a deployment's server would be): the sync spends nothing on
    starting one. Yields its API URL."""
    from flows.launch import EarlyServer

    server = EarlyServer()
    try:
        yield server.ready()
    finally:
        server.stop()


@contextlib.contextmanager
def proxied(scim: ScimServer, **behaviour: float) -> Iterator[str]:
    """The URL of scim2-server behind the fault proxy, set to ``behaviour`` (its attributes:
    ``latency``, ``bulk_per_operation``) while in the block."""
    proxy = FaultProxy(scim.base_url.removesuffix("/v2"), rates={})
    for name, value in behaviour.items():
        setattr(proxy, name, value)
    proxy.start()
    try:
        yield f"{proxy.url}/v2"
    finally:
        proxy.stop()


def command_of(args: argparse.Namespace, env: dict[str, str]) -> tuple[list[str], Path | None]:
    """The sync command to measure: this checkout's, or another one's (``--tree``)."""
    if args.tree:
        env["PYTHONPATH"] = str(args.tree.resolve())
        return [sys.executable, "-m", "flows.cli"], args.tree.resolve()  # runs from its cwd
    return [str(Path(sys.executable).with_name("scim-provisioner"))], None


def ratios(figures: dict[str, Any], users: int, syncs: list[str]) -> None:
    """Add the raw bound (the script's writes at the raw POST rate) and each sync's ratios."""
    writes = sum(n for m, n in figures["script"]["requests"].items() if m in ("POST", "PATCH"))
    bound = users / (writes / figures["raw_writes_per_s"])
    figures["raw_bound_users_per_s"] = round(bound, 1)
    script = figures["script"]
    script["users_per_s"] = round(users / script["seconds"], 1)
    for name in syncs:
        sync = figures[name]
        sync["users_per_s"] = round(users / sync["seconds"], 1)
        sync["ratio_to_raw_bound"] = round(sync["users_per_s"] / bound, 3)
        sync["ratio_to_script"] = round(sync["users_per_s"] / script["users_per_s"], 3)
        sync["group_phase_to_script"] = round(sync["groups_seconds"] / script["groups_seconds"], 2)
        sync["user_load_per_s"] = round(sync["created"] / max(sync["users_seconds"], 1e-6), 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--raw-sample", type=int, default=3000)
    parser.add_argument(
        "--bulk-per-operation-ms",
        type=float,
        default=4.0,
        help="the second target: scim2-server behind a proxy that takes Bulk requests one at "
        "a time, this long per operation (0: not measured)",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=50.0,
        help="the latency scenario: every request to scim2-server delayed this long, "
        "1,000 users (0: not measured)",
    )
    parser.add_argument(
        "--run-sections",
        default="extraction,overhead",
        help="sections of tests.bench.run measured in the same run (extraction: entries/s "
        "against ldapsearch; overhead: Prefect's share of a no-change cycle on a running "
        "server); empty: none",
    )
    parser.add_argument("--output", type=Path)
    parser.add_argument(
        "--tree",
        type=Path,
        help="measure the sync of another checkout (e.g. a git worktree of an older commit) "
        "with python -m flows.cli from there, instead of this one's scim-provisioner",
    )
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"users": args.users, "groups": args.groups, "machine": machine()}
    if args.tree:
        result["tree"] = str(args.tree)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    syncs = {"sync_bulk_auto": {}, "sync_no_bulk": {"use_bulk": "never"}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with Slapd(work / "slapd") as slapd, ScimServer(work / "scim") as scim:
            ldif, active, memberships = directory(args.users, args.groups)
            slapd.start(ldif)
            scim.start()
            for name, server in (("SCIM server", scim), ("slapd", slapd)):
                child = server._child
                if child is not None:
                    SERVERS[name] = child.process.pid
            env["BENCH_LDAP_PASSWORD"] = slapd.admin_password
            result["active_users"], result["memberships"] = active, memberships
            sample = min(args.raw_sample, args.users)

            on = functools.partial(measure, scim=scim, slapd=slapd, work=work, env=env, args=args)
            direct = Endpoint("scim2-server", scim.base_url, "scim2-server (gunicorn)")
            progress(
                "scim2-server: raw, script, sync with Bulk as measured, sync without (also "
                "on a running Prefect server)"
            )
            with running_prefect() as api:
                running = {"sync_no_bulk_running_server": {"use_bulk": "never", PREFECT_API: api}}
                result["scim2-server"] = on(
                    direct,
                    users=ALL_USERS,
                    count=args.users,
                    syncs=syncs | running,
                    raw_sample=sample,
                )

            if args.bulk_per_operation_ms:
                with proxied(scim, bulk_per_operation=args.bulk_per_operation_ms / 1000) as url:
                    slow = Endpoint(
                        "slow-bulk",
                        url,
                        "scim2-server behind a proxy taking Bulk requests one at a time, "
                        f"{args.bulk_per_operation_ms:g} ms an operation",
                    )
                    progress("slow-Bulk target: raw, script, sync with Bulk as measured")
                    result["slow-bulk"] = on(
                        slow,
                        users=ALL_USERS,
                        count=args.users,
                        syncs={"sync_bulk_auto": syncs["sync_bulk_auto"]},
                        raw_sample=sample,
                    )

            if args.latency_ms:
                with proxied(scim, latency=args.latency_ms / 1000) as url:
                    far = Endpoint(
                        "latency",
                        url,
                        f"scim2-server {args.latency_ms:g} ms away (a proxy delays each "
                        "request), 1,000 users",
                    )
                    progress(f"{args.latency_ms:g} ms away: raw, script, sync without Bulk")
                    result["latency"] = on(
                        far,
                        users=LATENCY_USERS,
                        count=1000,
                        syncs={"sync_no_bulk": syncs["sync_no_bulk"]},
                        raw_sample=min(sample, 400),
                    )

            # a cycle with nothing to do: how long before the first directory read, and in all
            progress("no-change cycles: time to the first directory read")
            cli_command, cwd = command_of(args, env)
            loaded = config(work / "no-change.yaml", slapd, scim, use_bulk="never")
            scim.wipe()
            timed([*cli_command, "sync", "--config", str(loaded)], env, cwd)
            result["no_change_cycle"] = {
                "scim-provisioner sync": startup([*cli_command, "sync"], loaded, slapd, env, cwd),
                "python -m flows.cli sync (Prefect starts its temporary server)": startup(
                    [sys.executable, "-m", "flows.cli", "sync"], loaded, slapd, env, cwd
                ),
            }

    if args.run_sections:
        progress(f"tests.bench.run --sections {args.run_sections}")
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [sys.executable, "-m", "tests.bench.run", "--users", str(args.users)]
            command += ["--sections", args.run_sections, "--output", out.name]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            measured = json.loads(Path(out.name).read_text())
        for section in args.run_sections.split(","):
            result[section] = measured.get(section)

    document = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(document + "\n")
    print(document)
    print()
    print(goals_table(result))


def progress(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def bulk_trial(notes: str) -> tuple[float, float, bool] | None:
    """From a sync's notes: the Bulk rate, the one-request-per-change rate of its trial and
    whether Bulk carried the rest; ``None`` when no trial was made."""
    found = re.search(
        r"Bulk measured on \d+ changes at (\d+)/s, one request per change on \d+ at "
        r"(\d+)/s: (Bulk requests|one request per change) for",
        notes,
    )
    if found is None:
        return None
    return float(found[1]), float(found[2]), found[3] == "Bulk requests"


def goals_table(result: dict[str, Any]) -> str:
    """Every goal of issue 19 with its figure, ``ok`` or ``MISSED``."""
    lines = [f"{'goal':<90} {'figure':>10}  "]

    def row(goal: str, figure: float, met: bool, fmt: str = "{:.2f}") -> None:
        lines.append(f"{goal:<90} {fmt.format(figure):>10}  {'ok' if met else 'MISSED'}")

    for key in ("scim2-server", "slow-bulk", "latency"):
        figures = result.get(key)
        if not figures:
            continue
        lines.append("")
        lines.append(f"{key}: {figures['target']}")
        lines.append(
            f"  raw bound {figures['raw_bound_users_per_s']:.1f} users/s "
            f"({figures['raw_writes_per_s']:.0f} POSTs/s, the higher of "
            + " and ".join(f"{r:.0f}" for r in figures.get("raw_writes_per_s_samples", []))
            + " measured before and after); script "
            f"{figures['script']['users_per_s']:.1f} users/s, groups in "
            f"{figures['script']['groups_seconds']:.1f} s"
        )
        for name, how in SYNCS.items():
            sync = figures.get(name)
            if sync is None:
                continue
            lines.append(
                f"  sync ({how}): {sync['users_per_s']:.1f} users/s in {sync['seconds']:.1f} s; "
                f"users loaded at {sync['user_load_per_s']:.0f}/s; groups in "
                f"{sync['groups_seconds']:.1f} s"
                + (f"; {sync['notes'][0]}" if sync["notes"] else "")
            )
            if key == "latency":
                row(
                    "  initial load >= 0.9 x the bound of concurrency and latency (raw)",
                    sync["user_load_per_s"] / figures["raw_writes_per_s"],
                    sync["user_load_per_s"] >= 0.9 * figures["raw_writes_per_s"],
                )
            row(
                f"  whole sync ({how}) >= 0.9 x raw bound",
                sync["ratio_to_raw_bound"],
                sync["ratio_to_raw_bound"] >= 0.9,
            )
            row(
                f"  whole sync ({how}) >= 1.5 x script",
                sync["ratio_to_script"],
                sync["ratio_to_script"] >= 1.5,
            )
            row(
                f"  group phase ({how}) <= 1.2 x the script's",
                sync["group_phase_to_script"],
                sync["group_phase_to_script"] <= 1.2,
            )
            if key == "slow-bulk":
                trial = bulk_trial(" ".join(sync["notes"]))
                faster_chosen = trial is not None and trial[2] == (trial[0] > trial[1])
                row(
                    "  Bulk measured against one request per change, the faster way chosen",
                    float(faster_chosen),
                    faster_chosen,
                    "{:.0f}",
                )
    lines.append("")
    for how, figures in result.get("no_change_cycle", {}).items():
        first = figures["to_first_directory_read"]
        if how == "scim-provisioner sync":
            row("first directory read <= 3 s (no-change cycle)", first, 0 <= first <= 3, "{:.2f} s")
        else:  # the same flow started as Prefect starts it: for comparison, not a goal
            lines.append(f"  (for comparison, {how}: first read after {first:.2f} s)")
    extraction = result.get("extraction")
    if extraction:
        ratio = extraction["ratio_to_ldapsearch"]
        row("extraction >= 0.3 x ldapsearch (entries/s)", ratio, ratio >= 0.3)
    overhead = result.get("overhead")
    if overhead:
        share = overhead["no_change_cycle_syncrepl"]["prefect_share"]
        row(
            "no-change cycle on a running Prefect server: Prefect's share <= 0.15",
            share,
            share <= 0.15,
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
