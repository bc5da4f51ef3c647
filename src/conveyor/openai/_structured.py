"""Structured outputs in a file run: check each line's schema, validate each
answer, build the re-ask, write the parsed value.

- `prepare`: each request line gets its `AnswerSpec` checked before it is
  sent (a bad schema in a line makes that line an error line naming its
  line, the schema error and where in the schema it is); with a forced
  schema (`--schema`), a request asking for no format gets one.
- `Validator`: the engine's `validate_item`: the answer's text (or tool call
  arguments) parsed and checked, or `InvalidAnswer`; the engine re-asks.
- `reask_request`: the request of a re-ask attempt (`_answers.reask_body`).
- `format_checked`: the output line of a validated answer carries the parsed
  value under the top-level key ``"parsed"``; a line that stayed invalid
  after the last try is an error line with code ``invalid_answer``, the
  validation errors and the last raw answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import orjson

from .._base._exceptions import SchemaInvalid
from .._core._validation import Unchecked
from ._answers import calls_in, check_answer, reask_body
from ._batchfile import BadLine, RequestLine, format_error, read_output
from ._http import Answer
from ._schema import AnswerSpec, Rule, inject, load_schema, rule_from, spec_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from .._base._types import Result
    from .._core._attempt import Attempt

__all__ = [
    "ParsedLine",
    "Validator",
    "check_line",
    "format_invalid",
    "parsed_of",
    "prepare",
    "read_parsed",
    "reask_line",
    "reask_request",
    "resolve_schema",
    "schema_problems",
]

_DUMP = orjson.OPT_NON_STR_KEYS


def resolve_schema(schema: Any) -> Rule | None:
    """`--schema`/`schema=`: a path, a dict or a Pydantic model -> a checked `Rule`."""
    if schema is None:
        return None
    if isinstance(schema, str | os.PathLike):
        return load_schema(os.fspath(schema))
    return rule_from(schema, "schema=")


def _where(path: Path, req: RequestLine) -> str:
    return f"{path}:{req.line} (custom_id {req.custom_id!r})"


def _spec(req: RequestLine, forced: Rule | None, where: str) -> AnswerSpec | None:
    return spec_for(req.body, req.endpoint, forced, where)


def _schema_error(req: RequestLine, forced: Rule | None, path: Path) -> str:
    """The error of a line whose schema is bad, naming where it is (the check
    again: the where-string is not built for every line that passes)."""
    try:
        _spec(req, forced, _where(path, req))
    except SchemaInvalid as exc:
        return str(exc)
    return f"{_where(path, req)}: invalid schema"  # not reached: the same check fails again


def prepare(
    items: Iterator[RequestLine | BadLine], path: Path, forced: Rule | None
) -> Iterator[RequestLine | BadLine]:
    """Lines with their schemas checked (a bad one -> a `BadLine`), and the
    forced schema asked for where a request asks for no format."""
    for item in items:
        if not isinstance(item, RequestLine):
            yield item
            continue
        try:
            spec = _spec(item, forced, "")  # where it is: named only in an error
        except SchemaInvalid:
            yield BadLine(item.line, _schema_error(item, forced, path), item.custom_id)
            continue
        if forced is not None and spec is not None and spec.kind == "text":
            body = inject(item.body, item.endpoint, forced)
            if body is not item.body:
                item = RequestLine(item.line, item.custom_id, item.method, item.url, body)
        yield item


def schema_problems(
    items: Iterator[RequestLine | BadLine], path: Path, forced: Rule | None
) -> list[str]:
    """`path:line: error` for each request line whose schema is bad (`--strict`)."""
    problems = []
    for item in items:
        if isinstance(item, RequestLine):
            try:
                _spec(item, forced, _where(path, item))
            except SchemaInvalid as exc:
                problems.append(f"{path}:{item.line}: {exc}")
    return problems


class Validator:
    """`validate_item` for the engine: checks one answer against its line's spec."""

    def __init__(self, forced: Rule | None) -> None:
        self._forced = forced

    def applies(self, item: Any) -> bool:
        """False for a line whose answers are never checked (no schema, no
        tools): the engine then skips validation for it altogether."""
        if not isinstance(item, RequestLine):
            return False
        try:
            return _spec(item, self._forced, "") is not None
        except SchemaInvalid:
            return True  # validation reports it

    def __call__(self, item: Any, value: Any) -> Any:
        if not isinstance(item, RequestLine) or not isinstance(value, Answer):
            return Unchecked(value)
        spec = _spec(item, self._forced, f"line {item.line}")
        if spec is None:
            return Unchecked(value)
        if spec.kind == "tools" and not spec.required and not calls_in(item.endpoint, value.body):
            return Unchecked(value)  # tool_choice "auto": answering in text is allowed
        parsed = check_answer(spec, item.endpoint, value.body)
        return Answer(value.status, value.body, value.request_id, parsed, True)


