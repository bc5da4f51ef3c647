"""conveyor.run(validate=...): invalid values are re-asked as new attempts of the same item."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

import conveyor
from conveyor import ConfigError, InvalidAnswer, Issue
from conveyor._core._validation import ValidationTally, issues_of
from conveyor._render._extras import render_text
from conveyor._render._html import render_html
from conveyor._render._journal import load_journal_report


class Score(BaseModel):
    name: str
    score: int = Field(ge=0)


def test_reask_sees_the_previous_value_and_error() -> None:
    """An invalid value is asked again: fn runs again for the same item and
    reads the previous value and the validation issues from
    current_attempt().reask; the fixed value is kept (parsed by the validator)."""
    seen: list[tuple[int, int, Any]] = []

    def fn(x: int) -> dict[str, Any]:
        attempt = conveyor.current_attempt()
        assert attempt is not None
        reask = attempt.reask
        seen.append((x, attempt.number, None if reask is None else reask.value))
        if x % 2 == 0 and reask is None:
            return {"name": f"n{x}", "score": -1}  # invalid first answer
        return {"name": f"n{x}", "score": x}

    report = conveyor.run(range(6), fn, validate=Score.model_validate, concurrency=3)
    assert [r.value for r in report] == [Score(name=f"n{x}", score=x) for x in range(6)]
    assert all(isinstance(r.value, Score) for r in report)
    again = [(x, n, prev) for x, n, prev in seen if n > 1]
    assert sorted(again) == [(x, 2, {"name": f"n{x}", "score": -1}) for x in (0, 2, 4)]
    v = report.validation
    assert v is not None
    assert (v["valid_first_try"], v["valid_after_reask"], v["reasks"]) == (3, 3, 3)
    assert v["top_errors"][0]["error"] == "greater_than_equal at $.score"
    assert report.retries == 0 and report.attempts == 9


def test_last_try_fails_with_errors_and_raw_value() -> None:
    """After reask re-asks an item still invalid fails with InvalidAnswer; its
    meta keeps every answer's issues and the last raw value."""

    def check(value: str) -> str:
        raise InvalidAnswer([Issue("$", "value", f"{value!r} is no good")], raw=value)

    report = conveyor.run(["a"], lambda x: x * 2, validate=check, reask=1)
    (r,) = report.results
    assert r.status is conveyor.Status.FAILED and r.attempts == 2
    assert r.error is not None and r.error.type == "InvalidAnswer"
    assert "'aa' is no good" in r.error.message
    meta = r.meta["validation"]
    assert meta["valid"] is False and meta["reasks"] == 1 and meta["raw"] == "aa"
    assert len(meta["issues"]) == 2


def test_reask_zero_fails_at_once() -> None:
    """reask=0: the first invalid value fails the item, fn runs once."""
    calls = []

    def fn(x: int) -> int:
        calls.append(x)
        return x

    def check(v: int) -> int:
        raise ValueError("nope")

    report = conveyor.run([1], fn, validate=check, reask=0)
    assert calls == [1] and report.failed == 1
    assert report.results[0].meta["validation"]["issues"] == [
        [{"path": "$", "kind": "ValueError", "message": "nope"}]
    ]


def test_reask_tokens_are_billed() -> None:
    """Tokens reported in every attempt add up in the result and the report:
    re-asks are billed, and the validation section shows their share."""

    def fn(x: int) -> int:
        conveyor.report_usage(100, 10)
        attempt = conveyor.current_attempt()
        return 1 if attempt is not None and attempt.reask is not None else 0

    def check(v: int) -> int:
        if v == 0:
            raise ValueError("zero")
        return v

    report = conveyor.run(range(4), fn, validate=check)
    assert report.input_tokens == 800 and report.output_tokens == 80
    assert all(r.usage is not None and r.usage.input_tokens == 200 for r in report)
    v = report.validation
    assert v is not None and v["reask_tokens"] == {"input": 400, "output": 40}


def test_retries_of_a_reask_are_not_reasks() -> None:
    """A re-ask that hits a retryable error is retried with the same re-ask
    (same previous value) and its retries do not count as re-asks."""
    lock = threading.Lock()
    failed_once: set[int] = set()
    reasks_seen = []

    def fn(x: int) -> int:
        attempt = conveyor.current_attempt()
        assert attempt is not None
        if attempt.reask is None:
            return -1
        reasks_seen.append(attempt.reask.number)
        with lock:
            if x not in failed_once:
                failed_once.add(x)
                raise conveyor.RetryableError("flaky")
        return x

    def check(v: int) -> int:
        if v < 0:
            raise ValueError("negative")
        return v

    report = conveyor.run(range(3), fn, validate=check, retries=2)
    assert report.values() == [0, 1, 2]
    assert reasks_seen == [1] * 6
    assert report.validation is not None and report.validation["reasks"] == 3
    assert report.retries == 3


