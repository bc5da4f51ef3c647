"""`conveyor exec`: argument parsing (CliRunner) and behaviour (the real console script)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from _procs import alive as _alive
from _procs import eventually as _eventually
from _procs import pids as _pids
from conveyor.cli._exec import exec_cmd, split_inputs
from conveyor.commands import read_joblog

CONVEYOR = str(Path(sys.executable).with_name("conveyor"))
# Records the job shell's pid and its background child's, then waits on the child.
SPAWN = "echo $$ >> {pids}; sleep 30 & echo $! >> {pids}; : {{}}; wait"


def _conveyor(
    *args: str, cwd: Path, stdin: bytes | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [CONVEYOR, *args], cwd=cwd, input=stdin, capture_output=True, timeout=timeout
    )


# --- parsing (CliRunner) -----------------------------------------------------------------------


def test_help_answers_the_usual_questions() -> None:
    """--help shows examples, the replacement strings, where outputs go and the exit codes."""
    out = CliRunner().invoke(exec_cmd, ["--help"]).output
    for needle in ("Examples:", "{.}", "{/}", "{#}", "joblog.tsv", "journal.sqlite", "124", "130"):
        assert needle in out
    assert "--keep-order" in out
    assert "--isolate [none|dir|worktree]" in out


def test_dry_run_prints_quoted_commands_and_passes_options_through(tmp_path: Path) -> None:
    """Options after the command belong to it; --dry-run prints each job's command line."""
    art = tmp_path / "art"
    result = CliRunner().invoke(
        exec_cmd,
        [
            "--dry-run",
            "--artifacts",
            str(art),
            "echo",
            "-n",
            "{/.}",
            "{#}",
            ":::",
            "d/a b.txt",
            "x",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["echo -n 'a b' 1", "echo -n x 2"]
    assert not art.exists()  # a dry run writes nothing


def test_dry_run_reads_stdin_lines_and_quotes_for_the_shell(tmp_path: Path) -> None:
    """With --shell the line is kept and each input is shell-quoted; stdin gives the inputs."""
    result = CliRunner().invoke(
        exec_cmd,
        ["--dry-run", "--shell", "--artifacts", str(tmp_path / "a"), "--", "wc -l {} > {}.n"],
        input="f;rm -rf ~\nplain\n",
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "wc -l 'f;rm -rf ~' > 'f;rm -rf ~'.n",
        "wc -l plain > plain.n",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--", ":::", "a"], "give the command to run"),
        (["--", "echo", "::::", "f"], "--arg-file"),
        (["--bogus", "echo"], "No such option"),
        (["--jobs", "0", "echo", ":::", "a"], "--jobs"),
        (["--isolate", "vm", "echo", ":::", "a"], "--isolate"),
    ],
)
def test_bad_usage_exits_2_with_a_clear_message(args: list[str], message: str) -> None:
    """Usage errors exit 2 and say what is wrong."""
    result = CliRunner().invoke(exec_cmd, args)
    assert result.exit_code == 2
    assert message in result.output


def test_inputs_from_two_sources_are_refused(tmp_path: Path) -> None:
    """`:::` and --arg-file together are refused instead of silently combined."""
    f = tmp_path / "inputs"
    f.write_text("a\n")
    result = CliRunner().invoke(exec_cmd, ["-a", str(f), "--", "echo", ":::", "b"])
    assert result.exit_code == 2
    assert "not both" in result.output


separators = st.lists(st.text(min_size=1).filter(lambda s: not s.startswith(":::")), max_size=5)


@given(separators.filter(bool), separators)
def test_split_inputs_separates_command_and_inputs(template: list[str], values: list[str]) -> None:
    """Everything before `:::` is the command, everything after it the inputs."""
    assert split_inputs([*template, ":::", *values]) == (template, values)
    assert split_inputs(template) == (template, None)


def test_split_inputs_combines_several_lists_as_gnu_parallel() -> None:
    """Several `:::` lists give every combination, the last varying fastest."""
    assert split_inputs(["echo", ":::", "a", "b", ":::", "c", "d"]) == (
        ["echo"],
        [("a", "c"), ("a", "d"), ("b", "c"), ("b", "d")],
    )


def test_positional_beyond_the_sources_is_a_usage_error() -> None:
    result = CliRunner().invoke(exec_cmd, ["--", "echo", "{1}", "{3}", ":::", "a", ":::", "b"])
    assert result.exit_code == 2
    assert "{3}" in result.output and "2 input source" in result.output


def test_dry_run_fills_positions_and_slots() -> None:
    cmd = ["run", "{1}", "{2.}", "--gpu={%}", "#{#}"]
    sources = [":::", "s", "m", ":::", "x.txt", "y.txt"]
    result = CliRunner().invoke(exec_cmd, ["-j", "2", "--dry-run", "--", *cmd, *sources])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "run s x --gpu=1 '#1'",
        "run s y --gpu=2 '#2'",
        "run m x --gpu=1 '#3'",
        "run m y --gpu=2 '#4'",
    ]


