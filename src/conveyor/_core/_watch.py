"""What a running engine shows while it runs: the progress snapshot and its ticks, the
resource monitor's samples, the memo's figures.

`EngineWatch` is mixed into `Engine` (`_engine.py`); the state it reads is the engine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from .._base._exceptions import ResourceLimitExceeded
from ._progress import ProgressSnapshot, measure

if TYPE_CHECKING:
    from .._base._clock import Clock
    from .._base._exceptions import FatalError
    from ._admission import Admission
    from ._item import _ItemState
    from ._memo import MemoStats
    from ._options import Options
    from ._progress import RateMeter
    from ._report import ReportBuilder
    from ._sampler import SamplerPolicy

__all__ = ["EngineWatch"]

log = logging.getLogger("conveyor")


class EngineWatch:
    """The watching half of `Engine` (mixed in)."""

    if TYPE_CHECKING:
        opts: Options
        _clock: Clock
        _meter: RateMeter
        _report: ReportBuilder
        _admission: Admission
        _t0: float
        _length_hint: int | None
        _attempts: int
        _tasks: dict[asyncio.Task[None], _ItemState]
        _retrying: int
        _finished: asyncio.Event
        _sampler: SamplerPolicy | None
        _memo_start: MemoStats | None

        @property
        def concurrency_limit(self) -> int: ...
        def _stop_fatal(self, exc: FatalError) -> None: ...

    def snapshot(self) -> ProgressSnapshot:
        """The live figures of this run (cheap; call as often as you like)."""
        now = self._clock.now()
        return measure(
            self._meter,
            self._report,
            now=now,
            started=self._t0,
            total=self._length_hint,
            attempts=self._attempts,
            in_flight=len(self._tasks),
            retrying=self._retrying,
            concurrency_limit=self.concurrency_limit,
            finished=self._finished.is_set(),
            limits=self._admission.figures(now),
            resources=None if self._sampler is None else self._sampler.latest,
            extra=None if self._memo_start is None else {"memo": self._memo_figures()},
        )

    def _memo_figures(self) -> dict[str, Any]:
        memo, start = self.opts.memo, self._memo_start
        assert memo is not None
        assert start is not None
        return (memo.stats() - start).to_dict()

    async def _sample(self) -> None:
        """The monitor's driver: probe when the policy says, stop on a breach."""
        mon, policy = self.opts.monitor, self._sampler
        assert policy is not None
        failed = False
        while True:
            finished = self._finished.is_set()  # then one last sample, for the report
            if finished or policy.due(self._clock.now()):
                try:
                    values = await asyncio.to_thread(mon.sample)
                except Exception as exc:
                    values = {}
                    if not failed:
                        failed = True
                        log.warning("monitor: sampling raised %s: %s", type(exc).__name__, exc)
                breach = policy.record(self._clock.now(), values)
                if breach is not None and not finished:
                    self._stop_fatal(
                        ResourceLimitExceeded(
                            breach.metric, breach.value, breach.limit, breach.message()
                        )
                    )
            if finished:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._finished.wait(), max(0.01, policy.wait(self._clock.now()))
                )