def test_validation_survives_the_journal(tmp_path: Path) -> None:
    """With journal=, each result's validation (re-asks, tokens) is stored: a
    resumed run reports the same section, and so do the text and HTML reports
    built from the journal."""
    journal = tmp_path / "j.db"

    def fn(x: int) -> int:
        conveyor.report_usage(5, 1)
        attempt = conveyor.current_attempt()
        return x if attempt is not None and attempt.reask is not None else -x - 1

    def check(v: int) -> int:
        if v < 0:
            raise ValueError("negative")
        return v

    first = conveyor.run(range(5), fn, validate=check, journal=journal)
    again = conveyor.run(range(5), fn, validate=check, journal=journal)
    assert first.validation is not None and again.validation is not None
    assert again.validation["reasks"] == first.validation["reasks"] == 5
    assert again.validation["reask_tokens"] == {"input": 25, "output": 5}
    assert all(r.meta.get("resumed") for r in again)
    loaded = load_journal_report(journal)
    text = render_text(loaded.report)
    assert "valid 0.0% at first try, 100.0% after re-asks" in text
    page = render_html(loaded.report, loaded.timeline)
    assert "<h2>Validation</h2>" in page and "ValueError at $" in page


def test_bad_options_are_refused() -> None:
    """validate must be callable, reask a whole number 0..100; validate_item is internal."""
    with pytest.raises(ConfigError, match="validate"):
        conveyor.run([1], lambda x: x, validate=5)
    with pytest.raises(ConfigError, match="reask"):
        conveyor.run([1], lambda x: x, validate=int, reask=-1)
    with pytest.raises(ConfigError, match="validate_item"):
        conveyor.run([1], lambda x: x, validate_item=lambda i, v: v)


def test_issues_from_pydantic_and_plain_exceptions() -> None:
    """issues_of reads Pydantic's errors() (loc -> JSON path) and names other
    exceptions by type."""
    try:
        Score.model_validate({"name": 3})
    except Exception as exc:
        got = {(i.path, i.kind) for i in issues_of(exc)}
    assert got == {("$.name", "string_type"), ("$.score", "missing")}
    assert [str(i) for i in issues_of(KeyError("k"))] == ["$: 'k'"]


def test_tally_groups_array_positions() -> None:
    """The report counts an error kind once per answer, array positions folded."""
    tally = ValidationTally()
    bad = {"path": "$.items[3].x", "kind": "type", "message": "m"}
    tally.add({"validation": {"valid": True, "reasks": 1,
                              "issues": [[bad, {**bad, "path": "$.items[4].x"}]],
                              "attempt_tokens": [[1, 2], [3, 4]]}})  # fmt: skip
    tally.add({"validation": {"valid": True, "reasks": 0}})
    section = tally.section()
    assert section is not None
    assert section["top_errors"] == [{"error": "type at $.items[*].x", "count": 1,
                                      "example": "m"}]  # fmt: skip
    assert section["reask_tokens"] == {"input": 3, "output": 4}
    assert section["valid_rate_first_try"] == 0.5


def test_reask_cost_in_the_cost_section() -> None:
    """With a known model price, the cost section says what the re-asks cost
    (their tokens priced), and the text report names it."""
    from conveyor._render._extras import RunFacts, add_extras
    from conveyor._render._pricing import estimate_cost, lookup_price

    def fn(x: int) -> int:
        conveyor.report_usage(1_000, 100)
        attempt = conveyor.current_attempt()
        return 1 if attempt is not None and attempt.reask is not None else 0

    def check(v: int) -> int:
        if not v:
            raise ValueError("zero")
        return v

    report = add_extras(conveyor.run(range(10), fn, validate=check),
                        facts=RunFacts(model="gpt-4o-mini"))  # fmt: skip
    price = lookup_price("gpt-4o-mini")
    assert price is not None
    cost = report.extra["cost"]
    assert cost["reasks"] == round(estimate_cost(price, 10_000, 1_000), 6)
    assert cost["reasks"] == pytest.approx(cost["total"] / 2)
    assert ", re-asks $" in render_text(report)


def test_typed_values_are_journaled_as_json(tmp_path: Path) -> None:
    """A Pydantic value from validate= is stored in its JSON form, so a resumed
    run reports the data (validate it again for the type), not its repr."""
    journal = tmp_path / "j.db"

    def fn(x: int) -> dict[str, Any]:
        return {"name": f"n{x}", "score": x}

    conveyor.run(range(3), fn, validate=Score.model_validate, journal=journal)
    again = conveyor.run(range(3), fn, validate=Score.model_validate, journal=journal)
    assert [r.value for r in again] == [{"name": f"n{x}", "score": x} for x in range(3)]
    assert [Score.model_validate(v) for v in again.values()][2].score == 2


def test_progress_shows_the_reasks() -> None:
    """The live snapshot counts re-asks, and the plain progress line names them."""
    from conveyor.cli._display import format_line

    snaps: list[conveyor.ProgressSnapshot] = []

    def fn(x: int) -> int:
        attempt = conveyor.current_attempt()
        return x if attempt is not None and attempt.reask is not None else -1

    def check(v: int) -> int:
        if v < 0:
            raise ValueError("negative")
        return v

    report = conveyor.run(range(3), fn, validate=check, on_progress=snaps.append)
    assert snaps[-1].finished and snaps[-1].reasks == 3
    assert report.validation is not None and report.validation["reasks"] == 3
    assert "re-asks 3" in format_line(snaps[-1])
