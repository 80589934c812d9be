"""Benchmark: incremental cycles on an N-user directory, per change detection method.

    .venv/bin/python -m tests.bench.bench_incremental --users 100000 [--changes 1,100,10000]

Starts its own real servers (slapd with syncprov + accesslog, loaded with ``slapadd -q``;
scim2-server under gunicorn; a Prefect test server), makes the initial load once (Bulk on),
then for each method (``syncrepl``, ``timestamp``; the first cycle of a method is a full pass
that writes nothing) measures:

- a cycle with nothing changed: wall time, the directory's share, write requests (goal: 0);
- a cycle after k users changed (a new title each), for each k: wall time, directory time,
  write requests (goal: k; Bulk off so that each change is one request).

Prints one JSON document, then a readable table. Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.bench_users import PEOPLE, directory, run_flow, write_config
from tests.support.servers import ScimServer, Slapd

WRITES = ("POST", "PUT", "PATCH", "DELETE")


def config_file(path: Path, slapd: Slapd, scim: ScimServer, method: str, bulk: bool) -> Path:
    # cycles follow each other within seconds here; see docs/architecture.md
    source = {"change_detection": method, "timestamp_overlap_seconds": 1, "page_size": 2000}
    bulk_setting = "auto" if bulk else "never"
    state = path.parent / "state.db"
    return write_config(path, slapd, scim, source=source, state=state, use_bulk=bulk_setting)


def change_titles(slapd: Slapd, first: int, count: int, title: str) -> float:
    """Give ``count`` users a new title with one ldapmodify; return the seconds it took."""
    ldif = "".join(
        f"dn: uid=user{n:07d},{PEOPLE}\nchangetype: modify\nreplace: title\ntitle: {title}\n\n"
        for n in range(first, first + count)
    )
    started = time.perf_counter()
    slapd.modify(ldif)
    return time.perf_counter() - started


def cycle(config: Path, scim: ScimServer) -> dict[str, Any]:
    scim.reset_stats()
    time.sleep(1.1)  # past the 1 s timestamp overlap: the previous cycle's changes are old
    seconds, summary = run_flow(config)
    stats = scim.stats()
    return {
        "wall_seconds": round(seconds, 2),
        "directory_seconds": summary["directory"]["directory_seconds"],
        "directory_mode": summary["directory"]["mode"],
        "users_read": summary["directory"]["read"],
        "write_requests": sum(stats.get(m, 0) for m in WRITES),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--changes", default="1,100,10000")
    parser.add_argument("--methods", default="syncrepl,timestamp")
    args = parser.parse_args()
    sizes = [int(k) for k in args.changes.split(",")]
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    from prefect.testing.utilities import prefect_test_harness

    result: dict[str, Any] = {
        "users": args.users,
        "machine": f"{os.cpu_count()} cores, {sys.platform}",
        "methods": {},
    }
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=90):
        work = Path(tmp)
        slapd = Slapd(work / "slapd")
        scim = ScimServer(work / "scim")
        try:
            slapd.start(directory(args.users))
            scim.start()
            os.environ["BENCH_LDAP_PASSWORD"] = slapd.admin_password
            methods = args.methods.split(",")
            load = config_file(work / "load.yaml", slapd, scim, methods[0], bulk=True)
            seconds, summary = run_flow(load)
            result["initial_load"] = {
                "seconds": round(seconds, 1),
                "created": summary["targets"][0]["succeeded"]["create"],
            }
            changed = 0
            for method in methods:
                config = config_file(work / f"{method}.yaml", slapd, scim, method, bulk=False)
                figures: dict[str, Any] = {"first_cycle": cycle(config, scim)}
                figures["no_change"] = cycle(config, scim)
                for k in sizes:
                    ldap_seconds = change_titles(slapd, changed, k, f"{method}-{k}")
                    changed += k
                    figures[f"k={k}"] = {
                        **cycle(config, scim),
                        "ldapmodify_seconds": round(ldap_seconds, 2),
                    }
                result["methods"][method] = figures
        finally:
            scim.stop()
            slapd.stop()
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result, indent=2))
    print(f"\n{args.users} users; initial load {result['initial_load']['seconds']} s")
    print(f"{'method':>10} {'cycle':>12} {'wall s':>8} {'dir s':>7} {'read':>7} {'writes':>7}")
    for method, figures in result["methods"].items():
        for name, row in figures.items():
            print(
                f"{method:>10} {name:>12} {row['wall_seconds']:>8} {row['directory_seconds']:>7} "
                f"{row['users_read']:>7} {row['write_requests']:>7}"
            )
    print(f"peak RSS {result['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
