"""Bulk only where it pays: with many changes and Bulk advertised, a first share is loaded in
Bulk requests and the next one request each (both real, confirmed writes); the faster way
carries the rest and the summary says which and why. A real scim2-server behind the fault
proxy, made far away (every request 50 ms later: Bulk pays) or given a slow Bulk endpoint
(one request per change pays)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import add_people, sync, target_users, write_config
from tests.fault_proxy import FaultProxy
from tests.support.servers import ScimServer, Slapd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]


@pytest.mark.parametrize(
    ("latency", "slow_bulk", "kept"),
    [(0.05, 0.0, "Bulk requests"), (0.0, 2.0, "one request per change")],
    ids=["far-away-target", "slow-bulk-endpoint"],
)
def test_the_faster_way_measured_carries_the_load(
    latency: float,
    slow_bulk: float,
    kept: str,
    tmp_path: Path,
    directory: Slapd,
    scim: ScimServer,
    proxy: FaultProxy,
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_people(directory, 447)  # with ada, bob and dee: 450 users to create
    proxy.latency, proxy.slow_bulk = latency, slow_bulk
    config = write_config(tmp_path / "c.yaml", directory, scim, url=f"{proxy.url}/v2")
    code, summary = sync(config, capsys)
    assert code == 0, summary
    report = summary["targets"][0]
    assert report["succeeded"]["create"] == 450
    trial = [n for n in report["notes"] if n.startswith("Bulk measured on 112 changes")]
    assert trial and trial[0].endswith(f": {kept} for the other 226"), report["notes"]
    assert len(target_users(scim)) == 450  # each user once
