"""Structured outputs in batch mode: each answer a provider batch gives is
validated like an online one (`_structured.check_line`); an invalid one is
asked again ONLINE, through the same engine (and limits) the deadline uses,
with `reask - 1` re-asks left, so the deadline still holds.

The result of a re-asked line carries the same ``meta["validation"]`` an
online `Checker` writes (`_core._validation`): the batch answer counts as the
first try, so the report's validation section counts valid-at-first-try,
valid-after-re-asks, the re-asks' tokens and the errors the same way.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..._base._types import ErrorInfo, Result, Status, Usage
from ..._core._validation import Checker
from .._batchfile import RequestLine
from .._http import Answer
from .._structured import check_line, reask_line

if TYPE_CHECKING:
    from .._schema import Rule

__all__ = ["BatchChecks"]


@dataclasses.dataclass
class _First:
    """What the batch answered a line that is being re-asked online."""

    issues: list[dict[str, str]]
    tokens: list[int]
    usage: Usage | None


class BatchChecks:
    """The validation of one batch-mode run's answers, and its pending re-asks."""

    def __init__(self, rule: Rule | None, reask: int) -> None:
        self.rule = rule
        self.reask = reask
        self.pending: list[tuple[RequestLine, int]] = []  # re-asks waiting to be sent
        self._first: dict[str, _First] = {}

    def judge(self, result: Result[Any]) -> Result[Any] | None:
        """A batch line's result to commit (checked, or failed validation for
        good), or None: it is re-asked online (in `pending`)."""
        req, answer = result.item, result.value
        if result.status is not Status.OK or not isinstance(req, RequestLine):
            return result
        if not isinstance(answer, Answer):
            return result
        checker = Checker(self.reask)
        checker.record_tokens(result.usage)
        try:
            checked = check_line(req, answer.body, self.rule)
        except Exception as exc:
            again = checker.invalid(answer, exc)
            if again is None:  # --reask 0: the batch answer was the only try
                raw = getattr(exc, "raw", None) or answer
                meta = {**result.meta, "validation": checker.meta(valid=False, raw=raw)}
                return dataclasses.replace(result, status=Status.FAILED, value=None,
                                           error=ErrorInfo.from_exception(exc),
                                           meta=meta)  # fmt: skip
            tokens = checker.tokens[0] if checker.tokens else [0, 0]
            self._first[result.key] = _First(checker.issues[0], tokens, result.usage)
            self.pending.append((reask_line(req, answer.body, again.issues), result.index))
            return None
        if not checked.checked:
            return result  # the line asks for no schema
        meta = {**result.meta, "validation": checker.meta(valid=True)}
        return dataclasses.replace(result, value=checked, meta=meta)

    def take(self) -> list[tuple[RequestLine, int]]:
        out, self.pending = self.pending, []
        return out

    def batch_usage(self, key: str) -> Usage | None:
        """The tokens of the batch answer of a line re-asked online."""
        first = self._first.get(key)
        return first.usage if first is not None else None

    def merged(self, result: Result[Any]) -> Result[Any]:
        """An online re-ask's result with the batch answer counted as its first try."""
        first = self._first.pop(result.key, None)
        if first is None:
            return result
        usage = result.usage
        if first.usage is not None:
            tin, tout = (usage.input_tokens, usage.output_tokens) if usage else (0, 0)
            usage = Usage(first.usage.input_tokens + tin, first.usage.output_tokens + tout)
        out = dataclasses.replace(result, attempts=result.attempts + 1, usage=usage)
        v = result.meta.get("validation")
        if not isinstance(v, dict):
            return out  # the re-ask failed before answering (an HTTP error, say)
        online_tokens = v.get("attempt_tokens")
        if not online_tokens and result.usage is not None:
            online_tokens = [[result.usage.input_tokens, result.usage.output_tokens]]
        checker = Checker(self.reask)
        checker.reasks = 1 + int(v.get("reasks") or 0)
        checker.tokens = [first.tokens, *(online_tokens or [])]
        checker.issues = [first.issues, *(v.get("issues") or [])]
        meta = checker.meta(valid=bool(v.get("valid")), raw=v.get("raw"))
        out.meta = {**result.meta, "validation": meta}
        return out
