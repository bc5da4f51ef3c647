"""conveyor.commands: shell jobs run as real processes, in real git repositories."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _procs import alive as _alive
from _procs import eventually as _eventually_sync
from conveyor._base._exceptions import ConfigError, ConveyorError, InputError
from conveyor.commands import (
    JOBLOG_HEADER,
    CommandFailed,
    CommandNotFound,
    CommandResult,
    CommandTask,
    CommandTimeout,
    IsolationError,
    JobLog,
    JobLogEntry,
    expand,
    expand_shell,
    read_joblog,
)
from conveyor.commands._expand import branch_name, safe_name
from conveyor.commands._guard import Guard
from conveyor.commands._isolation import _is_transient

GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")

# Two background children: one dies on SIGTERM, one ignores it and needs SIGKILL.
# Their pids go to the file named by $1, one per line, before the shell waits.
SPAWN_GRANDCHILDREN = (
    'sleep 30 & echo $! >> "$1"; (trap "" TERM; exec sleep 30) & echo $! >> "$1"; wait'
)


async def _eventually(predicate: object, within: float = 5.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


def _pids(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(x) for x in path.read_text().split()]


# --- running, exit codes, output ------------------------------------------------------


async def test_output_goes_to_files_under_artifacts_key(tmp_path: Path) -> None:
    """stdout and stderr land in <artifacts>/<key>/stdout|stderr; the result describes the run."""
    task = CommandTask(["sh", "-c", "echo out; echo err >&2"], key="job-1", artifacts_dir=tmp_path)
    before = time.time()
    result = await task()
    assert result.exit_code == 0
    assert result.ok
    assert result.signal is None
    assert result.stdout_path == tmp_path / "job-1" / "stdout"
    assert result.stderr_path == tmp_path / "job-1" / "stderr"
    assert result.artifacts_path == tmp_path / "job-1"
    assert result.stdout_text() == "out\n"
    assert result.stderr_text() == "err\n"
    assert result.stdout_text(2) == "ou"
    assert result.stdout_text(2, tail=True) == "t\n"
    assert before - 1 <= result.started_at <= time.time()
    assert 0 <= result.duration < 10
    assert result.pid is not None
    assert result.cwd == Path.cwd()
    data = json.loads(json.dumps(result.to_dict()))
    assert data["exit_code"] == 0
    assert data["stdout_path"] == str(tmp_path / "job-1" / "stdout")


async def test_nonzero_exit_raises_command_failed_with_result(tmp_path: Path) -> None:
    """Non-zero exit raises CommandFailed with the result; the message names key and stderr."""
    task = CommandTask(["sh", "-c", "echo boom >&2; exit 3"], key="k3", artifacts_dir=tmp_path)
    with pytest.raises(CommandFailed) as info:
        await task()
    err = info.value
    assert isinstance(err, ConveyorError)
    assert not isinstance(err, TimeoutError)
    assert err.result.exit_code == 3
    assert not err.result.ok
    assert err.result.stderr_text() == "boom\n"
    assert "'k3'" in str(err)
    assert "exited with code 3" in str(err)
    assert str(err.result.stderr_path) in str(err)


async def test_death_by_signal_reports_128_plus_n(tmp_path: Path) -> None:
    """A process killed by signal N gets exit code 128+N and records the signal."""
    task = CommandTask(["sh", "-c", "kill -KILL $$"], artifacts_dir=tmp_path)
    with pytest.raises(CommandFailed) as info:
        await task()
    assert info.value.result.signal == 9
    assert info.value.result.exit_code == 137
    assert "signal 9" in str(info.value)


async def test_ten_megabytes_of_output_do_not_deadlock(tmp_path: Path) -> None:
    """10 MB on stdout and on stderr go straight to files and finish in bounded time."""
    size = 10 * 1024 * 1024
    script = f"head -c {size} /dev/zero; head -c {size} /dev/zero >&2"
    task = CommandTask(["sh", "-c", script], artifacts_dir=tmp_path)
    result = await asyncio.wait_for(task(), 30)
    assert result.stdout_path.stat().st_size == size
    assert result.stderr_path.stat().st_size == size
    assert len(result.stdout_text(1000)) == 1000


async def test_stdin_and_env_reach_the_command(tmp_path: Path) -> None:
    """`stdin` text is fed to the command; `env` is merged over os.environ; job vars are set."""
    task = CommandTask(
        ["sh", "-c", 'cat; echo "|$FOO|$CONVEYOR_JOB_KEY|$CONVEYOR_JOB_DIR"; command -v sh'],
        stdin="hello\n",
        env={"FOO": "bar"},
        key="envjob",
        artifacts_dir=tmp_path,
    )
    result = await task()
    lines = result.stdout_text().splitlines()
    assert lines[0] == "hello"
    assert lines[1] == f"|bar|envjob|{tmp_path / 'envjob'}"
    assert lines[2].endswith("/sh")  # PATH was inherited, not replaced


async def test_command_not_found_is_clear(tmp_path: Path) -> None:
    """A missing program raises CommandNotFound (exit 127) naming it and pointing at PATH."""
    task = CommandTask(["conveyor-no-such-program-xyz", "arg"], artifacts_dir=tmp_path)
    with pytest.raises(CommandNotFound) as info:
        await task()
    assert isinstance(info.value, CommandFailed)
    assert info.value.result.exit_code == 127
    assert "conveyor-no-such-program-xyz" in str(info.value)
    assert "PATH" in str(info.value)


async def test_not_executable_gives_126(tmp_path: Path) -> None:
    """A file without the execute bit raises CommandNotFound with the shell's 126."""
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(CommandNotFound) as info:
        await CommandTask([str(script)], artifacts_dir=tmp_path)()
    assert info.value.result.exit_code == 126
    assert "not executable" in str(info.value)


