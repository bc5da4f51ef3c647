"""Resource monitoring while a run goes on (seed 003): the sampler's policy on a fake
clock, and `conveyor.Monitor` sampling this real process (psutil), the user's gauges,
nvidia-smi's absence said as it is, limits that stop the run live, the progress snapshot
and the live views.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from typing import TYPE_CHECKING

import pytest

import conveyor
from _procs import eventually
from conveyor._core._sampler import SamplerPolicy
from conveyor._monitor._gpu import parse_nvidia_smi, read_gpus
from conveyor.cli._display import format_line, snapshot_rows

if TYPE_CHECKING:
    from pathlib import Path

MB = 2**20


# ---- the policy, on a fake clock ----------------------------------------------------


def test_samples_fall_due_every_interval_on_the_injected_clock() -> None:
    """The first sample is due at once, the next `interval` later; a late sample
    does not cause a burst of catch-up samples."""
    clock = conveyor.FakeClock()
    policy = SamplerPolicy(interval=2.0, started=clock.now())
    assert policy.due(clock.now())
    policy.record(clock.now(), {"x": 1})
    assert not policy.due(clock.now()) and policy.wait(clock.now()) == pytest.approx(2.0)
    clock.advance(1.5)
    assert not policy.due(clock.now())
    clock.advance(10)  # the driver was late
    assert policy.due(clock.now())
    policy.record(clock.now(), {"x": 2})
    assert not policy.due(clock.now())  # next one an interval after this one
    assert policy.wait(clock.now()) == pytest.approx(2.0)


def test_a_limit_breaches_after_patience_samples_in_a_row_and_once() -> None:
    """Above the limit twice then below resets the count; three in a row breach
    (patience=3); later samples above it report nothing more."""
    clock = conveyor.FakeClock()
    policy = SamplerPolicy(interval=1.0, limits={"db": 8}, patience=3, started=clock.now())
    seen = []
    for v in (9, 9, 5, 9, 9, 10, 12):
        seen.append(policy.record(clock.now(), {"db": v}))
        clock.advance(1)
    assert seen[:5] == [None] * 5
    breach = seen[5]
    assert breach is not None and (breach.metric, breach.value, breach.limit) == ("db", 10, 8)
    assert breach.samples == 3 and breach.at == pytest.approx(5.0)
    assert seen[6] is None and policy.breach is breach
    assert "db = 10 > 8 for 3 samples in a row" in breach.message()


def test_a_floor_breaches_below_it() -> None:
    """seed 003's "system memory < 4 GB available": a floor breaches when the value
    drops under it, and its message says so with `<`."""
    policy = SamplerPolicy(interval=1.0, floors={"system_memory_available_mb": 4096})
    assert policy.record(0.0, {"system_memory_available_mb": 8000}) is None
    breach = policy.record(1.0, {"system_memory_available_mb": 3000})
    assert breach is not None and breach.floor
    assert "system_memory_available_mb = 3,000 MB < 4,096 MB" in breach.message()
    assert policy.to_dict()["floors"] == {"system_memory_available_mb": 4096}


def test_a_seed_003_gpu_reading_above_the_limit_breaches() -> None:
    """The seed's GPU line (4949/6144 MB = 80.6%) under a 95% limit is fine, and
    at 5900 MB (96%) it breaches on gpu_memory_percent."""
    policy = SamplerPolicy(interval=1.0, limits={"gpu_memory_percent": 95})
    for line, expect in (("0, RTX, 45, 4949, 6144", None), ("0, RTX, 90, 5900, 6144", 96.0)):
        (gpu,) = parse_nvidia_smi(line)
        got = policy.record(1.0, {"gpu_memory_percent": gpu.memory_percent})
        assert (None if got is None else round(got.value)) == expect


def test_history_stays_bounded_and_spans_the_whole_run() -> None:
    """10,000 samples kept in at most `keep` points that still span start to end,
    with the mean preserved; min/max/mean per metric are exact."""
    policy = SamplerPolicy(interval=1.0, keep=64)
    for i in range(10_000):
        policy.record(float(i), {"rss": float(i % 100), **({"g": 1.0} if i >= 5000 else {})})
    times, series = policy.series()
    assert len(times) <= 64
    assert times[0] < 200 and times[-1] > 9800
    d = policy.to_dict()
    assert d["metrics"]["rss"] == {"min": 0.0, "mean": 49.5, "max": 99.0, "last": 99.0}
    assert d["samples"] == 10_000
    assert series["g"][0] is None and series["g"][-1] == 1.0  # not sampled at first


# ---- the real probes ----------------------------------------------------------------


def test_the_process_memory_a_task_holds_shows_in_the_samples() -> None:
    """A task holding 80 MB shows in process_rss_mb (real RSS through psutil): the
    peak is at least 60 MB above the lowest sample."""
    sampled = threading.Event()

    def probe() -> int:
        sampled.set()
        return 0

    def hold(_: int) -> int:
        block = b"x" * (80 * MB)  # written bytes: resident, not just reserved
        sampled.clear()
        assert eventually(sampled.is_set, 20)  # a sample taken while we hold it
        sampled.clear()
        assert eventually(sampled.is_set, 20)
        return len(block)

    monitor = conveyor.Monitor(interval=0.05, gauges={"probe": probe})
    report = conveyor.run([0], hold, monitor=monitor)
    rss = report.extra["resources"]["metrics"]["process_rss_mb"]
    assert rss["max"] - rss["min"] >= 60, rss


def test_a_busy_task_shows_in_the_process_cpu() -> None:
    """A thread spinning for several samples shows as process CPU time (> 5%)."""
    count = 0
    lock = threading.Lock()

    def probe() -> int:
        nonlocal count
        with lock:
            count += 1
        return count

    def spin(_: int) -> int:
        start = count
        n = 0
        deadline = time.monotonic() + 20  # bounded even if sampling stopped
        while count < start + 4 and time.monotonic() < deadline:
            n += 1
        return n

    report = conveyor.run([0], spin, monitor=conveyor.Monitor(interval=0.05, gauges={"n": probe}))
    cpu = report.extra["resources"]["metrics"]["process_cpu_percent"]
    assert cpu["max"] > 5, cpu


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_without_nvidia_smi_the_gpu_is_reported_absent_not_invented(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No nvidia-smi here: no gpu metric at all, the report says why, and a GPU
    limit is said to be unenforceable (the run is not stopped by a made-up value)."""
    assert isinstance(read_gpus(), str)
    monitor = conveyor.Monitor(interval=0.05, limits={"gpu_memory_percent": 95})
    with caplog.at_level(logging.WARNING, logger="conveyor"):
        report = conveyor.run(range(3), str, monitor=monitor)
    res = report.extra["resources"]
    assert report.ok
    assert not any(name.startswith("gpu") for name in res["metrics"])
    assert "nvidia-smi not found" in res["unavailable"]["gpu"]
    assert "cannot be enforced" in caplog.text
    assert "not sampled (gpu): nvidia-smi not found" in report.summary()


