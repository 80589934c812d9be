"""What a run learns about a target before writing to it, and the checks made with it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger, task

from tasks.config import TargetConfig
from tasks.errors import ConfigError, TargetUnreachable, TransientError, retry_on
from tasks.results import RUN_SCOPED
from tasks.scim.client import ScimClient, safe_url
from tasks.scim.dialect import Capabilities, Scim20


def unknown_extension_attributes(
    mapping: dict[str, Any], schemas: dict[str, set[str]], dialect: Scim20
) -> list[str]:
    """Extension or custom attributes of a mapping that the target's /Schemas does not define."""
    unknown = []
    for key, rule in mapping.items():
        if not key.startswith("urn:"):
            continue
        urn = dialect.wire_urn(key)
        if urn not in schemas:
            unknown.append(f"{key} (no such schema)")
            continue
        attributes = rule if isinstance(rule, dict) else {}
        unknown += [f"{key}:{name}" for name in attributes if name.lower() not in schemas[urn]]
    return unknown


@contextmanager
def reached(target: TargetConfig) -> Iterator[ScimClient]:
    """A client for the target, proven reachable and accepting its credentials by one
    authenticated request, closed on leaving. Every run enters this before it says anything
    about a target.

    Raises :class:`TargetUnreachable` naming the target and its URL (a missing secret too).
    """
    try:
        client = ScimClient(target)
    except ConfigError as exc:
        raise TargetUnreachable(
            f"target {target.name} ({safe_url(target.url)}) not reached: {exc}"
        ) from exc
    try:
        client.probe()
        yield client
    finally:
        client.close()


@task(
    name="discover-target",
    cache_policy=RUN_SCOPED,
    persist_result=True,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_on(TransientError),
)
def discover(target: TargetConfig) -> Capabilities:
    """Read the target's /ServiceProviderConfig and /Schemas once per run (cached for the
    run); refuse a mapping that uses extension attributes the target does not define, before
    any write."""
    client = ScimClient(target)
    try:
        capabilities = client.discover()
        schemas = client.schemas()
    finally:
        client.close()
    if schemas is not None:
        unknown = unknown_extension_attributes(target.mapping, schemas, client.dialect)
        if unknown:
            raise ConfigError(
                f"target {target.name}: the mapping uses attributes its /Schemas does not "
                f"define: {', '.join(unknown)}"
            )
    get_run_logger().info("target %s (%s): %s", target.name, client.dialect.name, capabilities)
    return capabilities


def uses_patch(target: TargetConfig, capabilities: Capabilities) -> bool:
    """PATCH when the config says so, or (auto) when the target advertises it."""
    if target.update_method == "auto":
        return capabilities.patch
    return target.update_method == "patch"


def uses_group_patch(target: TargetConfig, capabilities: Capabilities) -> bool:
    """Member-delta PATCHes for groups when the config says so, or (auto) when advertised."""
    if target.group_update_method == "auto":
        return capabilities.patch
    return target.group_update_method == "patch"


def uses_bulk(target: TargetConfig, capabilities: Capabilities) -> bool:
    """Bulk requests when the target advertises Bulk and the config does not forbid it."""
    return target.use_bulk == "auto" and capabilities.bulk
