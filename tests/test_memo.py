"""conveyor.Memo: a memo shared by the items of a run (seed 002's shared context).

Real parts: the run's worker threads and event loop, the simulated server
over loopback with the official openai SDK as client, a real journal file.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from openai import AsyncOpenAI

import conveyor
from _procs import eventually
from conveyor._core._memo import memo_key, usage_of
from conveyor.cli._display import snapshot_rows
from conveyor.mock import MockConfig, MockServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def test_identical_sub_calls_in_flight_at_once_are_one_call() -> None:
    """8 sync items ask for the same key while its call is still running: one call,
    7 joined; each item gets the same value; the report says 7 calls saved."""
    memo = conveyor.Memo()
    made = []

    def week_context() -> dict[str, Any]:
        made.append(1)
        assert eventually(lambda: memo.waiting == 7, 20)  # all ask before the answer comes
        return {
            "text": "week of 2025-12-23",
            "usage": {"prompt_tokens": 50, "completion_tokens": 5},
        }

    def schedule(creator: str) -> str:
        ctx = memo.call(("week", "2025-12-23"), week_context)
        return f"{creator}: {ctx['text']}"

    creators = [f"c{i}" for i in range(8)]
    report = conveyor.run(creators, schedule, concurrency=8, memo=memo)
    assert report.ok and len(made) == 1
    assert report.values() == [f"c{i}: week of 2025-12-23" for i in range(8)]
    m = report.extra["memo"]
    assert (m["calls"], m["joined"], m["hits"], m["calls_saved"]) == (1, 7, 0, 7)
    assert m["tokens_spent"] == {"input": 50, "output": 5}
    assert m["tokens_saved"] == {"input": 350, "output": 35}
    assert (report.input_tokens, report.output_tokens) == (50, 5)  # spent once, by the leader


def test_progress_snapshots_and_the_live_panel_show_the_memo() -> None:
    """on_progress snapshots carry the memo's figures so far; the panel has a memo row."""
    memo = conveyor.Memo()
    snaps: list[conveyor.ProgressSnapshot] = []
    conveyor.run(range(6), lambda i: memo.call("k", lambda: 7), concurrency=1, memo=memo,
                 on_progress=snaps.append)  # fmt: skip
    last = snaps[-1].extra["memo"]
    assert (last["calls"], last["hits"]) == (1, 5)
    assert dict(snapshot_rows(snaps[-1]))["memo"].startswith("1 calls made, 5 saved")


def test_later_runs_hit_the_memo_and_each_report_has_its_own_share() -> None:
    """A second run with the same memo makes no call: every ask is a hit, and its
    report counts only its own run (the first run's figures are not repeated)."""
    memo = conveyor.Memo()
    calls = []

    def fn(i: int) -> int:
        return memo.call(i % 2, lambda: calls.append(i % 2) or (i % 2) * 10)  # type: ignore[func-returns-value]

    first = conveyor.run(range(6), fn, concurrency=1, memo=memo)
    assert first.extra["memo"]["calls"] == 2 and first.extra["memo"]["hits"] == 4
    second = conveyor.run(range(6), fn, concurrency=3, memo=memo)
    assert second.extra["memo"]["calls"] == 0 and second.extra["memo"]["hits"] == 6
    assert second.values() == [0, 10] * 3 and len(calls) == 2
    assert memo.stats().calls == 2 and memo.stats().hits == 10


async def test_a_failed_call_is_shared_in_flight_but_not_stored() -> None:
    """Callers waiting on a call that raises get its error; a later caller calls again."""
    memo = conveyor.Memo()
    release = asyncio.Event()
    made = []

    async def flaky() -> str:
        made.append(1)
        if len(made) == 1:
            await release.wait()
            raise ConnectionError("backend dropped")
        return "fine"

    leader = asyncio.create_task(memo.acall("k", flaky))
    await asyncio.sleep(0)
    follower = asyncio.create_task(memo.acall("k", flaky))
    await asyncio.sleep(0)
    assert memo.waiting == 1 and memo.in_flight == 1
    release.set()
    for task in (leader, follower):
        with pytest.raises(ConnectionError):
            await task
    assert len(made) == 1 and memo.waiting == 0
    assert await memo.acall("k", flaky) == "fine"
    assert memo.stats().failures == 1 and memo.stats().calls == 1


