"""The mass-deprovisioning guard on a real run: held back, overridden, approved in Prefect."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PEOPLE, sync, target_users, write_config
from tests.support.servers import ScimServer, Slapd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]

GUARD = {"max_count": 50, "max_share": 0.5, "min_count": 1}
REMOVE_TWO = (
    f"dn: uid=bob,{PEOPLE}\nchangetype: delete\n\ndn: uid=dee,{PEOPLE}\nchangetype: delete\n"
)


def active(scim: ScimServer) -> dict[str, bool]:
    return {name: user["active"] for name, user in target_users(scim).items()}


def test_guard_holds_back_then_the_override_lets_it_through(
    tmp_path: Path, directory: Slapd, scim: ScimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """2 of 3 managed users gone (67 % > 50 %): nothing is disabled and the run says why;
    the explicit override disables them."""
    config = write_config(tmp_path / "c.yaml", directory, scim, deprovision_guard=GUARD)
    assert sync(config, capsys)[0] == 0
    directory.modify(REMOVE_TWO)
    code, summary = sync(config, capsys)
    assert code == 1
    assert "2 deprovisionings held back by the guard" in summary["headline"]
    assert active(scim) == {"ada": True, "bob": True, "dee": True}
    reasons = {s["user"]: s["reason"] for s in summary["targets"][0]["skipped"]}
    assert "2 of 3 managed users (67%" in reasons["bob"]
    code, summary = sync(config, capsys, "--allow-mass-deprovisioning")
    assert code == 0, summary
    assert active(scim) == {"ada": True, "bob": False, "dee": False}


@pytest.mark.parametrize("approve", [True, False])
@pytest.mark.parametrize("flow", ["provision_users", "reconcile"])
def test_paused_run_waits_for_approval_in_prefect(
    flow: str, approve: bool, tmp_path: Path, directory: Slapd, scim: ScimServer
) -> None:
    """With an approval timeout a sync or a reconciliation that would deprovision too many
    pauses with a form; approving proceeds, rejecting holds the deprovisioning back."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    from flows.provision_users import provision_users

    config = write_config(tmp_path / "c.yaml", directory, scim, deprovision_guard=GUARD)
    assert provision_users(config_path=str(config), return_state=True).is_completed()
    directory.modify(REMOVE_TWO)
    result: dict[str, Any] = {}

    def run() -> None:
        if flow == "reconcile":
            from flows.reconcile import reconcile

            result["state"] = reconcile(
                config_path=str(config), approval_timeout=120, return_state=True
            )
        else:
            result["state"] = provision_users(
                config_path=str(config), approval_timeout=120, return_state=True
            )

    worker = threading.Thread(target=run)
    worker.start()
    paused = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
    )
    flow_run_id = None
    with get_client(sync_client=True) as client:
        for _ in range(600):
            runs = client.read_flow_runs(flow_run_filter=paused)
            if runs:
                flow_run_id = runs[0].id
                break
            time.sleep(0.1)
    assert flow_run_id is not None, "the run never paused for approval"
    resume_flow_run(flow_run_id, run_input={"approve": approve})
    worker.join(timeout=120)
    state = result["state"]
    if approve:
        assert state.is_completed()
        assert active(scim) == {"ada": True, "bob": False, "dee": False}
    else:
        assert state.is_failed()
        assert active(scim) == {"ada": True, "bob": True, "dee": True}