def check_line(req: RequestLine, body: Any, forced: Rule | None = None) -> Answer:
    """Validate one answer `body` to `req` outside the engine (an answer from a
    provider batch's output file, say): the checked `Answer` (`parsed` set, or
    unchecked when the line asks for no schema), or `InvalidAnswer`.

    Batch mode uses it (`_batchmode._reask.BatchChecks`): an invalid batch
    answer becomes `reask_line(req, body, exc.issues)`, sent online with
    `reask - 1` re-asks left; its result's `meta["validation"]` (see
    `_core._validation`, built with a `Checker`) feeds the same report.
    """
    value = Validator(forced)(req, Answer(200, body, None))
    return value.value if isinstance(value, Unchecked) else value  # type: ignore[no-any-return]


def reask_line(req: RequestLine, body: Any, issues: Any) -> RequestLine:
    """The re-ask of `req` after its answer `body` failed with `issues`."""
    return RequestLine(req.line, req.custom_id, req.method, req.url,
                       reask_body(req.body, req.endpoint, body, tuple(issues)))  # fmt: skip


def reask_request(req: RequestLine, attempt: Attempt | None) -> RequestLine:
    """The request an attempt sends: the line's own, or its re-ask (the
    request the invalid answer came from, plus that answer and the errors: a
    second re-ask continues the first one's conversation)."""
    reask = attempt.reask if attempt is not None else None
    if attempt is None or reask is None or not isinstance(reask.value, Answer):
        return req
    before = reask.context.get("request")
    base = before if isinstance(before, dict) else req.body
    body = reask_body(base, req.endpoint, reask.value.body, reask.issues)
    attempt.meta["request"] = body
    return RequestLine(req.line, req.custom_id, req.method, req.url, body)


def parsed_of(line: bytes, answer: Answer) -> bytes:
    """An output line with the parsed answer added under ``"parsed"``."""
    if not answer.checked:
        return line
    obj = orjson.loads(line)
    obj["parsed"] = answer.parsed
    return orjson.dumps(obj, option=_DUMP) + b"\n"


def format_invalid(custom_id: str | None, result: Result[Any]) -> bytes | None:
    """The error line of an answer still invalid after the last try, else None."""
    v = result.meta.get("validation")
    if not isinstance(v, dict) or v.get("valid") is not False:
        return None
    issues = (v.get("issues") or [[]])[-1]
    shown = "; ".join(f"{i['path']}: {i['message']}" for i in issues[:5])
    message = (
        f"the answer failed validation after {result.attempts} attempt(s) "
        f"({v.get('reasks', 0)} re-ask(s)): {shown}"
    )
    obj = orjson.loads(format_error(custom_id, "invalid_answer", message))
    obj["error"]["errors"] = issues
    obj["error"]["raw"] = v.get("raw")
    return orjson.dumps(obj, option=_DUMP) + b"\n"


M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class ParsedLine(Generic[M]):
    """One output line's parsed answer: `value` (a `schema` model instance, or
    the JSON value) when the answer was valid, else None with the line's `error`."""

    custom_id: str | None
    value: M | None
    error: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.error is None


@overload
def read_parsed(path: str | os.PathLike[str], schema: type[M]) -> Iterator[ParsedLine[M]]: ...
@overload
def read_parsed(path: str | os.PathLike[str], schema: None = None) -> Iterator[ParsedLine[Any]]: ...
def read_parsed(path: str | os.PathLike[str], schema: Any = None) -> Iterator[ParsedLine[Any]]:
    """Stream the parsed answers of an output file written with a schema.

    With a Pydantic model as `schema`, each value is an instance of it
    (`schema.model_validate(line["parsed"])`): typed results, read lazily,
    after a resume too. A line without a parsed answer (an error line, or an
    answer that was not validated) has `value` None and its `error`.
    """
    for obj in read_output(path):
        cid = obj.get("custom_id")
        if "parsed" not in obj:
            err = obj.get("error")
            error = err if isinstance(err, dict) else {"code": "not_parsed",
                                                        "message": "no parsed answer"}  # fmt: skip
            yield ParsedLine(cid, None, error)
            continue
        value = obj["parsed"]
        if schema is not None:
            value = schema.model_validate(value)
        yield ParsedLine(cid, value, None)