async def test_shell_true_not_found_maps_to_command_not_found(tmp_path: Path) -> None:
    """With shell=True the shell's exit 127 becomes CommandNotFound too."""
    task = CommandTask("conveyor-no-such-program-xyz 1", shell=True, artifacts_dir=tmp_path)
    with pytest.raises(CommandNotFound) as info:
        await task()
    assert info.value.result.exit_code == 127
    assert "not found" in info.value.result.stderr_text()


async def test_argv_with_shell_syntax_is_passed_literally(tmp_path: Path) -> None:
    """An input like `x; rm -f marker` is one literal argument: nothing is run by a shell."""
    marker = tmp_path / "marker"
    marker.write_text("keep me")
    value = f"x; rm -f {marker}; echo $(id) `id` && true | cat > {marker}"
    argv = expand(["printf", "%s"], value, 1)
    result = await CommandTask(argv, cwd=tmp_path, artifacts_dir=tmp_path / "a")()
    assert result.stdout_text() == value
    assert marker.read_text() == "keep me"


async def test_expand_shell_quotes_input_for_a_real_shell(tmp_path: Path) -> None:
    """expand_shell quotes the input so /bin/sh passes it through as one word."""
    marker = tmp_path / "marker"
    marker.write_text("keep me")
    value = f'it\'s; rm -f {marker} "$HOME" \n`id`'
    command = expand_shell("printf %s {}", value, 1)
    result = await CommandTask(command, shell=True, artifacts_dir=tmp_path / "a")()
    assert result.stdout_text() == value
    assert marker.exists()


def test_bad_arguments_raise_config_error() -> None:
    """A string argv without shell=True, an empty argv or an unknown isolation fail at once."""
    with pytest.raises(ConfigError, match="shell=True"):
        CommandTask("echo hi")
    with pytest.raises(ConfigError):
        CommandTask([])
    with pytest.raises(ConfigError, match="isolate"):
        CommandTask(["true"], isolate="branch")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="timeout"):
        CommandTask(["true"], timeout=0)


