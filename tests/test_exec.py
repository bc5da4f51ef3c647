"""conveyor.commands._batch: one command per input, real processes, resumable via a journal."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import conveyor
from _procs import alive as _alive
from _procs import eventually as _eventually
from conveyor._base._exceptions import ConfigError
from conveyor._base._types import Status
from conveyor._journal._journal import Journal, JournalError, JournalMismatch
from conveyor.commands import CommandResult, read_joblog
from conveyor.commands._batch import (
    ExecContext,
    ExecJob,
    JobOutcome,
    arun_commands,
    command_fn,
    job_key,
    plan_commands,
    retry_commands,
    run_commands,
)

GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")

# Each job records its own pid and two background children's, then waits on them.
SPAWN = (
    'echo $$ >> "$1"; sleep 30 & echo $! >> "$1"; '
    '(trap "" TERM; exec sleep 30) & echo $! >> "$1"; wait'
)


def _counts(report: Any) -> dict[str, int]:
    return {k: v for k, v in report.counts.items() if v}


def _exec_sh(script: str) -> list[str]:
    """A POSIX sh script as an argv template; the input arrives as $1 (and $2 if given)."""
    return ["sh", "-c", script, "sh", "{}"]


# --- running, outputs, joblog ---------------------------------------------------------------


def test_each_input_runs_once_with_results_in_input_order(tmp_path: Path) -> None:
    """Every input runs; results, joblog and results.jsonl describe each job by seq and key."""
    art = tmp_path / "art"
    report = run_commands(
        ["c", "a", "b"], _exec_sh('echo "out $1 $CONVEYOR_JOB_SEQ"'), jobs=3, artifacts=art
    )
    assert _counts(report) == {"ok": 3}
    assert [r.key for r in report.results] == ["c", "a", "b"]
    assert [r.index for r in report.results] == [0, 1, 2]
    for i, r in enumerate(report.results, start=1):
        assert isinstance(r.value, CommandResult)
        assert r.value.stdout_text() == f"out {r.key} {i}\n"
        assert r.value.stdout_path == art / "jobs" / r.key / "stdout"
        assert r.meta["command"]["exit_code"] == 0
    entries = sorted(read_joblog(art / "joblog.tsv"), key=lambda e: e.seq)
    assert [(e.seq, e.exitval, e.command.split()[-1]) for e in entries] == [
        (1, 0, "c"),
        (2, 0, "a"),
        (3, 0, "b"),
    ]
    lines = [json.loads(x) for x in (art / "results.jsonl").read_text().splitlines()]
    assert [(d["seq"], d["key"], d["status"], d["exit_code"]) for d in lines] == [
        (1, "c", "ok", 0),
        (2, "a", "ok", 0),
        (3, "b", "ok", 0),
    ]
    assert (art / ".gitignore").read_text().endswith("*\n")


def test_failures_are_per_job_and_a_missing_command_is_named(tmp_path: Path) -> None:
    """A job that fails or cannot start fails alone, with an error naming the program."""
    report = run_commands(
        ["true", "no-such-program-xyz", "false"], ["{}"], jobs=2, artifacts=tmp_path / "art"
    )
    by_key = {r.key: r for r in report.results}
    assert by_key["true"].status is Status.OK
    missing = by_key["no-such-program-xyz"]
    assert missing.status is Status.FAILED
    assert missing.error is not None
    assert missing.error.type == "CommandNotFound"
    assert "cannot run 'no-such-program-xyz'" in missing.error.message
    assert "PATH" in missing.error.message
    assert by_key["false"].error is not None
    assert by_key["false"].error.type == "CommandFailed"
    assert by_key["false"].meta["command"]["exit_code"] == 1
    exitvals = {e.command: e.exitval for e in read_joblog(tmp_path / "art" / "joblog.tsv")}
    assert exitvals == {"true": 0, "no-such-program-xyz": 127, "false": 1}


def test_timeout_kills_grandchildren_and_gives_124(tmp_path: Path) -> None:
    """A job past its timeout is killed with its whole process group: exit 124, no survivor."""
    pidfile = tmp_path / "pids"
    t0 = time.monotonic()
    report = run_commands(
        [str(pidfile)],
        _exec_sh(SPAWN),
        timeout=0.5,
        kill_grace=0.3,
        artifacts=tmp_path / "art",
    )
    assert time.monotonic() - t0 < 10
    (r,) = report.results
    assert r.status is Status.TIMED_OUT
    assert r.meta["command"]["exit_code"] == 124
    assert r.meta["command"]["timed_out"] is True
    (entry,) = read_joblog(tmp_path / "art" / "joblog.tsv")
    assert entry.exitval == 124
    pids = [int(x) for x in pidfile.read_text().split()]
    assert len(pids) == 3
    assert _eventually(lambda: not any(_alive(p) for p in pids))


def test_ten_megabytes_of_output_do_not_deadlock(tmp_path: Path) -> None:
    """10 MB from one job goes to its stdout file, and on_job can stream it, in bounded time."""
    size = 10 * 1024 * 1024
    seen: list[int] = []

    def on_job(o: JobOutcome) -> None:
        assert o.command is not None
        seen.append(o.command.stdout_path.stat().st_size)

    t0 = time.monotonic()
    report = run_commands(
        [str(size)], ["head", "-c", "{}", "/dev/zero"], artifacts=tmp_path / "a", on_job=on_job
    )
    assert time.monotonic() - t0 < 30
    assert report.results[0].value.stdout_path.stat().st_size == size
    assert seen == [size]


def test_concurrency_is_never_exceeded(tmp_path: Path) -> None:
    """With jobs=2, at most two jobs ever run at once, and two do run together."""
    slots = tmp_path / "slots"
    slots.mkdir()
    counts = tmp_path / "counts"
    script = f'touch {slots}/$$; ls {slots} | wc -l >> {counts}; sleep 0.3; rm {slots}/$$; : "$1"'
    report = run_commands(
        [str(i) for i in range(6)], _exec_sh(script), jobs=2, artifacts=tmp_path / "a"
    )
    assert _counts(report) == {"ok": 6}
    seen = [int(x) for x in counts.read_text().split()]
    assert len(seen) == 6
    assert max(seen) == 2
    assert report.extra["max_in_flight"] <= 2


def test_keep_order_delivers_outcomes_in_input_order(tmp_path: Path) -> None:
    """on_job gets jobs in input order with keep_order, even when later ones finish first."""
    got: list[int] = []
    run_commands(
        ["0.4", "0.2", "0"],
        ["sleep", "{}"],
        jobs=3,
        keep_order=True,
        artifacts=tmp_path / "a",
        on_job=lambda o: got.append(o.job.seq),
    )
    assert got == [1, 2, 3]


def test_an_input_can_never_inject_a_command(tmp_path: Path) -> None:
    """Inputs stay one literal argument, with and without --shell (where they are quoted)."""
    evil = f"x; touch {tmp_path}/pwned; echo $(touch {tmp_path}/pwned2)"
    plain = run_commands([evil], ["echo", "{}"], artifacts=tmp_path / "a")
    shell = run_commands([evil], "echo {}", shell=True, artifacts=tmp_path / "b")
    assert plain.results[0].value.stdout_text() == evil + "\n"
    assert shell.results[0].value.stdout_text() == evil + "\n"
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "pwned2").exists()


def test_non_utf8_input_reaches_the_command_byte_for_byte(tmp_path: Path) -> None:
    """An input with invalid UTF-8 (a file name) is passed exactly and stored safely."""
    value = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
    report = run_commands([value], ["printf", "%s", "{}"], artifacts=tmp_path / "a")
    (r,) = report.results
    assert r.ok
    assert r.value.stdout_path.read_bytes() == b"caf\xe9 \xff"
    line = json.loads((tmp_path / "a" / "results.jsonl").read_text())
    assert line["status"] == "ok"
    with Journal.open_readonly(tmp_path / "a" / "journal.sqlite") as j:
        stored = j.get(r.key)
    assert stored is not None
    assert ExecJob.from_item(stored.item).value == value


def test_halt_on_fail_stops_the_rest(tmp_path: Path) -> None:
    """With halt_on_fail, the first failure stops the run: later inputs are skipped."""
    report = run_commands(
        ["1", "0", "0", "0"],
        ["sh", "-c", 'exit "$1"', "sh"],
        jobs=1,
        halt_on_fail=True,
        artifacts=tmp_path / "a",
    )
    assert report.counts.get("failed") == 1
    assert report.counts.get("skipped") == 3


def test_retries_rerun_a_failed_job(tmp_path: Path) -> None:
    """retries=N runs a failing job again; one that passes on its second try ends ok."""
    marker = tmp_path / "tried"
    script = 'if [ -e "$1" ]; then exit 0; else touch "$1"; exit 1; fi'
    report = run_commands([str(marker)], _exec_sh(script), retries=2, artifacts=tmp_path / "a")
    (r,) = report.results
    assert r.status is Status.OK
    assert r.attempts == 2


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    """Impossible options fail before anything runs, naming the option."""
    with pytest.raises(ConfigError, match="jobs"):
        run_commands(["a"], ["echo"], jobs=0, artifacts=tmp_path / "a")
    with pytest.raises(ConfigError, match="isolate"):
        run_commands(["a"], ["echo"], isolate="vm", artifacts=tmp_path / "a")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="shell=True"):
        run_commands(["a"], "echo {}", artifacts=tmp_path / "a")
    with pytest.raises(ConfigError, match="program"):
        run_commands(["a"], [], artifacts=tmp_path / "a")
    assert not (tmp_path / "a").exists()


# --- the journal: resume, identity, retry ---------------------------------------------------


FLAKY = 'echo "$1" >> "$2"; [ "$1" != b ] || [ -e "$2.fixed" ]'


def _flaky(tmp_path: Path) -> tuple[list[str], Path]:
    runs = tmp_path / "runs"
    return ["sh", "-c", FLAKY, "sh", "{}", str(runs)], runs


def test_rerun_skips_jobs_that_succeeded(tmp_path: Path) -> None:
    """Running the same command again runs only what did not finish (the one
    resume rule: a failed job is re-run by retry, not by a rerun); then nothing."""
    cmd, runs = _flaky(tmp_path)
    art = tmp_path / "art"
    first = run_commands(["a", "b", "c"], cmd, artifacts=art)
    assert _counts(first) == {"ok": 2, "failed": 1}
    Path(f"{runs}.fixed").touch()
    second = run_commands(["a", "b", "c"], cmd, artifacts=art)
    assert _counts(second) == {}
    assert second.extra["already_done"] == 3
    retried = retry_commands(first.extra["journal"])
    assert _counts(retried) == {"ok": 1}
    third = run_commands(["a", "b", "c", "d"], cmd, artifacts=art)
    assert _counts(third) == {"ok": 1}
    assert sorted(runs.read_text().split()) == ["a", "b", "b", "c", "d"]
    keys = [json.loads(x)["key"] for x in (art / "results.jsonl").read_text().splitlines()]
    assert keys == ["a", "b", "c", "d"]


def test_repeated_inputs_are_distinct_jobs(tmp_path: Path) -> None:
    """The same value twice is two jobs with two keys, both skipped on rerun."""
    art = tmp_path / "art"
    report = run_commands(["x", "x"], ["true"], artifacts=art)
    assert [r.key for r in report.results] == ["x", "x\n#2"]
    again = run_commands(["x", "x"], ["true"], artifacts=art)
    assert again.total == 0
    assert again.extra["already_done"] == 2


def test_another_command_on_the_same_journal_is_refused(tmp_path: Path) -> None:
    """A journal remembers its command: a different one is refused unless forced."""
    art = tmp_path / "art"
    run_commands(["a"], ["echo", "{}"], artifacts=art)
    with pytest.raises(JournalMismatch) as info:
        run_commands(["a"], ["echo", "-n", "{}"], artifacts=art)
    assert "`force=True`" in str(info.value)
    assert "echo -n" in str(info.value)
    forced = run_commands(["a", "b"], ["echo", "-n", "{}"], artifacts=art, force=True)
    assert _counts(forced) == {"ok": 1}


def test_a_command_holding_a_key_is_not_stored_in_clear(tmp_path: Path) -> None:
    """A credential-looking command is recorded in the journal as a hash only."""
    secret = "sk-" + "a1B2c3D4" * 4
    run_commands(["a"], ["echo", secret, "{}"], artifacts=tmp_path / "art")
    with Journal.open_readonly(tmp_path / "art" / "journal.sqlite") as j:
        identity = j.identity
    assert "command" not in identity
    assert secret not in json.dumps(identity)
    assert len(identity["command_sha256"]) == 64


def test_retry_commands_reruns_the_failed_jobs_from_the_journal(tmp_path: Path) -> None:
    """retry_commands re-runs only failed jobs, from the stored inputs and settings."""
    cmd, runs = _flaky(tmp_path)
    art = tmp_path / "art"
    run_commands(["a", "b", "c"], cmd, artifacts=art)
    Path(f"{runs}.fixed").touch()
    report = retry_commands(art / "journal.sqlite")
    assert _counts(report) == {"ok": 1}
    assert [r.key for r in report.results] == ["b"]
    assert sorted(runs.read_text().split()) == ["a", "b", "b", "c"]
    with Journal.open_readonly(art / "journal.sqlite") as j:
        assert j.status_counts() == {"ok": 3}
    assert retry_commands(art / "journal.sqlite").total == 0
    entries = read_joblog(art / "joblog.tsv")
    assert [e.seq for e in entries][-1] == 2


def test_retry_refuses_a_journal_not_written_by_exec(tmp_path: Path) -> None:
    """retry_commands names the file when the journal holds no exec jobs."""
    path = tmp_path / "other.sqlite"
    Journal.open(path, identity={"kind": "batch"}).close()
    with pytest.raises(JournalError, match="not written by `conveyor exec`"):
        retry_commands(path)


def test_plan_lists_only_jobs_that_would_run(tmp_path: Path) -> None:
    """plan_commands (dry run) skips finished jobs (failed ones too: retry
    re-runs those) and shows shell-quoted commands."""
    cmd, runs = _flaky(tmp_path)
    art = tmp_path / "art"
    run_commands(["a", "b"], cmd, artifacts=art)
    planned = list(plan_commands(["a", "b", "c d"], cmd, artifacts=art))
    assert [job.key for job, _ in planned] == ["c d"]
    assert planned[0][1].endswith(f"sh 'c d' {runs}")
    fresh = list(plan_commands(["x"], "echo {}", shell=True, artifacts=tmp_path / "none"))
    assert fresh == [(ExecJob(1, "x", "x"), "echo x")]
    assert not (tmp_path / "none").exists()


# --- isolation ------------------------------------------------------------------------------


def test_dir_isolation_gives_each_job_a_fresh_directory(tmp_path: Path) -> None:
    """isolate='dir': each job starts in its own empty directory, removed after success."""
    report = run_commands(
        ["a", "b"],
        _exec_sh("pwd; ls -A | wc -l; touch junk"),
        isolate="dir",
        artifacts=tmp_path / "art",
    )
    dirs = []
    for r in report.results:
        where, count = r.value.stdout_text().split()
        assert count == "0"
        dirs.append(Path(where))
        assert r.value.workspace is None
    assert len(set(dirs)) == 2
    assert not any(d.exists() for d in dirs)


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


@needs_git
def test_worktree_isolation_separate_branches_and_cleanup(tmp_path: Path) -> None:
    """Each worktree job commits on its own branch; worktrees go, empty branches too."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "README").write_text("hi\n")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@e.invalid", "commit", "-qm", "init")
    script = (
        'git rev-parse --abbrev-ref HEAD; [ "$1" = noop ] && exit 0; '
        'echo "$1" > "f-$1"; git add "f-$1"; git commit -qm "$1"'
    )
    report = run_commands(
        ["a", "b", "noop"],
        _exec_sh(script),
        jobs=3,
        isolate="worktree",
        cwd=repo,
        env=GIT_IDENTITY,
        artifacts=tmp_path / "art",
    )
    assert _counts(report) == {"ok": 3}
    heads = {r.key: r.value.stdout_text().strip() for r in report.results}
    assert heads == {"a": "conveyor/a", "b": "conveyor/b", "noop": "conveyor/noop"}
    branches = {r.key: r.value.branch for r in report.results}
    assert branches == {"a": "conveyor/a", "b": "conveyor/b", "noop": None}
    assert _git(repo, "show", "conveyor/a:f-a") == "a"
    assert _git(repo, "show", "conveyor/b:f-b") == "b"
    assert _git(repo, "branch", "--list", "conveyor/noop") == ""
    assert _git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert _git(repo, "status", "--porcelain") == ""