# --- behaviour (the real console script) ------------------------------------------------------


def test_runs_prints_outputs_summarises_and_resumes(tmp_path: Path) -> None:
    """Outputs are printed, a summary goes to stderr, exit 1 on failure; a rerun skips
    finished jobs (the one resume rule) and `conveyor retry` re-runs the failed one."""
    script = 'echo "out $1"; echo "err $1" >&2; [ "$1" != b ] || [ -e fixed ]'
    args = ["exec", "-j", "2", "--", "sh", "-c", script, "sh", "{}", ":::", "a", "b", "c"]
    first = _conveyor(*args, cwd=tmp_path)
    assert first.returncode == 1
    assert sorted(first.stdout.decode().splitlines()) == ["out a", "out b", "out c"]
    err = first.stderr.decode()
    assert "err b" in err
    assert "job 'b'" in err
    assert "exited with code 1" in err
    assert "3 jobs: 2 ok, 1 failed, 0 timed out; joblog at " in err
    (art,) = tmp_path.glob("conveyor-exec-*")
    assert [e.exitval for e in sorted(read_joblog(art / "joblog.tsv"), key=lambda e: e.seq)] == [
        0,
        1,
        0,
    ]
    (tmp_path / "fixed").touch()
    second = _conveyor(*args, cwd=tmp_path)
    assert second.stdout.decode() == ""
    assert "3 skipped as already done" in second.stderr.decode()
    third = _conveyor("retry", str(art / "journal.sqlite"), cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert third.stdout.decode() == "out b\n"
    lines = [json.loads(x) for x in (art / "results.jsonl").read_text().splitlines()]
    assert [(d["key"], d["status"]) for d in lines] == [("a", "ok"), ("b", "ok"), ("c", "ok")]


def test_keep_order_prints_in_input_order(tmp_path: Path) -> None:
    """-k prints each job's output in input order although later jobs finish first."""
    result = _conveyor(
        "exec", "-k", "-j", "3", "--", "sh", "-c", 'sleep "$1"; echo "$1"', "sh",
        ":::", "0.6", "0.3", "0", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == ["0.6", "0.3", "0"]


def test_stdin_lines_are_the_inputs(tmp_path: Path) -> None:
    """Lines piped on stdin become jobs, and {.} and {#} are filled from them."""
    result = _conveyor(
        "exec", "-k", "--", "echo", "{#}", "{.}", cwd=tmp_path, stdin=b"a.txt\nb.tar.gz\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == ["1 a", "2 b.tar"]


def test_ten_megabytes_of_output_are_printed_without_deadlock(tmp_path: Path) -> None:
    """One job's 10 MB of stdout passes through files to conveyor's stdout in bounded time."""
    size = 10 * 1024 * 1024
    with (tmp_path / "out").open("wb") as out:
        proc = subprocess.run(
            [CONVEYOR, "exec", "--", "head", "-c", "{}", "/dev/zero", ":::", str(size)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out").stat().st_size == size


def test_timeout_kills_grandchildren_exit_124_in_joblog(tmp_path: Path) -> None:
    """--timeout kills the job's whole group; the joblog says 124; nothing survives."""
    pids = tmp_path / "pids"
    result = _conveyor(
        "exec", "--timeout", "0.5", "--kill-grace", "0.2", "--artifacts", "art", "--shell",
        "--", SPAWN.format(pids=pids), ":::", "x", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "timed out after 0.5s" in result.stderr.decode()
    assert "0 ok, 0 failed, 1 timed out" in result.stderr.decode()
    (entry,) = read_joblog(tmp_path / "art" / "joblog.tsv")
    assert entry.exitval == 124
    found = _pids(pids)
    assert len(found) == 2
    assert _eventually(lambda: not any(_alive(p) for p in found))


def test_missing_command_is_a_clear_per_job_error(tmp_path: Path) -> None:
    """A program that does not exist fails its job with a message naming it; exit 1."""
    result = _conveyor("exec", "--", "no-such-program-xyz", "{}", ":::", "a", cwd=tmp_path)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "cannot run 'no-such-program-xyz': no such file or command" in err
    assert "1 job: 0 ok, 1 failed" in err


def test_another_command_against_the_journal_is_refused(tmp_path: Path) -> None:
    """Reusing an artifacts directory with another command exits 2 and suggests --force."""
    assert (
        _conveyor("exec", "--artifacts", "a", "--", "true", ":::", "x", cwd=tmp_path).returncode
        == 0
    )
    refused = _conveyor("exec", "--artifacts", "a", "--", "echo", ":::", "x", cwd=tmp_path)
    assert refused.returncode == 2
    assert "--force" in refused.stderr.decode()
    forced = _conveyor(
        "exec", "--force", "--artifacts", "a", "--", "echo", ":::", "x", cwd=tmp_path
    )
    assert forced.returncode == 0


def test_ctrl_c_twice_stops_running_jobs_and_leaves_no_orphans(tmp_path: Path) -> None:
    """First SIGINT: jobs keep running; second: they and their children die; exit 130."""
    pids = tmp_path / "pids"
    errfile = tmp_path / "stderr"
    with errfile.open("wb") as errs:
        proc = subprocess.Popen(
            [CONVEYOR, "exec", "-j", "2", "--shell", "--", SPAWN.format(pids=pids),
             ":::", "a", "b", "c"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=errs,
        )  # fmt: skip
        try:
            assert _eventually(lambda: len(_pids(pids)) == 4), "the jobs did not start"
            found = _pids(pids)
            proc.send_signal(signal.SIGINT)
            assert _eventually(lambda: b"press Ctrl+C again" in errfile.read_bytes())
            assert proc.poll() is None
            assert all(_alive(p) for p in found)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = errfile.read_bytes()
    assert proc.returncode == 130
    assert b"Rerun the same command to resume" in err
    assert b"2 cancelled" in err
    assert _eventually(lambda: not any(_alive(p) for p in found))


def test_ctrl_c_once_ends_after_the_grace_period(tmp_path: Path) -> None:
    """One SIGINT with --grace 0.3: jobs get that long, are then killed, and conveyor exits 130."""
    pids = tmp_path / "pids"
    proc = subprocess.Popen(
        [CONVEYOR, "exec", "--grace", "0.3", "--shell", "--", SPAWN.format(pids=pids), ":::", "a"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert _eventually(lambda: len(_pids(pids)) == 2), "the job did not start"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert _eventually(lambda: not any(_alive(p) for p in _pids(pids)))


def test_sigterm_kills_running_jobs_at_once(tmp_path: Path) -> None:
    """SIGTERM (a service manager, `timeout`) aborts at once: no job survives, exit 130."""
    pids = tmp_path / "pids"
    proc = subprocess.Popen(
        [CONVEYOR, "exec", "--shell", "--", SPAWN.format(pids=pids), ":::", "a"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert _eventually(lambda: len(_pids(pids)) == 2), "the job did not start"
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert b"killing every running job" in err
    assert _eventually(lambda: not any(_alive(p) for p in _pids(pids)))


def test_ctrl_c_ends_a_run_whose_stdin_is_still_open(tmp_path: Path) -> None:
    """Ctrl+C stops a run fed by a pipe that never ends (`tail -f | conveyor exec`)."""
    read_end, write_end = os.pipe()
    outfile = tmp_path / "out"
    try:
        with outfile.open("wb") as out:
            proc = subprocess.Popen(
                [CONVEYOR, "exec", "--", "echo", "got"],
                cwd=tmp_path,
                stdin=read_end,
                stdout=out,
                stderr=subprocess.PIPE,
            )
            os.close(read_end)
            read_end = -1
            try:
                os.write(write_end, b"first\n")
                assert _eventually(lambda: outfile.read_bytes() == b"got first\n")
                proc.send_signal(signal.SIGINT)
                _out, err = proc.communicate(timeout=20)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
    finally:
        if read_end >= 0:
            os.close(read_end)
        os.close(write_end)
    assert proc.returncode == 130
    assert b"Rerun the same command to resume" in err


def test_exec_monitor_samples_the_jobs_and_the_report_draws_them(tmp_path: Path) -> None:
    """`conveyor exec --monitor`: the summary gives the peaks (the jobs' memory
    too), and `conveyor report JOURNAL --html` draws memory over time."""
    journal = tmp_path / "j.db"
    src = str(Path(__file__).resolve().parent.parent / "src")  # this checkout's conveyor
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}

    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "conveyor.cli", *args], cwd=tmp_path,
                              env=env, capture_output=True, timeout=60, check=False)  # fmt: skip

    r = cli("exec", "--monitor", "--monitor-interval", "0.05", "--journal", str(journal),
            "--", "sh", "-c", "sleep 0.3; echo {}", ":::", "a", "b")  # fmt: skip
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert "resources (peak) process_rss_mb" in err and "children_rss_mb" in err
    page = tmp_path / "r.html"
    rep = cli("report", str(journal), "--html", str(page))
    assert rep.returncode == 0, rep.stderr
    assert '<svg id="chart-memory"' in page.read_text()


# Records "pid ppid" of the job shell, then the pids of a background child and
# of a `setsid` grandchild (its own session and group), then waits on them.
ESCAPE = (
    'echo "$$ $PPID" >> {pids}; sleep 30 & echo "$! $$" >> {pids}; '
    'setsid sleep 30 & echo "$! $$" >> {pids}; : {{}}; wait'
)


def _lines(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    return [(int(a), int(b)) for a, b in (x.split() for x in path.read_text().splitlines())]


def test_timeout_kills_a_setsid_grandchild_too(tmp_path: Path) -> None:
    """--timeout kills the job's whole tree: a grandchild that left the job's
    group with `setsid` dies with it (#12.12)."""
    pids = tmp_path / "pids"
    result = _conveyor(
        "exec", "--timeout", "0.5", "--kill-grace", "0.2", "--artifacts", "art", "--shell",
        "--", ESCAPE.format(pids=pids), ":::", "x", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    found = [p for p, _ in _lines(pids)]
    assert len(found) == 3
    assert _eventually(lambda: not any(_alive(p) for p in found)), [p for p in found if _alive(p)]


def test_kill_9_of_exec_kills_its_jobs_and_a_rerun_never_overlaps_them(tmp_path: Path) -> None:
    """kill -9 of `conveyor exec`: its running jobs, their children and a
    `setsid` grandchild die with it (no orphans), and a rerun started at once
    starts no job while an old one still runs (#12.12)."""
    pids = tmp_path / "pids"
    args = [CONVEYOR, "exec", "-j", "2", "--artifacts", "art", "--shell", "--",
            ESCAPE.format(pids=pids), ":::", "a", "b"]  # fmt: skip
    first = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    rerun: subprocess.Popen[bytes] | None = None
    try:
        assert _eventually(lambda: len(_lines(pids)) == 6, within=20), "the jobs did not start"
        old = [p for p, _ in _lines(pids)]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        rerun = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
        # The moment the rerun's first job has started, every old process is gone.
        assert _eventually(lambda: any(ppid == rerun.pid for _, ppid in _lines(pids)), within=20), (
            "the rerun started no job"
        )
        assert [p for p in old if _alive(p)] == []
    finally:
        for proc in (first, rerun):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    new = [p for p, _ in _lines(pids)[6:]]
    assert _eventually(lambda: not any(_alive(p) for p in new + old))
