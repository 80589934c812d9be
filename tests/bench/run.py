"""Benchmarks: how fast, how close to the limit, how it grows. One command, one JSON document.

    .venv/bin/python -m tests.bench.run [--users 100000] [--sections load,incremental,...]
        [--changes 1,100,10000] [--reconcile-sizes 10000,100000] [--quick]

Starts its own real servers (slapd loaded with ``slapadd -q`` with a deterministic directory of N
users and one big group; scim2-server under gunicorn; a Prefect test server) and measures, in the
same run and on the same machine (see tests/bench/README.md for what each figure means):

- ``load``: initial load, one request per change and with Bulk, against the target's raw
  capacity (bare POSTs, and bare Bulk requests, of the same payloads at the same concurrency);
- ``incremental``: cycles after k changes and with nothing changed (syncrepl, timestamp);
- ``membership``: a big group (20,000 members by default) created, then changed by 10 members;
- ``extraction``: entries/s of the extract step against ``ldapsearch`` on the same query;
- ``overhead``: Prefect's share of the wall time (the same code run without Prefect);
- ``reconcile``: wall time and peak RSS of a dry-run ``reconcile`` per size, each in a fresh
  child process, with its own slapd and a scim2-server over SQLite (it lists in linear time)
  seeded with what an initial load leaves behind (tests/bench/seed.py), 100 users drifted.

Prints one JSON document, then a readable table that flags every figure missing its goal.
Not part of the test run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.bench import bench_users
from tests.bench.bench_incremental import change_titles
from tests.bench.bench_incremental import config_file as incremental_config
from tests.bench.bench_incremental import cycle as incremental_cycle
from tests.bench.bench_users import PEOPLE, directory, raw_capacity, raw_payloads
from tests.bench.seed import seed_provisioned
from tests.support.servers import ScimServer, Slapd, ou_ldif

GROUPS = "ou=groups,dc=example,dc=org"
BIG_GROUP = "big"
WRITES = ("POST", "PUT", "PATCH", "DELETE")
SECTIONS = ("load", "incremental", "membership", "extraction", "overhead", "reconcile")
LOAD_RATIO_GOAL = 0.9


# -- setup ---------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    models = [
        line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line
    ]
    meminfo = {
        line.split(":")[0]: line.split(":")[1].strip()
        for line in Path("/proc/meminfo").read_text().splitlines()
    }
    return {
        "cores": os.cpu_count(),
        "cpu_model": models[0] if models else platform.processor(),
        "ram_gib": round(int(meminfo["MemTotal"].split()[0]) / 1024**2, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def big_group_size(users: int, wanted: int) -> int:
    """The big group's members: ``wanted``, or fewer in a small directory (10 users are kept
    out of it so that 5 can be added)."""
    return max(1, min(wanted, users - 10))


def group_ldif(members: int) -> str:
    lines = "".join(f"member: uid=user{n:07d},{PEOPLE}\n" for n in range(members))
    return (
        ou_ldif(GROUPS)
        + f"dn: cn={BIG_GROUP},{GROUPS}\nobjectClass: groupOfNames\ncn: {BIG_GROUP}\n{lines}\n"
    )


def write_config(
    path: Path,
    state: Path,
    slapd: Slapd,
    scim: ScimServer,
    *,
    source: dict[str, Any] | None = None,
    **target: Any,
) -> Path:
    """A config file: the users of ``PEOPLE``, one target ``bench``, the state store ``state``."""
    # cycles follow each other within seconds here
    overlap = {"timestamp_overlap_seconds": 1, **(source or {})}
    return bench_users.write_config(path, slapd, scim, source=overlap, state=state, **target)


def copy_state(source: Path, destination: Path) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        origin = Path(f"{source}{suffix}")
        if origin.exists():
            shutil.copy(origin, f"{destination}{suffix}")
    return destination


def state_of(config: Path) -> Path:
    url = yaml.safe_load(config.read_text())["state"]["url"]
    return Path(url.removeprefix("sqlite:///"))


# -- running flows, with and without Prefect -------------------------------------------------------


def run(flow: Any, config: Path, **parameters: Any) -> tuple[float, dict[str, Any], Any]:
    """Run a flow; return its wall time, its summary and its flow run id."""
    started = time.perf_counter()
    state = flow(config_path=str(config), return_state=True, **parameters)
    seconds = time.perf_counter() - started
    summary = state.result(raise_on_failure=False).as_dict()
    if not state.is_completed():
        raise SystemExit(f"{flow.name} failed: {state.message}")
    return seconds, summary, state.state_details.flow_run_id


def provision(config: Path, **parameters: Any) -> tuple[float, dict[str, Any], Any]:
    from flows.provision_users import provision_users

    return run(provision_users, config, **parameters)


def task_runs(flow_run_id: Any) -> dict[str, Any]:
    """What the Prefect API recorded for a flow run: its task runs and their summed durations."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        for _ in range(20):  # task runs are recorded from events, a moment later
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            if runs and all(r.end_time is not None for r in runs):
                break
            time.sleep(0.5)
        flow_run = client.read_flow_run(flow_run_id)
    seconds = sum(
        (r.end_time - r.start_time).total_seconds() for r in runs if r.start_time and r.end_time
    )
    flow_seconds = (
        (flow_run.end_time - flow_run.start_time).total_seconds()
        if flow_run.start_time and flow_run.end_time
        else None
    )
    return {
        "task_runs": len(runs),
        "task_seconds": round(seconds, 3),
        "flow_run_seconds_by_api": round(flow_seconds, 3) if flow_seconds else None,
    }


