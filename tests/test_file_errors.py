"""No sqlite3 or OS error leaks unmapped from the public API: a corrupt file, a
read-only directory and a full disk, met by the journal, the output file and the
response cache, each end in a `ConveyorError` that names the file and what to do.

The full disk is real: a child process runs under a file-size limit (`ulimit -f`),
so the kernel refuses the write as a full disk would; `/dev/full` refuses every
write with ENOSPC.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import conveyor
import conveyor.openai
from conveyor._journal._errors import FileProblem, classify

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file limits")


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Path:
    """A directory no file can be created in, for this user (root ignores modes)."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        return d
    for candidate in (Path("/sys"), Path("/proc/sys")):
        try:
            (candidate / "conveyor-probe").open("w").close()
        except OSError:
            return candidate
    pytest.skip("running as root with no read-only directory to use")


@pytest.fixture
def corrupt_file(tmp_path: Path) -> Path:
    p = tmp_path / "corrupt.db"
    p.write_bytes(b"this is not a SQLite database\n" * 200)
    return p


@pytest.fixture
def bad_input(tmp_path: Path) -> Path:
    """One line that is not a request: it gets its error line without any HTTP."""
    p = tmp_path / "in.jsonl"
    p.write_bytes(b"not json\n")
    return p


def _run_file(input_path: Path, **kw: Any) -> conveyor.ConveyorError:
    with pytest.raises(conveyor.ConveyorError) as ei:
        conveyor.openai.run_file(input_path, base_url="http://127.0.0.1:9/v1", api_key="k", **kw)
    return ei.value


def test_corrupt_journal(corrupt_file: Path) -> None:
    """A damaged journal is JournalCorrupt, naming it and saying to move it away."""
    with pytest.raises(conveyor.JournalError) as ei:
        conveyor.run([1], str, journal=corrupt_file)
    assert type(ei.value).__name__ == "JournalCorrupt"
    assert str(corrupt_file) in str(ei.value)
    assert "move it away" in str(ei.value)
    assert isinstance(ei.value.__cause__, sqlite3.Error)


def test_journal_in_a_readonly_dir(readonly_dir: Path) -> None:
    """A journal that cannot be created says where and to choose a writable place."""
    path = readonly_dir / "j.db"
    with pytest.raises(conveyor.JournalError, match="writable location") as ei:
        conveyor.run([1], str, journal=path)
    assert str(path) in str(ei.value)


def test_corrupt_cache(bad_input: Path, tmp_path: Path, corrupt_file: Path) -> None:
    """A damaged response cache is a CacheError naming it (delete it: it only saves calls)."""
    err = _run_file(bad_input, output=tmp_path / "out.jsonl", cache=corrupt_file)
    assert type(err).__name__ == "CacheError"
    assert str(corrupt_file) in str(err)
    assert "delete it" in str(err)


def test_cache_in_a_readonly_dir(bad_input: Path, tmp_path: Path, readonly_dir: Path) -> None:
    """A cache that cannot be created says so, and to choose a writable cache path."""
    err = _run_file(bad_input, output=tmp_path / "out.jsonl", cache=readonly_dir / "c.db")
    assert type(err).__name__ == "CacheError"
    assert "writable cache path" in str(err)


def test_output_on_a_full_disk(bad_input: Path, tmp_path: Path) -> None:
    """ENOSPC writing the output is JournalFull: what is committed is kept; resume."""
    err = _run_file(bad_input, output="/dev/full", journal=tmp_path / "j.db")
    assert isinstance(err, conveyor.JournalError)
    assert type(err).__name__ == "JournalFull"
    assert "/dev/full" in str(err) and "resume" in str(err)


def test_output_in_a_readonly_dir(bad_input: Path, tmp_path: Path, readonly_dir: Path) -> None:
    """An output file that cannot be created names it and says to choose another."""
    out = readonly_dir / "out.jsonl"
    err = _run_file(bad_input, output=out, journal=tmp_path / "j.db")
    assert isinstance(err, conveyor.ConveyorError)
    assert str(out) in str(err)


_CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys
    import conveyor
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write, not a killed process
    kind, path, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        if kind == "journal":
            conveyor.run(range(3000), lambda i: "x" * 1000, journal=path)
        else:
            from conveyor.openai._cache import ResponseCache
            cache = ResponseCache(path)
            for i in range(3000):
                cache.put(str(i), 200, b"y" * 1000)
    except BaseException as exc:
        out = {"type": type(exc).__name__, "ours": isinstance(exc, conveyor.ConveyorError),
               "message": str(exc)}
    else:
        out = {"type": None}
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize(
    ("kind", "wanted"),
    # SQLite reports a write refused with EFBIG as a disk I/O error (SQLITE_IOERR_WRITE),
    # not SQLITE_FULL: the journal then says "check the disk and retry".
    [("journal", {"JournalFull", "JournalError"}), ("cache", {"CacheError"})],
)
def test_full_disk_under_a_file_size_limit(tmp_path: Path, kind: str, wanted: set[str]) -> None:
    """A database that cannot grow (the kernel refuses the write) ends in our error,
    naming the file; never a raw sqlite3.OperationalError or OSError."""
    path = tmp_path / f"{kind}.db"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, str(path), str(256 * 1024)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["type"] in wanted, out
    assert out["ours"] is True
    assert str(path) in out["message"]


@pytest.mark.parametrize(
    ("exc", "problem"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), FileProblem.FULL),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), FileProblem.FULL),
        (OSError(errno.EFBIG, "File too large"), FileProblem.FULL),
        (OSError(errno.EROFS, "Read-only file system"), FileProblem.UNWRITABLE),
        (OSError(errno.ENOTDIR, "Not a directory"), FileProblem.UNWRITABLE),
        (OSError(errno.EIO, "Input/output error"), FileProblem.OTHER),
        (sqlite3.ProgrammingError("closed"), FileProblem.MISUSE),
    ],
)
def test_one_reading_of_errors(exc: BaseException, problem: FileProblem) -> None:
    """The journal, the output file and the cache read errors with one table."""
    assert classify(exc) is problem
