"""What the operator sees in Prefect: the summary table, the details, the progress."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import BEARER_TOKEN, PEOPLE, write_config
from tests.support.servers import ScimServer, Slapd

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect", "ldap_password")]


def test_run_ends_with_summary_and_details_artifacts(
    tmp_path: Path, directory: Slapd, scim: ScimServer
) -> None:
    """A run with a rejected entry is Failed, with a table of counts per action and a markdown
    list naming the entry and the reason; a progress artifact reached 100 %; no secret."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.provision_users import provision_users

    directory.modify(
        f"dn: cn=No Uid,{PEOPLE}\nchangetype: add\nobjectClass: inetOrgPerson\ncn: No Uid\nsn: U\n"
    )
    config = write_config(tmp_path / "c.yaml", directory, scim)
    state = provision_users(config_path=str(config), return_state=True)
    assert state.is_failed()
    assert state.message == "3 created, 1 updated; 1 user with problems"
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    by_type = {a.type: a for a in artifacts}
    table = json.loads(by_type["table"].data)
    create = next(row for row in table if row["action"] == "create")
    assert (create["planned"], create["succeeded"], create["failed"]) == (3, 3, 0)
    rejected = next(row for row in table if row["action"] == "rejected")
    assert rejected["planned"] == 1
    details = by_type["markdown"].data
    assert f"cn=No Uid,{PEOPLE}" in details and "no value for userName" in details
    assert by_type["progress"].data == 100.0
    everything = " ".join(str(a.data) for a in artifacts)
    assert "admin-secret" not in everything and BEARER_TOKEN not in everything
