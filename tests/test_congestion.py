"""The congestion controller of ``concurrency="auto"``, on plain numbers.

A tiny queueing model stands in for the server: K slots served FIFO, each
request held `service * work` seconds (slower past a degradation threshold),
driven by a client that keeps the controller's limit in flight. No clock, no
sleeping: the model's event times are the controller's `now`.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from conveyor._base._exceptions import ConfigError
from conveyor._core._congestion import BETA, MIN_WAIT, START, CongestionController


@dataclass
class Run:
    done: list[tuple[float, float]] = field(default_factory=list)  # (finish, latency)
    limits: list[tuple[float, int]] = field(default_factory=list)
    errors: int = 0

    def throughput(self, t0: float, t1: float) -> float:
        return sum(1 for t, _ in self.done if t0 <= t < t1) / (t1 - t0)

    def median_latency(self, t0: float, t1: float) -> float:
        lat = sorted(x for t, x in self.done if t0 <= t < t1)
        return lat[len(lat) // 2]

    def limits_between(self, t0: float, t1: float) -> list[int]:
        return [n for t, n in self.limits if t0 <= t < t1]


def simulate(
    ctl: CongestionController,
    *,
    capacity: Callable[[float], int],
    service: float = 1.0,
    until: float = 200.0,
    spread: bool = False,
    per_work: bool = False,
    degrade_after: int | None = None,
    seed: int = 0,
    jitter: float = 0.25,
    client_cost: float = 0.0,
    probe: bool = False,
    batched: float = 0.0,
) -> Run:
    """Keep `ctl.limit` requests in a K-slot FIFO server until `until`.
    With `client_cost`, the client reads answers one at a time, each taking
    that long (one event loop): an answer is seen when the client gets to it.
    With `batched`, answers that come within that many seconds of each other
    are read as one batch, like the engine's: the server frees each slot when
    it answers, but the client counts the whole batch in flight (its tasks
    are not done yet) while it reads it, and sends the next ones after it."""
    rng = random.Random(seed)
    run = Run()
    if probe:
        ctl = _Probed(ctl)  # type: ignore[assignment]
    events: list[tuple[float, int, float, float]] = []  # (finish, seq, start, work)
    queue: deque[tuple[float, float]] = deque()
    busy = in_flight = seq = 0
    now = 0.0
    client_free = 0.0

    def serve(start: float, work: float) -> None:
        nonlocal busy, seq
        busy += 1
        present = busy + len(queue)
        slow = present / degrade_after if degrade_after and present > degrade_after else 1.0
        seq += 1
        noise = rng.uniform(1 - jitter, 1 + jitter)  # servers are not clockwork
        # A nanosecond apart at least: a burst of answers is handled one by
        # one, each at its own clock reading, as by a real event loop.
        done = now + service * work * slow * noise + seq * 1e-9
        heapq.heappush(events, (done, seq, start, work))

    def fill() -> None:
        nonlocal in_flight
        while in_flight < ctl.limit:
            in_flight += 1
            work = rng.choice((0.25, 0.5, 1.0, 2.0, 4.0)) if spread else 1.0
            if busy < capacity(now) and not queue:
                serve(now, work)
            else:
                queue.append((now, work))

    fill()
    while batched and events and now < until:
        batch = [heapq.heappop(events)]
        while events and events[0][0] <= batch[0][0] + batched:
            batch.append(heapq.heappop(events))
        for done, *_ in batch:  # the server: a slot frees at its answer
            now = done
            busy -= 1
            while queue and busy < capacity(now):
                serve(*queue.popleft())
        for done, _, start, work in batch:  # the client: the batch still in flight
            run.done.append((done, done - start))
            ctl.on_sample(done, done - start, work=work if per_work else None,
                          in_flight=in_flight)  # fmt: skip
            run.limits.append((done, ctl.limit))
        in_flight -= len(batch)
        fill()
    while events and now < until:
        done, _, start, work = heapq.heappop(events)
        now = max(done, client_free) + client_cost if client_cost else done
        client_free = now
        busy -= 1
        in_flight -= 1
        run.done.append((now, now - start))
        ctl.on_sample(now, now - start, work=work if per_work else None, in_flight=in_flight + 1)
        run.limits.append((now, ctl.limit))
        while queue and busy < capacity(now):
            serve(*queue.popleft())
        fill()
    return run


def margin(k: int) -> float:
    """The stated oscillation margin: the hold band's top, 1.3 K, plus one
    probing step (10%, at least 1): about 1.45 K, a little more for small K."""
    return max(1.45 * k, 1.3 * k + 2)


@pytest.mark.parametrize("k", [8, 64, 512])
@pytest.mark.parametrize("per_work", [False, True])
def test_converges_on_the_knee(k: int, per_work: bool) -> None:
    """On a K-slot server the limit settles within the stated margin of K:
    full throughput, median latency at most 1.4 times unloaded."""
    ctl = CongestionController(1, 4096)
    run = simulate(ctl, capacity=lambda _: k, until=300.0, per_work=per_work)
    assert run.throughput(150, 300) >= 0.97 * k
    assert run.median_latency(150, 300) <= 1.4
    settled = run.limits_between(150, 300)
    assert min(settled) >= k
    assert max(settled) <= margin(k)


@pytest.mark.parametrize("k", [8, 64, 512])
@pytest.mark.parametrize("spread", [False, True])
def test_slow_start_reaches_the_knee_in_round_trips(k: int, spread: bool) -> None:
    """Slow start doubles the limit once per round trip while latency stays
    flat: the limit reaches K, and throughput 90% of K/S, within
    log2(K / 16) + 2 round trips (service time 1, so seconds), and it never
    overshoots past twice K (or twice its start) on the way."""
    ctl = CongestionController(1, 4096)
    run = simulate(ctl, capacity=lambda _: k, until=60.0, spread=spread, per_work=spread)
    rounds = math.log2(max(k / START, 1)) + 2
    reached = next(t for t, n in run.limits if n >= k)
    assert reached <= rounds
    mean_service = 1.55 if spread else 1.0
    # With a 16x spread the answers are counted, not weighed: just after the
    # start the short ones are done and the slots hold long ones, so fewer
    # answers come per second than K / the mean service time for a while.
    share, span = (0.75, 10) if spread else (0.9, 4)
    assert run.throughput(rounds, rounds + span) >= share * k / mean_service
    assert max(n for _, n in run.limits) <= 2 * max(k, START)


@pytest.mark.parametrize("seed", range(4))
def test_the_ramp_is_not_held_to_the_longest_output(seed: int) -> None:
    """K = 512, outputs of 16x different lengths (0.5 to 8 s, mean 3.1 s),
    told the work: each doubling waits for the cohort's short answers (twice
    its fast tail, the least in which a queued short one is back), not for
    its long ones, so five doublings from 16 take about a second each: the
    limit is past 460 within 7.2 s. (Waiting for half the cohort and 2.5
    fast tails took 7.5 to 9 s on these seeds.)"""
    ctl = CongestionController(1, 4096)
    run = simulate(ctl, capacity=lambda _: 512, service=2.0, spread=True, per_work=True,
                   until=60.0, seed=seed, jitter=0.0)  # fmt: skip
    assert next(t for t, n in run.limits if n >= 460) <= 7.2
    # The cadence is not bought with an overshoot: at most twice K.
    assert max(n for _, n in run.limits) <= 2 * 512


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("k", "after"), [(8, 16), (64, 128)])
def test_a_faster_ramp_does_not_push_a_degrading_server(seed: int, k: int, after: int) -> None:
    """The same spread of outputs on servers that slow everything past 2K
    (the "-deg" servers): the shorter wait never lets the limit past 2K
    (plus the 10% probing step) and keeps the server at its maximum."""
    ctl = CongestionController(1, 4096)
    run = simulate(ctl, capacity=lambda _: k, service=0.25, spread=True, per_work=True,
                   until=60.0, seed=seed, degrade_after=after)  # fmt: skip
    assert max(n for _, n in run.limits) <= max(2 * k + 2, after)
    mean_service = 0.25 * 1.55
    assert run.throughput(20, 60) >= 0.95 * k / mean_service


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("batched", [0.001, 0.03])
@pytest.mark.parametrize("k", [16, 64, 128])
def test_a_doubling_amid_a_wave_of_answers_reads_its_queue(
    seed: int, batched: float, k: int
) -> None:
    """The engine reads a wave of answers as a batch, counting it in flight
    until it is read: a doubling amid it counts most of the wave ahead of the
    new cohort, so the cohort's count was complete at its first queued
    answer and the queue read small: K64-deg doubled to 4K (256), at half
    its speed. Its queued answers are waited for, and a clear queue never
    doubles: the limit stays within 2K and the server at its maximum."""
    ctl = CongestionController(1, 4096)
    run = simulate(ctl, capacity=lambda _: k, service=0.5, until=20.0, per_work=True,
                   degrade_after=2 * k, jitter=0.01, batched=batched, seed=seed)  # fmt: skip
    assert max(n for _, n in run.limits) <= 2 * k
    assert run.throughput(8, 20) >= 0.95 * k / 0.5


@pytest.mark.parametrize("jitter", [0.0, 0.01])
@pytest.mark.parametrize("batched", [0.001, 0.01, 0.03])
def test_a_cohort_counts_only_those_still_in_the_server(batched: float, jitter: float) -> None:
    """K = 40, slowing past 2K, its answers read in batches: at a doubling
    amid a wave the engine still counts the whole wave in flight, but the
    wave's answers told just after the change (within a burst's gap) had
    left the server: they are not ahead of the new cohort. Counted ahead,
    the cohort of 64 was complete with its 40 served answers, read as no
    queue, and the limit doubled to 128 (3.2 K, past the slow-down)."""
    ctl = CongestionController(1, 4096)
    run = simulate(ctl, capacity=lambda _: 40, service=0.5, until=20.0, per_work=True,
                   degrade_after=80, jitter=jitter, batched=batched, probe=True)  # fmt: skip
    assert max(n for _, n in run.limits) <= 2 * 40
    assert run.throughput(8, 20) >= 0.95 * 40 / 0.5


@pytest.mark.parametrize("seed", range(2))
def test_the_fall_that_ends_slow_start_keeps_the_limit_served_at_once(seed: int) -> None:
    """K = 512, S = 3, answers in waves read in batches: slow start doubles
    512 (served at once) to 1024; the windows after that hold the doubling's
    queue, and read alone they put the knee near 400 (the limit fell
    1024 -> 809 -> 488 and grew back 10% a round trip of 3 s). The falls
    that end slow start keep at least the last limit whose cohort was
    served at once, plus a small queue."""
    ctl = CongestionController(1, 4096)
    run = simulate(ctl, capacity=lambda _: 512, service=3.0, until=60.0, per_work=True,
                   jitter=0.01, batched=0.03, seed=seed, probe=True)  # fmt: skip
    history = list(ctl.history)
    fell = next(i for i, (_, _, why) in enumerate(history) if why.startswith("backed"))
    assert min(n for _, n, _ in history[fell:]) >= 512
    assert max(n for _, n in run.limits) <= 2 * 512
    assert run.throughput(30, 60) >= 0.97 * 512 / 3.0


class _Probed:
    """The openai driver's probe: one request first (its answer carries the
    server's headers), the controller's limit after that answer."""

    def __init__(self, ctl: CongestionController) -> None:
        self.ctl, self.answered = ctl, False

    @property
    def limit(self) -> int:
        return self.ctl.limit if self.answered else 1

    def on_sample(self, now: float, latency: float, **kw: object) -> None:
        self.answered = True
        self.ctl.on_sample(now, latency, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("jitter", [0.0, 0.1])
def test_the_probe_does_not_pass_the_first_cohort_for_unqueued(jitter: float) -> None:
    """K8-deg behind the driver's probe: the first cohort (15 sent a round
    trip after the probe) is timed from when it was sent, not from the
    probe, so its queued half is waited for: the limit falls below 16 and
    never doubles into the server's slow-down past 16."""
    ctl = CongestionController(1, 4096)
    run = simulate(ctl, capacity=lambda _: 8, service=0.5, until=30.0, per_work=True,  # type: ignore[arg-type]
                   degrade_after=16, jitter=jitter, probe=True)  # fmt: skip
    assert max(n for _, n in run.limits) <= 18
    assert run.throughput(5, 30) >= 0.95 * 8 / 0.5