def test_a_named_nvidia_smi_that_is_missing_is_reported() -> None:
    """A nvidia_smi path that does not exist is named in the reason."""
    assert read_gpus("/nonexistent/nvidia-smi") == (
        "/nonexistent/nvidia-smi not found: no NVIDIA GPU to sample"
    )


def test_a_gauge_over_its_limit_stops_the_run_live_and_a_resume_finishes(
    tmp_path: Path,
) -> None:
    """seed 003's "DB connections > 80% of max": a gauge counting open connections
    over its limit stops the run at once (ResourceLimitExceeded, report attached,
    in-flight items cancelled); the same run resumed without the limit finishes
    the rest and reruns nothing that finished."""
    open_now = 0
    journal = tmp_path / "j.db"
    hold = True

    async def job(i: int) -> int:
        nonlocal open_now
        open_now += 1
        try:
            # The first two finish; the rest hold their connection (until cancelled).
            await asyncio.sleep(30 if hold and i >= 2 else 0)
        finally:
            open_now -= 1
        return i

    monitor = conveyor.Monitor(interval=0.05, gauges={"db_connections": lambda: open_now},
                               limits={"db_connections": 3})  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(conveyor.ResourceLimitExceeded) as info:
        conveyor.run(range(8), job, concurrency=5, journal=journal, monitor=monitor)
    assert time.monotonic() - t0 < 25  # stopped, not waited out
    err = info.value
    assert err.metric == "db_connections" and err.limit == 3 and err.value > 3
    report = err.report
    assert report is not None and report.counts["cancelled"] >= 1
    assert report.extra["resources"]["breach"]["metric"] == "db_connections"
    assert "resource limit hit: db_connections" in report.summary()

    hold = False
    again = conveyor.run(range(8), job, journal=journal)
    assert again.ok and again.values() == list(range(8))
    assert again.extra["resumed"] == report.counts["ok"]


