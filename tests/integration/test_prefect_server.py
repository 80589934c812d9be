"""Operating the provisioner in Prefect: a real server side on PostgreSQL and Redis (two API
servers, the background services apart), the deployments of deployments/prefect.yaml per
target, process workers on the pool ``scim-provisioner``.

- A deployment run that failed for part of the users is notified to a webhook by the
  automation; retried from Prefect, it redoes only the failed work: the target never receives
  a user twice.
- Two workers on one pool, each through another API server, share the deployments: the runs
  are spread over both, and none runs twice.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from deployments.prefect_server import POOL

if TYPE_CHECKING:
    from tests.integration.prefect_server_fixtures import PrefectSite, RetriedRun

pytest_plugins = ["tests.integration.prefect_server_fixtures"]
pytestmark = [pytest.mark.integration]

RUNS_PER_TARGET = 2


def test_the_deployments_of_prefect_yaml_are_registered_per_target(
    prefect_site: PrefectSite,
) -> None:
    """Every deployment of prefect.yaml exists once per target, on the pool, with the target
    and the config as parameters, its schedule and its one-at-a-time limit."""
    expected = {
        f"{flow}/{name}-{target}"
        for flow, name in (
            ("provision_users", "every-5-minutes"),
            ("sync_group_memberships", "every-15-minutes"),
            ("reconcile", "nightly"),
        )
        for target in prefect_site.targets
    }
    assert set(prefect_site.deployments) == expected
    with prefect_site.server.client() as client:
        for name in expected:
            deployment = client.read_deployment_by_name(name)
            assert deployment.work_pool_name == POOL
            assert name.endswith(f"-{deployment.parameters['target']}")
            assert deployment.parameters["config_path"] == str(prefect_site.config)
            assert deployment.schedules and not any(s.active for s in deployment.schedules)
            assert deployment.global_concurrency_limit is not None
            assert deployment.global_concurrency_limit.limit == 1
            schema = deployment.parameter_openapi_schema or {}
            assert {"config_path", "target"} <= set(schema["properties"])


def test_a_failed_run_retried_from_prefect_redoes_only_the_failed_users(
    retried_run: RetriedRun,
) -> None:
    """Attempt 1 fails for the users whose requests the proxy answered with 503 (the run ends
    Failed); `prefect flow-run retry` (the UI's Retry) runs the same flow run again on a
    worker: it completes, and the target received exactly one POST per user over both
    attempts: the retry created only those attempt 1 had not."""
    run = retried_run
    print(f"\nretried run {run.run_id}: {run.seconds}, faults {run.faults}")
    print(f"notification: {run.notification}")
    assert run.first.state.is_failed(), run.first.state
    assert run.faults > 0
    assert 0 < run.users_first < run.users, "the faults must fail some users, not all"
    assert run.posts_first == run.users_first  # a 503 is answered without forwarding
    assert "scheduled for retry" in run.retry_output
    # the automation told the webhook: which run, which deployment, why, and where to look
    assert run.notification is not None, "no notification of the failed attempt arrived"
    assert "Failed" in run.notification and "every-5-minutes-app-a" in run.notification
    assert "users with problems" in run.notification
    assert f"/runs/flow-run/{run.run_id}" in run.notification
    assert run.final.state.is_completed(), run.final.state
    assert run.final.run_count == 2
    names = Counter(u["userName"] for u in run.on_target)
    assert set(names) == run.expected
    assert max(names.values()) == 1
    # every user was POSTed once, over both attempts: no write twice; at most one PATCH:
    # bob's manager reference, when bob was created in attempt 1 and ada only in the retry
    assert run.stats.get("POST", 0) == run.users
    assert run.stats.get("PATCH", 0) <= 1
    assert run.stats.get("PUT", 0) == run.stats.get("DELETE", 0) == 0


def launches(log: str) -> Counter[str]:
    """Flow run id → how many times this worker's log says it launched that run: submitting,
    less the submissions the server refused (another worker had it, or a concurrency slot)."""
    submitted = Counter(re.findall(r"submitting flow run '([0-9a-f-]{36})'", log))
    aborted = Counter(re.findall(r"Aborted submission of flow run '([0-9a-f-]{36})'", log))
    return submitted - aborted


def test_two_workers_on_one_pool_share_the_runs_and_none_runs_twice(
    prefect_site: PrefectSite,
) -> None:
    """Two workers (one run at a time each) on the pool, through the two API servers; two runs
    per target's deployment created at once. Each run completes once (run_count 1), launched
    by exactly one worker; both workers launched runs; each target received each user once;
    both API servers show the same runs."""
    site = prefect_site
    site.reset()
    started = time.monotonic()
    with site.workers("worker-a", "worker-b", limit=1):
        run_ids = [site.run(target) for _ in range(RUNS_PER_TARGET) for target in site.targets]
        runs = [site.wait(run_id) for run_id in run_ids]
    print(f"\n{len(runs)} runs on two workers in {time.monotonic() - started:.1f} s")
    for run in runs:
        assert run.state.is_completed(), (run.name, run.state)
        assert run.run_count == 1, run.name
    by_worker = {
        name: launches(site.server.worker_log(name).read_text())
        for name in ("worker-a", "worker-b")
    }
    for run_id in run_ids:
        counts = [by_worker[name][str(run_id)] for name in by_worker]
        assert sorted(counts) == [0, 1], (run_id, by_worker)
    assert all(sum(counts.values()) >= 1 for counts in by_worker.values()), by_worker
    for number in range(len(site.server.ports)):
        with site.server.client(api=number) as client:
            shown = {run.id: run.state_name for run in client.read_flow_runs()}
        assert all(shown[run.id] == "Completed" for run in runs), (number, shown)
    for target in site.targets:
        names = Counter(u["userName"] for u in site.target_users(target))
        assert set(names) == site.expected_users() and max(names.values()) == 1, target
        assert site.scim[target].stats().get("POST", 0) == site.users, target