@pytest.mark.parametrize("k", [8, 64, 512])
def test_a_server_that_answers_in_waves(k: int) -> None:
    """No jitter (the mock server's fixed service time): each cohort is sent
    at once and answered at once, so the fast half of a cohort is never
    queued. Read whole, the cohort past the knee shows its queued half:
    slow start stops at 2K (not 4K), the fall lands at the knee plus a small
    queue (measured by the rate, not read short or long from the waves), and
    the limit never dips below K after it; the unloaded figure is learnt from
    the answers that did not wait, so the median stays unqueued."""
    ctl = CongestionController(1, 4096)
    run = simulate(ctl, capacity=lambda _: k, until=40.0, per_work=True, jitter=0.0)
    assert max(n for _, n in run.limits) <= 2 * k
    fell = next(i for i, (_, _, why) in enumerate(ctl.history) if why.startswith("backed"))
    after = [n for _, n, _ in list(ctl.history)[fell:]]
    assert k <= min(after) and max(after) <= max((1 + BETA) * k, k + 2)
    assert run.throughput(20, 40) >= 0.97 * k
    # A limit that left the waves' queue in the unloaded figure would read it
    # as no queue and settle near 2K, half the answers a whole wave late.
    assert run.median_latency(20, 40) <= 1.5


@pytest.mark.parametrize("k", [4, 8])
def test_the_first_cohort_shows_a_server_smaller_than_the_start(k: int) -> None:
    """Told the work, the first cohort (START sent at once) is read whole:
    its late answers queued, so the first move is down, before slow start
    doubles past a server smaller than the start (a doubling past 2K is
    where a server that preempts slows everything: the "-deg" servers)."""
    ctl = CongestionController(1, 4096)
    simulate(ctl, capacity=lambda _: k, until=30.0, per_work=True)
    first = ctl.history[1]
    assert first[2].startswith("backed off: latency rose") and "of the first" in first[2]
    assert first[1] < START


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("per_work", [False, True])
def test_a_server_smaller_than_the_start(k: int, per_work: bool) -> None:
    """Ollama's default is 1 to 4 at once: the first window is already
    queued, with no unqueued mean to learn from, yet its fastest answers
    were unqueued; the limit falls to within two of the margin of K."""
    ctl = CongestionController(1, 4096)
    run = simulate(ctl, capacity=lambda _: k, until=300.0, per_work=per_work)
    settled = run.limits_between(150, 300)
    assert k <= min(settled)
    assert max(settled) <= 1.5 * k + 2
    assert run.throughput(150, 300) >= 0.95 * k


