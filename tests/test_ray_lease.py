"""The cluster's one budget, pure: a lease ledger, workers on virtual time, a bucket server.

Workers lease from the ledger told nothing, report every answer's headers
and every refusal as `LeaseClient` does, and the ledger's mirror keeps all of
them together to the server's bucket.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import pytest

from conveyor.ray._lease import Grant, Lease, LeaseLedger, LeaseRequest, Observation, Refusal


class Bucket:
    """A server's token bucket, refilled continuously, reporting OpenAI's headers."""

    def __init__(self, rate: float, capacity: float, window: float = 60.0) -> None:
        self.rate, self.capacity, self.window = rate, capacity, window
        self.level, self.t = capacity, 0.0
        self.accepted: list[float] = []
        self.refused = 0
        self.refused_at: list[float] = []

    def take(self, now: float) -> tuple[bool, float, float]:
        """(accepted, remaining after it, reset or retry-after)."""
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now
        if self.level >= 1.0:
            self.level -= 1.0
            self.accepted.append(now)
            return True, math.floor(self.level), (self.capacity - self.level) / self.rate
        self.refused += 1
        self.refused_at.append(now)
        return False, 0.0, (1.0 - self.level) / self.rate


@dataclass
class Worker:
    concurrency: int
    lease: Lease | None = None
    retry_at: float = 0.0
    in_flight: list[tuple[float, object]] = field(default_factory=list)
    reports: list[object] = field(default_factory=list)
    returns: list[tuple[float, ...]] = field(default_factory=list)


def simulate(
    n: int, workers: int, concurrency: int, server: Bucket, latency: float, window: float
) -> float:
    ledger = LeaseLedger(None, None, window)
    ttl = ledger.ttl
    crew = [Worker(concurrency) for _ in range(workers)]
    queue = n  # items not yet answered ok nor in flight
    done = 0
    now, dt = 0.0, 0.001
    while done < n:
        assert now < 1000, "the run stalled"
        for w in crew:
            still = []
            for at, outcome in w.in_flight:
                if at > now:
                    still.append((at, outcome))
                    continue
                w.reports.append(outcome)
                if isinstance(outcome, Refusal):
                    queue += 1  # retried
                else:
                    done += 1
            w.in_flight = still
            while queue > 0 and len(w.in_flight) < w.concurrency and now >= w.retry_at:
                lease = w.lease
                if lease is None or not lease.take(now, 1.0, 0.0):
                    if lease is not None and lease.leftover() is not None:
                        w.returns.append(lease.leftover())  # type: ignore[arg-type]
                    want = float(w.concurrency - len(w.in_flight))
                    req = LeaseRequest(
                        1.0,
                        0.0,
                        want,
                        0.0,
                        returns=tuple(w.returns),
                        observations=tuple(r for r in w.reports if isinstance(r, Observation)),
                        refusals=tuple(r for r in w.reports if isinstance(r, Refusal)),
                    )
                    w.returns, w.reports = [], []
                    grant = ledger.apply(now, req)
                    w.lease = None
                    if not grant.granted:
                        w.retry_at = now + max(grant.wait, grant.paused_for, dt)
                        break
                    w.lease = lease = Lease(
                        grant.granted_at,
                        grant.requests,
                        grant.tokens,
                        now,
                        now + ttl * 0.9,
                        mark_requests=grant.mark_requests,
                        mark_tokens=grant.mark_tokens,
                    )
                    continue
                before = lease.spent_requests - 1.0  # take() above spent this one
                queue -= 1
                ok, remaining, reset = server.take(now)
                offset = now - lease.started
                size = lease.requests + lease.spent_requests
                outcome: object
                if ok:
                    limit = server.rate * window
                    outcome = Observation(
                        lease.granted_at, offset, lease.mark_requests, 0.0, size, 0.0,
                        before, 0.0, 0.0, (("requests", limit, remaining, reset),),
                    )  # fmt: skip
                else:
                    outcome = Refusal(lease.granted_at, offset, "requests", 1.0, reset)
                w.in_flight.append((now + latency, outcome))
        now += dt
    return now


@pytest.mark.parametrize(("capacity_s", "latency"), [(1.0, 0.2), (0.25, 0.05), (60.0, 0.1)])
def test_four_workers_keep_together_to_the_servers_bucket(
    capacity_s: float, latency: float
) -> None:
    """4 workers told nothing, each with room for far more, learn the server's bucket
    through the one ledger: they run at its rate (within a few percent of the ideal)
    and get refused only in the first round, before any headers arrived."""
    rate, window, n = 10.0, 60.0, 400
    server = Bucket(rate, rate * capacity_s, window)
    elapsed = simulate(n, workers=4, concurrency=8, server=server, latency=latency, window=window)
    # The server's own rules (the initial burst, then the rate), or the room in flight.
    ideal = max(max(0.0, n - server.capacity) / rate, math.ceil(n / 32) * latency) + latency
    assert elapsed <= ideal * 1.03 + latency, (elapsed, ideal)
    first_round = 4 * 8
    assert server.refused <= first_round
    # Once the first answers are in, the mirror keeps everyone to the bucket.
    later = [t for t in server.refused_at if t > 2 * latency + 0.01]
    assert len(later) <= 0.01 * n, later


def test_an_observation_names_its_request_inside_the_lease() -> None:
    """The ledger places a reported answer at its own units inside the lease it drew
    from: what was granted after it counts as spent since the server's `remaining`."""
    ledger = LeaseLedger(None, None, 60.0)
    grant = ledger.apply(0.0, LeaseRequest(1.0, 0.0, 10.0, 0.0))
    assert (grant.requests, grant.mark_requests) == (10.0, 10.0)
    # The 3rd request of the block (2 spent before it), sent 0.1 s into the lease:
    # the server held 5 after it, a bucket of 10 at 10/s (full again in 0.5 s).
    obs = Observation(0.0, 0.1, 10.0, 0.0, 10.0, 0.0, 2.0, 0.0, 0.0, (("requests", 600, 5, 0.5),))
    ledger.apply(0.1, LeaseRequest(observations=(obs,)))
    budget = ledger.requests
    assert budget.model.value == "bucket" and budget.capacity == pytest.approx(10.0)
    assert budget.level(0.1) == pytest.approx(5.0 - 7.0)  # 7 more of the block may be out


