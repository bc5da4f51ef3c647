"""The larger youngest GC generation held while runs are going (`_core/_gc.py`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import conveyor
from conveyor._core._gc import RUN_GEN0, RUN_GEN0_MAX, RunGC, gen0_for


@pytest.fixture
def default_thresholds() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield (700, 10, 10)
    finally:
        gc.set_threshold(*before)


def test_a_run_raises_the_first_threshold_and_gives_it_back(
    default_thresholds: tuple[int, int, int],
) -> None:
    """During a run the youngest generation waits for RUN_GEN0 allocations;
    after it the thresholds are what they were."""
    seen: list[tuple[int, int, int]] = []

    async def fn(i: int) -> int:
        seen.append(gc.get_threshold())
        return i

    report = conveyor.run(range(20), fn, concurrency=4)
    assert report.counts["ok"] == 20
    assert set(seen) == {(RUN_GEN0, 10, 10)}
    assert gc.get_threshold() == default_thresholds


def test_nested_holds_restore_once_at_the_last_exit(
    default_thresholds: tuple[int, int, int],
) -> None:
    """Two runs at once: the first to end keeps the larger threshold for the
    other; enter and exit are idempotent per hold."""
    a, b = RunGC(), RunGC()
    a.enter()
    b.enter()
    a.enter()  # a second enter of one hold counts once
    assert gc.get_threshold()[0] == RUN_GEN0
    a.exit()
    a.exit()
    assert gc.get_threshold()[0] == RUN_GEN0
    b.exit()
    assert gc.get_threshold() == default_thresholds


def test_thresholds_changed_during_a_run_or_set_higher_are_left_alone(
    default_thresholds: tuple[int, int, int],
) -> None:
    """A threshold someone else set meanwhile stays; a higher one or 0 (collection
    off) is never lowered."""
    hold = RunGC()
    hold.enter()
    gc.set_threshold(1234, 5, 5)
    hold.exit()
    assert gc.get_threshold() == (1234, 5, 5)
    for mine in ((50_000, 10, 10), (0, 10, 10)):
        gc.set_threshold(*mine)
        hold.enter()
        assert gc.get_threshold() == mine
        hold.exit()
        assert gc.get_threshold() == mine


def test_the_threshold_grows_with_the_concurrency(
    default_thresholds: tuple[int, int, int],
) -> None:
    """At concurrency 1,000 the young live set is ~75,000 containers: the
    threshold is above it (`gen0_for`), bounded both ways."""
    assert gen0_for(1) == RUN_GEN0
    assert gen0_for(100) == RUN_GEN0
    assert gen0_for(1000) == 100_000
    assert gen0_for(100_000) == RUN_GEN0_MAX
    seen: list[int] = []

    async def fn(i: int) -> int:
        seen.append(gc.get_threshold()[0])
        return i

    report = conveyor.run(range(20), fn, concurrency=1000)
    assert report.counts["ok"] == 20
    assert set(seen) == {100_000}
    assert gc.get_threshold() == default_thresholds


def test_runs_of_different_concurrency_at_once_hold_the_largest(
    default_thresholds: tuple[int, int, int],
) -> None:
    """A later, wider run raises the threshold further; the narrower one ending
    does not lower it; the last exit gives back what the first found."""
    small, wide = RunGC(10), RunGC(2000)
    small.enter()
    assert gc.get_threshold()[0] == RUN_GEN0
    wide.enter()
    assert gc.get_threshold()[0] == 200_000
    small.exit()
    assert gc.get_threshold()[0] == 200_000
    wide.exit()
    assert gc.get_threshold() == default_thresholds
    # A user's threshold between the two: the wide run raises it, and gives it back.
    gc.set_threshold(50_000, 10, 10)
    small.enter()
    assert gc.get_threshold()[0] == 50_000
    wide.enter()
    assert gc.get_threshold()[0] == 200_000
    wide.exit()
    small.exit()
    assert gc.get_threshold() == (50_000, 10, 10)
