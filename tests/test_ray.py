"""The Ray backend (`conveyor.ray`): leases, the driver, and real runs on a local Ray.

The lease arithmetic is property-tested on virtual time. Everything else runs
on a real local Ray instance (2 CPUs, no dashboard) against the simulated
OpenAI server on loopback, which measures the limits where they matter.
Tests that need Ray are skipped, with the reason, when it is not installed;
the "Ray is missing" path runs in a subprocess either way.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conveyor
import conveyor.ray
from conveyor._base._exceptions import ConfigError, FatalError, RetryableError
from conveyor._base._types import ErrorInfo, Result, Status, Usage
from conveyor._journal._journal import Journal
from conveyor._journal._sink import OutputSink
from conveyor.mock import MockConfig, MockServer, count_prompt_tokens, expected_content
from conveyor.openai._limit_headers import read_limit_headers
from conveyor.ray._driver import split_concurrency
from conveyor.ray._lease import Grant, Lease, LeaseLedger, LeaseRequest, lease_ttl
from conveyor.ray._wire import decode_fatal, decode_result, encode_fatal, encode_result

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

MARGIN = 0.9  # workers spend a lease for at most this share of its ttl

# ---- pure: the lease ledger on virtual time -------------------------------------------


def max_in_window(events: list[tuple[float, float]], window: float) -> float:
    """Most weight in any half-open window (t - window, t], as the mock server counts."""
    events = sorted(events)
    best = total = 0.0
    start = 0
    for at, w in events:
        total += w
        while events[start][0] <= at - window:
            total -= events[start][1]
            start += 1
        best = max(best, total)
    return best


@st.composite
def lease_runs(draw: st.DrawFn) -> tuple[int, float, int, list[tuple[float, int, float, float]]]:
    limit = draw(st.integers(1, 40))
    window = draw(st.sampled_from([0.5, 1.0, 2.0, 60.0]))
    clients = draw(st.integers(1, 4))
    steps = draw(
        st.lists(
            st.tuples(
                st.floats(0.0, window / 4),  # time advance
                st.integers(0, clients - 1),  # which client spends
                st.floats(0.0, 1.0),  # actual tokens as a share of the estimate
                st.sampled_from([0.0, 0.0, 0.0, 0.3]),  # a pause (a 429) after this step
            ),
            min_size=1,
            max_size=120,
        )
    )
    return limit, window, clients, steps


@settings(max_examples=120, deadline=None)
@given(lease_runs(), st.integers(1, 30))
def test_leases_keep_spends_within_the_limit_in_every_window(
    run: tuple[int, float, int, list[tuple[float, int, float, float]]], weight: int
) -> None:
    """Workers spending leases (until their ttl), giving leftovers back and refunding
    unused tokens never put more than the limit into any window, for requests and
    tokens alike, whatever the timing, the number of workers and the pauses."""
    limit, window, clients, steps = run
    tpm = float(limit * 10)
    weight = min(weight, int(tpm))
    ledger = LeaseLedger(limit, tpm, window)
    ttl = ledger.ttl
    leases: list[Lease | None] = [None] * clients
    spends: list[tuple[float, float]] = []
    tokens: list[tuple[float, float]] = []
    now = 100.0
    for advance, who, share, pause in steps:
        now += advance
        lease = leases[who]
        if lease is None or not lease.take(now, 1.0, weight):
            returns = ()
            if lease is not None and lease.leftover() is not None:
                returns = (lease.leftover(),)  # type: ignore[assignment]
            grant = ledger.apply(now, LeaseRequest(1.0, weight, 5.0, weight * 5.0, returns))
            leases[who] = None
            if not grant.granted:
                continue
            lease = Lease(grant.granted_at, grant.requests, grant.tokens, now, now + ttl * MARGIN)
            leases[who] = lease
            assert lease.take(now, 1.0, weight)
        spends.append((now, 1.0))
        actual = math.floor(weight * share)
        tokens.append((now, actual))
        if actual < weight:
            ledger.apply(now, LeaseRequest(refunds=((lease.granted_at, weight - actual),)))
        if pause:
            ledger.apply(now, LeaseRequest(pause=pause))
    assert max_in_window(spends, window) <= limit
    assert max_in_window(tokens, window) <= tpm + 1e-6


def test_a_pause_stops_every_grant_until_it_ends() -> None:
    """After one worker reports a 429, no worker gets a lease until the pause is over."""
    ledger = LeaseLedger(100, None, 60.0)
    ledger.apply(10.0, LeaseRequest(pause=2.0))
    held = ledger.apply(11.0, LeaseRequest(1.0, 0.0, 5.0, 0.0))
    assert not held.granted
    assert held.paused_for == pytest.approx(1.0)
    later = ledger.apply(12.0, LeaseRequest(1.0, 0.0, 5.0, 0.0))
    assert later.granted and later.requests >= 1


def test_blocks_are_paced_and_leftovers_come_back() -> None:
    """A block never exceeds one second of the rate, and units given back unspent
    can be granted again at once."""
    ledger = LeaseLedger(600, None, 60.0)  # 10 per second
    first = ledger.apply(0.0, LeaseRequest(1.0, 0.0, 1000.0, 0.0))
    assert first.requests == 10
    assert not ledger.apply(0.0, LeaseRequest(1.0, 0.0, 10.0, 0.0)).granted
    again = ledger.apply(0.0, LeaseRequest(1.0, 0.0, 10.0, 0.0, returns=((0.0, 10.0, 0.0),)))
    assert again.granted and again.requests == 10


def test_an_item_larger_than_the_token_limit_is_impossible() -> None:
    """A cost above the whole per-window token limit is refused outright, not waited on."""
    ledger = LeaseLedger(None, 1000, 60.0)
    grant = ledger.apply(0.0, LeaseRequest(1.0, 1001.0, 1.0, 1001.0))
    assert grant.impossible and not grant.granted
    # Requests, told nothing, are granted as wanted.
    assert ledger.apply(0.0, LeaseRequest(1.0, 10.0, 3.0, 10.0)).requests == 3.0


def test_lease_ttl_is_short_on_short_windows() -> None:
    """The ttl (and so the rate given up) is 1 s on a minute and shrinks with the window."""
    assert lease_ttl(60.0) == 1.0
    assert lease_ttl(1.0) == pytest.approx(0.05)


@given(st.integers(1, 100_000), st.integers(1, 200))
def test_concurrency_is_split_evenly(total: int, workers: int) -> None:
    """Shares add up to the total (at least 1 each) and differ by at most one."""
    shares = split_concurrency(total, workers)
    assert len(shares) == workers
    assert sum(shares) == max(total, workers)
    assert max(shares) - min(shares) <= 1


@given(
    st.sampled_from(list(Status)),
    st.none() | st.integers() | st.text(),
    st.booleans(),
    st.booleans(),
)
def test_results_survive_the_wire(status: Status, value: Any, err: bool, usage: bool) -> None:
    """What a worker sends back decodes to the same result, with the driver's key and item."""
    r = Result(
        index=7,
        key="k7",
        status=status,
        item={"x": 1},
        value=value,
        error=ErrorInfo("Boom", "it broke", "tb", 503, True) if err else None,
        attempts=2,
        started_at=1.5,
        ended_at=2.5,
        duration=1.0,
        usage=Usage(3, 4) if usage else None,
        meta={"m": 1},
    )
    back = decode_result(encode_result(7, r), "k7", {"x": 1})
    assert back == r


