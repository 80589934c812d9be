"""Bulk only where it pays: the trial's decision from measured rates (the loads are a stand-in
that reports a fixed rate per way; the real loads are proven in test_bulk_choice)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from flows.pipeline import BULK_TRIAL_FIRST, BULK_TRIAL_MAX, bulk_trial
from tasks.report import TargetReport
from tasks.sync.load import BULK_SPREAD_MIN


@dataclass
class Trial:
    rest: list[int]
    chose_bulk: bool
    note: str
    loads: list[tuple[str, list[int]]] = field(default_factory=list)

    def sizes(self) -> list[tuple[str, int]]:
        return [(way, len(batch)) for way, batch in self.loads]


def trial(
    changes: int, bulk_rate: float, single_rate: float, concurrency: int = 1, **confirmed: float
) -> Trial:
    """Run the trial over ``changes`` changes on loads at these rates (changes a second);
    ``confirmed``: the share of each way's changes the target confirms (all by default)."""
    bulk = object()
    loader = SimpleNamespace(bulk=bulk, target=SimpleNamespace(name="t", concurrency=concurrency))
    loads: list[tuple[str, list[int]]] = []

    def load(batch: list[Any]) -> tuple[int, float]:
        way = "bulk" if loader.bulk is bulk else "single"
        loads.append((way, batch))
        rate = bulk_rate if way == "bulk" else single_rate
        return int(len(batch) * confirmed.get(way, 1.0)), len(batch) / rate

    actions = list(range(changes))
    report = TargetReport("t", {})
    rest = bulk_trial(loader, actions, load, report)  # type: ignore[arg-type]
    done = Trial(rest, loader.bulk is bulk, report.notes[-1], loads)
    # every change loaded exactly once, the trial's in the order of the plan, every other
    # change each way (both ways see the same kinds of change), the rest after them
    loaded = [n for _, batch in loads for n in batch]
    assert sorted(loaded) + rest == actions
    assert all(n % 2 == 0 for way, batch in loads if way == "bulk" for n in batch)
    assert all(n % 2 == 1 for way, batch in loads if way == "single" for n in batch)
    return done


@pytest.mark.parametrize(
    ("bulk_rate", "single_rate", "bulk_kept"),
    [(200.0, 500.0, False), (1000.0, 600.0, True)],
    ids=["slow-bulk", "fast-bulk"],
)
def test_a_clear_first_share_ends_the_trial(
    bulk_rate: float, single_rate: float, bulk_kept: bool
) -> None:
    done = trial(10_000, bulk_rate, single_rate)
    assert done.sizes() == [("bulk", BULK_TRIAL_FIRST), ("single", BULK_TRIAL_FIRST)]
    assert len(done.rest) == 10_000 - 2 * BULK_TRIAL_FIRST
    assert done.chose_bulk is bulk_kept
    way = "Bulk requests" if bulk_kept else "one request per change"
    assert done.note == (
        f"Bulk measured on {BULK_TRIAL_FIRST} changes at {bulk_rate:.0f}/s, one request per "
        f"change on {BULK_TRIAL_FIRST} at {single_rate:.0f}/s: {way} for the other "
        f"{len(done.rest)}"
    )


@pytest.mark.parametrize(
    ("bulk_rate", "single_rate"), [(146.0, 210.0), (356.0, 252.0)], ids=["slow", "fast"]
)
def test_rates_as_the_benchmark_targets_show_them_end_the_trial_at_the_first_share(
    bulk_rate: float, single_rate: float
) -> None:
    """1.4 x apart (the slow-Bulk target and scim2-server at 10,000 users): clear enough after
    the first share, whose loser already cost its time; a second would cost 0.5-0.8 s more."""
    done = trial(10_000, bulk_rate, single_rate, concurrency=4)
    assert done.sizes() == [("bulk", 4 * BULK_SPREAD_MIN), ("single", 4 * BULK_SPREAD_MIN)]
    assert done.chose_bulk is (bulk_rate > single_rate)


def test_the_first_share_fills_every_concurrent_bulk_request() -> None:
    """Bulk requests carry at least BULK_SPREAD_MIN operations: a first share of 200 would go
    in two requests against four single requests side by side, and Bulk would look slow."""
    done = trial(10_000, 200.0, 500.0, concurrency=4)
    assert done.sizes() == [("bulk", 4 * BULK_SPREAD_MIN), ("single", 4 * BULK_SPREAD_MIN)]
    assert not done.chose_bulk


def test_close_rates_are_measured_on_the_whole_share() -> None:
    done = trial(10_000, 560.0, 500.0)
    second = BULK_TRIAL_MAX - BULK_TRIAL_FIRST
    assert done.sizes() == [
        ("bulk", BULK_TRIAL_FIRST),
        ("single", BULK_TRIAL_FIRST),
        ("bulk", second),
        ("single", second),
    ]
    assert len(done.rest) == 10_000 - 2 * BULK_TRIAL_MAX
    assert done.chose_bulk
    assert done.note.startswith(f"Bulk measured on {BULK_TRIAL_MAX} changes at 560/s")


def test_a_share_just_above_the_first_step_is_measured_in_two() -> None:
    done = trial(1_000, 520.0, 500.0)  # a quarter: 250, the first step 200, then 50
    assert done.sizes() == [("bulk", 200), ("single", 200), ("bulk", 50), ("single", 50)]
    assert len(done.rest) == 500 and done.note.startswith("Bulk measured on 250 changes")


def test_a_small_load_is_measured_in_one_step() -> None:
    done = trial(450, 100.0, 500.0)
    assert done.sizes() == [("bulk", 112), ("single", 112)]
    assert len(done.rest) == 450 - 224 and not done.chose_bulk


def test_refused_changes_do_not_count_as_speed() -> None:
    """A Bulk endpoint quick to refuse everything must not win the trial."""
    done = trial(10_000, 100_000.0, 500.0, bulk=0.0)
    assert not done.chose_bulk
