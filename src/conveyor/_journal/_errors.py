"""Journal errors, the translation of sqlite3/OS errors into them, and the
guard that keeps secrets out of a journal's identity."""

from __future__ import annotations

import contextlib
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
    "JournalCorrupt",
    "JournalError",
    "JournalFull",
    "JournalLocked",
    "JournalMismatch",
    "check_identity",
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


def translate_error(exc: BaseException, path: str, *, writing: bool = True) -> JournalError:
    """Map a sqlite3 or OS error met on `path` to the `JournalError` that explains it."""
    if isinstance(exc, JournalError):
        return exc
    if isinstance(exc, sqlite3.ProgrammingError | sqlite3.InterfaceError):
        return JournalError(f"journal {path}: {exc}", path=path)  # a misuse, not the disk
    if isinstance(exc, sqlite3.Error):
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            return JournalCorrupt(
                f"{path} is not a conveyor journal or is damaged ({exc}): {_CORRUPT_HINT}",
                path=path,
            )
        if code == sqlite3.SQLITE_FULL:
            return _full(path, str(exc))
        if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM):
            return _unwritable(path, str(exc), writing=writing)
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return JournalError(
                f"journal {path} stayed busy for {BUSY_TIMEOUT_S:.0f} s ({exc}): another "
                "process holds it; wait for it to finish and retry",
                path=path,
            )
        return JournalError(f"journal {path}: {exc}; check the disk and retry", path=path)
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _full(path, exc.strerror or str(exc))
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR):
            return _unwritable(path, exc.strerror or str(exc), writing=writing)
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
