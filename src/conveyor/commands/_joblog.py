"""GNU parallel's `--joblog` file: one tab-separated line per finished job.

```
Seq	Host	Starttime	JobRuntime	Send	Receive	Exitval	Signal	Command
1	:	1718000000.123	0.456	0	0	0	0	echo hello
```

Lines are appended and flushed one at a time, so a crash loses at most the
line being written; opening the log again drops such a torn last line.
Tabs, newlines and backslashes inside a command are written as `\\t`, `\\n`,
`\\r` and `\\\\` so that every job stays on one line (GNU parallel would
break the line there); `read_joblog` turns them back.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .._base._exceptions import InputError

if TYPE_CHECKING:
    from types import TracebackType

    from ._types import CommandResult

__all__ = ["JOBLOG_HEADER", "JobLog", "JobLogEntry", "read_joblog"]

_COLUMNS = (
    "Seq",
    "Host",
    "Starttime",
    "JobRuntime",
    "Send",
    "Receive",
    "Exitval",
    "Signal",
    "Command",
)
JOBLOG_HEADER = "\t".join(_COLUMNS)

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _escape(command: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in command)


def _unescape(field: str) -> str:
    out: list[str] = []
    chars = iter(field)
    for c in chars:
        if c == "\\":
            nxt = next(chars, "")
            out.append(_UNESCAPES.get(nxt, "\\" + nxt))
        else:
            out.append(c)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class JobLogEntry:
    """One line of a job log. `exitval` 124 marks a timeout, `signal` 0 means none."""

    seq: int
    host: str
    starttime: float
    runtime: float
    send: int
    receive: int
    exitval: int
    signal: int
    command: str

    @property
    def ok(self) -> bool:
        return self.exitval == 0 and self.signal == 0

    def to_line(self) -> str:
        return (
            f"{self.seq}\t{self.host}\t{self.starttime:.3f}\t{self.runtime:.3f}\t"
            f"{self.send}\t{self.receive}\t{self.exitval}\t{self.signal}\t"
            f"{_escape(self.command)}\n"
        )

    @classmethod
    def from_result(cls, seq: int, result: CommandResult, *, host: str = ":") -> JobLogEntry:
        return cls(
            seq=seq,
            host=host,
            # Rounded as the file stores them, so the entry equals what is read back.
            starttime=round(result.started_at, 3),
            runtime=round(result.duration, 3),
            send=0,
            receive=0,
            exitval=result.exit_code,
            signal=result.signal or 0,
            command=result.command_line,
        )


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that has no newline: it was being written when the writer died."""
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Scan back in blocks for the previous newline; keep everything up to it.
        pos = size
        while pos > 0:
            step = min(4096, pos)
            pos -= step
            f.seek(pos)
            block = f.read(step)
            nl = block.rfind(b"\n")
            if nl >= 0:
                f.truncate(pos + nl + 1)
                return
        f.truncate(0)


class JobLog:
    """Appends GNU parallel `--joblog` lines; safe to share between threads and tasks.

    A new or empty file gets the header first; an existing log is appended
    to (its header is checked), so a resumed run extends the same file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if self.path.exists():
            _drop_torn_tail(self.path)
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8", newline="\n")
        if self._file.tell() == 0:
            self._file.write(JOBLOG_HEADER + "\n")
            self._file.flush()
        else:
            with self.path.open(encoding="utf-8", newline="\n") as f:
                first = f.readline().rstrip("\n")
            if first != JOBLOG_HEADER:
                self._file.close()
                self._file = None
                raise InputError(
                    "is not a job log (its first line is not the GNU parallel --joblog "
                    "header); choose another file name",
                    path=str(self.path),
                    line=1,
                )

    def write(self, entry: JobLogEntry) -> None:
        """Append one line and flush it to the OS."""
        with self._lock:
            if self._file is None:
                raise ValueError(f"job log {self.path} is closed")
            self._file.write(entry.to_line())
            self._file.flush()

    def record(self, seq: int, result: CommandResult, *, host: str = ":") -> JobLogEntry:
        """Append the line for a finished job; returns what was written."""
        entry = JobLogEntry.from_result(seq, result, host=host)
        self.write(entry)
        return entry

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> JobLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _parse(line: str, path: Path, lineno: int) -> JobLogEntry:
    fields = line.split("\t", len(_COLUMNS) - 1)
    if len(fields) != len(_COLUMNS):
        raise InputError(
            f"expected {len(_COLUMNS)} tab-separated fields, found {len(fields)}; "
            "is this a GNU parallel --joblog file?",
            path=str(path),
            line=lineno,
        )
    try:
        return JobLogEntry(
            seq=int(fields[0]),
            host=fields[1],
            starttime=float(fields[2]),
            runtime=float(fields[3]),
            send=int(fields[4]),
            receive=int(fields[5]),
            exitval=int(fields[6]),
            signal=int(fields[7]),
            command=_unescape(fields[8]),
        )
    except ValueError as exc:
        raise InputError(
            f"a numeric field does not parse ({exc}); fix or delete this line",
            path=str(path),
            line=lineno,
        ) from exc


def read_joblog(path: str | os.PathLike[str]) -> list[JobLogEntry]:
    """Parse a job log written by `JobLog` or by GNU parallel `--joblog`.

    A last line without its newline (a crash mid-write) is ignored; any other
    malformed line raises InputError naming the file and line.
    """
    p = Path(path)
    entries: list[JobLogEntry] = []
    with p.open(encoding="utf-8", newline="\n") as f:
        lines = f.readlines()
    if not lines:
        return entries
    if lines[0].rstrip("\n") != JOBLOG_HEADER:
        raise InputError("missing the --joblog header line", path=str(p), line=1)
    for lineno, raw in enumerate(lines[1:], start=2):
        if not raw.endswith("\n"):
            break
        line = raw[:-1]
        if line:
            entries.append(_parse(line, p, lineno))
    return entries
