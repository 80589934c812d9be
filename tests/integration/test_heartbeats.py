"""Flow-run heartbeats on a real Prefect server: still sent, and never what a run waits for."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytestmark = pytest.mark.usefixtures("prefect")


HEARTBEAT = "prefect.flow-run.heartbeat"


def recorded_events(
    flow_run_id: Any, name: str | None = None, *, wait: bool = True
) -> list[dict[str, Any]]:
    """The events the server recorded for a flow run (all, or those called ``name``); with
    ``wait``, until there is one (events are stored a moment after they are sent)."""
    from prefect.client.orchestration import get_client

    wanted: dict[str, Any] = {"resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}}
    if name is not None:
        wanted["event"] = {"name": [name]}
    events: list[dict[str, Any]] = []
    with get_client(sync_client=True) as client:
        for _ in range(60 if wait else 1):
            events = client.request("POST", "/events/filter", json={"filter": wanted}).json()
            events = events["events"]
            if events:
                break
            time.sleep(0.5)
    return events


def test_a_flow_run_sends_heartbeats_and_ends_when_its_work_ends() -> None:
    from prefect import flow, flow_engine
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    import flows.pipeline  # noqa: F401  (every flow of the provisioner imports it)
    from flows import heartbeats

    assert flow_engine._send_heartbeats is heartbeats.heartbeats  # installed for this Prefect
    ended: dict[str, float] = {}

    @flow(name="brief")
    def brief() -> None:
        ended["at"] = time.monotonic()

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        state = brief(return_state=True)
    returned = time.monotonic()
    assert state.is_completed()
    # Prefect's own heartbeat thread slept in 1-second steps and the run waited for it to wake:
    # ~1 s after the work of a short run. Left to end: the Completed state (milliseconds).
    assert returned - ended["at"] < 0.5
    events = recorded_events(state.state_details.flow_run_id, HEARTBEAT)
    assert events, "the run's heartbeat reached the server"
    assert {e["event"] for e in events} == {HEARTBEAT}
    related = {r["prefect.resource.role"] for e in events for r in e["related"]}
    assert "flow" in related  # the same event as Prefect's own: tied to the flow


def test_a_flow_run_sends_no_heartbeat_when_they_are_switched_off() -> None:
    from prefect import flow
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    import flows.pipeline  # noqa: F401

    @flow(name="quiet")
    def quiet() -> None:
        pass

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        state = quiet(return_state=True)
        marker = quiet(return_state=True)  # a run after it: its events are stored by then
    assert state.is_completed() and marker.is_completed()
    # the later run's events are stored once this returns: the earlier run's are by then
    assert recorded_events(marker.state_details.flow_run_id)
    assert recorded_events(state.state_details.flow_run_id, HEARTBEAT, wait=False) == []