# --- timeouts and cancellation ------------------------------------------------------


async def test_timeout_kills_the_whole_group_and_gives_124(tmp_path: Path) -> None:
    """On timeout the group gets SIGTERM then SIGKILL: no grandchild survives; exit 124."""
    pidfile = tmp_path / "pids"
    task = CommandTask(
        ["sh", "-c", SPAWN_GRANDCHILDREN, "sh", str(pidfile)],
        timeout=1.5,
        kill_grace=0.5,
        artifacts_dir=tmp_path,
    )
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        await asyncio.wait_for(task(), 20)
    elapsed = time.monotonic() - t0
    err = info.value
    assert isinstance(err, TimeoutError)
    assert isinstance(err, CommandFailed)
    assert err.result.exit_code == 124
    assert err.result.timed_out
    assert "timed out after 1.5s" in str(err)
    assert 1.5 <= elapsed < 10
    pids = _pids(pidfile)
    assert len(pids) == 2
    assert err.result.pid is not None
    assert not _alive(err.result.pid)  # reaped before the call returned
    assert await _eventually(lambda: not any(_alive(p) for p in pids))


async def test_timeout_does_not_wait_the_grace_when_the_group_exits(tmp_path: Path) -> None:
    """A group that obeys SIGTERM ends the wait at once; kill_grace is an upper bound only."""
    task = CommandTask(["sleep", "30"], timeout=0.3, kill_grace=20, artifacts_dir=tmp_path)
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        await asyncio.wait_for(task(), 15)
    assert time.monotonic() - t0 < 10
    assert info.value.result.signal == 15


async def test_cancellation_kills_the_group_and_reraises(tmp_path: Path) -> None:
    """Cancelling the awaiting task kills the group, reaps it, and re-raises CancelledError."""
    pidfile = tmp_path / "pids"
    task = CommandTask(
        ["sh", "-c", SPAWN_GRANDCHILDREN, "sh", str(pidfile)],
        kill_grace=0.3,
        artifacts_dir=tmp_path,
    )
    running = asyncio.ensure_future(task())
    assert await _eventually(lambda: len(_pids(pidfile)) == 2, within=10)
    leader = psutil.Process(_pids(pidfile)[0]).ppid()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, 10)
    assert not _alive(leader)
    assert await _eventually(lambda: not any(_alive(p) for p in _pids(pidfile)))


# --- the guard: jobs die with their runner, even by kill -9 (#12.12) --------------------

