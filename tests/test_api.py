"""The public surface: exports, sync/async twins, streams, running loops, Ctrl+C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

import conveyor
from conveyor import Status

if TYPE_CHECKING:
    from pathlib import Path

PUBLIC = {
    "AggregateExecutionError", "AsyncExecutor", "AsyncStream", "Attempt", "BatchInfo",
    "BatchReport", "Breaker", "Clock", "ConfigError", "ConveyorError", "ErrorInfo", "FakeClock",
    "FatalError", "InputError", "Interrupted", "JournalError", "JournalLocked", "JournalMismatch",
    "Memo", "MemoStats", "Monitor", "ResourceLimitExceeded", "InvalidAnswer", "Issue", "Reask",
    "SchemaInvalid", "ProgressCallback", "ProgressSnapshot", "QuotaExceeded", "RateLimitHint",
    "Result",
    "RetryPolicy", "ConfigurationError", "ExecutionContext", "IsolationLevel",
    "ParallelTaskExecutor", "PreflightFailed", "TaskProgressCallback", "TaskResult",
    "RetryableError", "SequentialExecutor", "Status", "Stream", "TaskExecutor", "ThreadExecutor",
    "Usage", "__version__", "arun", "astream", "current_attempt", "default_retryable",
    "report_cached", "report_limits", "report_usage", "run", "stream",
}  # fmt: skip


def test_public_names_say_conveyor() -> None:
    """Reprs and tracebacks name `conveyor.X`, not the private module defining it."""
    for name in ("ConfigError", "JournalMismatch", "ProgressSnapshot", "FakeClock", "Result"):
        assert getattr(conveyor, name).__module__ == "conveyor", name
    assert repr(conveyor.Status.OK).startswith("<Status.")
    assert conveyor.default_retryable.__module__ == "conveyor"


def test_public_namespace_is_exactly_all() -> None:
    """`__all__` is the whole public surface, sorted, and every name resolves."""
    assert set(conveyor.__all__) == PUBLIC
    assert list(conveyor.__all__) == sorted(conveyor.__all__)
    for name in conveyor.__all__:
        assert hasattr(conveyor, name), name
    public_attrs = {n for n in dir(conveyor) if not n.startswith("_")}
    # Subpackages/modules may be imported attributes; nothing else leaks.
    leaked = {n for n in public_attrs - PUBLIC if not isinstance(getattr(conveyor, n), type(os))}
    assert leaked == set()


def test_every_error_derives_from_conveyor_error() -> None:
    """One base for every error conveyor raises on purpose."""
    for name in conveyor.__all__:
        obj = getattr(conveyor, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, conveyor.ConveyorError), name
    # Not a KeyboardInterrupt: asyncio would tear the event loop down on one.
    assert not issubclass(conveyor.Interrupted, KeyboardInterrupt)


def test_run_inside_a_running_event_loop() -> None:
    """run() called from code already inside a running loop (Jupyter) works:
    it runs on a helper thread with its own loop instead of deadlocking."""

    async def fn(x: int) -> int:
        await asyncio.sleep(0.001)
        return x + 1

    async def notebook_cell() -> conveyor.BatchReport:
        return conveyor.run(range(20), fn, concurrency=4)

    report = asyncio.run(notebook_cell())
    assert report.values() == [x + 1 for x in range(20)]


def test_stream_inside_a_running_event_loop() -> None:
    """stream() also works under a running loop."""

    async def cell() -> list[int]:
        return sorted(r.value for r in conveyor.stream(range(10), lambda x: x * 3))

    assert asyncio.run(cell()) == [x * 3 for x in range(10)]


def test_stream_yields_in_completion_order_with_index_and_key() -> None:
    """stream() yields as items finish (not input order), each with index and
    key; the report is available after the end."""

    async def fn(x: int) -> int:
        await asyncio.sleep(0.05 if x == 0 else 0.001 * x)
        return x

    s = conveyor.stream(range(8), fn, concurrency=8, key=lambda x: f"k{x}")
    got = list(s)
    assert got[-1].index == 0  # the slow first item finishes last
    assert sorted(r.index for r in got) == list(range(8))
    assert all(r.key == f"k{r.index}" for r in got)
    assert s.report is not None and s.report.counts["ok"] == 8
    assert s.report.results == []  # streams do not keep results


async def test_astream_and_arun() -> None:
    """The async twins give the same results on the caller's loop."""

    async def fn(x: int) -> int:
        return x * x

    report = await conveyor.arun(range(5), fn)
    assert report.values() == [0, 1, 4, 9, 16]
    seen = []
    async with conveyor.astream(range(5), fn) as s:
        async for r in s:
            seen.append(r.value)
    assert sorted(seen) == [0, 1, 4, 9, 16]


