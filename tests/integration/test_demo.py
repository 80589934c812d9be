"""The README's demo command runs end to end."""

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect")]


def test_demo_provisions_the_sample_people(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo starts its own slapd and SCIM server, syncs through Prefect and exits 0."""
    from deployments.demo import main

    assert main(["--users", "10"]) == 0
    out = capsys.readouterr().out
    assert "9 created, 4 groups created, 9 members added; every user and group in" in out
    assert "Users now in the SCIM application (9)" in out  # the tenth person is locked
    assert "Groups now in the SCIM application (4)" in out
