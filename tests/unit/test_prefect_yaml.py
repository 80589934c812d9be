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


def test_the_ui_form_describes_every_flow_parameter() -> None:
    """Prefect reads Google-style ``Args:`` docstrings: each field of the run form in the UI
    carries its help text."""
    from prefect.utilities.callables import parameter_schema

    from flows.provision_users import provision_users
    from flows.reconcile import reconcile
    from flows.sync_group_memberships import sync_group_memberships

    for flow in (provision_users, sync_group_memberships, reconcile):
        schema = parameter_schema(flow.fn).model_dump()
        described = {name: field.get("description") for name, field in schema["properties"].items()}
        assert all(described.values()), (flow.name, described)
