"""Admission carries out what each refusal class means, on a virtual clock."""

from __future__ import annotations

from typing import Any

import pytest

import conveyor
from conveyor._base._clock import FakeClock


class HTTPish(Exception):
    """An error shaped like an HTTP library's: a status code and a body."""

    def __init__(self, status: int, body: Any, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status
        self.body = body
        if retry_after is not None:
            self.retry_after = retry_after


QUOTA = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "code": "insufficient_quota",
    }
}
RATE = {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def test_quota_stops_the_run_resumably() -> None:
    """An exhausted quota is never looped on: the run stops with QuotaExceeded,
    and the refused item is cancelled (run again later), not failed."""
    calls: list[int] = []

    def fn(i: int) -> int:
        calls.append(i)
        if i == 3:
            raise HTTPish(429, QUOTA)
        return i

    with pytest.raises(conveyor.QuotaExceeded, match="quota is exhausted") as ei:
        conveyor.run(range(50), fn, concurrency=1, retries=5)
    rep = ei.value.report
    assert rep is not None
    assert calls == [0, 1, 2, 3]  # one refusal, no retries of it, nothing more started
    assert rep.counts["ok"] == 3 and rep.counts.get("failed", 0) == 0
    assert rep[3].status == "cancelled"
    assert isinstance(ei.value, conveyor.FatalError)


def test_sporadic_rate_refusal_waits_its_own_retry_after_without_using_retries() -> None:
    """A lone 429 (the budget is not known to be spent) delays only its item by
    the server's wait, and does not count against `retries`."""
    seen: list[int] = []

    async def fn(i: int) -> int:
        seen.append(i)
        if i == 0 and seen.count(0) <= 2:
            raise HTTPish(429, RATE, retry_after=0.2)
        return i

    report = conveyor.run(range(6), fn, concurrency=2, retries=1)
    assert report.counts["ok"] == 6  # two refusals with retries=1: still ok
    assert seen.count(0) == 3
    # The others ran while item 0 waited: all of them before its second try.
    assert seen.index(0, 1) > max(seen.index(i) for i in range(1, 6))
    assert report[0].duration >= 0.4


def test_frequent_rate_refusals_pause_everyone_but_do_not_pin_concurrency() -> None:
    """When refusals are frequent the budget is spent: everyone waits the
    server's 89 s, and the concurrency is not lowered for it (a long
    Retry-After must not leave the run crawling afterwards)."""
    clock = FakeClock()
    seen: list[tuple[int, float]] = []

    async def fn(i: int) -> int:
        seen.append((i, clock.now()))
        if i < 6 and len([s for s in seen if s[0] == i]) == 1:
            raise HTTPish(429, RATE, retry_after=89.0)
        await clock.sleep(1.0)
        return i

    report = conveyor.run(range(60), fn, concurrency=10, clock=clock)
    assert report.counts["ok"] == 60
    later = [t for i, t in seen if i >= 10]
    assert later and min(later) >= 89  # the frequent refusals paused new work
    assert report.extra.get("refused_rate") == 6
    assert "concurrency_decreases" not in report.extra


def test_capacity_errors_back_off_without_a_limit() -> None:
    """529 overloaded is the server's capacity, not our rate: retried with
    backoff, no budget is learned from it."""
    clock = FakeClock()
    calls = {"n": 0}

    async def fn(i: int) -> int:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise HTTPish(529, OVERLOADED)
        return i

    report = conveyor.run(range(10), fn, concurrency=1, retries=5, clock=clock)
    assert report.counts["ok"] == 10
    assert report.extra.get("refused_capacity") == 3
    assert "budgets" not in report.extra  # nothing was learned as a limit


def test_sdk_rate_limit_error_is_retried_and_feeds_the_limits() -> None:
    """The openai SDK's RateLimitError (status 429, OpenAI's body) is a rate
    refusal: retried, never a failure, and its stated limit is learned."""
    import httpx2
    import openai

    clock = FakeClock()
    req = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    body = {
        "message": "Rate limit reached for m on requests per min (RPM): Limit 60, Used 60, "
        "Requested 1. Please try again in 1s.",
        "type": "requests",
        "code": "rate_limit_exceeded",
    }
    calls = {"n": 0}

    async def fn(i: int) -> int:
        calls["n"] += 1
        if calls["n"] in (3, 4, 5):
            resp = httpx2.Response(429, request=req)
            raise openai.RateLimitError("rate limited", response=resp, body=body)
        return i

    report = conveyor.run(range(20), fn, concurrency=1, retries=1, clock=clock)
    assert report.counts["ok"] == 20
    assert report.extra.get("refused_rate") == 3
    assert "requests" in report.extra.get("budgets", {})


def test_waiting_out_a_retry_holds_no_slot() -> None:
    """The limit is on attempts in flight: an item waiting out its Retry-After
    lets others run, and never more than `concurrency` attempts run at once."""
    import asyncio

    seen: list[int] = []
    running = {"now": 0, "max": 0}

    async def fn(i: int) -> int:
        seen.append(i)
        running["now"] += 1
        running["max"] = max(running["max"], running["now"])
        try:
            await asyncio.sleep(0.01)
            if i == 0 and seen.count(0) == 1:
                raise HTTPish(503, {"error": {"message": "busy"}}, retry_after=0.3)
            return i
        finally:
            running["now"] -= 1

    report = conveyor.run(range(5), fn, concurrency=1, retries=2)
    assert report.counts["ok"] == 5
    assert running["max"] == 1
    assert seen.index(1) < seen.index(0, 1)  # item 1 ran while item 0 waited


def test_shared_limiter_gets_no_refund_when_refunds_are_off() -> None:
    """With refund_unused=False (conveyor run: the server counts max_tokens),
    the cluster's limiter is not refunded below the estimate either."""
    from conveyor._core._options import build_options

    class Shared:
        def __init__(self) -> None:
            self.settled: list[tuple[float, float]] = []

        async def acquire(self, weight: float) -> None:
            return None

        def settle(self, estimated: float, actual: float) -> None:
            self.settled.append((estimated, actual))

        def pause(self, seconds: float) -> None:
            return None

    import asyncio

    from conveyor._base._types import Usage
    from conveyor._core._admission import Admission
    from conveyor._core._attempt import Attempt

    async def go(refund: bool) -> list[tuple[float, float]]:
        shared = Shared()
        opts = build_options(cost=lambda i: 100, shared_limiter=shared, refund_unused=refund)
        adm = Admission(opts, lambda: False)
        ticket = await adm.admit(100.0)
        attempt = Attempt(0, "k", 1, usage=Usage(10, 5))
        adm.settle(attempt, ticket)
        return shared.settled

    assert asyncio.run(go(True)) == [(100.0, 15.0)]
    assert asyncio.run(go(False)) == [(100.0, 100.0)]


# ---- the probe: one attempt first, then the whole window ---------------------------


def _probing(n: int) -> tuple[Any, list[Any]]:
    """An Admission that probes first, and `n` admissions started on it."""
    import asyncio

    from conveyor._core._admission import Admission
    from conveyor._core._options import build_options

    adm = Admission(build_options(concurrency=n, probe_first=True), lambda: False)
    return adm, [asyncio.ensure_future(adm.admit(1.0)) for _ in range(n)]


def test_the_probe_goes_alone_and_its_answer_opens_the_window_in_a_few_turns() -> None:
    """While the probe is out nothing else is admitted, however long it takes;
    its answer admits the waiters `_WAKE_BATCH` a turn of the loop (those first
    admitted go on the wire while the next start), not one per turn (issue 18:
    at -c 1000 the window took ~1,000 turns to open)."""
    import asyncio

    from conveyor._core._admission import _FIRST_WINDOW, _WAKE_BATCH

    async def go() -> None:
        adm, tasks = _probing(300)
        for _ in range(20):
            await asyncio.sleep(0)
        assert sum(t.done() for t in tasks) == 1  # the probe
        await asyncio.sleep(0.05)  # the probe's answer is slow: still alone
        assert sum(t.done() for t in tasks) == 1
        adm.on_success()  # told nothing of limits: the first window goes...
        for _ in range(20):
            await asyncio.sleep(0)
        assert sum(t.done() for t in tasks) == 1 + _FIRST_WINDOW
        adm.on_success()  # ...and its first answer lets the rest go
        admitted = []
        while not all(t.done() for t in tasks) and len(admitted) < 50:
            await asyncio.sleep(0)
            admitted.append(sum(t.done() for t in tasks))
        assert all(t.done() for t in tasks)
        assert len(admitted) <= 289 // _WAKE_BATCH + 3
        steps = [b - a for a, b in zip([1 + _FIRST_WINDOW, *admitted], admitted, strict=False)]
        assert max(steps) <= _WAKE_BATCH

    asyncio.run(go())


def test_a_refused_probe_still_opens_the_window() -> None:
    """Any answer ends the probe, a failure too (the run decides what it means)."""
    import asyncio

    async def go() -> None:
        adm, tasks = _probing(50)
        for _ in range(5):
            await asyncio.sleep(0)
        adm.on_failure(HTTPish(500, {}), tasks[0].result(), transient=True)
        for _ in range(5):
            await asyncio.sleep(0)
        first = [t for t in tasks[1:] if t.done()]
        assert len(first) == 10  # the first window
        adm.on_failure(HTTPish(500, {}), first[0].result(), transient=True)
        for _ in range(5):
            await asyncio.sleep(0)
        assert all(t.done() for t in tasks)

    asyncio.run(go())


def test_a_probe_that_meets_a_silent_bucket_costs_the_first_window_not_the_concurrency() -> None:
    """A server that meters without saying so (no rate-limit headers, no limit
    told): after the probe, only the first window (10) goes until one of them
    is answered, so a per-second bucket of a few requests refuses at most those
    instead of all 100 in flight; a 429 among them, even one naming no limit,
    is no hiccup: it opens the rest paced by the budget it taught (the 11
    sent within the last second, per second)."""
    import asyncio

    async def go() -> None:
        adm, tasks = _probing(100)
        for _ in range(5):
            await asyncio.sleep(0)
        adm.on_success()
        for _ in range(5):
            await asyncio.sleep(0)
        window = [t for t in tasks[1:] if t.done()]
        assert len(window) == 10
        for _ in range(50):  # no answer yet: however many turns, still those 10
            await asyncio.sleep(0)
        assert sum(t.done() for t in tasks) == 11
        adm.on_failure(HTTPish(429, RATE), window[-1].result(), transient=True)
        assert adm.rpm.model.value == "bucket"
        assert 1.0 <= adm.rpm.rate <= 11.0
        deadline = asyncio.get_running_loop().time() + 5.0
        while sum(t.done() for t in tasks) < 20 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert 20 <= sum(t.done() for t in tasks) < len(tasks)  # going on, paced
        assert adm.rate_limited == 1
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(go())


@pytest.mark.parametrize("why", ["told", "auto", "small"])
def test_no_first_window_when_the_limits_are_known_or_the_window_is_small(why: str) -> None:
    """A told limit (or, the same, headers), ``concurrency="auto"`` (it starts at
    16 and grows by what the answers show) or a concurrency within the first
    window: the probe's answer opens everything at once."""
    import asyncio

    from conveyor._core._admission import Admission
    from conveyor._core._options import build_options

    n = 8 if why == "small" else 60
    kw: dict[str, Any] = {"concurrency": n, "probe_first": True}
    if why == "told":
        kw["rpm"] = 1_000_000
    if why == "auto":
        kw["concurrency"] = "auto"

    async def go() -> None:
        adm = Admission(build_options(**kw), lambda: False)
        tasks = [asyncio.ensure_future(adm.admit(1.0)) for _ in range(n)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert sum(t.done() for t in tasks) == 1
        adm.on_success()
        deadline = asyncio.get_running_loop().time() + 5.0
        while not all(t.done() for t in tasks) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.001)
        assert all(t.done() for t in tasks)

    asyncio.run(go())


@pytest.mark.parametrize("auto", [True, False])
def test_an_auto_probe_goes_alone_only_as_long_as_a_refusal_takes(auto: bool) -> None:
    """Under ``concurrency="auto"`` the probe goes alone for `_PROBE_PATIENCE`:
    a rejected key or a 429 is back by then (no generation), an answer of a
    server that queues only after a service time (3 s on a big GPU server: a
    whole round trip of the ramp). Then the first cohort goes without its
    answer. A fixed concurrency keeps waiting for the answer (its first
    window is sized by what the answer says)."""
    import asyncio

    from conveyor._core._admission import _PROBE_PATIENCE, Admission
    from conveyor._core._options import build_options

    n = 16
    opts = build_options(concurrency="auto" if auto else n, probe_first=True)

    async def go() -> None:
        loop = asyncio.get_running_loop()
        adm = Admission(opts, lambda: False)
        t0 = loop.time()
        tasks = [asyncio.ensure_future(adm.admit(1.0)) for _ in range(n)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert sum(t.done() for t in tasks) == 1  # the probe, alone
        deadline = t0 + _PROBE_PATIENCE + 5.0
        while not all(t.done() for t in tasks) and loop.time() < deadline:
            await asyncio.sleep(0.01)
            if not auto and loop.time() > t0 + 2 * _PROBE_PATIENCE:
                break
        if auto:
            assert all(t.done() for t in tasks)
            assert loop.time() - t0 >= _PROBE_PATIENCE * 0.9  # not before it
        else:
            assert sum(t.done() for t in tasks) == 1  # still waiting for the answer
            adm.on_success()
            for _ in range(5):
                await asyncio.sleep(0)
            assert sum(t.done() for t in tasks) == 1 + 10  # its first window
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(go())


def test_an_auto_probe_answered_quickly_still_tells_before_the_rest_go() -> None:
    """A refusal within the patience (a rejected key's 401 comes in a round
    trip) is known before the first cohort goes: the timer then does nothing."""
    import asyncio

    from conveyor._core._admission import _PROBE_PATIENCE, Admission
    from conveyor._core._options import build_options

    async def go() -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        adm = Admission(build_options(concurrency="auto", probe_first=True), lambda: stopping)
        tasks = [asyncio.ensure_future(adm.admit(1.0)) for _ in range(16)]
        for _ in range(5):
            await asyncio.sleep(0)
        stopping = True  # the probe's 401: the run stops
        adm.on_failure(HTTPish(401, {}), tasks[0].result(), transient=False)
        t0 = loop.time()
        while loop.time() < t0 + 2 * _PROBE_PATIENCE:
            await asyncio.sleep(0.01)
        results = await asyncio.gather(*tasks[1:], return_exceptions=True)
        assert all(isinstance(r, Exception) for r in results)  # none was admitted

    asyncio.run(go())


def test_a_pass_of_the_first_window_cancelled_hands_it_on() -> None:
    """One of the first window is cancelled while it waits on a pause: its pass
    goes to the next waiter, so the window still sends 10 and nobody hangs."""
    import asyncio

    async def go() -> None:
        adm, tasks = _probing(40)
        for _ in range(5):
            await asyncio.sleep(0)
        adm.paused_until = adm._clock.now() + 0.05  # the window waits out a pause
        adm.on_success()
        for _ in range(3):
            await asyncio.sleep(0)
        tasks[1].cancel()  # woken with a pass, waiting on the pause: abandoned
        deadline = asyncio.get_running_loop().time() + 5.0
        while sum(t.done() and not t.cancelled() for t in tasks) < 11:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02)
        assert sum(t.done() and not t.cancelled() for t in tasks) == 11  # probe + 10
        adm.on_success()
        while not all(t.done() for t in tasks):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)

    asyncio.run(go())