# A runner that forks a job and is killed before the job execs; the child is
# slow to exec (a loaded machine) and has already closed its descriptors, as
# subprocess does just before exec, so the guard sees its runner die at once.
_KILLED_BEFORE_EXEC = """
import os, signal, sys, time
from conveyor.commands._guard import MARK, Guard
with Guard() as guard:
    with guard.spawning():
        pid = os.fork()
        if pid == 0:
            os.closerange(3, 4096)
            time.sleep(1.0)
            os.execve("/bin/sh", ["sh", "-c", "echo ran > " + sys.argv[1]],
                      {**os.environ, MARK: guard.token})
    print(pid, guard._proc.pid if guard._proc else 0, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_job_forked_but_not_execd_when_its_runner_is_killed_never_runs(tmp_path: Path) -> None:
    """kill -9 of the runner between a job's fork and its exec: the guard finds
    the child by the name it inherited from the spawning thread and kills it
    before it runs, so a rerun (once the guard lets go) cannot overlap it."""
    ran = tmp_path / "ran"
    runner = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_EXEC, str(ran)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert runner.returncode == -signal.SIGKILL, runner.stderr
    child, guard = (int(x) for x in runner.stdout.split())
    assert guard, "the guard did not start"
    assert _eventually_sync(lambda: not _alive(child) and not _alive(guard), within=20)
    assert not ran.exists(), "the job ran after its runner was killed"


def test_spawning_names_the_thread_and_gives_the_name_back(tmp_path: Path) -> None:
    """`Guard.spawning` names the calling thread after the run for the length of a
    spawn, nested spawns included, and gives its name back afterwards."""
    comm = Path(f"/proc/self/task/{threading.get_native_id()}/comm")
    before = comm.read_text()
    with Guard() as guard:
        with guard.spawning():
            assert comm.read_text() == guard.name + "\n"
            with guard.spawning():
                assert comm.read_text() == guard.name + "\n"
            assert comm.read_text() == guard.name + "\n"
        assert comm.read_text() == before
    assert comm.read_text() == before


# --- isolation ------------------------------------------------------------------------


async def test_dir_isolation_gives_distinct_empty_directories(tmp_path: Path) -> None:
    """isolate='dir' runs each job in its own fresh empty directory, removed after success."""
    tasks = [
        CommandTask(
            ["sh", "-c", "pwd; ls -A | wc -l; touch made"],
            isolate="dir",
            key=f"d{i}",
            artifacts_dir=tmp_path,
        )
        for i in range(3)
    ]
    results = await asyncio.gather(*(t() for t in tasks))
    cwds = [r.stdout_text().split()[0] for r in results]
    assert len(set(cwds)) == 3
    assert all(r.stdout_text().split()[1] == "0" for r in results)
    for r, cwd in zip(results, cwds, strict=True):
        assert Path(cwd) == r.cwd
        assert r.cwd.is_relative_to(r.artifacts_path)
        assert r.workspace is None
        assert not r.cwd.exists()


async def test_dir_isolation_keeps_directory_on_failure(tmp_path: Path) -> None:
    """A failed job's directory stays, and the error says where it is."""
    task = CommandTask(
        ["sh", "-c", "touch evidence; exit 1"], isolate="dir", artifacts_dir=tmp_path
    )
    with pytest.raises(CommandFailed) as info:
        await task()
    ws = info.value.result.workspace
    assert ws is not None
    assert (ws / "evidence").exists()
    assert str(ws) in str(info.value)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()


GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    _git(path, "init", "-q", "-b", "main")
    (path / "README").write_text("hello\n")
    (path / "sub").mkdir()
    (path / "sub" / "f").write_text("x\n")
    _git(path, "add", ".")
    _git(path, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "init")
    return path


@needs_git
async def test_worktree_jobs_commit_on_separate_branches(repo: Path, tmp_path: Path) -> None:
    """Three concurrent worktree jobs commit on their own branches; worktrees are removed."""
    script = (
        'echo "$CONVEYOR_JOB_KEY" > "out-$CONVEYOR_JOB_KEY.txt" && git add . && git commit -qm job'
    )
    tasks = [
        CommandTask(
            ["sh", "-c", script],
            cwd=repo,
            env=GIT_IDENTITY,
            isolate="worktree",
            key=f"job {i}",
            artifacts_dir=tmp_path / "art",
        )
        for i in range(3)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(t() for t in tasks)), 60)
    branches = [r.branch for r in results]
    assert all(b is not None and b.startswith("conveyor/job_") for b in branches)
    assert len(set(branches)) == 3
    for i, r in enumerate(results):
        assert r.workspace is None
        assert not r.cwd.exists()
        assert r.branch is not None
        files = _git(repo, "ls-tree", "--name-only", r.branch).splitlines()
        assert f"out-job {i}.txt" in files
        assert _git(repo, "show", f"{r.branch}:out-job {i}.txt") == f"job {i}"
    assert _git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert _git(repo, "status", "--porcelain") == ""  # the main checkout is untouched