def test_fatal_errors_survive_the_wire() -> None:
    """A worker's FatalError reaches the driver as the same class and message."""

    class Denied(FatalError):
        pass

    err = decode_fatal(encode_fatal(FatalError("401: key rejected")))
    assert type(err) is FatalError and str(err) == "401: key rejected"
    # A class the driver cannot unpickle (local) still arrives as a FatalError.
    assert str(decode_fatal(encode_fatal(Denied("no")))) == "no"


# ---- without Ray -------------------------------------------------------------------


def test_without_ray_the_backend_says_how_to_install() -> None:
    """With `ray` unimportable, `conveyor.ray` still imports, and asking for the backend
    raises RayNotInstalled naming `pip install 'conveyor[ray]'`."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["ray"] = None  # what Python does for a package that is not there
        import conveyor.ray as cr
        for call in (cr.check_ray_available, lambda: cr.run_ray([1], abs)):
            try:
                call()
            except cr.RayNotInstalled as exc:
                assert isinstance(exc, conveyor.ConveyorError)
                print(exc)
            else:
                raise SystemExit("no error")
        """
    ).replace("import conveyor.ray as cr", "import conveyor, conveyor.ray as cr")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    assert all("pip install 'conveyor[ray]'" in line for line in lines)


def test_an_address_nothing_answers_at_fails_fast() -> None:
    """A cluster address where nothing listens fails in seconds with RayConnectError
    naming the address and what to check, instead of Ray's minutes of retries."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'conveyor[ray]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: connecting is refused
    code = textwrap.dedent(
        f"""
        import conveyor.ray as cr
        try:
            cr.run_ray([1], abs, address="127.0.0.1:{port}")
        except cr.RayConnectError as exc:
            print(exc)
        """
    )
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert f"127.0.0.1:{port}" in out.stdout and "ray start --head" in out.stdout
    assert time.monotonic() - t0 < 30


# ---- on a real local Ray -------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'conveyor[ray]'")
    # Workers import this module's functions by value: tests/ is not on their path.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def server(start_mock: Callable[..., MockServer]) -> tuple[MockServer, str]:
    srv = start_mock(latency=0.02)
    return srv, srv.base_url


class ChatCaller:
    """A task function holding one HTTP session per worker, closed by `aclose()`."""

    def __init__(self, base_url: str) -> None:
        self.url = base_url + "/chat/completions"
        self._session: aiohttp.ClientSession | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url}  # never ship a live session

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url = state["url"]
        self._session = None

    async def __call__(self, item: int) -> tuple[int, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(self.url, json=body(item)) as resp:
            data = await resp.json()
            if resp.status == 429:
                raise RetryableError("429", retry_after=0.2, status_code=429)
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
        usage = data["usage"]
        conveyor.report_usage(usage["prompt_tokens"], usage["completion_tokens"])
        return os.getpid(), data["choices"][0]["message"]["content"]

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def body(item: int) -> dict[str, Any]:
    return {"model": "mock-gpt", "messages": [{"role": "user", "content": f"item {item}"}]}


def estimated_tokens(item: int) -> float:
    return float(count_prompt_tokens(body(item)) + 16)  # 16: the mock's completion size


def test_every_item_is_answered_once_through_two_actors(
    ray_cluster: Any, server: tuple[MockServer, str]
) -> None:
    """A batch sent through 2 actors gets one correct answer per item, in input order,
    both actors take part, the server sees each request exactly once, and the driver
    calls the callbacks and reports progress as the local engine does."""
    srv, url = server
    n = 120
    called: list[int] = []
    snapshots: list[Any] = []
    report = conveyor.ray.run_ray(
        range(n),
        ChatCaller(url),
        actors=2,
        concurrency=16,
        on_result=lambda r: called.append(r.index),
        on_progress=snapshots.append,
        progress_interval=0.2,
    )
    assert report.counts["ok"] == n
    assert sorted(called) == list(range(n))
    assert snapshots[-1].finished and snapshots[-1].done == n
    assert [r.index for r in report] == list(range(n))
    values = report.values()
    assert [v[1] for v in values] == [expected_content(body(i)) for i in range(n)]
    assert len({v[0] for v in values}) == 2  # answered from two worker processes
    assert srv.stats.by_path["/v1/chat/completions"] == n
    assert report.input_tokens == sum(count_prompt_tokens(body(i)) for i in range(n))
    assert report.extra["workers_lost"] == 0


def test_the_global_limits_hold_at_the_server(
    ray_cluster: Any, server: tuple[MockServer, str]
) -> None:
    """Two actors with room for far more share one requests and one tokens limit:
    measured at the server, no window holds more than either, and the limit binds."""
    srv, url = server
    srv.config = MockConfig(latency=0.0)
    rpm, tpm, window, n = 40, 900, 1.0, 100
    t0 = time.monotonic()
    report = conveyor.ray.run_ray(
        range(n),
        ChatCaller(url),
        actors=2,
        concurrency=32,
        rpm=rpm,
        tpm=tpm,
        cost=estimated_tokens,
        limit_window=window,
    )
    elapsed = time.monotonic() - t0
    assert report.counts["ok"] == n
    stats = srv.stats
    assert stats.max_requests_in_window(window) <= rpm
    assert stats.max_tokens_in_window(window) <= tpm
    # The limits bound the pace (32 at a time with no latency would take a blink).
    assert stats.max_requests_in_window(window) >= rpm // 3
    assert elapsed >= (n - rpm) / rpm * window
    assert 429 not in stats.statuses


class HeaderReadingCaller(ChatCaller):
    """A task function that tells conveyor what the server's headers said, as the
    OpenAI transport does, and hands a 429 back with the server's `Retry-After`."""

    async def __call__(self, item: int) -> tuple[int, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(self.url, json=body(item)) as resp:
            hint = read_limit_headers(resp.headers)
            if hint is not None:
                conveyor.report_limits(**{f: getattr(hint, f) for f in hint.__slots__})
            data = await resp.json()
            if resp.status == 429:
                wait = resp.headers.get("retry-after")
                raise RetryableError(
                    "429", retry_after=float(wait) if wait else None, status_code=429
                )
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
        return os.getpid(), data["choices"][0]["message"]["content"]


# Slow: the default run keeps test_the_global_limits_hold_at_the_server and test_ray_lease.
@pytest.mark.slow
def test_actors_told_nothing_keep_together_to_the_servers_bucket(
    ray_cluster: Any, start_mock: Callable[..., MockServer]
) -> None:
    """Two actors told no limit learn the server's 1-second bucket from its headers
    through the one limiter actor: every item ok, no stall, and 429s only in the
    first round, before any headers arrived."""
    srv = start_mock(rpm=120, limit_window=1.0, burst=0.25, latency=0.01)
    n = 360
    report = conveyor.ray.run_ray(
        range(n), HeaderReadingCaller(srv.base_url), actors=2, concurrency=32, limit_window=1.0
    )
    assert report.counts["ok"] == n
    refused = srv.stats.statuses[429]
    assert refused <= 32, refused  # a first round at most
    # (360 - 30) / 120 = 2.75 s at the server's rate, measured at the server from
    # its first answer to its last; a mirror per actor would overspend (429s), a
    # stale "0 remaining" held for a window would stall.
    log = list(srv.stats.admissions)
    span = log[-1][0] - log[0][0]
    assert span <= 2.75 * 1.25 + 0.3, span


async def test_a_pause_reaches_every_worker(ray_cluster: Any) -> None:
    """A 429 on one worker (`pause`) holds back the others on their next lease."""
    from conveyor.ray._limiter import LeaseClient, LimiterActor

    limiter = ray_cluster.remote(LimiterActor).options(num_cpus=0).remote(None, None, 60.0)
    try:
        rpm, tpm, _ttl = await limiter.config.remote()
        a, b = (
            LeaseClient(lambda req: limiter.lease.remote(req), rpm=rpm, tpm=tpm, ttl=0.05)
            for _ in range(2)
        )
        await a.acquire(0)
        a.pause(0.6)
        # Wait (bounded) until the limiter has heard of it; then b must hold back too.
        for _ in range(100):
            if (await limiter.stats.remote())["pauses"] >= 1:
                break
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        await b.acquire(0)
        assert time.monotonic() - t0 >= 0.3
        await a.aclose()
        await b.aclose()
    finally:
        ray_cluster.kill(limiter)


async def test_a_killed_actor_loses_nothing_and_duplicates_nothing(
    ray_cluster: Any, server: tuple[MockServer, str], tmp_path: Path
) -> None:
    """Killing one of two actors mid-run: its unfinished items run on a new actor, the
    stream ends with every item once, and the exactly-once output file holds each key once."""
    srv, url = server
    srv.config = MockConfig(latency=0.1)
    n = 160
    journal = Journal.open(tmp_path / "run.journal", identity={"test": "ray-kill"})
    out = tmp_path / "out.jsonl"
    seen: list[int] = []
    killed = False

    def fmt(r: Result[Any]) -> bytes:
        return orjson.dumps({"key": r.key, "status": r.status.value})

    try:
        async with (
            OutputSink(journal, out, fmt) as sink,
            conveyor.ray.stream_ray(range(n), ChatCaller(url), actors=2, concurrency=16) as s,
        ):
            async for r in s:
                seen.append(r.index)
                await sink.add(r)
                if not killed and len(seen) >= 30:
                    ray_cluster.kill(s.workers[0], no_restart=True)
                    killed = True
        report = s.report
    finally:
        journal.close()
    assert killed
    assert sorted(seen) == list(range(n))
    assert report is not None
    assert report.counts["ok"] == n
    assert report.extra["workers_lost"] == 1
    assert report.extra["worker_restarts"] == 1
    keys = [orjson.loads(line)["key"] for line in out.read_bytes().splitlines()]
    assert sorted(keys, key=int) == [str(i) for i in range(n)]


async def _fatal_on_seven(item: int) -> int:
    await asyncio.sleep(0.01)
    if item == 7:
        raise FatalError("the key was rejected (401)")
    return item


def test_a_fatal_error_on_one_actor_stops_the_whole_run(ray_cluster: Any) -> None:
    """A FatalError raised on a worker stops every worker; run_ray raises it with a
    report that still gives each item exactly one result."""
    n = 400
    with pytest.raises(FatalError, match="rejected") as info:
        conveyor.ray.run_ray(range(n), _fatal_on_seven, actors=2, concurrency=4)
    report = info.value.report
    assert report is not None
    assert report.total == n
    assert [r.index for r in report] == list(range(n))
    assert report.counts["skipped"] > 0
    assert report.stop_reason is not None and "fatal" in report.stop_reason


def test_a_broken_input_still_reports_every_item_read(ray_cluster: Any) -> None:
    """When the items iterable raises, reading stops but every item read before runs to
    its result; run_ray raises a ConveyorError naming the cause, with the report."""

    def items() -> Iterator[int]:
        yield from range(30)
        raise OSError("disk went away")

    with pytest.raises(conveyor.ConveyorError, match="disk went away") as info:
        conveyor.ray.run_ray(items(), _slow, actors=2, concurrency=4)
    report = info.value.report
    assert report is not None
    assert [r.index for r in report] == list(range(30))
    assert report.counts["ok"] == 30


def test_a_function_workers_cannot_load_fails_fast_and_says_why(
    ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A function from a module only the driver can import makes the workers die while
    starting: the run stops at once (no restart loop) with WorkersLost naming the
    missing module and what to do, and every item still has one result."""
    (tmp_path / "only_here.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from only_here import double  # type: ignore[import-not-found]

    with pytest.raises(conveyor.ray.WorkersLost, match="only_here") as info:
        conveyor.ray.run_ray(range(10), double, actors=2)
    assert "runtime_env" in str(info.value)
    report = info.value.report
    assert report is not None and report.total == 10
    assert report.counts["skipped"] == 10
    assert report.extra["worker_restarts"] == 0


async def _pid_after_a_while(item: int) -> int:
    await asyncio.sleep(0.05)
    return os.getpid()


@pytest.mark.slow  # 1-3 s of actors; the default run keeps the other Ray tests
def test_more_actors_than_cpus_all_take_part(ray_cluster: Any) -> None:
    """Asking for 3 actors on a 2-CPU Ray does not leave one waiting for a CPU forever
    (holding its items): each takes a share of a CPU and all 3 answer."""
    report = conveyor.ray.run_ray(range(60), _pid_after_a_while, actors=3, concurrency=6)
    assert report.counts["ok"] == 60
    assert len(set(report.values())) == 3


async def _echo(item: int) -> int:
    await asyncio.sleep(0.001)
    return item


async def test_input_is_read_lazily(ray_cluster: Any) -> None:
    """The driver pulls items as workers need them: stopping after 50 results has read
    only a bounded number of a much longer input."""
    pulled = 0

    def source() -> Iterator[int]:
        nonlocal pulled
        for i in range(1_000_000):
            pulled += 1
            yield i

    got = 0
    async with conveyor.ray.stream_ray(source(), _echo, actors=2, concurrency=8) as s:
        async for _ in s:
            got += 1
            if got >= 50:
                break
    # 2 actors x 2 chunks of 4 out at a time, plus what was read while results streamed.
    assert got == 50
    assert pulled <= 50 + 64


async def _slow(item: int) -> int:
    await asyncio.sleep(0.05)
    return item


async def test_stopping_a_stream_ends_it_as_interrupted(ray_cluster: Any) -> None:
    """`stop("interrupt")` stops dispatching: in-flight items finish, the stream ends with
    `Interrupted` carrying a report of what finished, and no item is reported twice."""
    n = 2000
    seen: list[int] = []
    s = conveyor.ray.stream_ray(range(n), _slow, actors=2, concurrency=8)

    async def consume() -> None:
        async for r in s:
            seen.append(r.index)
            if len(seen) == 20:
                s.stop("interrupt")

    with pytest.raises(conveyor.Interrupted) as info:
        await consume()
    report = info.value.report
    assert report is not None and report.interrupted
    assert len(seen) == len(set(seen)) == report.total
    assert 20 <= report.total < n


def test_options_not_available_on_ray_are_refused_before_anything_starts() -> None:
    """Waves and a caller's own limiter are refused with a ConfigError naming the option."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'conveyor[ray]'")
    with pytest.raises(ConfigError, match="waves"):
        conveyor.ray.run_ray([1], _echo, waves=True)
    with pytest.raises(ConfigError, match="actors"):
        conveyor.ray.run_ray([1], _echo, actors=0)
    # Not built for the cluster yet: the error says what to do instead.
    with pytest.raises(ConfigError, match="one machine"):
        conveyor.ray.run_ray([1], _echo, concurrency="auto")  # type: ignore[arg-type]


def test_kinds_told_nothing_grant_what_is_wanted_and_count_it() -> None:
    """With no limits configured, a lease holds what the worker asked for, and the
    ledger counts it, so that a limit learned later from headers starts from the truth."""
    ledger = LeaseLedger(None, None, 60.0)
    grant = ledger.apply(0.0, LeaseRequest(1.0, 5.0, 40.0, 500.0))
    assert isinstance(grant, Grant) and grant.granted
    assert (grant.requests, grant.tokens) == (40.0, 500.0)
    assert (grant.mark_requests, grant.mark_tokens) == (40.0, 500.0)
    again = ledger.apply(0.0, LeaseRequest(1.0, 5.0, 10.0, 50.0))
    assert (again.mark_requests, again.mark_tokens) == (50.0, 550.0)


# ---- the front doors: conveyor.run(backend="ray") and run_file(ray=...) ----------------


def square(x: int) -> int:
    return x * x


def test_conveyor_run_with_the_ray_backend(ray_cluster: Any) -> None:
    """`conveyor.run(..., backend="ray")` gives the same report as the local engine."""
    report = conveyor.run(range(40), square, backend="ray", actors=2, concurrency=8)
    assert report.values() == [x * x for x in range(40)]
    with pytest.raises(conveyor.ConfigError, match="backend"):
        conveyor.run([1], square, backend="dask")


def test_run_file_on_ray_writes_each_custom_id_once(
    ray_cluster: Any, server: tuple[MockServer, str], tmp_path: Path
) -> None:
    """`conveyor run --ray`: a Batch file through actors, the driver keeping the
    journal and the output; a second run resumes and sends nothing."""
    from conveyor.openai import read_output, run_file

    srv, url = server
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body(i)}
        for i in range(120)
    ]
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    out = tmp_path / "out.jsonl"
    report = run_file(tmp_path / "in.jsonl", output=out, base_url=url, api_key="k", ray="local",
                      actors=2, concurrency=20)  # fmt: skip
    assert report.counts["ok"] == 120
    got = {ln["custom_id"]: ln for ln in read_output(out)}
    assert len(got) == 120 == sum(1 for _ in read_output(out))
    assert got["c7"]["response"]["body"]["choices"][0]["message"]["content"] == (
        expected_content(body(7))
    )
    seen = srv.stats.requests
    again = run_file(tmp_path / "in.jsonl", output=out, base_url=url, api_key="k", ray="local",
                     actors=2)  # fmt: skip
    assert again.total == 0 and srv.stats.requests == seen


