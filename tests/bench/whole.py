"""Benchmark: a whole ``scim-provisioner sync`` (users and groups, the command as a user runs
it), side by side in one run with the target's raw capacity and a hand-written script.

    .venv/bin/python -m tests.bench.whole --users 10000 [--groups 300] [--concurrency 4]

Starts its own slapd (``slapadd -q``: N users, every 20th locked; G groups, one holding
every active user, the others ~50 members each) and scim2-server (gunicorn), then measures:

1. **raw**: bare ``POST /Users`` of the payloads the provisioner sends, ``concurrency`` at a
   time on keep-alive sessions: the target's capacity, in writes/s;
2. **script**: :data:`SCRIPT`, a sequential script as an administrator would write it (ldap3
   paged search, requests, one POST per active user, one POST per group with its members),
   run as its own process into an empty target;
3. **sync**: ``scim-provisioner sync --config FILE`` as its own process into an empty target
   (no ``PREFECT_API_URL``: the temporary Prefect server it starts is part of its time), with
   Bulk as the target advertises it and with ``use_bulk: never``.

Each writes the same users and groups; the figure compared is users/s of the whole command
(N / wall time). The raw bound for the same writes is N / (writes / raw writes/s). Goals
(issue 19): sync ≥ 0.9 x the raw bound and ≥ 1.5 x the script. Prints one JSON document, then
a table flagging every missed goal. Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from tests.bench.bench_users import PEOPLE, raw_capacity
from tests.bench.run import machine
from tests.support.servers import ScimServer, Slapd, ou_ldif, person_ldif

GROUPS = "ou=groups,dc=example,dc=org"
LOCKED_EVERY = 20

SCRIPT = r"""
import sys, ldap3, requests
ldap_url, ca, bind_dn, password, scim = sys.argv[1:6]
tls = ldap3.Tls(ca_certs_file=ca)
conn = ldap3.Connection(ldap3.Server(ldap_url, use_ssl=True, tls=tls), bind_dn, password,
                        auto_bind=True)
session = requests.Session()
ids = {}
search = conn.extend.standard.paged_search
for e in search("ou=people,dc=example,dc=org", "(objectClass=inetOrgPerson)",
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
for e in search("ou=groups,dc=example,dc=org", "(objectClass=groupOfNames)",
        attributes=["cn", "member"], paged_size=1000, generator=True):
    members = [{"value": ids[m.lower()]} for m in e["attributes"]["member"] if m.lower() in ids]
    group = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
             "displayName": e["attributes"]["cn"][0], "members": members}
    session.post(scim + "/Groups", json=group).raise_for_status()