def test_a_probe_cancelled_before_it_is_sent_hands_the_probe_on() -> None:
    """The probe's admission cancelled (its item stopped) while it waited on a
    limit: the next waiter becomes the probe, alone, and nobody hangs."""
    import asyncio

    from conveyor._core._admission import Admission
    from conveyor._core._options import build_options

    async def go() -> None:
        adm = Admission(build_options(concurrency=10, probe_first=True), lambda: False)
        adm.paused_until = adm._clock.now() + 0.05  # the probe waits out a pause
        tasks = [asyncio.ensure_future(adm.admit(1.0)) for _ in range(10)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert not any(t.done() for t in tasks)
        tasks[0].cancel()
        deadline = asyncio.get_running_loop().time() + 5.0
        while sum(t.done() for t in tasks) < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert [t.done() and not t.cancelled() for t in tasks].count(True) == 1
        await asyncio.sleep(0.02)
        assert [t.done() and not t.cancelled() for t in tasks].count(True) == 1  # alone
        adm.on_success()
        for _ in range(3):
            await asyncio.sleep(0)
        assert all(t.done() for t in tasks)

    asyncio.run(go())


def test_a_waiter_woken_to_be_the_probe_then_cancelled_passes_it_on() -> None:
    """The probe is abandoned and the waiter woken to take it over is cancelled
    before it runs: the next one takes it, alone."""
    import asyncio

    from conveyor._core._admission import Admission
    from conveyor._core._options import build_options

    async def go() -> None:
        adm = Admission(build_options(concurrency=10, probe_first=True), lambda: False)
        adm.paused_until = adm._clock.now() + 0.05  # the probe waits out a pause
        tasks = [asyncio.ensure_future(adm.admit(1.0)) for _ in range(10)]
        for _ in range(5):
            await asyncio.sleep(0)
        tasks[0].cancel()  # the probe: abandoned, tasks[1] is woken to take it...
        await asyncio.sleep(0)
        tasks[1].cancel()  # ...and cancelled before it could
        deadline = asyncio.get_running_loop().time() + 5.0
        while not any(t.done() for t in tasks[2:]) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02)
        assert [t.done() for t in tasks[2:]].count(True) == 1
        adm.on_success()
        for _ in range(5):
            await asyncio.sleep(0)
        assert all(t.done() for t in tasks)

    asyncio.run(go())