def _tenfold(x: int) -> int:
    return x * 10


def test_run_with_a_journal_on_ray_resumes_by_the_one_rule(
    ray_cluster: Any, tmp_path: Path
) -> None:
    """run(journal=, backend="ray") (it raised TypeError): the second run reports
    the first run's results from the journal, in input order, and runs only the
    new items on the actors."""
    db = tmp_path / "ray.db"
    first = conveyor.run(range(6), _tenfold, journal=db, backend="ray", actors=2)
    assert first.values() == [x * 10 for x in range(6)]
    second = conveyor.run(range(9), _tenfold, journal=db, backend="ray", actors=2)
    assert second.values() == [x * 10 for x in range(9)]
    assert [bool(r.meta.get("resumed")) for r in second] == [True] * 6 + [False] * 3
    assert second.extra["resumed"] == 6
    with Journal.open_readonly(db) as ro:
        assert ro.status_counts().get("ok") == 9


@pytest.mark.slow  # 1-3 s of actors; the default run keeps the other Ray tests
async def test_astream_with_a_journal_on_ray(ray_cluster: Any, tmp_path: Path) -> None:
    """astream(journal=, backend="ray"): results are committed as they are handed
    out; a second stream yields them back as resumed and runs nothing."""
    db = tmp_path / "rs.db"
    async with conveyor.astream(range(4), _tenfold, journal=db, backend="ray") as s:
        got = sorted([r.value async for r in s])
    assert got == [0, 10, 20, 30]
    async with conveyor.astream(range(4), _tenfold, journal=db, backend="ray") as s:
        again = [r async for r in s]
    assert sorted(r.value for r in again) == [0, 10, 20, 30]
    assert all(r.meta.get("resumed") for r in again)