@needs_git
async def test_worktree_kept_on_failure_and_runs_in_same_subdir(repo: Path, tmp_path: Path) -> None:
    """A failed worktree job keeps its worktree and branch; cwd repo/sub maps to <wt>/sub."""
    task = CommandTask(
        ["sh", "-c", "pwd; echo partial > work.txt; exit 2"],
        cwd=repo / "sub",
        isolate="worktree",
        key="failing",
        artifacts_dir=tmp_path / "art",
    )
    with pytest.raises(CommandFailed) as info:
        await task()
    r = info.value.result
    assert r.workspace is not None
    assert r.branch == "conveyor/failing"
    assert r.cwd == r.workspace / "sub"
    assert r.stdout_text().strip() == str(r.workspace / "sub")
    assert (r.workspace / "sub" / "work.txt").read_text() == "partial\n"
    assert str(r.workspace) in _git(repo, "worktree", "list")
    assert "conveyor/failing" in str(info.value)


@needs_git
async def test_worktree_clean_success_removes_branch_too(repo: Path, tmp_path: Path) -> None:
    """A job that succeeds without committing leaves neither worktree nor branch behind."""
    result = await CommandTask(
        ["git", "status", "--short"],
        cwd=repo,
        isolate="worktree",
        key="noop",
        artifacts_dir=tmp_path / "art",
    )()
    assert result.workspace is None
    assert result.branch is None
    assert _git(repo, "branch", "--list", "conveyor/*") == ""
    assert _git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


@needs_git
async def test_worktree_uncommitted_changes_are_kept(repo: Path, tmp_path: Path) -> None:
    """A successful job that leaves uncommitted work keeps its worktree rather than lose it."""
    result = await CommandTask(
        ["sh", "-c", "echo draft > draft.txt"],
        cwd=repo,
        isolate="worktree",
        key="draft",
        artifacts_dir=tmp_path / "art",
    )()
    assert result.workspace is not None
    assert (result.workspace / "draft.txt").exists()
    assert result.branch == "conveyor/draft"


@needs_git
async def test_worktree_same_key_gets_a_unique_branch(repo: Path, tmp_path: Path) -> None:
    """A key whose branch already exists gets `-2`; keep=True keeps both worktrees."""
    results = [
        await CommandTask(
            ["true"],
            cwd=repo,
            isolate="worktree",
            key="same",
            keep=True,
            artifacts_dir=tmp_path / "art",
        )()
        for _ in range(2)
    ]
    assert [r.branch for r in results] == ["conveyor/same", "conveyor/same-2"]
    assert all(r.workspace is not None and r.workspace.is_dir() for r in results)


@needs_git
async def test_worktree_outside_a_repository_is_a_clear_error(tmp_path: Path) -> None:
    """isolate='worktree' outside any git repository raises IsolationError saying so."""
    plain = tmp_path / "plain"
    plain.mkdir()
    task = CommandTask(["true"], cwd=plain, isolate="worktree", key="x", artifacts_dir=tmp_path)
    with pytest.raises(IsolationError, match="not inside one") as info:
        await task()
    assert str(plain) in str(info.value)
    assert "git init" in str(info.value)


@pytest.mark.parametrize(
    ("stderr", "transient"),
    [
        ("fatal: Unable to create '/r/.git/index.lock': File exists.", True),
        ("fatal: failed to read .git/worktrees/worktree-x1/commondir: Success", True),
        ("error: cannot lock ref 'refs/heads/conveyor/a': reference already exists", False),
        ("fatal: a branch named 'conveyor/a' already exists", False),
        ("fatal: not a git repository (or any of the parent directories): .git", False),
    ],
)
def test_git_contention_is_told_apart_from_real_errors(stderr: str, transient: bool) -> None:
    """Lock and .git/worktrees races are retried; an existing branch or a real error is not."""
    assert _is_transient(stderr) is transient


async def test_missing_cwd_is_a_config_error(tmp_path: Path) -> None:
    """A cwd that does not exist is reported as such, not as a missing command."""
    task = CommandTask(["true"], cwd=tmp_path / "nope", artifacts_dir=tmp_path)
    with pytest.raises(ConfigError, match="cwd"):
        await task()


# --- concurrency ----------------------------------------------------------------------


