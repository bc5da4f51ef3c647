"""The pure decisions of batch mode, with plain numbers and an injected clock."""

from __future__ import annotations

import pytest

from conveyor._base._exceptions import ConfigError
from conveyor.openai._batchmode._cost import cost_split
from conveyor.openai._batchmode._merge import classify
from conveyor.openai._batchmode._policy import (
    DeadlinePolicy,
    EnqueueBudget,
    Line,
    PollSchedule,
    Sharder,
    ShardLimits,
    StuckDetector,
    default_margin,
    online_rate,
)


def _lines(n: int, *, tokens: int = 10, nbytes: int = 100, model: str = "m") -> list[Line]:
    return [Line(f"k{i}", i, "/v1/chat/completions", model, nbytes, tokens) for i in range(n)]


def test_shards_respect_lines_bytes_and_tokens() -> None:
    """Every shard stays under each limit, and every line lands in exactly one shard."""
    lines = _lines(1000, tokens=7, nbytes=130)
    for limits in (
        ShardLimits(max_lines=100),
        ShardLimits(max_bytes=1300 * 3 + 5),
        ShardLimits(max_tokens=7 * 45),
        ShardLimits(max_lines=90, max_bytes=5000, max_tokens=200),
    ):
        shards = Sharder(limits).split(lines)
        keys = [ln.key for s in shards for ln in s.lines]
        assert sorted(keys) == sorted(ln.key for ln in lines)
        for s in shards:
            assert len(s.lines) <= limits.max_lines
            assert s.nbytes <= limits.max_bytes
            assert limits.max_tokens is None or s.tokens <= limits.max_tokens


def test_shards_are_as_full_as_the_limits_allow() -> None:
    """300 lines at 100 per file make exactly 3 shards (no needless small ones)."""
    shards = Sharder(ShardLimits(max_lines=100)).split(_lines(300))
    assert [len(s.lines) for s in shards] == [100, 100, 100]


def test_one_model_and_url_per_shard() -> None:
    """A batch holds one endpoint and one model: lines are grouped by both."""
    mixed = _lines(5, model="a") + _lines(5, model="b")
    mixed = [Line(f"{ln.model}{ln.key}", ln.index, ln.url, ln.model, 1, 1) for ln in mixed]
    shards = Sharder(ShardLimits()).split(mixed)
    assert sorted((s.model, len(s.lines)) for s in shards) == [("a", 5), ("b", 5)]


def test_an_oversized_line_gets_a_shard_of_its_own() -> None:
    """A line over the token limit alone is not glued to its neighbours."""
    lines = [*_lines(2, tokens=10), Line("big", 9, "/v1/chat/completions", "m", 100, 500)]
    shards = Sharder(ShardLimits(max_tokens=100)).split(lines)
    assert [len(s.lines) for s in shards] == [2, 1]


def test_limits_refuse_nonsense() -> None:
    """A zero limit is a configuration error naming the setting."""
    with pytest.raises(ConfigError, match="batch_max_lines"):
        ShardLimits(max_lines=0)


def test_enqueue_budget_admits_what_fits_and_more_as_batches_finish() -> None:
    """Tokens in unfinished batches never pass the limit; a finished batch frees room."""
    b = EnqueueBudget(100)
    assert b.admit("m", 60)
    b.add("m", 60)
    assert not b.admit("m", 60)
    assert b.admit("other", 60)  # the limit is per model
    b.release("m", 60)
    assert b.admit("m", 60)
    b.shrink("m", 0.5)  # the provider refused: the limit is learned lower
    b.add("m", 40)
    assert not b.admit("m", 20)