# --- the Python API: with conveyor.run and the executors -----------------------------------


def test_command_fn_runs_under_conveyor_run(tmp_path: Path) -> None:
    """command_fn makes a task function for conveyor.run: values are CommandResults."""
    fn = command_fn(["echo", "{#}", "{/.}"], ExecContext(artifacts_dir=tmp_path))
    report = conveyor.run(["x/a.txt", "y/b.txt"], fn, concurrency=2, retries=0)
    assert [r.value.stdout_text() for r in report.results] == ["1 a\n", "2 b\n"]
    assert all(isinstance(r.value, CommandResult) for r in report.results)


def test_exec_context_tasks_run_on_an_executor(tmp_path: Path) -> None:
    """ExecContext.task gives zero-argument tasks that the executors run in order."""
    ctx = ExecContext(isolate="dir", timeout=5, artifacts_dir=tmp_path)
    jobs = [ExecJob(i, v, v) for i, v in enumerate(["p", "q"], start=1)]
    with conveyor.AsyncExecutor(max_concurrency=2) as ex:
        results = ex.execute([ctx.task(["echo", "{}"], j) for j in jobs])
    assert [r.value.stdout_text() for r in results] == ["p\n", "q\n"]
    assert all(r.value.artifacts_path.parent == tmp_path for r in results)