async def test_jobs_run_concurrently_under_a_semaphore(tmp_path: Path) -> None:
    """Four 0.5 s jobs under a semaphore of 4 overlap in time: wall time well below the sum."""
    sem = asyncio.Semaphore(4)

    async def one(i: int) -> CommandResult:
        async with sem:
            return await CommandTask(["sleep", "0.5"], key=f"s{i}", artifacts_dir=tmp_path)()

    t0 = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(4))), 20)
    wall = time.monotonic() - t0
    latest_start = max(r.started_at for r in results)
    earliest_end = min(r.started_at + r.duration for r in results)
    assert latest_start < earliest_end  # all four were running at the same moment
    assert wall < 1.9


# --- job log --------------------------------------------------------------------------


async def test_joblog_written_and_parsed_back(tmp_path: Path) -> None:
    """JobLog writes GNU parallel's format line by line; read_joblog gives the same entries."""
    log_path = tmp_path / "joblog"
    ok = await CommandTask(["echo", "a\tb"], artifacts_dir=tmp_path)()
    with pytest.raises(CommandFailed) as info:
        await CommandTask(["sh", "-c", "exit 5"], artifacts_dir=tmp_path)()
    with JobLog(log_path) as log:
        first = log.record(1, ok)
        # Flushed per line: another reader sees it before the log is closed.
        assert read_joblog(log_path) == [first]
        second = log.record(2, info.value.result)
    lines = log_path.read_text().splitlines()
    assert lines[0] == JOBLOG_HEADER
    assert re.fullmatch(r"1\t:\t\d+\.\d{3}\t\d+\.\d{3}\t0\t0\t0\t0\techo 'a\\tb'", lines[1])
    entries = read_joblog(log_path)
    assert [e.seq for e in entries] == [1, 2]
    assert entries[0].command == "echo 'a\tb'"
    assert entries[1].exitval == 5
    assert not entries[1].ok
    assert entries[1] == JobLogEntry(
        2,
        ":",
        round(second.starttime, 3),
        round(second.runtime, 3),
        0,
        0,
        5,
        0,
        second.command,
    )


def test_joblog_reopen_appends_and_drops_a_torn_line(tmp_path: Path) -> None:
    """Reopening appends after the last whole line; a half-written last line is dropped."""
    log_path = tmp_path / "joblog"
    entry = JobLogEntry(1, ":", 1.0, 0.5, 0, 0, 0, 0, "echo one")
    with JobLog(log_path) as log:
        log.write(entry)
    with log_path.open("a") as f:
        f.write("2\t:\t2.000\t0.1")  # a crash mid-write
    assert read_joblog(log_path) == [entry]
    with JobLog(log_path) as log:
        log.write(JobLogEntry(3, ":", 3.0, 0.25, 0, 0, 124, 15, "sleep 9"))
    entries = read_joblog(log_path)
    assert [e.seq for e in entries] == [1, 3]
    assert entries[1].signal == 15
    assert log_path.read_text().count(JOBLOG_HEADER) == 1


def test_joblog_refuses_a_foreign_file_and_names_bad_lines(tmp_path: Path) -> None:
    """A file that is not a job log is not appended to; a malformed line names its number."""
    other = tmp_path / "notes.txt"
    other.write_text("my notes\n")
    with pytest.raises(InputError, match="not a job log"):
        JobLog(other)
    assert other.read_text() == "my notes\n"
    bad = tmp_path / "bad"
    bad.write_text(JOBLOG_HEADER + "\n1\t:\t1.0\t0.5\t0\t0\t0\t0\tok\nx\t:\t1\t1\t0\t0\t0\t0\tc\n")
    with pytest.raises(InputError, match=r"bad:3"):
        read_joblog(bad)


@given(st.text(max_size=60))
def test_joblog_command_round_trips(command: str) -> None:
    """Any command text, tabs and newlines included, survives a write and a read."""
    entry = JobLogEntry(7, ":", 1718000000.125, 1.5, 0, 0, 1, 0, command)
    line = entry.to_line()
    assert line.count("\n") == 1
    assert line.count("\t") == 8
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "log"
        with JobLog(path) as log:
            log.write(entry)
        assert read_joblog(path) == [entry]