def test_spread_of_lengths_compared_per_unit_of_work() -> None:
    """Outputs of 16x different lengths: told the work, the controller still
    finds the knee."""
    ctl = CongestionController(1, 4096)
    run = simulate(ctl, capacity=lambda _: 64, spread=True, per_work=True, until=600.0)
    settled = run.limits_between(300, 600)
    assert min(settled) >= 0.85 * 64
    assert max(settled) <= 1.5 * 64


def test_spread_of_lengths_without_the_work() -> None:
    """Not told the work, with a 16x spread of lengths, it should still keep near the knee."""
    ctl = CongestionController(1, 4096)
    run = simulate(ctl, capacity=lambda _: 64, spread=True, until=600.0, seed=3)
    settled = run.limits_between(300, 600)
    assert min(settled) >= 0.8 * 64
    assert max(settled) <= 1.7 * 64


@pytest.mark.parametrize("per_work", [False, True])
def test_recovers_after_capacity_changes(per_work: bool) -> None:
    """Capacity 64, then 16, then 512, then 64: the limit follows each,
    settling within the margin; after the rise it is at the new knee within
    30 round trips (slow start resumes after three clean windows)."""

    def capacity(t: float) -> int:
        return 64 if t < 200 else 16 if t < 400 else 512 if t < 600 else 64

    ctl = CongestionController(1, 4096)
    run = simulate(ctl, capacity=capacity, until=800.0, per_work=per_work)
    for lo, hi, k in ((100, 200, 64), (300, 400, 16), (500, 600, 512), (700, 800, 64)):
        settled = run.limits_between(lo, hi)
        assert k <= min(settled) <= max(settled) <= margin(k), (lo, k)
        assert run.throughput(lo, hi) >= 0.97 * k
    assert min(t for t, n in run.limits if t >= 400 and n >= 512) <= 430
    assert run.median_latency(700, 800) <= 1.4


