"""Validated answers and re-asks: what the engine does with `validate=`.

A run with a validator checks every successful attempt's value. An invalid
one is asked again: the item gets another attempt (through the same
admission, under the same limits) whose `Attempt.reask` says what the
previous answer was and why it was refused, up to `reask` times; after the
last try the item fails with the validation errors and the last raw answer.

What happened is kept in the result's `meta["validation"]` (so the journal
keeps it and a report rebuilt from the journal shows it):

    {"valid": true, "reasks": 1,
     "issues": [[{"path": "$.score", "kind": "type", "message": "..."}]],
     "attempt_tokens": [[120, 16], [160, 16]],
     "raw": "..."}          # the last raw answer, on a final failure only

`ValidationTally` turns those into the report's `validation` section.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._base._exceptions import InvalidAnswer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .._base._types import Usage
    from ._attempt import Attempt

__all__ = [
    "Checker",
    "Verdict",
    "Issue",
    "Reask",
    "Unchecked",
    "ValidationTally",
    "issues_of",
    "json_path",
]

_MAX_ISSUES = 20  # kept per invalid answer
_MAX_KINDS = 1000  # distinct error kinds counted in a report (memory stays bounded)
_MAX_RAW = 20_000  # characters of the last raw answer kept on a failure


def json_path(parts: Iterable[Any]) -> str:
    """``("items", 0, "score")`` -> ``$.items[0].score``."""
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


@dataclass(frozen=True, slots=True)
class Issue:
    """One thing wrong with an answer: where (a JSON path), what kind, in words."""

    path: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind, "message": self.message}


def issues_of(exc: BaseException) -> list[Issue]:
    """The issues an exception from a validator names.

    `InvalidAnswer` carries them; a Pydantic `ValidationError` (anything with
    an `errors()` list of ``{"loc", "type", "msg"}``) is read as such; any
    other exception is one issue at ``$`` named after its type.
    """
    if isinstance(exc, InvalidAnswer):
        found = [i if isinstance(i, Issue) else Issue("$", "invalid", str(i)) for i in exc.issues]
        return found[:_MAX_ISSUES] or [Issue("$", "invalid", str(exc))]
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            listed = errors()
        except Exception:
            listed = None
        if isinstance(listed, list) and listed and all(isinstance(e, dict) for e in listed):
            return [
                Issue(
                    json_path(e.get("loc") or ()),
                    str(e.get("type", "invalid")),
                    str(e.get("msg", "invalid")),
                )
                for e in listed[:_MAX_ISSUES]
            ]
    return [Issue("$", type(exc).__name__, str(exc) or type(exc).__name__)]


@dataclass(frozen=True, slots=True)
class Unchecked:
    """A validator's answer for a value it has nothing to check against (an
    embeddings line in a file with a schema): kept as is, not counted."""

    value: Any


@dataclass(frozen=True, slots=True)
class Reask:
    """What the previous attempt answered and why it was refused.

    The task function reads it from `conveyor.current_attempt().reask` to ask
    again with the errors (`number` is 1 on the first re-ask); None on a first
    attempt. `context` is what the previous attempt put in its
    `Attempt.meta` (for example the request it sent, so a second re-ask
    continues the conversation).
    """

    number: int
    value: Any
    error: BaseException
    issues: tuple[Issue, ...]
    context: dict[str, object] = field(default_factory=dict)

    def feedback(self) -> str:
        """The issues as a list for a message to the model."""
        return "\n".join(f"- {i}" for i in self.issues)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with an answered attempt: ask again (`reask`), fail with
    `error`, or keep `value`; `meta` is the result's ``meta["validation"]``."""

    value: Any = None
    meta: dict[str, Any] | None = None
    reask: Reask | None = None
    error: BaseException | None = None