def test_stream_closed_early_cancels_in_flight() -> None:
    """Leaving a stream early cancels the rest; nothing keeps running."""
    started = 0
    cancelled = 0

    async def fn(x: int) -> int:
        nonlocal started, cancelled
        started += 1
        try:
            await asyncio.sleep(0 if x == 0 else 60)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return x

    with conveyor.stream(range(1000), fn, concurrency=10) as s:
        first = next(s)
    assert first.index == 0
    assert started <= 12
    assert cancelled == started - 1  # every other started item was cancelled and awaited


def test_sync_and_async_functions_both_supported() -> None:
    """A sync function runs on threads, an async one on the loop."""
    import threading

    main = threading.get_ident()

    def sync_fn(x: int) -> bool:
        return threading.get_ident() != main

    async def async_fn(x: int) -> bool:
        return threading.get_ident() == main

    assert all(conveyor.run(range(4), sync_fn).values())
    assert all(conveyor.run(range(4), async_fn).values())


def test_report_json_has_seed_002_keys() -> None:
    """to_json() carries the batch response keys seed 002 shows."""
    report = conveyor.run(["a", "b", "c"], lambda s: s.upper(), batch_id="batch_test_001")
    d = json.loads(report.to_json())
    for key in ("batch_id", "total_items", "successful", "failed", "total_duration_seconds",
                "avg_duration_per_item", "first_result_seconds", "results"):  # fmt: skip
        assert key in d, key
    assert d["batch_id"] == "batch_test_001"
    assert d["successful"] == 3 and d["failed"] == 0
    assert [r["value"] for r in d["results"]] == ["A", "B", "C"]
    assert d["first_result_seconds"] is not None and d["first_result_seconds"] >= 0