def test_backs_off_a_degrading_server() -> None:
    """Past 2K in the server everything slows: the limit stays below that."""
    ctl = CongestionController(1, 4096)
    run = simulate(ctl, capacity=lambda _: 64, degrade_after=128, until=300.0)
    assert max(run.limits_between(150, 300)) <= 128
    assert run.throughput(150, 300) >= 0.95 * 64


def test_bounds_hold() -> None:
    """The limit never leaves [minimum, maximum]."""
    ctl = CongestionController(10, 40)
    run = simulate(ctl, capacity=lambda _: 4, until=100.0)
    assert {n for _, n in run.limits} <= set(range(10, 41))
    ctl = CongestionController(1, 40)
    run = simulate(ctl, capacity=lambda _: 512, until=100.0)
    assert max(n for _, n in run.limits) == 40


def test_errors_back_off_and_say_why() -> None:
    """Half of a window failing multiplies the limit by 0.7 and records why;
    failures that are timeouts say so."""
    ctl = CongestionController(1, 100, initial=50)
    for i in range(25):
        ctl.on_sample(10.0 + i, 1.0, ok=i % 2 == 0)
    assert ctl.limit == 35
    assert ctl.reason.startswith("backed off: errors")
    assert ctl.history[-1][1] == 35
    ctl = CongestionController(1, 100, initial=50)
    for i in range(25):
        ctl.on_sample(10.0 + i, 1.0, ok=i % 2 == 0, timeout=i % 2 == 1)
    assert ctl.reason.startswith("backed off: timeouts")