async def test_arun_commands_reads_an_async_source(tmp_path: Path) -> None:
    """arun_commands runs on the caller's loop and takes async iterables of inputs."""

    async def inputs() -> Any:
        for v in ("m", "n"):
            yield v

    report = await arun_commands(inputs(), ["echo", "{}"], artifacts=tmp_path / "a", jobs=2)
    assert _counts(report) == {"ok": 2}
    assert threading.active_count() >= 1


# --- pure parts ----------------------------------------------------------------------------


texts = st.text(max_size=300) | st.binary(max_size=60).map(
    lambda b: b.decode("utf-8", "surrogateescape")
)


@given(texts, texts, st.integers(1, 5), st.integers(1, 5))
def test_job_keys_are_distinct_storable_and_bounded(a: str, b: str, i: int, j: int) -> None:
    """Distinct (value, repeat) pairs get distinct keys; keys are UTF-8 and short."""
    ka, kb = job_key(a, i), job_key(b, j)
    if (a, i) != (b, j):
        assert ka != kb
    ka.encode("utf-8")
    assert len(ka) <= 200 + 3


@given(st.integers(1, 10**9), texts)
def test_exec_job_round_trips_through_its_stored_form(seq: int, value: str) -> None:
    """to_item/from_item keep any input exactly, and the stored form is JSON."""
    job = ExecJob(seq, value, job_key(value))
    item = json.loads(json.dumps(job.to_item()))
    assert ExecJob.from_item(item) == job


def test_job_slots_and_several_sources(tmp_path: Path) -> None:
    """`{%}` is a slot in 1..jobs never held by two running jobs at once (also
    $PARALLEL_JOBSLOT); a tuple input fills `{1}` `{2}` (GNU parallel's `::: a ::: b`)."""
    from conveyor.commands._batch import run_commands

    inputs = [(m, lr) for m in ("s", "m", "l") for lr in ("1", "2")]
    report = run_commands(
        inputs,
        "echo {%} $PARALLEL_JOBSLOT {1}-{2}; sleep 0.1",
        shell=True,
        jobs=2,
        artifacts=tmp_path / "a",
    )
    assert report.counts["ok"] == 6
    outs = [Path(r.value.stdout_path).read_text().split() for r in report]
    assert [o[2] for o in outs] == ["s-1", "s-2", "m-1", "m-2", "l-1", "l-2"]
    assert all(o[0] == o[1] and o[0] in ("1", "2") for o in outs)
    assert {o[0] for o in outs} == {"1", "2"}
