"""Benchmark: initial load and a no-change sync of N users, against the target's raw capacity.

    .venv/bin/python -m tests.bench.bench_users --users 10000 [--concurrency 4]

Starts its own real servers (slapd loaded with ``slapadd -q``, scim2-server under gunicorn, a
Prefect test server), then measures, in one run:

1. the target's raw capacity: direct POSTs of fresh users at the same concurrency, nothing else;
2. the initial load through the ``provision_users`` flow, one request per change and with
   Bulk: users/s, ratio to the raw capacity, requests per change;
3. a second sync with no directory change: wall time and write requests (goal: 0);
4. peak RSS of this process (the provisioner runs in it).

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
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
import yaml

from tasks.config import TargetConfig
from tasks.ldap.extract import SourceUser
from tasks.sync.transform import build_user
from tests.support.servers import ScimServer, Slapd, ou_ldif, person_ldif

PEOPLE = "ou=people,dc=example,dc=org"


def directory(count: int) -> str:
    return ou_ldif(PEOPLE) + "".join(
        person_ldif(
            f"user{n:07d}",
            given_name=f"Given{n}",
            surname=f"Family{n}",
            mail=[f"user{n:07d}@example.org"],
            ou_dn=PEOPLE,
            extra={"title": ["Engineer"], "employeeNumber": [str(n)]},
        )
        for n in range(count)
    )


def raw_payloads(count: int) -> list[dict[str, Any]]:
    """The very users the provisioner sends (default mapping), under other userNames."""
    mapping = TargetConfig(name="raw", url="http://raw").mapping
    payloads = []
    for n in range(count):
        uid = f"raw{n:07d}"
        attributes = {
            "uid": [uid],
            "cn": [f"Given{n} Family{n}"],
            "givenname": [f"Given{n}"],
            "sn": [f"Family{n}"],
            "mail": [f"{uid}@example.org"],
            "title": ["Engineer"],
            "employeenumber": [str(n)],
        }
        payloads.append(build_user(SourceUser(str(uuid.uuid4()), uid, attributes), mapping).payload)
    return payloads


def raw_capacity(scim: ScimServer, count: int, concurrency: int) -> float:
    """Creates per second with bare POSTs of the same payloads on keep-alive sessions."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=concurrency)
    session.mount("http://", adapter)
    payloads = raw_payloads(count)

    def post(payload: dict[str, Any]) -> None:
        response = session.post(
            f"{scim.base_url}/Users",
            json=payload,
            headers={"Content-Type": "application/scim+json"},
            timeout=60,
        )
        response.raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, payloads))
    seconds = time.perf_counter() - started
    session.close()
    return count / seconds


def run_flow(config: Path) -> tuple[float, dict[str, Any]]:
    from flows.provision_users import provision_users

    started = time.perf_counter()
    state = provision_users(config_path=str(config), return_state=True)
    seconds = time.perf_counter() - started
    summary = state.result(raise_on_failure=False).as_dict()
    if not state.is_completed():
        raise SystemExit(f"the sync failed: {state.message}")
    return seconds, summary


def write_config(
    path: Path,
    slapd: Slapd,
    scim: ScimServer,
    *,
    source: dict[str, Any] | None = None,
    state: Path | None = None,
    **target: Any,
) -> Path:
    """A config file: the users of ``PEOPLE``, one target ``bench``, the state store ``state``
    (default: next to the file); ``source`` adds or overrides source keys."""
    path.write_text(
        yaml.safe_dump(
            {
                "source": {
                    "url": slapd.ldaps_url,
                    "ca_file": str(slapd.tls.ca_cert),
                    "bind_dn": slapd.admin_dn,
                    "bind_password": {"env": "BENCH_LDAP_PASSWORD"},
                    "users": {"base_dn": PEOPLE},
                    **(source or {}),
                },
                "state": {"url": f"sqlite:///{state or path.with_suffix('.db')}"},
                "targets": [{"name": "bench", "url": scim.base_url, **target}],
            }
        )
    )
    return path


def initial_load(config: Path, scim: ScimServer, raw: float) -> dict[str, Any]:
    """An initial load into an empty target: time, users/s, ratio to raw, requests."""
    scim.wipe()
    seconds, summary = run_flow(config)
    stats = scim.stats()
    created = summary["targets"][0]["succeeded"]["create"]
    rate = created / seconds
    return {
        "seconds": round(seconds, 2),
        "users_per_s": round(rate, 1),
        "ratio_to_raw_capacity": round(rate / raw, 2),
        "requests": {k: v for k, v in stats.items() if v},
        "requests_per_change": round(sum(stats.values()) / max(created, 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--raw-sample", type=int, default=2000, help="POSTs for the raw figure")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=90):
        work = Path(tmp)
        slapd = Slapd(work / "slapd")
        scim = ScimServer(work / "scim")
        try:
            started = time.perf_counter()
            slapd.start(directory(args.users))
            load_seconds = time.perf_counter() - started
            scim.start()
            raw = raw_capacity(scim, args.raw_sample, args.concurrency)
            os.environ["BENCH_LDAP_PASSWORD"] = slapd.admin_password
            one_by_one = write_config(
                work / "one.yaml", slapd, scim, concurrency=args.concurrency, use_bulk="never"
            )
            bulk = write_config(work / "bulk.yaml", slapd, scim, concurrency=args.concurrency)
            without_bulk = initial_load(one_by_one, scim, raw)
            with_bulk = initial_load(bulk, scim, raw)
            scim.reset_stats()
            again_seconds, again = run_flow(bulk)
            again_stats = scim.stats()
        finally:
            scim.stop()
            slapd.stop()
    result = {
        "users": args.users,
        "concurrency": args.concurrency,
        "machine": f"{os.cpu_count()} cores, {sys.platform}",
        "slapadd_seconds": round(load_seconds, 2),
        "target_raw_creates_per_s": round(raw, 1),
        "initial_load_one_by_one": without_bulk,
        "initial_load_bulk": with_bulk,
        "no_change_sync": {
            "seconds": round(again_seconds, 2),
            "write_requests": sum(again_stats[m] for m in ("POST", "PUT", "PATCH", "DELETE")),
            "unchanged": again["targets"][0]["planned"]["unchanged"],
        },
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result, indent=2))
    print(f"\n{'users':>30}: {args.users}")
    print(f"{'target raw capacity':>30}: {raw:.0f} creates/s (bare POSTs)")
    for name, load in (
        ("initial load, one by one", without_bulk),
        ("initial load, Bulk", with_bulk),
    ):
        print(
            f"{name:>30}: {load['seconds']:.1f} s = {load['users_per_s']:.0f} users/s "
            f"({load['ratio_to_raw_capacity']:.0%} of raw), "
            f"{load['requests_per_change']} requests per change"
        )
    print(
        f"{'no-change sync':>30}: {again_seconds:.1f} s, "
        f"{result['no_change_sync']['write_requests']} writes"
    )
    print(f"{'peak RSS':>30}: {result['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