# --- replacement strings ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "value", "expected"),
    [
        (["echo", "{}"], "dir/file.txt", ["echo", "dir/file.txt"]),
        (["echo", "{.}"], "dir/file.tar.gz", ["echo", "dir/file.tar"]),
        (["echo", "{.}"], "dir.x/file", ["echo", "dir.x/file"]),
        (["echo", "{/}"], "a/b/file.txt", ["echo", "file.txt"]),
        (["echo", "{//}"], "a/b/file.txt", ["echo", "a/b"]),
        (["echo", "{//}"], "file.txt", ["echo", "."]),
        (["echo", "{//}"], "/file.txt", ["echo", "/"]),
        (["echo", "{/.}"], "a/b/file.txt", ["echo", "file"]),
        (["echo", "{#}"], "x", ["echo", "7"]),
        (["cp", "{}", "out/{/.}.bak"], "in/a.txt", ["cp", "in/a.txt", "out/a.bak"]),
        (["echo", "--n={#}"], "x", ["echo", "--n=7"]),
        (["echo", "hi"], "x y", ["echo", "hi", "x y"]),
        (["echo", "{unknown}"], "v", ["echo", "{unknown}", "v"]),
    ],
)
def test_expand_matches_gnu_parallel(template: list[str], value: str, expected: list[str]) -> None:
    """Each replacement string behaves as GNU parallel defines it; no token appends the input."""
    assert expand(template, value, 7) == expected


_tokens = st.sampled_from(["{}", "{.}", "{/}", "{//}", "{/.}", "{#}"])
_literal = st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=8)


@given(
    st.lists(st.one_of(_literal, st.just("{}")), min_size=1, max_size=6),
    st.text(max_size=40),
    st.integers(min_value=1, max_value=10**6),
)
def test_expand_keeps_input_as_whole_elements(template: list[str], value: str, seq: int) -> None:
    """The input is never split or re-expanded: every `{}` element becomes exactly the input."""
    out = expand(template, value, seq)
    if "{}" in template:
        assert len(out) == len(template)
        for t, o in zip(template, out, strict=True):
            assert o == (value if t == "{}" else t)
    else:
        assert out == [*template, value]


@given(
    st.lists(st.one_of(_literal, _tokens, st.tuples(_literal, _tokens).map("".join)), max_size=6),
    st.text(max_size=30),
)
def test_expand_never_changes_the_number_of_arguments(template: list[str], value: str) -> None:
    """Expansion maps one element to one element (plus the appended input when no token)."""
    out = expand(template, value, 1)
    has_token = any(re.search(r"\{(//|/\.|/|\.|#|)\}", t) for t in template)
    assert len(out) == len(template) + (0 if has_token else 1)


@given(st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=40))
def test_expand_shell_quotes_every_value(value: str) -> None:
    """A shell command built by expand_shell splits back into the literal input."""
    assert shlex.split(expand_shell("cmd {} --seq {#}", value, 3)) == ["cmd", value, "--seq", "3"]
    assert shlex.split(expand_shell("cmd", value, 3)) == ["cmd", value]


# --- names ------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=40))
@needs_git
def test_branch_names_are_valid_git_refs(key: str) -> None:
    """Whatever the key, the branch name is one git accepts."""
    name = branch_name(key)
    assert name.startswith("conveyor/")
    check = subprocess.run(
        ["git", "check-ref-format", "--branch", name], capture_output=True, timeout=10
    )
    assert check.returncode == 0, name


@given(st.text(max_size=30), st.text(max_size=30))
def test_safe_names_keep_distinct_keys_distinct(a: str, b: str) -> None:
    """Two different keys never share an artifacts directory; names are path-safe."""
    na, nb = safe_name(a), safe_name(b)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", na)
    assert na not in (".", "..")
    if a != b:
        assert na != nb
