"""What a run learns about a target before writing to it."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.config import TargetConfig
from tasks.scim.client import ScimClient
from tasks.scim.dialect import Capabilities


@task(name="discover-target", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def discover(client: ScimClient) -> Capabilities:
    """Read the target's /ServiceProviderConfig once per run."""
    capabilities = client.discover()
    get_run_logger().info("target %s: %s", client.target.name, capabilities)
    return capabilities


def uses_patch(target: TargetConfig, capabilities: Capabilities) -> bool:
    """PATCH when the config says so, or (auto) when the target advertises it."""
    if target.update_method == "auto":
        return capabilities.patch
    return target.update_method == "patch"