async def test_async_callers_share_one_call_and_a_cancelled_leader_hands_over() -> None:
    """acall: concurrent tasks share the leader's call; when the leader is
    cancelled, a waiter makes the call itself instead of failing."""
    memo = conveyor.Memo()
    started = asyncio.Event()
    made = []

    async def slow() -> str:
        made.append("slow")
        started.set()
        await asyncio.sleep(30)
        return "never"

    async def quick() -> str:
        made.append("quick")
        return "answer"

    leader = asyncio.create_task(memo.acall("k", slow))
    await started.wait()
    follower = asyncio.create_task(memo.acall("k", quick))
    await asyncio.sleep(0)  # the follower waits on the leader's call
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert await asyncio.wait_for(follower, 5) == "answer"
    assert made == ["slow", "quick"]
    assert await memo.acall("k", slow) == "answer"  # stored now: a hit


async def test_a_blocking_call_from_async_code_is_refused() -> None:
    """memo.call on the event loop would block it: refused, pointing at acall."""
    memo = conveyor.Memo()
    with pytest.raises(conveyor.ConfigError, match="acall"):
        memo.call("k", lambda: 1)


def test_keys_are_canonical_and_bad_keys_are_refused() -> None:
    """Dict order does not matter, a string and its JSON differ, sets are refused."""
    assert memo_key({"a": 1, "b": [1, 2]}) == memo_key({"b": [1, 2], "a": 1})
    assert memo_key("1") != memo_key(1)
    with pytest.raises(conveyor.ConfigError, match="memo key"):
        memo_key({object()})
    with pytest.raises(conveyor.ConfigError, match="max_entries"):
        conveyor.Memo(max_entries=0)


def test_usage_is_read_from_objects_and_dicts() -> None:
    """OpenAI chat (prompt/completion) and responses (input/output) shapes, both forms."""

    class U:
        input_tokens = 7
        output_tokens = 3

    class R:
        usage = U()

    assert usage_of(R()) == (7, 3)
    assert usage_of({"usage": {"prompt_tokens": 4, "completion_tokens": 2}}) == (4, 2)
    assert usage_of("no usage") == (0, 0)


def test_memo_is_refused_on_ray_and_checked_as_an_option() -> None:
    """A memo lives in one process: backend="ray" refuses it; a non-Memo is refused."""
    with pytest.raises(conveyor.ConfigError, match="local backend"):
        conveyor.run([1], str, backend="ray", memo=conveyor.Memo())
    with pytest.raises(conveyor.ConfigError, match="memo"):
        conveyor.run([1], str, memo={})


def test_a_resumed_run_reuses_the_memo_kept_in_its_journal(tmp_path: Path) -> None:
    """With journal=, memo entries are stored in the journal file: a later run
    over the same journal (with a fresh Memo) restores them and makes no call."""
    journal = tmp_path / "batch.db"
    calls = []

    def context(week: str) -> dict[str, Any]:
        calls.append(week)
        return {"week": week, "usage": {"prompt_tokens": 100, "completion_tokens": 10}}

    def make(memo: conveyor.Memo) -> Any:
        def fn(creator: str) -> str:
            return memo.call(("ctx", "w52"), lambda: context("w52"))["week"] + creator

        return fn

    first = conveyor.Memo()
    conveyor.run(["a", "b"], make(first), key=str, journal=journal, memo=first)
    assert calls == ["w52"]
    again = conveyor.Memo()
    report = conveyor.run(["a", "b", "c", "d"], make(again), key=str, journal=journal, memo=again)
    assert calls == ["w52"]  # c and d ran, and their shared context came from the journal
    m = report.extra["memo"]
    assert (m["restored"], m["calls"], m["hits"]) == (1, 0, 2)
    assert m["tokens_saved"] == {"input": 200, "output": 20}
    assert report.values() == ["w52a", "w52b", "w52c", "w52d"]


