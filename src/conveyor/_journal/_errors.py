"""Journal errors, the translation of sqlite3/OS errors into them, and the
guard that keeps secrets out of a journal's identity.

`classify` is the one reading of a sqlite3 or OS error (one set of SQLite
codes and errnos) for every file conveyor keeps: the journal, the output
file and the response cache each word the `ConveyorError` they raise from it.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import re
import sqlite3
from typing import TYPE_CHECKING

from .._base._exceptions import (
    JournalCorrupt,
    JournalError,
    JournalFull,
    JournalLocked,
    JournalMismatch,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = [
    "BUSY_TIMEOUT_S",
    "FileProblem",
    "JournalCorrupt",
    "JournalError",
    "JournalFull",
    "JournalLocked",
    "JournalMismatch",
    "check_identity",
    "classify",
    "translate_error",
]

BUSY_TIMEOUT_S = 10.0

# Prefixes of common API key formats, and auth header schemes. Matched
# anywhere in a value so an "options" blob carrying a key is caught too.
_SECRET_VALUE = re.compile(
    r"(?:^|[^A-Za-z0-9])(?:sk-|sk_live_|sk_test_|rk_live_|xox[abpr]-|ghp_|gho_|github_pat_|hf_)"
    r"[A-Za-z0-9_\-]{8,}"
    r"|AKIA[0-9A-Z]{16}|(?i:bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}"
)
_SECRET_NAME = re.compile(
    r"(?i)^(?:api[_-]?key|secret|password|passwd|authorization|(?:auth|access)[_-]?token)$"
)


_CORRUPT_HINT = "move it away to start over; the output file is unaffected"


class FileProblem(enum.Enum):
    """What a sqlite3 or OS error says about the file it was met on."""

    CORRUPT = "not a database of ours, or damaged"
    FULL = "the disk (or a quota) is full"
    UNWRITABLE = "cannot be created or written here (read-only, permissions, missing dir)"
    BUSY = "another process holds it"
    MISUSE = "a programming error, not the disk"
    OTHER = "another I/O failure"


_SQLITE_CODES = {
    sqlite3.SQLITE_NOTADB: FileProblem.CORRUPT,
    sqlite3.SQLITE_CORRUPT: FileProblem.CORRUPT,
    sqlite3.SQLITE_FULL: FileProblem.FULL,
    sqlite3.SQLITE_READONLY: FileProblem.UNWRITABLE,
    sqlite3.SQLITE_CANTOPEN: FileProblem.UNWRITABLE,
    sqlite3.SQLITE_PERM: FileProblem.UNWRITABLE,
    sqlite3.SQLITE_BUSY: FileProblem.BUSY,
    sqlite3.SQLITE_LOCKED: FileProblem.BUSY,
}
_ERRNOS = {
    errno.ENOSPC: FileProblem.FULL,
    errno.EDQUOT: FileProblem.FULL,
    errno.EFBIG: FileProblem.FULL,  # past the file size limit (ulimit -f)
    errno.EROFS: FileProblem.UNWRITABLE,
    errno.EACCES: FileProblem.UNWRITABLE,
    errno.EPERM: FileProblem.UNWRITABLE,
    errno.ENOENT: FileProblem.UNWRITABLE,
    errno.ENOTDIR: FileProblem.UNWRITABLE,
    errno.EISDIR: FileProblem.UNWRITABLE,
}


def classify(exc: BaseException) -> FileProblem:
    """The one reading of a sqlite3 or OS error, for the journal, output and cache."""
    if isinstance(exc, sqlite3.ProgrammingError | sqlite3.InterfaceError):
        return FileProblem.MISUSE
    if isinstance(exc, sqlite3.Error):
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        return _SQLITE_CODES.get(code, FileProblem.OTHER)
    if isinstance(exc, OSError) and exc.errno is not None:
        return _ERRNOS.get(exc.errno, FileProblem.OTHER)
    return FileProblem.OTHER


def _detail(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def translate_error(exc: BaseException, path: str, *, writing: bool = True) -> JournalError:
    """Map a sqlite3 or OS error met on `path` to the `JournalError` that explains it."""
    if isinstance(exc, JournalError):
        return exc
    problem = classify(exc)
    if problem is FileProblem.MISUSE:
        return JournalError(f"journal {path}: {exc}", path=path)
    if problem is FileProblem.CORRUPT:
        return JournalCorrupt(
            f"{path} is not a conveyor journal or is damaged ({exc}): {_CORRUPT_HINT}",
            path=path,
        )
    if problem is FileProblem.FULL:
        return _full(path, _detail(exc))
    if problem is FileProblem.UNWRITABLE:
        return _unwritable(path, _detail(exc), writing=writing)
    if problem is FileProblem.BUSY:
        return JournalError(
            f"journal {path} stayed busy for {BUSY_TIMEOUT_S:.0f} s ({exc}): another "
            "process holds it; wait for it to finish and retry",
            path=path,
        )
    if isinstance(exc, sqlite3.Error | OSError):
        return JournalError(f"journal {path}: {exc}; check the disk and retry", path=path)
    return JournalError(f"journal {path}: {exc}", path=path)


def _full(path: str, detail: str) -> JournalFull:
    return JournalFull(
        f"disk full while writing {path} ({detail}): everything committed so far is kept; "
        "free some space and rerun the same command to resume",
        path=path,
    )


def _unwritable(path: str, detail: str, *, writing: bool) -> JournalError:
    if writing:
        return JournalError(
            f"cannot write journal {path} ({detail}): choose a writable location with `journal=`",
            path=path,
        )
    return JournalError(f"cannot read journal {path} ({detail})", path=path)


@contextlib.contextmanager
def _guard(path: str, *, writing: bool = True) -> Iterator[None]:
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise translate_error(exc, path, writing=writing) from exc


def check_identity(identity: Mapping[str, str]) -> None:
    """Refuse identity entries that look like secrets (they would be stored in clear)."""
    for name, value in identity.items():
        if not isinstance(value, str):
            raise JournalError(f"identity value for {name!r} must be a string, not {type(value)}")
        if _SECRET_NAME.match(name) or _SECRET_VALUE.search(value):
            # The value itself is never echoed: it may be the secret.
            raise JournalError(
                f"identity entry {name!r} looks like an API key or credential; the journal is "
                "stored in clear, so never pass secrets: record the name of the environment "
                "variable that holds it instead"
            )
