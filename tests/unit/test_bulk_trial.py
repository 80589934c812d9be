"""Bulk only where it pays: the trial's decision from measured rates (the loads are a stand-in
that reports a fixed rate per way; the real loads are proven in test_bulk_choice)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from flows.pipeline import BULK_TRIAL_FIRST, BULK_TRIAL_MAX, bulk_trial
from tasks.report import TargetReport


def trial(changes: int, bulk_rate: float, single_rate: float) -> tuple[list[Any], Any, list]:
    """Run the trial over ``changes`` changes on loads at these rates (changes a second);
    return the rest, the loader after it, and the loads made (way, changes)."""
    bulk = object()
    loader = SimpleNamespace(bulk=bulk, target=SimpleNamespace(name="t"))
    loads: list[tuple[str, int]] = []

    def load(batch: list[Any]) -> tuple[int, float]:
        way = "bulk" if loader.bulk is bulk else "single"
        loads.append((way, len(batch)))
        return len(batch), len(batch) / (bulk_rate if way == "bulk" else single_rate)

    report = TargetReport("t", {})
    rest = bulk_trial(loader, list(range(changes)), load, report)  # type: ignore[arg-type]
    loader.chose_bulk = loader.bulk is bulk
    loader.note = report.notes[-1]
    return rest, loader, loads


@pytest.mark.parametrize(
    ("bulk_rate", "single_rate", "bulk_kept"),
    [(200.0, 500.0, False), (1000.0, 600.0, True)],
    ids=["slow-bulk", "fast-bulk"],
)
def test_a_clear_first_share_ends_the_trial(
    bulk_rate: float, single_rate: float, bulk_kept: bool
) -> None:
    rest, loader, loads = trial(10_000, bulk_rate, single_rate)
    assert loads == [("bulk", BULK_TRIAL_FIRST), ("single", BULK_TRIAL_FIRST)]
    assert len(rest) == 10_000 - 2 * BULK_TRIAL_FIRST
    assert loader.chose_bulk is bulk_kept
    way = "Bulk requests" if bulk_kept else "one request per change"
    assert loader.note == (
        f"Bulk measured on {BULK_TRIAL_FIRST} changes at {bulk_rate:.0f}/s, one request per "
        f"change on {BULK_TRIAL_FIRST} at {single_rate:.0f}/s: {way} for the other {len(rest)}"
    )


def test_close_rates_are_measured_on_the_whole_share() -> None:
    rest, loader, loads = trial(10_000, 560.0, 500.0)
    second = BULK_TRIAL_MAX - BULK_TRIAL_FIRST
    assert loads == [
        ("bulk", BULK_TRIAL_FIRST),
        ("single", BULK_TRIAL_FIRST),
        ("bulk", second),
        ("single", second),
    ]
    assert len(rest) == 10_000 - 2 * BULK_TRIAL_MAX
    assert loader.chose_bulk
    assert loader.note.startswith(f"Bulk measured on {BULK_TRIAL_MAX} changes at 560/s")


def test_a_small_load_is_measured_in_one_step() -> None:
    rest, loader, loads = trial(450, 100.0, 500.0)
    assert loads == [("bulk", 112), ("single", 112)]
    assert len(rest) == 450 - 224 and not loader.chose_bulk


def test_refused_changes_do_not_count_as_speed() -> None:
    """A Bulk endpoint quick to refuse everything must not win the trial."""
    bulk = object()
    loader = SimpleNamespace(bulk=bulk, target=SimpleNamespace(name="t"))

    def load(batch: list[Any]) -> tuple[int, float]:
        if loader.bulk is bulk:
            return 0, 0.01  # every change refused at once
        return len(batch), len(batch) / 500

    bulk_trial(loader, list(range(10_000)), load, TargetReport("t", {}))  # type: ignore[arg-type]
    assert loader.bulk is None