# ---- seed 002: shared context caching with the official SDK -------------------------

WEEK = "2025-12-23"
CREATORS = ["alexia", "chloe_wildd", "shelby_d_vip", "mira", "jade", "nova"]
WEEK_BRIEF = "Week brief: holidays, peak hours 18-22h, no posts on the 25th. " * 14
CAPTION_POOL = "Caption pool: 120 captions tagged by tone, length and past performance. " * 12


@pytest.fixture
def server() -> Iterator[tuple[MockServer, str]]:
    srv = MockServer(MockConfig(latency=0.02, seed=3))
    with srv.running_in_thread() as url:
        yield srv, url


def _pipeline(client: AsyncOpenAI, memo: conveyor.Memo | None) -> Any:
    """The team's 3-phase pipeline per creator: two phases read the week's shared
    context (the same request for every creator), one is the creator's own."""
    create = client.chat.completions.create
    shared = memo.wrap(create) if memo is not None else create

    async def ask(fn: Any, prompt: str, *, own: bool) -> str:
        reply = await fn(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
        usage = reply.usage
        if (memo is None or own) and usage is not None:  # the memo reports its own calls
            conveyor.report_usage(usage.prompt_tokens, usage.completion_tokens)
        return str(reply.choices[0].message.content)

    async def generate_schedule(creator: str) -> dict[str, str]:
        week = await ask(shared, f"Analyse the week of {WEEK}. {WEEK_BRIEF}", own=False)
        pool = await ask(shared, f"Rank the caption pool for {WEEK}. {CAPTION_POOL}", own=False)
        plan = await ask(
            create,
            f"Schedule {creator} for {WEEK} using: {week} {pool}. " + "Creator notes. " * 100,
            own=True,
        )
        return {"creator_id": creator, "status": "SUCCESS", "schedule": plan}

    return generate_schedule


def test_shared_context_saves_40_to_50_percent_of_tokens(server: tuple[MockServer, str]) -> None:
    """Seed 002's "shared context caching reduces redundant calls ... 40-50% fewer
    tokens": the same batch with a memo sends 8 requests instead of 18 and the
    server charges 40-50% fewer tokens; the report's tokens saved are exactly the
    difference the server saw."""
    srv, url = server
    tokens = {}
    reports = {}
    for label in ("sequential-style", "memo"):
        srv.reset_stats()
        memo = conveyor.Memo() if label == "memo" else None

        async def main(memo: conveyor.Memo | None = memo) -> conveyor.BatchReport:
            client = AsyncOpenAI(base_url=url, api_key="sk-mock", max_retries=0)
            try:
                return await conveyor.arun(
                    CREATORS, _pipeline(client, memo), concurrency=3, timeout=30, memo=memo
                )
            finally:
                await client.close()

        reports[label] = asyncio.run(main())
        assert reports[label].ok
        tokens[label] = (srv.stats.requests, srv.stats.tokens)
    (plain_requests, plain_tokens), (memo_requests, memo_tokens) = (
        tokens["sequential-style"],
        tokens["memo"],
    )
    assert (plain_requests, memo_requests) == (18, 8)
    saving = 1 - memo_tokens / plain_tokens
    assert 0.40 <= saving <= 0.50, saving
    m = reports["memo"].extra["memo"]
    assert m["calls"] == 2 and m["calls_saved"] == 10
    saved = m["tokens_saved"]["input"] + m["tokens_saved"]["output"]
    assert memo_tokens + saved == plain_tokens
    both = reports["memo"].input_tokens + reports["memo"].output_tokens
    assert both == memo_tokens  # the report counts what the server charged
    assert m["tokens_saved_share"] == pytest.approx(saving, abs=1e-3)