_CTRL_C_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, conveyor

    async def fn(i):
        if i == 0:
            print("READY", flush=True)
        await asyncio.sleep(SLEEP)
        return i

    try:
        conveyor.run(range(1000), fn, concurrency=5, grace=GRACE)
        print(json.dumps({"finished": True}))
    except conveyor.Interrupted as exc:
        rep = exc.report
        print(json.dumps({"counts": rep.counts, "interrupted": rep.interrupted,
                          "message": str(exc)}), flush=True)
        sys.exit(130)
    """
)


def _run_and_interrupt(tmp_path: Path, sleep: float, grace: float, presses: int) -> dict[str, Any]:
    script = tmp_path / "ctrl_c.py"
    script.write_text(_CTRL_C_SCRIPT.replace("SLEEP", str(sleep)).replace("GRACE", str(grace)))
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    line = proc.stdout.readline()
    assert line.strip() == "READY"  # item 0 started: the first five are in flight
    proc.send_signal(signal.SIGINT)
    if presses > 1:
        # Wait until the first press was handled (signals do not queue).
        for _ in range(50):
            if "stopping" in proc.stderr.readline():
                break
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_ctrl_c_lets_in_flight_finish_within_grace(tmp_path: Path) -> None:
    """First Ctrl+C: no new items, in-flight items finish (grace > their
    time), and Interrupted carries a report saying which finished."""
    data = _run_and_interrupt(tmp_path, sleep=0.5, grace=10, presses=1)
    counts = data["counts"]
    assert data["interrupted"] is True
    assert counts["ok"] == 5  # the five in flight finished
    assert counts["cancelled"] == 0
    assert "interrupted" in data["message"]


def test_second_ctrl_c_aborts_at_once(tmp_path: Path) -> None:
    """A second Ctrl+C cancels in-flight items immediately."""
    t = time.monotonic()
    data = _run_and_interrupt(tmp_path, sleep=30, grace=30, presses=2)
    assert time.monotonic() - t < 15
    assert data["counts"]["cancelled"] == 5
    assert data["counts"]["ok"] == 0


def test_empty_input() -> None:
    """No items: an empty, well-formed report."""
    rep = conveyor.run([], str)
    assert rep.total == 0 and rep.results == [] and rep.first_result_seconds is None
    assert all(v == 0 for v in rep.counts.values())


def test_status_values_are_the_documented_strings() -> None:
    """Status values are stable strings used in JSON and the journal."""
    assert [s.value for s in Status] == ["ok", "failed", "timed_out", "cancelled", "skipped"]


def test_ctrl_c_while_waiting_on_a_silent_source_does_not_hang() -> None:
    """Stopping while the producer waits on an async source that never yields
    again (`tail -f |`) ends the run instead of hanging."""

    async def main() -> conveyor.BatchReport:
        never = asyncio.Event()

        async def source():  # type: ignore[no-untyped-def]
            yield 1
            await never.wait()  # like a pipe with no more input, ever
            yield 2

        async def fn(x: int) -> int:
            return x

        s = conveyor.astream(source(), fn)
        first = await s.__anext__()
        assert first.value == 1
        s.stop("interrupt")
        with pytest.raises(conveyor.Interrupted) as ei:
            await asyncio.wait_for(s.__anext__(), 5)
        return ei.value.report

    report = asyncio.run(main())
    assert report.interrupted


def test_journal_resumes_generic_items_by_key(tmp_path: Path) -> None:
    """run(..., journal=, key=): a second run does not call fn again for keys
    already done (their stored results come back, in input order), but does
    re-run the items that failed."""
    calls: list[str] = []
    fail_once = {"c"}

    def fn(item: dict[str, str]) -> str:
        calls.append(item["id"])
        if item["id"] in fail_once:
            raise ValueError("first time fails")
        return item["id"].upper()

    items = [{"id": x} for x in "abcde"]
    db = tmp_path / "run.db"
    first = conveyor.run(items, fn, journal=db, key=lambda d: d["id"], retries=0)
    assert first.counts["ok"] == 4 and first.counts["failed"] == 1
    fail_once.clear()
    calls.clear()
    second = conveyor.run(items, fn, journal=db, key=lambda d: d["id"], retries=0)
    # Failed items are terminal in the journal: resumed as failed, not re-run.
    assert calls == []
    assert [r.value for r in second] == ["A", "B", None, "D", "E"]
    assert second.extra["resumed"] == 5
    assert all(r.meta.get("resumed") for r in second)


def test_journal_extends_a_partial_run_and_refuses_another_function(tmp_path: Path) -> None:
    """Items done by an earlier run are not run again; a different function
    against the same journal is refused (journal_force=True accepts it)."""
    db = tmp_path / "p.db"
    seen: list[int] = []

    def double(x: int) -> int:
        seen.append(x)
        return x * 2

    conveyor.run(range(3), double, journal=db)
    seen.clear()
    report = conveyor.run(range(6), double, journal=db)
    assert sorted(seen) == [3, 4, 5]
    assert report.values() == [0, 2, 4, 6, 8, 10]
    with pytest.raises(conveyor.ConveyorError, match="different run"):
        conveyor.run(range(6), str, journal=db)
    assert conveyor.run(range(6), str, journal=db, journal_force=True).total == 6


def test_journal_option_is_checked() -> None:
    """A journal that is not a path is refused before anything runs."""
    with pytest.raises(conveyor.ConfigError, match="journal"):
        conveyor.run([1], str, journal=42)


def test_stream_memory_does_not_grow_with_the_input() -> None:
    """Invariant 6: streaming 10x more items does not take 10x more memory;
    the peak is bounded by concurrency and buffers, not by input size."""
    import tracemalloc

    async def fn(x: int) -> int:
        return x

    def peak(n: int) -> int:
        tracemalloc.start()
        try:
            count = sum(1 for _ in conveyor.stream(iter(range(n)), fn, concurrency=100))
            assert count == n
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    from conveyor._core._report import _KEEP

    small, large = peak(3_000), peak(30_000)
    # The latency reservoir is a bounded buffer too (up to _KEEP doubles, and
    # its copy while the array grows): allowed on top.
    assert large < 2 * small + 1_000_000 + 16 * _KEEP, (small, large)


def test_rerun_failed_runs_only_what_failed(tmp_path: Path) -> None:
    """rerun="failed" with the same journal: ok items come from the journal
    (0 calls), failed and timed-out ones run again (seed 002's partial re-run)."""
    db = tmp_path / "j.db"
    calls: list[int] = []
    broken = {2, 5}

    def fn(i: int) -> int:
        calls.append(i)
        if i in broken:
            raise ConnectionError(f"item {i} failed")
        if i == 7:
            time.sleep(0.5)
        return i * 10

    first = conveyor.run(range(8), fn, journal=db, retries=0, timeout=0.2)
    assert (first.counts["ok"], first.counts["failed"], first.counts["timed_out"]) == (5, 2, 1)
    calls.clear()
    broken.clear()
    again = conveyor.run(range(8), fn, journal=db, retries=0, timeout=1, rerun="failed")
    assert sorted(calls) == [2, 5, 7]
    assert again.counts["ok"] == 8
    assert [r.value for r in again] == [i * 10 for i in range(8)]
    assert again.extra["resumed"] == 5
    calls.clear()
    third = conveyor.run(range(8), fn, journal=db, rerun="failed")
    assert calls == [] and third.counts["ok"] == 8


def test_rerun_needs_a_journal_and_a_known_status(tmp_path: Path) -> None:
    with pytest.raises(conveyor.ConfigError, match="journal"):
        conveyor.run([1], str, rerun="failed")
    with pytest.raises(conveyor.ConfigError, match="rerun"):
        conveyor.run([1], str, journal=tmp_path / "j.db", rerun="broken")


def test_cli_status_and_retry_on_a_python_journal(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from conveyor.cli._main import main

    db = tmp_path / "j.db"
    conveyor.run(range(3), str, journal=db)
    out = CliRunner().invoke(main, ["status", str(db)])
    assert out.exit_code == 0, out.output
    assert "input None" not in out.output and "input: Python items" in out.output
    res = CliRunner().invoke(main, ["retry", str(db)])
    assert res.exit_code != 0
    assert "rerun='failed'" in res.output


def test_preflight_checks_block_the_run_before_any_item() -> None:
    calls: list[int] = []

    def db_reachable() -> str:
        return "no connection to db at :5432"

    async def queue_ok() -> None:
        return None

    with pytest.raises(conveyor.PreflightFailed, match="no connection to db") as err:
        conveyor.run([1, 2], calls.append, preflight=[queue_ok, db_reachable])
    assert calls == []
    assert [c.status for c in err.value.checks] == ["ok", "fail"]
    report = conveyor.run([1, 2], calls.append, preflight=[queue_ok, lambda: True])
    assert report.counts["ok"] == 2
    with pytest.raises(conveyor.ConfigError, match="preflight"):
        conveyor.run([1], str, preflight=["not a function"])


@pytest.mark.parametrize("journaled", [False, True])
async def test_preflight_blocks_a_ray_run_too(tmp_path: Path, journaled: bool) -> None:
    """preflight= with backend="ray" runs before Ray starts (it was silently ignored)."""
    calls: list[int] = []
    journal = {"journal": tmp_path / "j.db"} if journaled else {}
    with pytest.raises(conveyor.PreflightFailed, match="db is down"):
        await conveyor.arun(
            [1], calls.append, backend="ray", preflight=[lambda: "db is down"], **journal
        )
    with pytest.raises(conveyor.PreflightFailed, match="db is down"):
        conveyor.run([1], calls.append, backend="ray", preflight=[lambda: "db is down"], **journal)
    assert calls == []


class _NotAnException(BaseException):
    """Like pytest's fail()/skip() outcomes or gevent's GreenletExit."""


@pytest.mark.parametrize("is_async", [False, True])
def test_base_exception_from_fn_is_a_failed_result(is_async: bool) -> None:
    """A BaseException subclass raised by fn fails its item; nothing vanishes."""

    def sync_fn(x: int) -> int:
        if x == 2:
            raise _NotAnException("boom")
        return x

    async def async_fn(x: int) -> int:
        return sync_fn(x)

    rep = conveyor.run(range(5), async_fn if is_async else sync_fn, retries=2)
    assert len(rep.results) == 5
    assert rep.results[2].status is Status.FAILED
    assert rep.results[2].attempts == 1  # not retried
    assert rep.results[2].error is not None and "_NotAnException" in rep.results[2].error.type
    assert sum(r.ok for r in rep.results) == 4


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("is_async", [False, True])
def test_keyboard_interrupt_inside_fn_stops_like_ctrl_c(exc: type, is_async: bool) -> None:
    """KeyboardInterrupt/SystemExit inside fn: the run stops as on Ctrl+C,
    Interrupted carries a report, and every item has a result."""

    def sync_fn(x: int) -> int:
        if x == 3:
            raise exc()
        return x

    async def async_fn(x: int) -> int:
        return sync_fn(x)

    with pytest.raises(conveyor.Interrupted) as info:
        conveyor.run(range(20), async_fn if is_async else sync_fn, concurrency=1)
    rep = info.value.report
    assert rep is not None
    # As on Ctrl+C: no new items admitted, every admitted item has a result.
    assert [r.index for r in rep.results] == [0, 1, 2, 3]
    assert rep.results[3].status is Status.CANCELLED
    assert all(r.ok for r in rep.results[:3])


def test_keyboard_interrupt_inside_a_callback_stops_like_ctrl_c() -> None:
    def on_result(r: Any) -> None:
        if r.index == 1:
            raise KeyboardInterrupt

    with pytest.raises(conveyor.Interrupted) as info:
        conveyor.run(range(10), str, concurrency=1, on_result=on_result)
    rep = info.value.report
    assert rep is not None
    assert rep.interrupted
    assert 2 <= len(rep.results) < 10
    assert [r.index for r in rep.results] == list(range(len(rep.results)))


def test_async_fn_swallowing_cancellation_still_times_out() -> None:
    """An async fn that swallows CancelledError cannot hang the run past `timeout=`."""

    async def stubborn(x: int) -> int:
        if x == 1:
            for _ in range(100):
                try:
                    await asyncio.sleep(0.1)
                except asyncio.CancelledError:  # swallowed on purpose
                    continue
        return x

    t = time.monotonic()
    rep = conveyor.run(range(3), stubborn, timeout=0.3, retries=0)
    assert time.monotonic() - t < 5
    assert rep.results[1].status is Status.TIMED_OUT
    assert rep.results[0].ok and rep.results[2].ok


def test_a_task_ignoring_cancellation_is_closed_with_the_loop() -> None:
    """The abandoned attempt of a cancellation-swallowing fn is closed when the run's
    loop closes (its finally runs before run() returns), and asyncio's "Task was
    destroyed but it is pending!" is not printed at interpreter exit (#12)."""
    code = textwrap.dedent("""
        import asyncio, conveyor
        async def stubborn(x):
            try:
                for _ in range(100):
                    try:
                        await asyncio.sleep(0.1)
                    except asyncio.CancelledError:
                        continue
            finally:
                print("closed", flush=True)
        conveyor.run([1], stubborn, timeout=0.2, retries=0)
        print("returned", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["closed", "returned"], done.stdout
    assert "Task was destroyed" not in done.stderr, done.stderr
    assert "ignored cancellation" in done.stderr


def test_a_slow_items_generator_does_not_stall_in_flight_items() -> None:
    """The generator blocks (on a thread event) until item 0 has finished:
    pulled on the event loop, it would stall item 0 and never get its event;
    pulled beside the loop, item 0 finishes and the generator goes on (#12.14)."""
    done0 = threading.Event()
    stalled = []

    def items() -> Any:
        yield 0
        stalled.append(not done0.wait(timeout=5))
        yield 1

    async def fn(x: int) -> int:
        await asyncio.sleep(0.01)
        if x == 0:
            done0.set()
        return x

    report = conveyor.run(items(), fn, concurrency=4)
    assert [r.value for r in report] == [0, 1]
    assert stalled == [False]


_BLOCKED_SOURCE_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, threading, conveyor

    def items():
        yield 0
        yield 1
        threading.Event().wait()  # a source that never yields again (a dead socket)

    async def fn(i):
        await asyncio.sleep(0.01)
        print("DONE", i, flush=True)
        return i

    try:
        conveyor.run(items(), fn, concurrency=4, grace=1.0)
    except conveyor.Interrupted as exc:
        print(json.dumps({"counts": exc.report.counts}), flush=True)
        sys.exit(130)
    """
)


def test_ctrl_c_stops_a_run_whose_generator_blocks(tmp_path: Path) -> None:
    """The items generator blocks forever after two items: one Ctrl+C still
    stops the run, with the report of what finished (#12.14)."""
    script = tmp_path / "blocked.py"
    script.write_text(_BLOCKED_SOURCE_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("DONE")
        assert proc.stdout.readline().startswith("DONE")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert json.loads(out.strip().splitlines()[-1])["counts"]["ok"] == 2


def test_journal_says_when_a_value_is_stored_as_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`journal=` with fn returning an object JSON cannot express: stored as
    its text, and a warning says so once, naming the type and the key (it
    used to be silent) (#12.22)."""

    class Point:
        def __str__(self) -> str:
            return "Point(1, 2)"

    with caplog.at_level("WARNING", logger="conveyor"):
        report = conveyor.run(range(3), lambda i: Point(), journal=tmp_path / "j.db")
    assert report.counts["ok"] == 3
    warned = [r for r in caplog.records if "not JSON" in r.getMessage()]
    assert len(warned) == 1
    assert "Point" in warned[0].getMessage() and "stored as its text" in warned[0].getMessage()
    again = conveyor.run(range(3), lambda i: Point(), journal=tmp_path / "j.db")
    assert again[0].value == "Point(1, 2)"
