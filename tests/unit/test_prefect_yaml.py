"""deployments/prefect.yaml, checked as text (the Prefect server tests come with deployments
work): entrypoints are the project's flows, parameters fit their signatures, schedules and a
one-at-a-time concurrency limit are set."""

import importlib
import inspect
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[2]


def test_deployments_point_at_real_flows_with_fitting_parameters() -> None:
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    flows = {}
    for deployment in spec["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        flows[flow.name] = deployment
        accepted = inspect.signature(flow.fn).parameters
        assert set(deployment["parameters"]) <= set(accepted), deployment["name"]
        assert deployment["schedules"] and deployment["work_pool"]["name"] == "scim-provisioner"
        assert deployment["concurrency_limit"]["limit"] == 1
    assert set(flows) == {"provision_users", "sync_group_memberships", "reconcile"}