async def test_the_lease_client_reports_what_each_attempt_heard() -> None:
    """`LeaseClient.observe` and `.refused`, called in the attempt's task, reach the
    ledger with the lease the attempt drew from; the mirror learns the server's bucket."""
    from conveyor._core._attempt import RateLimitHint
    from conveyor.ray._limiter import LeaseClient

    ledger = LeaseLedger(None, None, 60.0)
    t0 = time.monotonic()

    async def send(req: LeaseRequest) -> Grant:
        return ledger.apply(time.monotonic() - t0, req)

    client = LeaseClient(send, rpm=None, tpm=None, ttl=1.0)

    async def attempt(i: int) -> None:
        await client.acquire(0.0)
        if i == 0:
            client.refused("requests", 1.0, 0.05, None)
        else:
            client.observe(
                RateLimitHint(requests_limit=600, requests_remaining=4, requests_reset=0.6)
            )

    await asyncio.gather(*(asyncio.create_task(attempt(i)) for i in range(3)))
    await client.aclose()
    assert ledger.observed == 2 and ledger.refused == 1
    assert ledger.requests.model.value == "bucket"
    assert ledger.requests.capacity == pytest.approx(10.0)


def test_units_given_back_do_not_count_as_sent_after_an_answer() -> None:
    """A lease's unspent tail, given back, is discounted from what the mirror counts
    as sent after an earlier request: workers that ask for more than they spend do
    not starve the cluster once headers arrive."""
    ledger = LeaseLedger(None, None, 60.0)
    grant = ledger.apply(0.0, LeaseRequest(1.0, 0.0, 10.0, 0.0))
    lease = Lease(grant.granted_at, grant.requests, grant.tokens, 0.0, 1.0, mark_requests=10.0)
    assert lease.take(0.0, 1.0, 0.0) and lease.take(0.0, 1.0, 0.0) and lease.take(0.0, 1.0, 0.0)
    left = lease.leftover()
    assert left is not None and left[1] == 7.0
    # The first request's answer: 5 left of a bucket of 10 at 10/s.
    obs = Observation(0.0, 0.0, 10.0, 0.0, 10.0, 0.0, 0.0, 0.0, 0.0, (("requests", 600, 5, 0.5),))
    ledger.apply(0.0, LeaseRequest(returns=(left,), observations=(obs,)))
    assert ledger.requests.level(0.0) == pytest.approx(5.0 - 2.0)  # 2 more were sent
