"""`--dry-run`'s plan (`conveyor.openai._plan.make_plan`) counts the input with the same
scan step and the same token estimate as `validate_file` and the run's rate limiter."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from conveyor.openai import read_requests, validate_file
from conveyor.openai._plan import make_plan
from conveyor.openai._run import _cost

if TYPE_CHECKING:
    from pathlib import Path


def _line(cid: str, **body: Any) -> bytes:
    return orjson.dumps(
        {
            "custom_id": cid,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            | body,
        }
    )


def _write(path: Path, *lines: bytes) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _plan(path: Path) -> Any:
    return make_plan(
        read_requests(path),
        path,
        journal_path=None,
        key_of=lambda item: item.custom_id,
        concurrency=4,
        rpm=None,
        tpm=None,
    )


def test_dry_run_and_validate_file_agree(tmp_path: Path) -> None:
    """n and best_of multiply the output a request may use: the dry run's token totals
    are validate_file's (it used to ignore n and under-estimate tokens and cost)."""
    p = _write(
        tmp_path / "in.jsonl",
        _line("a", n=3, max_tokens=100),
        _line("b", max_tokens=50),
        b"not json",
    )
    check = validate_file(p, estimate=True)
    plan = _plan(p)
    assert (plan.lines, plan.valid, plan.bad_count) == (3, check.valid, check.bad) == (3, 2, 1)
    assert sum(plan.output_tokens.values()) == check.max_output_tokens == 3 * 100 + 50
    assert sum(plan.prompt_tokens.values()) == check.prompt_tokens > 0
    assert [b.line for b in plan.bad] == [b.line for b in check.bad_lines] == [3]


def test_plan_estimate_is_what_the_run_reserves(tmp_path: Path) -> None:
    """The tokens the plan counts for a request are those the run's limiter reserves."""
    p = _write(tmp_path / "in.jsonl", _line("a", n=2, max_tokens=40))
    plan = _plan(p)
    (item,) = list(read_requests(p))
    prompt, output = _cost(item)  # type: ignore[arg-type]
    assert sum(plan.prompt_tokens.values()) == prompt
    assert sum(plan.output_tokens.values()) == output == 80
