"""The one journaled pipeline: the resume rule, the same for every front end.

The matrix runs each journaled front end (`conveyor.run(journal=)`,
`conveyor exec` as `run_commands`, `conveyor run` as `arun_file`) twice
over a real journal: the first run finishes `a` (ok) and `b` (failed); then
`c` is stored as cancelled (what a stop on a fatal condition leaves); the
second run gets one new item `d`. The rule: only `c` and `d` run again.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

import conveyor
from conveyor._base._types import ErrorInfo, Result, Status
from conveyor._journal._journal import Journal
from conveyor._pipeline import FINISHED, Plan, is_finished
from conveyor.commands._batch import retry_commands, run_commands
from conveyor.mock import MockConfig, MockServer
from conveyor.openai import RunSettings, arun_file

if TYPE_CHECKING:
    from collections.abc import Callable

KEY = "sk-test-pipeline"


def _cancel(journal_path: str | Path, key: str) -> None:
    """Store `key` as cancelled, as a run stopped by a fatal condition leaves it."""
    with Journal.open_readonly(journal_path) as ro:
        identity = ro.identity
    with Journal.open(journal_path, identity=identity) as j:
        err = ErrorInfo("FatalError", "the run stopped")
        j.record([(Result(index=0, key=key, status=Status.CANCELLED, error=err), None, None)])


def _python(tmp_path: Path) -> Callable[[list[str]], list[str]]:
    """conveyor.run(journal=): returns the keys fn ran for."""
    db = tmp_path / "run.db"

    def go(keys: list[str]) -> list[str]:
        ran: list[str] = []

        def fn(k: str) -> str:
            ran.append(k)
            if k == "b":
                raise ValueError("b fails")
            return k.upper()

        report = conveyor.run(keys, fn, journal=db, key=str, retries=0)
        assert [r.key for r in report] == keys  # every input reported, in order
        return ran

    go.journal = db  # type: ignore[attr-defined]
    return go


def _exec(tmp_path: Path) -> Callable[[list[str]], list[str]]:
    """conveyor exec: returns the keys a process ran for."""
    runs = tmp_path / "runs"
    art = tmp_path / "art"
    script = 'echo "$1" >> "$2"; [ "$1" != b ]'

    def go(keys: list[str]) -> list[str]:
        before = runs.read_text().split() if runs.exists() else []
        report = run_commands(keys, ["sh", "-c", script, "sh", "{}", str(runs)], artifacts=art)
        go.journal = report.extra["journal"]  # type: ignore[attr-defined]
        return runs.read_text().split()[len(before) :]

    return go


def _openai(tmp_path: Path) -> Callable[[list[str]], list[str]]:
    """conveyor run against the simulated server: returns the custom_ids it sent."""
    db = tmp_path / "out.db"

    def go(keys: list[str]) -> list[str]:
        src = tmp_path / "in.jsonl"
        with src.open("wb") as f:
            for k in keys:
                model = "no-such-model" if k == "b" else "mock-gpt"  # a 404: fails at once
                body = {"model": model, "messages": [{"role": "user", "content": k}]}
                line = {"custom_id": k, "method": "POST", "url": "/v1/chat/completions"}
                f.write(orjson.dumps({**line, "body": body}) + b"\n")

        async def main() -> None:
            async with MockServer(MockConfig(api_key=KEY, seed=1)) as srv:
                # force: the input file grows between runs (its fingerprint changes)
                s = RunSettings(output=tmp_path / "out.jsonl", base_url=srv.base_url,
                                api_key=KEY, journal=db, retries=0, force=True)  # fmt: skip
                await arun_file(src, s)

        t0 = time.time()
        asyncio.run(main())
        with Journal.open_readonly(db) as ro:  # what this run wrote: what it sent
            return [r.key for r in ro.iter_results() if (r.ended_at or 0) >= t0]

    go.journal = db  # type: ignore[attr-defined]
    return go


FRONT_ENDS = {"run(journal=)": _python, "exec": _exec, "run (openai)": _openai}


@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_one_resume_rule_for_every_front_end(front_end: str, tmp_path: Path) -> None:
    """Finished items (ok and failed) are not run again; a cancelled one and a
    new one are; a third run runs nothing."""
    go = FRONT_ENDS[front_end](tmp_path)
    assert sorted(go(["a", "b", "c"])) == ["a", "b", "c"]
    _cancel(go.journal, "c")  # type: ignore[attr-defined]
    assert sorted(go(["a", "b", "c", "d"])) == ["c", "d"]
    assert go(["a", "b", "c", "d"]) == []


def test_retry_is_what_reruns_failures(tmp_path: Path) -> None:
    """The other half of the rule: `retry` re-runs the failed job, a rerun does not."""
    go = _exec(tmp_path)
    go(["a", "b"])
    assert go(["a", "b"]) == []
    retry_commands(go.journal)  # type: ignore[attr-defined]
    runs = (tmp_path / "runs").read_text().split()
    assert sorted(runs[:2]) == ["a", "b"]  # the first run's two jobs, in either order
    assert runs[2:] == ["b"]


def test_the_rule_per_status(tmp_path: Path) -> None:
    """is_finished: ok/failed/timed_out are finished, cancelled/skipped not;
    an explicit rerun of failed and timed out leaves only ok finished. Plan
    resets what it runs again."""
    assert {s for s in Status if is_finished(s)} == FINISHED
    again = frozenset({Status.FAILED, Status.TIMED_OUT})
    assert {s for s in Status if is_finished(s, again)} == {Status.OK}
    with Journal.open(tmp_path / "j.db", identity={"kind": "test"}) as j:
        j.record(
            [(Result(index=i, key=s.value, status=s), None, None) for i, s in enumerate(Status)]
        )
        plan = Plan(j)
        reported = {s.value for s in Status if plan.previous(s.value) is not None}
        assert reported == {s.value for s in FINISHED}
        assert plan.resumed == len(FINISHED)
        assert j.status_counts().get("pending") == len(Status) - len(FINISHED)


def test_stream_with_a_journal_yields_stored_results_and_commits_new_ones(
    tmp_path: Path,
) -> None:
    """stream(journal=) (it raised TypeError): the second pass reports the first
    pass's results from the journal and runs only the new item."""
    db = tmp_path / "s.db"
    ran: list[int] = []

    def fn(x: int) -> int:
        ran.append(x)
        return x * 10

    with conveyor.stream([1, 2], fn, journal=db) as s:
        first = sorted(r.value for r in s)
    assert first == [10, 20]
    ran.clear()
    with conveyor.stream([1, 2, 3], fn, journal=db) as s:
        second = sorted(((r.value, bool(r.meta.get("resumed"))) for r in s), key=str)
        report = s.report
    assert ran == [3]
    assert second == [(10, True), (20, True), (30, False)]
    assert report is not None and report.extra["resumed"] == 2


async def test_astream_with_a_journal(tmp_path: Path) -> None:
    """astream(journal=) commits as it goes: after an early stop, a new stream
    resumes from what was committed and each item ends up run exactly once."""
    db = tmp_path / "a.db"
    seen: list[Any] = []

    async def fn(x: int) -> int:
        seen.append(x)
        return x

    async with conveyor.astream(range(5), fn, journal=db, concurrency=1) as s:
        async for r in s:
            if r.key == "1":
                break
    async with conveyor.astream(range(5), fn, journal=db) as s:
        results = [r async for r in s]
    assert sorted(r.index for r in results) == list(range(5))
    assert sorted(seen) == sorted(set(seen)) and sorted(set(seen)) == list(range(5))


@pytest.mark.parametrize("name", ["previous", "shared_limiter"])
def test_internal_plumbing_is_not_an_option(name: str) -> None:
    """The pipeline's `previous=` hook and Ray's `shared_limiter=` are refused from users."""
    with pytest.raises(conveyor.ConfigError, match=name):
        conveyor.run([1], str, **{name: lambda key: None})
    with pytest.raises(conveyor.ConfigError, match=name):
        conveyor.stream([1], str, **{name: lambda key: None})
