"""How a run ended, in words and as the error it raises: one place for every
backend (the local engine and the Ray driver)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._base._exceptions import ConveyorError, FatalError, Interrupted

if TYPE_CHECKING:
    from .._base._types import Result
    from ._report import BatchReport

__all__ = ["Ending", "log_failure"]

log = logging.getLogger("conveyor")


def log_failure(r: Result[Any], batch_id: str) -> None:
    """The warning for an item that failed or timed out, with structured fields."""
    err = r.error
    log.warning(
        "item %s %s after %d attempt(s): %s: %s",
        r.key,
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


@dataclass
class Ending:
    """Why admission stopped: `kind` is None (it ran out of items),
    fail_fast, fatal, interrupt, abort or source (the items iterable raised)."""

    kind: str | None = None
    fatal: FatalError | None = None
    source_error: BaseException | None = None

    @property
    def interrupted(self) -> bool:
        return self.kind in ("interrupt", "abort")

    def reason(self) -> str | None:
        """For `BatchReport.stop_reason`."""
        if self.kind == "fail_fast":
            return "fail_fast: an item failed"
        if self.kind == "fatal" and self.fatal is not None:
            return f"fatal: {self.fatal}"
        if self.interrupted:
            return "interrupted"
        if self.kind == "source":
            return f"the items iterable raised {type(self.source_error).__name__}"
        return None

    def error(self, report: BatchReport) -> BaseException | None:
        """The error the run ends with, if any, carrying the report."""
        if self.kind == "fatal" and self.fatal is not None:
            self.fatal.report = report
            return self.fatal
        if self.interrupted:
            return Interrupted(report)
        if self.kind == "source" and self.source_error is not None:
            err = ConveyorError(
                f"the items iterable raised {type(self.source_error).__name__}: "
                f"{self.source_error} after {report.total} items; their results are in .report"
            )
            err.__cause__ = self.source_error
            err.report = report
            return err
        return None