@pytest.mark.parametrize("work", [None, 16.0])
def test_only_failures_back_off_and_raise_nothing(work: float | None) -> None:
    """Every attempt fails (a server that cuts off every body): with no
    latency to read, the errors alone move the limit, whether or not the
    work is told; nothing is raised into the attempt that told it."""
    ctl = CongestionController(1, 100)
    for i in range(20):
        ctl.on_sample(1.0 + i * 0.01, 0.01, ok=False, work=work, in_flight=16)
    assert ctl.limit < START
    assert ctl.reason.startswith("backed off: errors")


def test_every_move_says_which_way_and_why() -> None:
    """The history is the event log of the panel and the report: each move
    after the start is a growth or a back-off for a named cause."""
    ctl = CongestionController(1, 4096)
    simulate(ctl, capacity=lambda t: 64 if t < 100 else 16, until=200.0)
    reasons = [why for _, _, why in ctl.history]
    assert reasons[0] == "start"
    assert any(why.startswith("grew") for why in reasons)
    assert any(why.startswith("backed off: latency rose") for why in reasons)
    assert all(why.startswith(("grew", "backed off: ")) for why in reasons[1:])


def test_does_not_grow_when_the_limit_is_not_reached() -> None:
    """A window that never filled the limit (the input was slow) raises nothing."""
    ctl = CongestionController(1, 100, initial=20)
    for i in range(40):
        ctl.on_sample(float(i + 1), 1.0, in_flight=2)
    assert ctl.limit == 20


def test_rejects_bad_bounds() -> None:
    """min/max are whole numbers, max >= min."""
    with pytest.raises(ConfigError):
        CongestionController(0, 10)
    with pytest.raises(ConfigError):
        CongestionController(10, 5)