@contextlib.contextmanager
def without_prefect() -> Iterator[None]:
    """Run the product code with Prefect's machinery taken out: a task call is a plain call of
    its function (annotations unwrapped), a submitted task runs on a plain thread pool (as
    Prefect's thread-pool task runner runs it: the user load's batches overlap), loggers are
    plain loggers, artifacts are not made."""
    from concurrent.futures import ThreadPoolExecutor

    import prefect
    import prefect.artifacts
    from prefect.tasks import Task
    from prefect.utilities.annotations import BaseAnnotation

    logger = logging.getLogger("bench.without-prefect")

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        def plain(value: Any) -> Any:
            return value.unwrap() if isinstance(value, BaseAnnotation) else value

        return self.fn(*map(plain, args), **{k: plain(v) for k, v in kwargs.items()})

    replaced: list[tuple[Any, str, Any]] = []

    def replace(owner: Any, name: str, value: Any) -> None:
        replaced.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    runner = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bench-task")
    replace(Task, "__call__", call)
    replace(Task, "submit", lambda self, *a, **k: runner.submit(call, self, *a, **k))
    fakes: dict[str, Callable[..., Any]] = {
        "get_run_logger": lambda *a, **k: logger,
        "create_progress_artifact": nothing,
        "update_progress_artifact": nothing,
        "create_markdown_artifact": nothing,
        "create_table_artifact": nothing,
    }
    modules = [prefect, prefect.artifacts]
    modules += [m for n, m in list(sys.modules.items()) if n.split(".")[0] in ("flows", "tasks")]
    for module in modules:
        for name, fake in fakes.items():
            if hasattr(module, name):
                replace(module, name, fake)
    try:
        yield
    finally:
        runner.shutdown(wait=True)
        for owner, name, value in reversed(replaced):
            setattr(owner, name, value)


def provision_direct(config: Path) -> tuple[float, dict[str, Any]]:
    """The body of ``provision_users`` (``run_sync``) without Prefect: the work itself."""
    from flows.provision_users import run_sync
    from tasks.config import load_config

    started = time.perf_counter()
    with without_prefect():
        summary = run_sync(load_config(str(config)), None).as_dict()
    return time.perf_counter() - started, summary


# -- sections ------------------------------------------------------------------------------------