def test_a_gauge_that_raises_is_reported_and_the_run_goes_on() -> None:
    """A broken gauge is skipped and named in `unavailable`; items are untouched."""

    def broken() -> float:
        raise RuntimeError("pool closed")

    report = conveyor.run(range(4), str, monitor=conveyor.Monitor(gauges={"pool": broken}))
    assert report.ok
    assert report.extra["resources"]["unavailable"]["gauge pool"].startswith("raised RuntimeError")


def test_dict_gauges_are_named_by_their_keys() -> None:
    """A gauge returning {"active": 3, "idle": 7} gives pool.active and pool.idle."""
    report = conveyor.run(
        [1], str, monitor=conveyor.Monitor(gauges={"pool": lambda: {"active": 3, "idle": 7}})
    )
    metrics = report.extra["resources"]["metrics"]
    assert metrics["pool.active"]["max"] == 3 and metrics["pool.idle"]["max"] == 7


def test_snapshots_carry_the_latest_sample_and_the_live_views_show_it() -> None:
    """on_progress snapshots hold `resources` (also in to_dict); the plain line and
    the live panel's rows show memory and the gauges."""
    snaps: list[conveyor.ProgressSnapshot] = []
    gate = threading.Event()

    def job(i: int) -> int:
        assert eventually(lambda: any(s.resources for s in snaps), 20)
        gate.set()
        return i

    conveyor.run(
        range(2),
        job,
        monitor=conveyor.Monitor(interval=0.05, gauges={"db_in_use": lambda: 4}),
        on_progress=snaps.append,
        progress_interval=0.05,
    )
    snap = next(s for s in snaps if s.resources)
    assert snap.resources["db_in_use"] == 4 and snap.resources["process_rss_mb"] > 1
    assert snap.to_dict()["resources"]["db_in_use"] == 4
    assert "rss " in format_line(snap) and "db_in_use 4" in format_line(snap)
    rows = dict(snapshot_rows(snap))
    assert "db_in_use 4" in rows["resources"] and " MB" in rows["resources"]


def test_monitor_options_are_checked() -> None:
    """Bad names, non-callables, a zero interval, a non-number limit: ConfigError;
    monitor=True is the default Monitor; Ray refuses a monitor."""
    with pytest.raises(conveyor.ConfigError, match="gauges"):
        conveyor.Monitor(gauges={"db in use": int})
    with pytest.raises(conveyor.ConfigError, match="gauges"):
        conveyor.Monitor(gauges={"db": 3})  # type: ignore[dict-item]
    with pytest.raises(conveyor.ConfigError, match="interval"):
        conveyor.Monitor(interval=0)
    with pytest.raises(conveyor.ConfigError, match="limits"):
        conveyor.Monitor(limits={"db": "high"})  # type: ignore[dict-item]
    with pytest.raises(conveyor.ConfigError, match="monitor"):
        conveyor.run([1], str, monitor="yes")
    with pytest.raises(conveyor.ConfigError, match="local backend"):
        conveyor.run([1], str, backend="ray", monitor=True)
    report = conveyor.run([1], str, monitor=True)
    assert report.extra["resources"]["samples"] >= 1


def test_without_the_system_probe_the_process_is_still_read_from_the_os() -> None:
    """system=False (as without psutil): RSS from /proc and CPU time from os.times(),
    no system_ or children_ figure, nothing claimed unavailable that was not asked."""
    monitor = conveyor.Monitor(system=False, gpu=False)
    first = monitor.sample()
    second = monitor.sample()
    assert first["process_rss_mb"] > 1 and "process_cpu_percent" in second
    assert not any(k.startswith(("system_", "children_", "gpu")) for k in second)
    assert monitor.unavailable == {}