async def test_engine_runs_auto_and_reports_the_limit() -> None:
    """``concurrency="auto"`` through the engine: the limit grows from the
    start while latency stays flat, and the report says how it moved."""
    import asyncio

    import conveyor

    async def fn(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    seen: list[conveyor.ProgressSnapshot] = []
    report = await conveyor.arun(
        range(400),
        fn,
        concurrency="auto",
        concurrency_max=64,
        on_progress=seen.append,
        progress_interval=0.05,
    )
    assert report.counts["ok"] == 400
    auto = report.extra["concurrency_auto"]
    assert auto["final"] > 4
    assert auto["history"][0][2] == "start"
    assert seen[-1].concurrency_reason is not None
    # The text summary lists where it ended and the latest moves with why.
    text = report.summary()
    assert f"concurrency auto: final {auto['final']}" in text
    assert "start" in text.split("concurrency auto:")[1]


def test_the_summary_caps_the_moves_it_lists() -> None:
    """A long history: the summary lists the latest 8 and says how many more
    the JSON report holds."""
    from conveyor._core._report import auto_lines

    history = [[float(i), 10 + i, "start" if i == 0 else f"grew: step {i}"] for i in range(20)]
    auto = {"final": 29, "changes": 19, "history": history, "unloaded_latency": 0.5,
            "compared": "per request", "gave_way": None}  # fmt: skip
    lines = auto_lines(auto)
    assert lines[0].startswith("  concurrency auto: final 29 after 19 moves")
    assert "12 earlier moves" in lines[1]
    assert len(lines) == 2 + 8
    assert lines[-1].endswith("grew: step 19")
    assert auto_lines({"history": []}) == []


def test_options_auto_validation() -> None:
    """Bounds only with "auto"; "auto" not with waves; other strings refused."""
    from conveyor._core._options import build_options

    opts = build_options(concurrency="auto", concurrency_min=2, concurrency_max=50)
    assert opts.auto == (2, 50)
    assert opts.concurrency == 50
    assert build_options(concurrency=100).auto is None
    for bad in (
        {"concurrency": "fast"},
        {"concurrency": 8, "concurrency_max": 10},
        {"concurrency": "auto", "concurrency_min": 10, "concurrency_max": 5},
        {"concurrency": "auto", "waves": True},
    ):
        with pytest.raises(ConfigError):
            build_options(**bad)  # type: ignore[arg-type]


async def test_engine_tells_the_controller_each_attempts_output_tokens() -> None:
    """An attempt that reports its usage is compared per output token: the
    unloaded figure is per token (a tenth of the 10-token attempts' time),
    not per request; without usage it is per request."""
    import asyncio

    import conveyor

    async def fn(x: int) -> int:
        tokens = (10, 20, 40, 80)[x % 4]
        await asyncio.sleep(0.001 * tokens)
        conveyor.report_usage(5, tokens)
        return x

    report = await conveyor.arun(range(300), fn, concurrency="auto", concurrency_max=64)
    auto = report.extra["concurrency_auto"]
    assert auto["compared"] == "per output token"
    assert auto["unloaded_latency"] < 0.005  # per token: ~0.001 s; a request takes >= 0.01 s

    async def plain(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    report = await conveyor.arun(range(100), plain, concurrency="auto", concurrency_max=64)
    assert report.extra["concurrency_auto"]["compared"] == "per request"
    assert report.extra["concurrency_auto"]["unloaded_latency"] >= 0.01


@pytest.mark.parametrize(("status", "backs_off"), [(500, False), (502, False), (503, True)])
async def test_only_overload_answers_back_the_limit_off(status: int, backs_off: bool) -> None:
    """A quick 500/502 is a fault of that request, not a queue: a flaky
    endpoint keeps its auto limit. 503 (and 504, 529, timeouts) say the
    server is overloaded: the limit backs off and says why."""
    import asyncio

    import conveyor
    from conveyor._base._exceptions import HTTPRetryable

    rnd = random.Random(5)

    async def fn(x: int) -> int:
        await asyncio.sleep(0.005)
        if rnd.random() < 0.7:
            raise HTTPRetryable(f"HTTP {status}", status_code=status)
        return x

    report = await conveyor.arun(range(300), fn, concurrency="auto", retries=0)
    assert report.counts["ok"] + report.counts["failed"] == 300
    reasons = [why for _, _, why in report.extra["concurrency_auto"]["history"]]
    assert any(why.startswith("backed off: errors") for why in reasons) is backs_off, reasons


def test_a_queue_of_milliseconds_on_a_fast_endpoint_is_no_reason_to_back_off() -> None:
    """A 2 ms endpoint with room for thousands, and a client that spends
    0.3 ms reading each answer: past about 7 in flight the answers wait for
    the client, not the server. That wait (a few ms) is no queue to fall for:
    the limit stays at the start or above, full speed holds, and the median
    latency stays within a few MIN_WAIT of unloaded (the old rule fell to 9)."""
    ctl = CongestionController(1, 1000)
    cost = 0.0003
    run = simulate(ctl, capacity=lambda _: 10_000, service=0.002, until=3.0,
                   client_cost=cost, jitter=0.1)  # fmt: skip
    late = run.limits_between(1.0, 3.0)
    assert min(late) >= START, ctl.history
    assert run.throughput(1.0, 3.0) >= 0.95 / cost
    assert run.median_latency(1.0, 3.0) <= 0.002 + 3 * MIN_WAIT