def _half_invalid(x: int) -> int:
    attempt = conveyor.current_attempt()
    return x if attempt is not None and (attempt.reask is not None or x % 2) else -1


def _non_negative(v: int) -> int:
    if v < 0:
        raise ValueError("negative")
    return v


@pytest.mark.slow  # 1-3 s of actors; the default run keeps the other Ray tests
def test_validate_and_reask_on_ray(ray_cluster: Any) -> None:
    """validate= works on the Ray backend: invalid values are re-asked on the
    actors, and the driver's report counts it."""
    report = conveyor.run(range(20), _half_invalid, backend="ray", actors=2, concurrency=4,
                          validate=_non_negative)  # fmt: skip
    assert report.values() == list(range(20))
    assert report.validation is not None
    assert (report.validation["valid_first_try"], report.validation["reasks"]) == (10, 10)


@pytest.mark.slow  # 1-3 s of actors; the default run keeps the other Ray tests
def test_run_file_with_a_schema_on_ray(
    ray_cluster: Any, server: tuple[MockServer, str], tmp_path: Path
) -> None:
    """`conveyor run --ray --schema`: answers validated and re-asked on the
    actors, parsed values in the driver's output."""
    from conveyor.openai import read_output, run_file

    srv, url = server
    srv.config = MockConfig(latency=0.02, invalid_json_rate=0.2, seed=4)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    (tmp_path / "s.json").write_bytes(orjson.dumps(schema))
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body(i)}
        for i in range(60)
    ]
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    out = tmp_path / "out.jsonl"
    report = run_file(tmp_path / "in.jsonl", output=out, base_url=url, api_key="k", ray="local",
                      actors=2, concurrency=10, schema=tmp_path / "s.json")  # fmt: skip
    assert all(ln["parsed"] == {"n": 0} for ln in read_output(out))
    assert report.validation is not None
    bad = srv.stats.structured["first:invalid_json"]
    assert bad > 0 and report.validation["reasks"] == bad == srv.stats.structured["reask:valid"]