def test_poll_schedule_never_polls_faster_than_the_interval_and_backs_off() -> None:
    """Polls are >= interval apart; idle batches are polled less often; progress resets."""
    p = PollSchedule(60.0, max_interval=240.0)
    assert p.due("b", 1000.0) == 1060.0
    p.polled("b", 1060.0, ("in_progress", 0))
    assert p.due("b", 1060.0) == 1120.0
    p.polled("b", 1120.0, ("in_progress", 0))  # no change: the gap doubles
    assert p.due("b", 1120.0) == 1240.0
    p.polled("b", 1240.0, ("in_progress", 0))
    p.polled("b", 1480.0, ("in_progress", 0))
    assert p.due("b", 1480.0) == 1720.0  # capped at max_interval
    p.polled("b", 1720.0, ("in_progress", 5))  # it moved: back to the interval
    assert p.due("b", 1720.0) == 1780.0


def test_stuck_detector_counts_time_without_change() -> None:
    """Stuck means no change in status or counts for `after` seconds, not mere age."""
    s = StuckDetector(100.0)
    assert not s.observe("b", ("in_progress", 1), 0.0)
    assert not s.observe("b", ("in_progress", 2), 90.0)
    assert not s.observe("b", ("in_progress", 2), 150.0)
    assert s.observe("b", ("in_progress", 2), 190.0)


def test_deadline_waits_as_long_as_it_safely_can() -> None:
    """Online starts only when the rest would barely make the deadline online."""
    # 100 lines at 10/s online = 10 s, x1.5 safety = 15 s, + 5 s margin = 20 s before.
    d = DeadlinePolicy(deadline=1000.0, online_rate=10.0, margin=5.0)
    assert not d.go_online(now=900.0, unfinished=100, batch_rate=None)
    assert not d.go_online(now=979.0, unfinished=100, batch_rate=None)
    assert d.go_online(now=981.0, unfinished=100, batch_rate=None)
    assert d.next_check(now=900.0, unfinished=100) == 980.0
    assert not d.go_online(now=999.0, unfinished=0, batch_rate=None)


def test_deadline_trusts_batches_that_will_finish_in_time() -> None:
    """When the batches' observed rate finishes the rest in time, no online switch."""
    d = DeadlinePolicy(deadline=1000.0, online_rate=10.0, margin=5.0)
    assert not d.go_online(now=985.0, unfinished=10, batch_rate=100.0)  # 0.15 s to go
    assert d.go_online(now=985.0, unfinished=100, batch_rate=1.0)  # 150 s to go


def test_margin_and_online_rate_defaults() -> None:
    """The margin is a tenth of the deadline within [2 s, 30 min]; rpm caps the rate."""
    assert default_margin(6 * 3600) == 1800.0
    assert default_margin(60) == 6.0
    assert default_margin(5) == 2.0
    assert online_rate(concurrency=100, rpm=None) == 100.0
    assert online_rate(concurrency=100, rpm=600) == 10.0


def test_result_lines_are_classified_like_the_api_documents_them() -> None:
    """200 answers; 429/5xx and batch_expired are re-driven; 400 and odd codes are final."""
    ok = classify(b'{"custom_id":"a","response":{"status_code":200,"body":{}},"error":null}')
    assert ok is not None and ok.kind == "ok"
    r429 = classify(b'{"custom_id":"b","response":{"status_code":429,"body":{}},"error":null}')
    assert r429 is not None and r429.kind == "retry"
    bad = classify(b'{"custom_id":"c","response":{"status_code":400,"body":{}},"error":null}')
    assert bad is not None and bad.kind == "failed"
    exp = classify(b'{"custom_id":"d","response":null,"error":{"code":"batch_expired"}}')
    assert exp is not None and exp.kind == "retry"
    assert classify(b"not json") is None


def test_cost_split_prices_batch_lines_at_half() -> None:
    """Lines answered by batch cost half; the report gives both what-ifs."""
    c = cost_split("gpt-4o-mini", [1_000_000, 0], [1_000_000, 0])
    assert c["batch_path"] == pytest.approx(0.075)
    assert c["online_path"] == pytest.approx(0.15)
    assert c["all_at_batch_prices"] == pytest.approx(0.15)
    assert c["all_at_online_prices"] == pytest.approx(0.30)
    assert cost_split("self-hosted", [1, 1], [0, 0])["total"] is None
