"""How a run ended, in words and as the error it raises: one place for every
backend (the local engine and the Ray driver)."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._base._exceptions import ConveyorError, FatalError, Interrupted

if TYPE_CHECKING:
    from .._base._types import Result
    from ._report import BatchReport

__all__ = ["Ending", "StopKind", "log_failure"]

log = logging.getLogger("conveyor")


def log_failure(r: Result[Any], batch_id: str) -> None:
    """The warning for an item that failed or timed out, with structured fields."""
    err = r.error
    log.warning(
        "item %s %s after %d attempt(s): %s: %s",
        r.key.lstrip("\x00"),  # an internal key (a bad line's) is not shown with its NUL
        r.status.value,
        r.attempts,
        err.type if err else "?",
        err.message if err else "",
        extra={
            "batch_id": batch_id,
            "key": r.key,
            "status": r.status.value,
            "attempt": r.attempts,
            "error_type": err.type if err else None,
        },
    )


class StopKind(enum.StrEnum):
    """Why a run stopped admitting items (None while it runs, or when it ran out)."""

    INTERRUPT = "interrupt"
    """Ctrl+C or `stop()`: attempts in progress get the grace period."""
    ABORT = "abort"
    """A second Ctrl+C, `aclose()` or a crash: everything is cancelled now."""
    FAIL_FAST = "fail_fast"
    """An item failed with `fail_fast` set; the items not run are skipped."""
    FATAL = "fatal"
    """A fatal error (401, exhausted quota, endpoint down); the items not run are skipped."""
    SOURCE = "source"
    """The items iterable raised: no new items, but those read still run."""

    @property
    def interrupted(self) -> bool:
        return self in (StopKind.INTERRUPT, StopKind.ABORT)

    @property
    def skips_rest(self) -> bool:
        """Items not run are reported skipped (every input still gets a result)."""
        return self in (StopKind.FAIL_FAST, StopKind.FATAL)


@dataclass
class Ending:
    """Why admission stopped: `kind` is None when it ran out of items."""

    kind: StopKind | None = None
    fatal: FatalError | None = None
    source_error: BaseException | None = None

    @property
    def interrupted(self) -> bool:
        return self.kind is not None and self.kind.interrupted

    def reason(self) -> str | None:
        """For `BatchReport.stop_reason`."""
        if self.kind is StopKind.FAIL_FAST:
            return "fail_fast: an item failed"
        if self.kind is StopKind.FATAL and self.fatal is not None:
            return f"fatal: {self.fatal}"
        if self.interrupted:
            return "interrupted"
        if self.kind is StopKind.SOURCE:
            return f"the items iterable raised {type(self.source_error).__name__}"
        return None

    def error(self, report: BatchReport) -> BaseException | None:
        """The error the run ends with, if any, carrying the report."""
        if self.kind is StopKind.FATAL and self.fatal is not None:
            self.fatal.report = report
            return self.fatal
        if self.interrupted:
            return Interrupted(report)
        if self.kind is StopKind.SOURCE and self.source_error is not None:
            err = ConveyorError(
                f"the items iterable raised {type(self.source_error).__name__}: "
                f"{self.source_error} after {report.total} items; their results are in .report"
            )
            err.__cause__ = self.source_error
            err.report = report
            return err
        return None