@dataclass
class Checker:
    """One item's validation across its attempts (the engine keeps one per item)."""

    reask_limit: int
    reasks: int = 0
    tokens: list[list[int]] = field(default_factory=list)
    issues: list[list[dict[str, str]]] = field(default_factory=list)

    def record_tokens(self, usage: Usage | None) -> None:
        """Each answered attempt's tokens, re-asks included (they are billed)."""
        if usage is not None:
            self.tokens.append([usage.input_tokens, usage.output_tokens])

    def invalid(
        self, value: Any, exc: BaseException, context: dict[str, object] | None = None
    ) -> Reask | None:
        """Record an invalid answer; the `Reask` to attempt next, or None when
        this was the last try. (A run that is stopping refuses the re-ask's
        admission: the item is then cancelled, and a resume asks it again.)"""
        found = issues_of(exc)
        self.issues.append([i.to_dict() for i in found])
        if self.reasks >= self.reask_limit:
            return None
        self.reasks += 1
        return Reask(self.reasks, value, exc, tuple(found), dict(context or {}))

    def judge(
        self, validate: Callable[[Any, Any], Any], item: Any, value: Any, attempt: Attempt
    ) -> Verdict:
        """Validate one answered attempt's value."""
        self.record_tokens(attempt.usage)
        try:
            checked = validate(item, value)
        except Exception as exc:
            reask = self.invalid(value, exc, attempt.meta)
            if reask is not None:
                return Verdict(reask=reask)
            raw = getattr(exc, "raw", None) or value
            return Verdict(meta=self.meta(valid=False, raw=raw), error=exc)
        if isinstance(checked, Unchecked):
            return Verdict(checked.value)
        return Verdict(checked, self.meta(valid=True))

    def meta(self, *, valid: bool, raw: Any = None) -> dict[str, Any]:
        out: dict[str, Any] = {"valid": valid, "reasks": self.reasks}
        if self.issues:
            out["issues"] = self.issues
        if len(self.tokens) > 1 or self.reasks:
            out["attempt_tokens"] = self.tokens
        if not valid:
            if isinstance(raw, str) and len(raw) > _MAX_RAW:
                raw = raw[:_MAX_RAW] + "...(cut)"
            out["raw"] = raw
        return out


_INDEX = re.compile(r"\[\d+\]")


def _kind_key(issue: dict[str, Any]) -> str:
    # Array positions vary from answer to answer: `$.items[3].x` counts as `$.items[*].x`.
    path = _INDEX.sub("[*]", str(issue.get("path", "$")))
    return f"{issue.get('kind', 'invalid')} at {path}"


class ValidationTally:
    """The report's `validation` section, accumulated one result at a time."""

    def __init__(self) -> None:
        self.checked = 0
        self.valid_first = 0
        self.valid_after_reask = 0
        self.invalid = 0
        self.reasks = 0
        self.reask_in = 0
        self.reask_out = 0
        self.kinds: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def add(self, meta: dict[str, Any]) -> None:
        v = meta.get("validation")
        if not isinstance(v, dict):
            return
        self.checked += 1
        reasks = int(v.get("reasks") or 0)
        self.reasks += reasks
        if v.get("valid"):
            if reasks:
                self.valid_after_reask += 1
            else:
                self.valid_first += 1
        else:
            self.invalid += 1
        tokens = v.get("attempt_tokens") or []
        for pair in tokens[1:]:  # every attempt after the first answer is a re-ask
            if isinstance(pair, list) and len(pair) == 2:
                self.reask_in += int(pair[0])
                self.reask_out += int(pair[1])
        for answer in v.get("issues") or []:
            seen: set[str] = set()
            for issue in answer if isinstance(answer, list) else []:
                if not isinstance(issue, dict):
                    continue
                key = _kind_key(issue)
                if key in seen:
                    continue
                seen.add(key)
                if key not in self.kinds and len(self.kinds) >= _MAX_KINDS:
                    key = "other"
                self.kinds[key] += 1
                self.examples.setdefault(key, str(issue.get("message", ""))[:200])

    def section(self, top: int = 10) -> dict[str, Any] | None:
        if not self.checked:
            return None
        n = self.checked
        return {
            "checked": n,
            "valid_first_try": self.valid_first,
            "valid_after_reask": self.valid_after_reask,
            "invalid": self.invalid,
            "valid_rate_first_try": round(self.valid_first / n, 6),
            "valid_rate_final": round((self.valid_first + self.valid_after_reask) / n, 6),
            "reasks": self.reasks,
            "reask_tokens": {"input": self.reask_in, "output": self.reask_out},
            "top_errors": [
                {"error": k, "count": c, "example": self.examples.get(k, "")}
                for k, c in sorted(self.kinds.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
            ],
        }
