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


def test_prefect_tracebacks_stay_off_the_terminal_unless_verbose() -> None:
    """Without --verbose the terminal shows the CLI's one-line reason, not Prefect's ~80 lines
    of traceback (which stay in the run's log, sent by another handler)."""
    import logging
    import sys

    from prefect.logging.handlers import PrefectConsoleHandler

    from flows.cli import _terminal_without_tracebacks

    handler = PrefectConsoleHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        _terminal_without_tracebacks()
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            failing = logging.LogRecord(
                "prefect.task_runs", logging.ERROR, "", 0, "failed", (), sys.exc_info()
            )
        plain = logging.LogRecord("prefect.task_runs", logging.ERROR, "", 0, "failed", (), None)
        assert not handler.filter(failing)
        assert handler.filter(plain)
    finally:
        root.removeHandler(handler)