class Bench:
    def __init__(
        self, args: argparse.Namespace, work: Path, slapd: Slapd, scim: ScimServer
    ) -> None:
        self.args = args
        self.work = work
        self.slapd = slapd
        self.scim = scim
        self.current: Path | None = None
        """A config whose state store matches what the target holds (every user loaded)."""

    def config(
        self,
        name: str,
        state: Path | None = None,
        source: dict[str, Any] | None = None,
        **target: Any,
    ) -> Path:
        path = self.work / f"{name}.yaml"
        state = state or path.with_suffix(".db")
        target.setdefault("concurrency", self.args.concurrency)
        return write_config(path, state, self.slapd, self.scim, source=source, **target)

    def loaded(self) -> Path:
        """A config whose state matches a target holding every user (loaded with Bulk if needed)."""
        if self.current is None:
            self.scim.wipe()
            config = self.config("base")
            provision(config)
            self.current = config
        return self.current

    def fresh_state(self, name: str) -> Path:
        """A copy of the state store of the loaded target."""
        return copy_state(state_of(self.loaded()), self.work / name / "state.db")

    # 1
    def load(self) -> dict[str, Any]:
        args = self.args
        sample = min(args.raw_sample, args.users)
        self.scim.wipe()
        raw = raw_capacity(self.scim, sample, args.concurrency)
        self.scim.wipe()
        raw_bulk = raw_bulk_capacity(self.scim, sample, args.concurrency)
        figures: dict[str, Any] = {
            "raw_sample": sample,
            "target_raw_creates_per_s": round(raw, 1),
            "target_raw_bulk_creates_per_s": round(raw_bulk, 1),
        }
        loads: list[tuple[str, dict[str, Any]]] = [
            ("one_by_one", {"use_bulk": "never"}),
            ("bulk", {}),
        ]
        for name, options in loads:
            self.scim.wipe()
            config = self.config(f"load-{name}", **options)
            seconds, summary, _ = provision(config)
            stats = self.scim.stats()
            created = summary["targets"][0]["succeeded"]["create"]
            rate = created / seconds
            figures[name] = {
                "seconds": round(seconds, 2),
                "created": created,
                "users_per_s": round(rate, 1),
                "ratio_to_raw_posts": round(rate / raw, 3),
                "requests": {k: v for k, v in stats.items() if v},
                "requests_per_change": round(sum(stats.values()) / max(created, 1), 4),
                "write_requests_per_change": round(
                    sum(stats.get(m, 0) for m in WRITES) / max(created, 1), 4
                ),
                "directory_seconds": summary["directory"]["directory_seconds"],
                "target_seconds": round(summary["targets"][0]["seconds"], 2),
            }
            if name == "bulk":
                figures[name]["ratio_to_raw_bulk"] = round(rate / raw_bulk, 3)
            self.current = config
        return figures

    # 2
    def incremental(self) -> dict[str, Any]:
        state = self.fresh_state("incremental")
        directory = state.parent
        result: dict[str, Any] = {}
        changed = 0
        for method in self.args.methods.split(","):
            config = incremental_config(
                directory / f"{method}.yaml", self.slapd, self.scim, method, False
            )
            figures: dict[str, Any] = {
                "first_cycle_full_pass": incremental_cycle(config, self.scim)
            }
            figures["no_change"] = incremental_cycle(config, self.scim)
            for k in self.args.changes:
                if changed + k > self.args.users:
                    changed = 0  # the titles name the method and k: these are changes again
                ldap_seconds = change_titles(self.slapd, changed, k, f"{method}-{k}")
                changed += k
                figures[f"k={k}"] = {
                    **incremental_cycle(config, self.scim),
                    "ldapmodify_seconds": round(ldap_seconds, 2),
                }
            result[method] = figures
            self.current = config
        return result

    # 3
    def membership(self) -> dict[str, Any]:
        from flows.sync_group_memberships import sync_group_memberships

        size = self.args.group_size
        state = state_of(self.loaded())
        config = self.config(
            "membership",
            state,
            source={"groups": {"base_dn": GROUPS}},
            use_bulk="never",
        )

        def group_run() -> dict[str, Any]:
            self.scim.reset_stats()
            time.sleep(1.1)  # past the 1 s timestamp overlap
            seconds, summary, _ = run(sync_group_memberships, config)
            group = summary["groups"][0]
            stats = self.scim.stats()
            return {
                "wall_seconds": round(seconds, 2),
                "members_added": group.get("members_added"),
                "members_removed": group.get("members_removed"),
                "requests": {k: v for k, v in stats.items() if v},
                "write_requests": sum(stats.get(m, 0) for m in WRITES),
            }

        created = group_run()
        removed = "".join(f"member: uid=user{n:07d},{PEOPLE}\n" for n in range(5))
        added = "".join(f"member: uid=user{n:07d},{PEOPLE}\n" for n in range(size, size + 5))
        self.slapd.modify(
            f"dn: cn={BIG_GROUP},{GROUPS}\nchangetype: modify\n"
            f"delete: member\n{removed}-\nadd: member\n{added}"
        )
        changed = group_run()
        return {"group_members": size, "created": created, "changed_by_10_members": changed}

    # 4
    def extraction(self) -> dict[str, Any]:
        from tasks.config import load_config
        from tasks.ldap.extract import (
            connect,
            mapped_attributes,
            paged_entries,
            read_users,
            user_attributes,
        )

        config = load_config(str(self.config("extraction")))
        source = config.source
        mapped = sorted(mapped_attributes(t.mapping for t in config.targets))
        wanted = sorted(user_attributes(source, mapped))
        query = source.users

        def timed(work: Callable[[], int]) -> tuple[float, int]:
            started = time.perf_counter()
            count = work()
            return time.perf_counter() - started, count

        def extract() -> int:
            conn = connect(source)
            try:
                return len(read_users(conn, source, mapped).users)
            finally:
                conn.unbind()

        def ldap3_only() -> int:
            conn = connect(source)
            try:
                entries = paged_entries(
                    conn, source, query.base_dn, query.filter, query.scope, wanted
                )
                return sum(1 for _ in entries)
            finally:
                conn.unbind()

        def ldapsearch() -> int:
            command = [
                "ldapsearch", "-x", "-LLL",
                "-H", self.slapd.ldaps_url,
                "-D", self.slapd.admin_dn,
                "-w", self.slapd.admin_password,
                "-b", query.base_dn,
                "-s", "sub" if query.scope == "subtree" else "one",
                "-E", f"pr={source.page_size}/noprompt",
                query.filter,
                *wanted,
            ]  # fmt: skip
            env = {**os.environ, "LDAPTLS_CACERT": str(self.slapd.tls.ca_cert)}
            env.pop("LDAPNOINIT", None)
            out = subprocess.run(command, env=env, capture_output=True, check=True).stdout
            return out.count(b"\ndn: ") + out.startswith(b"dn: ")

        best: dict[str, tuple[float, int]] = {}
        for _ in range(self.args.repeat):
            for name, work in (
                ("extract", extract),
                ("ldap3", ldap3_only),
                ("ldapsearch", ldapsearch),
            ):
                seconds, count = timed(work)
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, count)
        rates = {name: count / seconds for name, (seconds, count) in best.items()}
        return {
            "attributes": wanted,
            "page_size": source.page_size,
            "transport": "ldaps",
            "entries": best["extract"][1],
            "ldapsearch_entries": best["ldapsearch"][1],
            "best_of": self.args.repeat,
            "extract_seconds": round(best["extract"][0], 2),
            "extract_entries_per_s": round(rates["extract"]),
            "ldap3_paged_search_only_entries_per_s": round(rates["ldap3"]),
            "ldapsearch_seconds": round(best["ldapsearch"][0], 2),
            "ldapsearch_entries_per_s": round(rates["ldapsearch"]),
            "ratio_to_ldapsearch": round(rates["extract"] / rates["ldapsearch"], 3),
            "share_of_extract_in_ldap3": round(best["ldap3"][0] / best["extract"][0], 2),
        }

    # 6
    def overhead(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        state = self.fresh_state("overhead")
        config = self.config("overhead-no-change", state, {"change_detection": "syncrepl"})
        provision(config)  # first cycle: a full pass that stores the cookie
        with_prefect: list[float] = []
        direct: list[float] = []
        recorded: dict[str, Any] = {}
        read = 0
        for _ in range(self.args.repeat):
            seconds, summary, run_id = provision(config)
            with_prefect.append(seconds)
            recorded = task_runs(run_id)
            read += summary["directory"]["read"]
            seconds, summary = provision_direct(config)
            direct.append(seconds)
            read += summary["directory"]["read"]
        result["no_change_cycle_syncrepl"] = {
            **overhead_figures(
                statistics.median(with_prefect), statistics.median(direct), recorded
            ),
            "runs_each": self.args.repeat,
            "users_read": read,
        }
        # initial load (Bulk) into an empty target, with Prefect and without, back to back
        self.scim.wipe()
        seconds, _, run_id = provision(self.config("overhead-load"))
        recorded = task_runs(run_id)
        self.scim.wipe()
        direct_config = self.config("overhead-load-direct")
        direct_seconds, _ = provision_direct(direct_config)
        result["initial_load_bulk"] = overhead_figures(seconds, direct_seconds, recorded)
        self.current = direct_config
        return result

    # 5
    def reconcile(self) -> dict[str, Any]:
        from prefect.settings import PREFECT_API_URL

        env = {
            **os.environ,
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
        rows = []
        for size in self.args.reconcile_sizes:
            with (
                Slapd(self.work / f"slapd-{size}") as slapd,
                ScimServer(
                    self.work / f"scim-{size}",
                    storage_file=self.work / f"scim-{size}.sqlite",
                    cursor_pagination=True,
                ) as scim,
            ):
                step = time.perf_counter()
                slapd.start(directory(size))
                slapadd = time.perf_counter() - step
                path = self.work / f"reconcile-{size}.yaml"
                config = write_config(
                    path, path.with_suffix(".db"), slapd, scim, concurrency=self.args.concurrency
                )
                seeded = seed_provisioned(config, self.work / f"scim-{size}.sqlite")
                drifted = drift(self.work / f"scim-{size}.sqlite", self.args.reconcile_drift)
                scim.start()
                prepared = (
                    f"own slapd (slapadd {slapadd:.0f} s) and scim2-server over SQLite, target"
                    f" and state store seeded in {seeded['seconds']:.0f} s; {drifted} users"
                    " changed on the target"
                )
                row = {"users": size, "prepared": prepared, **reconcile_child(config, env)}
                if self.args.reconcile_repair:
                    row["repair_run"] = reconcile_child(config, env, repair=True)
                rows.append(row)
                print(f"bench: reconcile {json.dumps(row)}", file=sys.stderr, flush=True)
        return {"dry_run": True, "sizes": rows, **growth(rows)}


def drift(storage_file: Path, count: int) -> int:
    """Change the title of the first ``count`` users on the target itself (drift to find)."""
    with contextlib.closing(sqlite3.connect(storage_file)) as db, db:
        db.execute(
            "UPDATE resources SET body = json_set(body, '$.title', 'Drifted') WHERE seq <= ?",
            (count,),
        )
    return count


def overhead_figures(
    prefect_seconds: float, direct_seconds: float, recorded: dict[str, Any]
) -> dict[str, Any]:
    return {
        "with_prefect_seconds": round(prefect_seconds, 2),
        "without_prefect_seconds": round(direct_seconds, 2),
        "prefect_share": round(max(prefect_seconds - direct_seconds, 0) / prefect_seconds, 3),
        "prefect_seconds": round(prefect_seconds - direct_seconds, 2),
        **recorded,
        "outside_task_runs_share": round(1 - recorded["task_seconds"] / prefect_seconds, 3)
        if recorded.get("task_seconds") is not None
        else None,
    }


def growth(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Least-squares slope of peak RSS and of wall time over the sizes, per 100,000 users."""
    if len(rows) < 2:
        return {}
    xs = [r["users"] for r in rows]

    def slope(ys: list[float]) -> float:
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mx) ** 2 for x in xs
        )

    return {
        "peak_rss_mb_per_100k_users": round(slope([r["peak_rss_mb"] for r in rows]) * 1e5, 1),
        "seconds_per_100k_users": round(slope([r["flow_seconds"] for r in rows]) * 1e5, 1),
    }


def reconcile_child(config: Path, env: dict[str, str], *, repair: bool = False) -> dict[str, Any]:
    """Run the reconcile flow (a dry run, or with ``repair`` a real one) in a fresh Python
    process; return what it measured."""
    started = time.perf_counter()
    flag = ["--reconcile-repair"] if repair else []
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.run", "--reconcile-child", str(config), *flag],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the reconcile child failed:\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["process_seconds"] = round(time.perf_counter() - started, 2)
    return figures


def vm(field: str) -> float:
    """A /proc/self/status figure (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return math.nan


def reconcile_child_main(config: str, repair: bool) -> None:
    from flows.reconcile import reconcile

    before = vm("VmRSS")
    with tempfile.TemporaryDirectory() as reports:
        started = time.perf_counter()
        state = reconcile(
            config_path=config, dry_run=not repair, report_dir=reports, return_state=True
        )
        seconds = time.perf_counter() - started
    summary = state.result(raise_on_failure=False).as_dict()
    if not state.is_completed():
        raise SystemExit(f"reconcile failed: {state.message}")
    result = summary["reconciliation"][0]
    print(
        json.dumps(
            {
                "flow_seconds": round(seconds, 2),
                "rss_before_flow_mb": round(before, 1),
                "peak_rss_mb": round(vm("VmHWM"), 1),
                # not ru_maxrss: after fork + exec it still holds the parent's peak
                "source_entries": summary["source_entries"],
                "differences": result["differences"],
                "counts": result["counts"],
                "steps_seconds": result.get("steps_seconds"),
                **({"repair": result["repair"]["succeeded"]} if repair else {}),
            }
        )
    )


def raw_bulk_capacity(scim: ScimServer, count: int, concurrency: int) -> float:
    """Creates per second with bare Bulk requests of the same payloads (other userNames),
    within the target's advertised limits, ``concurrency`` requests at a time."""
    config = requests.get(f"{scim.base_url}/ServiceProviderConfig", timeout=10).json()
    limits = config.get("bulk") or {}
    if not limits.get("supported"):
        return math.nan
    max_ops = int(limits.get("maxOperations") or 1000)
    max_bytes = int(limits.get("maxPayloadSize") or 1 << 20) * 9 // 10
    payloads = raw_payloads(2 * count)[count:]
    bodies: list[list[dict[str, Any]]] = [[]]
    size = 0
    for n, payload in enumerate(payloads):
        op = {"method": "POST", "path": "/Users", "bulkId": f"b{n}", "data": payload}
        op_size = len(json.dumps(op))
        if len(bodies[-1]) >= max_ops or size + op_size > max_bytes:
            bodies.append([])
            size = 0
        bodies[-1].append(op)
        size += op_size
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=concurrency))

    def post(operations: list[dict[str, Any]]) -> None:
        body = {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
            "Operations": operations,
        }
        response = session.post(
            f"{scim.base_url}/Bulk",
            data=json.dumps(body),
            headers={"Content-Type": "application/scim+json"},
            timeout=600,
        )
        response.raise_for_status()
        failed = [
            r for r in response.json()["Operations"] if not str(r.get("status", "")).startswith("2")
        ]
        if failed:
            raise SystemExit(f"raw Bulk: {len(failed)} operations failed, e.g. {failed[0]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, bodies))
    seconds = time.perf_counter() - started
    session.close()
    return count / seconds


# -- output --------------------------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    """The readable table: figure, value, goal; a figure missing its goal says so."""
    rows: list[tuple[str, str, str]] = []

    def row(figure: str, value: str, goal: str = "", met: bool | None = None) -> None:
        mark = "" if met is None else ("ok" if met else "MISSED")
        rows.append((figure, f"{mark:<6} {goal}".strip(), value))

    n = result["users"]
    if "load" in result:
        load = result["load"]
        row("target raw capacity (bare POSTs)", f"{load['target_raw_creates_per_s']:.0f} creates/s")
        row(
            "target raw capacity (bare Bulk)",
            f"{load['target_raw_bulk_creates_per_s']:.0f} creates/s",
        )
        one, bulk = load["one_by_one"], load["bulk"]
        row(
            f"initial load {n:,}, one by one",
            f"{one['seconds']} s = {one['users_per_s']:.0f} users/s = "
            f"{one['ratio_to_raw_posts']:.2f} x raw POSTs",
            f">= {LOAD_RATIO_GOAL} x raw",
            one["ratio_to_raw_posts"] >= LOAD_RATIO_GOAL,
        )
        row(
            "  requests per change",
            f"{one['write_requests_per_change']} writes, {one['requests_per_change']} in all",
            "1 write",
            one["write_requests_per_change"] == 1.0,
        )
        row(
            f"initial load {n:,}, Bulk",
            f"{bulk['seconds']} s = {bulk['users_per_s']:.0f} users/s = "
            f"{bulk['ratio_to_raw_posts']:.2f} x raw POSTs, "
            f"{bulk['ratio_to_raw_bulk']:.2f} x raw Bulk",
            f">= {LOAD_RATIO_GOAL} x raw Bulk",
            bulk["ratio_to_raw_bulk"] >= LOAD_RATIO_GOAL,
        )
        row(
            "  requests per change",
            f"{bulk['write_requests_per_change']} writes, {bulk['requests_per_change']} in all",
        )
    for method, figures in result.get("incremental", {}).items():
        for name, f in figures.items():
            k = int(name[2:]) if name.startswith("k=") else 0
            goal, met = (
                (f"writes = {k}", f["write_requests"] == k)
                if name != "first_cycle_full_pass"
                else ("writes = 0", f["write_requests"] == 0)
            )
            row(
                f"{method} {name}",
                f"{f['wall_seconds']} s wall, {f['directory_seconds']} s directory "
                f"({f['directory_mode']}), {f['users_read']} read, {f['write_requests']} writes",
                goal,
                met,
            )
    if "membership" in result:
        m = result["membership"]
        c, d = m["created"], m["changed_by_10_members"]
        row(
            f"group of {m['group_members']:,} members created",
            f"{c['wall_seconds']} s, requests {c['requests']}",
        )
        row(
            "  changed by 10 members",
            f"{d['wall_seconds']} s, +{d['members_added']} -{d['members_removed']}, "
            f"requests {d['requests']}",
            "1 PATCH",
            d["write_requests"] == 1,
        )
    if "extraction" in result:
        e = result["extraction"]
        row(
            "extraction (extract step)",
            f"{e['extract_entries_per_s']:,} entries/s "
            f"({e['entries']:,} in {e['extract_seconds']} s); "
            f"ldap3 search alone {e['ldap3_paged_search_only_entries_per_s']:,}/s",
        )
        row(
            "  ldapsearch, same query",
            f"{e['ldapsearch_entries_per_s']:,} entries/s; "
            f"extract = {e['ratio_to_ldapsearch']:.2f} x ldapsearch",
        )
    if "overhead" in result:
        for name, o in result["overhead"].items():
            row(
                f"Prefect overhead, {name}",
                f"{o['prefect_share']:.0%} ({o['with_prefect_seconds']} s with, "
                f"{o['without_prefect_seconds']} s without; {o['task_runs']} task runs, "
                f"{o['outside_task_runs_share']:.0%} of wall outside task runs)",
            )
    if "reconcile" in result:
        r = result["reconcile"]
        for s in r["sizes"]:
            row(
                f"reconcile (dry run) {s['users']:,}",
                f"{s['flow_seconds']} s, peak RSS {s['peak_rss_mb']:.0f} MB "
                f"(before the flow {s['rss_before_flow_mb']:.0f} MB)",
                "1M in 2 GB" if s["users"] >= 1_000_000 else "",
                s["peak_rss_mb"] <= 2048 if s["users"] >= 1_000_000 else None,
            )
            if "repair_run" in s:
                fixed = s["repair_run"]
                row(
                    f"reconcile (repair) {s['users']:,}",
                    f"{fixed['flow_seconds']} s, peak RSS {fixed['peak_rss_mb']:.0f} MB, "
                    f"writes {fixed.get('repair')}",
                )
        if "peak_rss_mb_per_100k_users" in r:
            row(
                "  growth",
                f"{r['peak_rss_mb_per_100k_users']} MB and "
                f"{r['seconds_per_100k_users']} s per 100k users",
            )
    widths = [max(len(r[i]) for r in [*rows, ("figure", "goal", "")]) for i in (0, 1)]
    lines = [("figure", "goal", "value"), *rows]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip() for a, b, c in lines)


# -- main ----------------------------------------------------------------------------------------


def numbers(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--users", type=int)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"of {','.join(SECTIONS)}")
    parser.add_argument("--changes", type=numbers, help="k per incremental cycle (1,100,10000)")
    parser.add_argument("--methods", default="syncrepl,timestamp")
    parser.add_argument("--group-members", type=int, default=20_000)
    parser.add_argument("--reconcile-sizes", type=numbers, help="10000,100000,1000000")
    parser.add_argument(
        "--reconcile-drift",
        type=int,
        default=100,
        help="users changed on the target before each reconcile (default 100)",
    )
    parser.add_argument("--raw-sample", type=int, default=5000, help="POSTs for the raw figures")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of the short figures (best/median)"
    )
    parser.add_argument("--quick", action="store_true", help="5,000 users, k=1,10, reconcile 2k,5k")
    parser.add_argument("--output", type=Path, help="also write the JSON document here")
    parser.add_argument(
        "--reconcile-repair",
        action="store_true",
        help="after each dry run, a real reconcile repairing the drifted users (time, peak RSS)",
    )
    parser.add_argument("--reconcile-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.users = args.users or (5000 if quick else 100_000)
    args.changes = args.changes or ([1, 10] if quick else [1, 100, 10_000])
    args.reconcile_sizes = args.reconcile_sizes or ([2000, 5000] if quick else [10_000, 100_000])
    args.raw_sample = min(args.raw_sample, 2000) if quick else args.raw_sample
    args.repeat = min(args.repeat, 2) if quick else args.repeat
    args.group_size = big_group_size(args.users, args.group_members)
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {','.join(SECTIONS)}")
    if max(args.changes) > args.users:
        parser.error("k (--changes) cannot exceed --users")
    return args


def main(argv: list[str] | None = None) -> None:
    from flows.launch import collect_cycles_rarely

    collect_cycles_rarely()  # as the command and every flow do: the sections call their code
    args = parse(argv)
    if args.reconcile_child:
        reconcile_child_main(args.reconcile_child, args.reconcile_repair)
        return
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    logging.getLogger("prefect").setLevel(logging.WARNING)  # prefect was imported already
    from prefect.testing.utilities import prefect_test_harness

    started = time.perf_counter()
    result: dict[str, Any] = {
        "users": args.users,
        "concurrency": args.concurrency,
        "sections": args.sections,
        "machine": machine(),
    }
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=90):
        work = Path(tmp)
        with Slapd(work / "slapd") as slapd, ScimServer(work / "scim") as scim:
            step = time.perf_counter()
            slapd.start(directory(args.users) + group_ldif(args.group_size))
            result["slapadd_seconds"] = round(time.perf_counter() - step, 2)
            scim.start()
            os.environ["BENCH_LDAP_PASSWORD"] = slapd.admin_password
            bench = Bench(args, work, slapd, scim)
            for section in SECTIONS:  # in this order: each leaves the target as the next needs
                if section in args.sections:
                    step = time.perf_counter()
                    print(f"bench: {section}...", file=sys.stderr, flush=True)
                    result[section] = getattr(bench, section)()
                    timings[section] = round(time.perf_counter() - step, 1)
    result["section_seconds"] = timings
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["peak_rss_mb_main_process"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    document = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(document + "\n")
    print(document)
    print()
    print(table(result))


if __name__ == "__main__":
    main()
