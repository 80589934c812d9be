"""The command line's own behaviour (the commands' runs are in tests/integration)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flows.cli import main


def test_the_cli_turns_prefect_telemetry_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary Prefect server the CLI starts inherits analytics off (no more "Failed to
    send telemetry" on every run)."""
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    assert main(["plan", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