"""
"""The hand-written script: 31 lines, sequential, no state, no retries, no guard."""


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


def config(path: Path, slapd: Slapd, scim: ScimServer, **target: Any) -> Path:
    document = {
        "source": {
            "url": slapd.ldaps_url,
            "ca_file": str(slapd.tls.ca_cert),
            "bind_dn": slapd.admin_dn,
            "bind_password": {"env": "BENCH_LDAP_PASSWORD"},
            "users": {"base_dn": PEOPLE},
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
    _, stderr = process.communicate()
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--raw-sample", type=int, default=3000)
    parser.add_argument("--output", type=Path)
    parser.add_argument(
        "--tree",
        type=Path,
        help="measure the sync of another checkout (e.g. a git worktree of an older commit) "
        "with python -m flows.cli from there, instead of this one's scim-provisioner",
    )
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"users": args.users, "groups": args.groups, "machine": machine()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
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

            scim.wipe()
            raw = raw_capacity(scim, min(args.raw_sample, args.users), args.concurrency)
            result["raw_writes_per_s"] = round(raw, 1)

            scim.wipe()
            script = work / "script.py"
            script.write_text(SCRIPT)
            seconds = timed(
                [
                    sys.executable,
                    str(script),
                    slapd.ldaps_url,
                    str(slapd.tls.ca_cert),
                    slapd.admin_dn,
                    slapd.admin_password,
                    scim.base_url,
                ],
                env,
            )
            result["script"] = {
                "seconds": round(seconds, 2),
                "requests": counted(scim),
                "cpu_seconds": dict(CPU),
            }

            cli_command = [str(Path(sys.executable).with_name("scim-provisioner"))]
            tree = args.tree.resolve() if args.tree else None  # python -m runs from its cwd
            if args.tree:
                env["PYTHONPATH"] = str(args.tree.resolve())
                cli_command = [sys.executable, "-m", "flows.cli"]
                result["tree"] = str(args.tree)
            for name, options in (("sync_bulk_auto", {}), ("sync_no_bulk", {"use_bulk": "never"})):
                scim.wipe()
                path = config(work / f"{name}.yaml", slapd, scim, **options)
                seconds = timed([*cli_command, "sync", "--config", str(path)], env, tree)
                result[name] = {
                    "seconds": round(seconds, 2),
                    "requests": counted(scim),
                    "cpu_seconds": dict(CPU),
                }

            # a cycle with nothing to do: how long before the first directory read, and in all
            loaded = work / "sync_no_bulk.yaml"
            result["no_change_cycle"] = {
                "scim-provisioner sync": startup([*cli_command, "sync"], loaded, slapd, env, tree),
                "python -m flows.cli sync (Prefect starts its temporary server)": startup(
                    [sys.executable, "-m", "flows.cli", "sync"], loaded, slapd, env, tree
                ),
            }

    writes = sum(
        n for m, n in result["sync_no_bulk"]["requests"].items() if m in ("POST", "PATCH", "PUT")
    )
    raw_bound = args.users / (writes / raw)
    result["raw_bound_users_per_s"] = round(raw_bound, 1)
    result["script"]["users_per_s"] = round(args.users / result["script"]["seconds"], 1)
    for name in ("sync_bulk_auto", "sync_no_bulk"):
        rate = args.users / result[name]["seconds"]
        result[name]["users_per_s"] = round(rate, 1)
        result[name]["ratio_to_raw_bound"] = round(rate / raw_bound, 3)
        result[name]["ratio_to_script"] = round(rate / result["script"]["users_per_s"], 3)
    document = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(document + "\n")
    print(document)
    print()
    print(f"{'what':<48} {'users/s':>8}  goal")
    print(f"{'raw bound (same writes at the raw POST rate)':<48} {raw_bound:>8.1f}")
    print(f"{'hand-written sequential script':<48} {result['script']['users_per_s']:>8.1f}")
    for name in ("sync_bulk_auto", "sync_no_bulk"):
        figures = result[name]
        met = figures["ratio_to_raw_bound"] >= 0.9 and figures["ratio_to_script"] >= 1.5
        goal = "ok" if met else "MISSED"
        line = f"scim-provisioner sync ({name.removeprefix('sync_').replace('_', ' ')})"
        print(
            f"{line:<48} {figures['users_per_s']:>8.1f}  ≥ 0.9 x raw "
            f"({figures['ratio_to_raw_bound']:.2f}), ≥ 1.5 x script "
            f"({figures['ratio_to_script']:.2f}): {goal}"
        )
    print()
    print("CPU seconds (2 cores: at most 2 x the wall):")
    for name in ("script", "sync_bulk_auto", "sync_no_bulk"):
        figures = result[name]
        spent = ", ".join(f"{k} {v}" for k, v in figures["cpu_seconds"].items())
        print(f"  {name:<16} wall {figures['seconds']:>6.1f} s: {spent}")
    for how, figures in result["no_change_cycle"].items():
        first = figures["to_first_directory_read"]
        goal = "ok" if 0 <= first <= 3 else "MISSED"
        print(
            f"no-change cycle, {how}: first directory read after {first} s "
            f"(goal <= 3 s: {goal}), {figures['wall']} s in all"
        )


if __name__ == "__main__":
    main()
