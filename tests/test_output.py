"""The output half of a run (`conveyor._core._output.Output`), shared by the local
engine and the Ray driver: the stop rules, fail_fast, the stream buffer, progress."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import conveyor
from conveyor import Status
from conveyor._base._types import ErrorInfo, Result
from conveyor._core._options import build_options
from conveyor._core._outcome import StopKind
from conveyor._core._output import Output


def _output(stops: list[StopKind], *, deliver: bool = True, **options: Any) -> Output:
    return Output(
        build_options(**options), keep_results=True, deliver=deliver, stop_now=stops.append
    )


def _failed(i: int) -> Result[Any]:
    return Result(index=i, key=str(i), status=Status.FAILED, error=ErrorInfo("E", "boom"))


async def test_second_interrupt_is_an_abort() -> None:
    """The double press: the first interrupt is carried out as one, the second as an abort,
    and once halted an interrupt asks nothing more."""
    out = _output([])
    assert out.press("interrupt") is StopKind.INTERRUPT  # the text form is accepted
    assert out.press(StopKind.INTERRUPT) is StopKind.ABORT
    assert out.stop_kind is StopKind.INTERRUPT  # the run still ends as interrupted
    halted = _output([])
    assert halted.halt(StopKind.FAIL_FAST)
    assert halted.press(StopKind.INTERRUPT) is None
    assert halted.press(StopKind.ABORT) is StopKind.ABORT
    assert halted.stop_kind is StopKind.FAIL_FAST


async def test_a_broken_input_does_not_halt() -> None:
    """After the items iterable raised, items already read still run: a Ctrl+C or a
    fatal error still stops the run (it used to be ignored on the local engine)."""
    out = _output([])
    out.source_failed(ValueError("bad line"))
    assert out.stop_kind is StopKind.SOURCE
    assert not out.halted
    assert out.press(StopKind.INTERRUPT) is StopKind.INTERRUPT
    assert out.halted
    other = _output([])
    other.source_failed(ValueError("bad line"))
    assert other.fatal_stop(conveyor.FatalError("401"))
    assert other.halt(StopKind.FATAL)  # what the run's stop_now("fatal") does
    assert not other.fatal_stop(conveyor.FatalError("second"))  # the first one counts
    assert str(other.fatal) == "401"


async def test_fail_fast_stops_once() -> None:
    """With fail_fast the first failed result asks the run to stop now; later ones not."""
    stops: list[StopKind] = []
    out = _output(stops, fail_fast=True)

    def stop_now(kind: StopKind) -> None:
        stops.append(kind)
        out.halt(kind)

    out._stop_now = stop_now
    out.emit(_failed(0))
    out.emit(_failed(1))
    assert stops == [StopKind.FAIL_FAST]
    report = out.build_report({"extra_figure": 1})
    assert report.counts["failed"] == 2
    assert report.extra["extra_figure"] == 1
    assert report.stop_reason is not None and "fail_fast" in report.stop_reason


async def test_next_batch_hands_out_in_completion_order_then_ends() -> None:
    """Buffered results come out in the order they were emitted; once the run
    finished and the buffer is empty, `next_batch()` is empty."""
    out = _output([])
    for i in (2, 0, 1):
        out.emit(Result(index=i, key=str(i), status=Status.OK))
    assert [r.index for r in await out.next_batch(max_items=2)] == [2, 0]
    out.finish()
    assert [r.index for r in await out.next_batch()] == [1]
    assert await out.next_batch() == []


async def test_no_buffer_without_deliver() -> None:
    """A run that is not streamed keeps results only in the report."""
    out = _output([], deliver=False)
    out.emit(Result(index=0, key="0", status=Status.OK))
    assert not out.buffer
    assert out.build_report({}).counts["ok"] == 1


async def test_skipped_names_the_stop() -> None:
    """An item never run because the run stopped is skipped, saying why."""
    out = _output([])
    out.halt(StopKind.FATAL)
    r = out.skipped(3, "k", "item")
    assert r.status is Status.SKIPPED
    assert r.error is not None and "fatal" in r.error.message


async def test_progress_callback_that_raises_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A raising on_progress never stops the run and is logged once."""

    def boom(snapshot: object) -> None:
        raise RuntimeError("display broke")

    out = _output([], on_progress=boom)
    with caplog.at_level(logging.WARNING, logger="conveyor"):
        for _ in range(3):
            out.progress(lambda: None)  # type: ignore[arg-type, return-value]
    assert sum("on_progress raised" in m for m in caplog.messages) == 1


def test_stop_kinds_say_what_they_mean() -> None:
    """Interrupt and abort end a run as interrupted; fail_fast and fatal skip the items
    not run; a broken source does neither. An unknown kind is refused."""
    assert {k for k in StopKind if k.interrupted} == {StopKind.INTERRUPT, StopKind.ABORT}
    assert {k for k in StopKind if k.skips_rest} == {StopKind.FAIL_FAST, StopKind.FATAL}
    with pytest.raises(ValueError, match="halt"):
        _output([]).press("halt")
