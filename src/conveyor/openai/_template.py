"""Requests from records: a CSV/JSONL file of rows plus a Jinja2 prompt template.

The template file is TOML::

    model = "gpt-4o-mini"            # optional; --model wins
    system = "You label Reddit comments."  # optional
    user = '''
    Comment {{ id }} by {{ author }}:
    {{ body }}
    '''
    [params]                          # optional, merged into every body
    temperature = 0
    max_tokens = 200

Every field of a record is a template variable, and the whole record is also
``record`` (for column names that are not identifiers: ``record["first name"]``)
unless a field is itself called ``record``; ``line`` is the record's line.
Undefined fields are errors (``StrictUndefined``), templates run sandboxed
(``ImmutableSandboxedEnvironment``: no attribute tricks, no mutation), output
is not HTML-escaped, and ``trim_blocks`` is on so ``{% for %}`` lines do not
leave blank lines behind.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Final

import orjson

from .._base._exceptions import ConfigError, InputError
from .._journal._keys import SeenKeys
from ._batchfile import (
    DEFAULT_MAX_LINE_BYTES,
    BadLine,
    RequestLine,
    _json_error,
    _open_binary,
    _type_name,
    endpoint_of,
    iter_lines,
    nesting_problem,
    too_long,
)

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable, Iterator, Mapping

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["PromptTemplate", "Record", "build_requests", "check_records", "read_records"]

_CSV_EXTS: Final = {".csv": ",", ".tsv": "\t"}
_JSONL_EXTS: Final = frozenset({".jsonl", ".ndjson", ".json"})
_TEMPLATE_KEYS: Final = ("model", "system", "user", "params")
_RESERVED_PARAMS: Final = frozenset({"model", "messages", "input", "prompt", "instructions"})
_ENDPOINTS: Final = frozenset({"/chat/completions", "/responses", "/completions", "/embeddings"})
_MAX_FIELDS_SHOWN: Final = 20


@cache
def _env() -> ImmutableSandboxedEnvironment:
    """The sandboxed Jinja environment, made on first use: jinja2 costs ~15 ms of
    start-up that a run of a Batch file (no template) never needs."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, trim_blocks=True
    )


@dataclass(frozen=True, slots=True)
class Record:
    """One input row: its fields and the 1-based line it starts on."""

    line: int
    data: dict[str, Any]


# -- records ----------------------------------------------------------------


def read_records(
    path: str | os.PathLike[str], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[Record | BadLine]:
    """Stream the records of a ``.csv``/``.tsv`` (header row) or JSONL file.

    JSONL is chosen for ``.jsonl``, ``.ndjson`` and ``.json`` (one object per
    line). A row that cannot be used is a BadLine; the file not existing, an
    unknown extension or an unusable CSV header raise InputError.
    """
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in _CSV_EXTS and ext not in _JSONL_EXTS:
        raise InputError(
            f"unknown record format {ext or '(no extension)'!r}: "
            "name the file .csv, .tsv, .jsonl, .ndjson or .json (one object per line)",
            path=os.fspath(path),
        )
    if not os.path.exists(path):
        raise InputError("file not found; check the path", path=os.fspath(path))
    if ext in _CSV_EXTS:
        return _from_file(_read_csv(path, _CSV_EXTS[ext], max_line_bytes), path)
    return _from_file(_read_jsonl(path, max_line_bytes), path)


def _from_file(
    records: Iterator[Record | BadLine], path: str | os.PathLike[str]
) -> Iterator[Record | BadLine]:
    """Each bad line naming the file it is in."""
    for rec in records:
        yield rec if isinstance(rec, Record) else rec.from_file(path)


def _read_jsonl(path: str | os.PathLike[str], max_line_bytes: int) -> Iterator[Record | BadLine]:
    for lineno, raw in iter_lines(path, max_line_bytes=max_line_bytes):
        if raw is None:
            yield too_long(path, lineno, max_line_bytes)
            continue
        if not raw:
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            yield BadLine(lineno, _json_error(raw, exc))
            continue
        if (too_deep := nesting_problem(raw, obj)) is not None:
            yield BadLine(lineno, too_deep)
            continue
        del raw  # a big line is not held while its record is used
        if isinstance(obj, dict):
            yield Record(lineno, obj)
        else:
            yield BadLine(lineno, f"record must be a JSON object, got {_type_name(obj)}")


def _decoded_lines(path: str | os.PathLike[str], max_line_chars: int) -> Generator[str, None, None]:
    """Lines split the way csv wants (``\r``, ``\n`` or ``\r\n``), endings kept.

    This is ``open(newline="")``, the csv module's documented mode, over a
    binary handle we own. Bytes that are not UTF-8 become lone surrogates,
    so the row holding them is reported as a bad line instead of ending the
    read.
    """
    with (
        _open_binary(path) as raw,
        io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="") as f,
    ):
        while line := f.readline(max_line_chars + 1):
            if len(line) > max_line_chars:
                raise InputError(
                    f"a line is longer than {max_line_chars} characters; is this a CSV file?",
                    path=os.fspath(path),
                )
            yield line


def _not_utf8(values: Iterable[str]) -> bool:
    for v in values:
        if not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


class _RowTooLong(Exception):
    pass


class _Tape:
    """The physical lines fed to csv, keeping those of the row being read, so
    that after a quote left open the lines it swallowed can be read again."""

    def __init__(self, lines: Iterator[str], limit: int) -> None:
        self._lines = lines
        self._limit = limit
        self._replay: list[str] = []
        self.row: list[str] = []
        self._size = 0
        self.next_line = 1  # physical number of the next line handed out

    def __iter__(self) -> _Tape:
        return self

    def __next__(self) -> str:
        line = self._replay.pop() if self._replay else next(self._lines)
        self.row.append(line)
        self._size += len(line)
        self.next_line += 1
        if self._size > self._limit and len(self.row) > 1:
            raise _RowTooLong
        return line

    def start_row(self) -> None:
        self.row = []
        self._size = 0

    def reread_after_first(self) -> None:
        """Hand out again every line of the current row but its first."""
        rest = self.row[1:]
        self.next_line -= len(rest)
        self._replay.extend(reversed(rest))
        self.start_row()


def _read_csv(
    path: str | os.PathLike[str], delimiter: str, max_line_bytes: int
) -> Iterator[Record | BadLine]:
    lines = _decoded_lines(path, max_line_bytes)
    try:
        tape = _Tape(lines, max_line_bytes)
        # strict: a quote left open to the end of the file is an error, not
        # one field swallowing every later row.
        reader = csv.reader(tape, delimiter=delimiter, strict=True)
        header: list[str] | None = None
        while True:
            tape.start_row()
            start = tape.next_line
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, _RowTooLong) as exc:
                if len(tape.row) > 1:
                    # A quoted field ran over several lines and went wrong:
                    # most likely a quote never closed. The row's first line
                    # is bad; the lines it swallowed are read again.
                    yield BadLine(start, "CSV error: a quote opened on this line is not closed")
                    tape.reread_after_first()
                else:
                    yield BadLine(start, f"CSV error: {exc}")
                reader = csv.reader(tape, delimiter=delimiter, strict=True)
                continue
            # A whitespace-only line is blank, except in a one-column file
            # where it is an (empty) value.
            blank_ish = len(row) == 1 and not row[0].strip() and (header is None or len(header) > 1)
            if not row or blank_ish:
                continue
            if header is None:
                header = _check_header(row, path, start)
                continue
            if _not_utf8(row):
                yield BadLine(start, "not UTF-8: the row holds bytes that are not UTF-8 text")
            elif len(row) != len(header):
                yield BadLine(
                    start, f"row has {len(row)} fields, the header (line 1) has {len(header)}"
                )
            else:
                yield Record(start, dict(zip(header, row, strict=True)))
    finally:
        lines.close()


def _check_header(row: list[str], path: str | os.PathLike[str], line: int) -> list[str]:
    names = [c.strip() for c in row]
    if _not_utf8(names):
        raise InputError("the CSV header is not UTF-8 text", path=os.fspath(path), line=line)
    seen: dict[str, int] = {}
    for i, name in enumerate(names, 1):
        if not name:
            raise InputError(
                f"CSV header column {i} has no name; name every column",
                path=os.fspath(path),
                line=line,
            )
        if name in seen:
            raise InputError(
                f"CSV header names {name!r} twice (columns {seen[name]} and {i}); "
                "make column names unique",
                path=os.fspath(path),
                line=line,
            )
        seen[name] = i
    return names


# -- the template -----------------------------------------------------------


def _key_lines(source: str) -> dict[str, int]:
    """The file line where each template's text starts (for error messages).

    Approximate by design: the first ``key =`` at the start of a line; a value
    opening with triple quotes at the end of that line starts on the next.
    """
    found: dict[str, int] = {}
    for i, text in enumerate(source.splitlines(), 1):
        m = re.match(r"\s*(system|user)\s*=\s*(.*)$", text)
        if m and m.group(1) not in found:
            rest = m.group(2).rstrip()
            found[m.group(1)] = i + 1 if rest in ('"""', "'''") else i
    return found


class PromptTemplate:
    """A system (optional) and user Jinja2 template, an optional model and body params."""

    __slots__ = ("_compiled", "_undefined", "model", "params", "path", "system", "user")

    def __init__(
        self,
        *,
        user: str,
        system: str | None = None,
        model: str | None = None,
        params: Mapping[str, Any] | None = None,
        path: str | None = None,
        _key_line: Mapping[str, int] | None = None,
    ) -> None:
        self.user = user
        self.system = system
        self.model = model
        self.params: dict[str, Any] = dict(params or {})
        self.path = path
        bad = sorted(_RESERVED_PARAMS.intersection(self.params))
        if bad:
            raise InputError(
                f"[params] may not set {', '.join(bad)}: conveyor builds those from the "
                "template (set the model with the top-level 'model' key or `model=`)",
                path=path,
            )
        # Text without Jinja markup is rendered once: a static system prompt
        # then costs nothing per record (a render is ~15 us, mostly context setup).
        from jinja2 import TemplateSyntaxError, UndefinedError

        self._undefined = UndefinedError
        self._compiled: dict[str, jinja2.Template | str] = {}
        for key, text in (("system", system), ("user", user)):
            if text is None:
                continue
            try:
                compiled = _env().from_string(text)
                static = not any(mark in text for mark in ("{{", "{%", "{#"))
                self._compiled[key] = compiled.render() if static else compiled
            except TemplateSyntaxError as exc:
                at = exc.lineno or 1
                file_line = (_key_line or {}).get(key)
                raise InputError(
                    f"Jinja syntax error in the {key!r} template (its line {at}): {exc.message}",
                    path=path,
                    line=file_line + at - 1 if file_line is not None else None,
                ) from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PromptTemplate:
        """Read a TOML template file (keys: ``user``, ``system``, ``model``, ``[params]``)."""
        import tomllib

        where = os.fspath(path)
        fh = _open_binary(path)
        with fh:
            raw: bytes = fh.read()
        try:
            source = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(f"not UTF-8 text (byte {exc.start + 1})", path=where) from None
        try:
            doc = tomllib.loads(source)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"at line (\d+)", str(exc))
            raise InputError(
                f"not valid TOML: {exc}", path=where, line=int(m.group(1)) if m else None
            ) from None
        key_line = _key_lines(source)
        for key in doc:
            if key not in _TEMPLATE_KEYS:
                raise InputError(
                    f"unknown key {key!r}; a template has {', '.join(_TEMPLATE_KEYS)}", path=where
                )
        if "user" not in doc:
            raise InputError("missing required key 'user' (the user message template)", path=where)
        for key in ("user", "system", "model"):
            if key in doc and not isinstance(doc[key], str):
                raise InputError(
                    f"{key!r} must be a string, got {_type_name(doc[key])}",
                    path=where,
                    line=key_line.get(key),
                )
        params = doc.get("params", {})
        if not isinstance(params, dict):
            raise InputError("'params' must be a table: [params]", path=where)
        return cls(
            user=doc["user"],
            system=doc.get("system"),
            model=doc.get("model"),
            params=params,
            path=where,
            _key_line=key_line,
        )

    def _render(self, key: str, data: Mapping[str, Any], line: int | None) -> str:
        compiled = self._compiled[key]
        if isinstance(compiled, str):
            return compiled
        try:
            return compiled.render({"record": data, "line": line, **data})
        except self._undefined as exc:
            fields = ", ".join(list(map(str, data))[:_MAX_FIELDS_SHOWN]) or "none"
            raise InputError(
                f"the {key!r} template uses an undefined field: {exc.message} "
                f"(this record has: {fields})",
                line=line,
            ) from None
        except Exception as exc:  # user template code can raise anything
            raise InputError(
                f"the {key!r} template failed: {type(exc).__name__}: {exc}", line=line
            ) from None

    def render(self, data: Mapping[str, Any], *, line: int | None = None) -> tuple[str | None, str]:
        """``(system, user)`` texts for one record; InputError names the field and line."""
        system = self._render("system", data, line) if "system" in self._compiled else None
        return system, self._render("user", data, line)


# -- requests ---------------------------------------------------------------


def _body(
    kind: str, model: str, system: str | None, user: str, params: dict[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model}
    if kind == "/chat/completions":
        msgs = [{"role": "user", "content": user}]
        if system is not None:
            msgs.insert(0, {"role": "system", "content": system})
        body["messages"] = msgs
    elif kind == "/responses":
        body["input"] = user
        if system is not None:
            body["instructions"] = system
    elif kind == "/completions":
        body["prompt"] = user if system is None else f"{system}\n\n{user}"
    else:
        body["input"] = user
    # Nested param values are shared between bodies: treat bodies as read-only.
    body.update(params)
    return body


def check_records(path: str | os.PathLike[str], id_column: str | None) -> None:
    """Refuse once, before anything is sent, what would fail the whole input:
    an unusable CSV header (raised by the reader) and an `id_column` that the
    first record does not have (instead of one failed line per row)."""
    for i, rec in enumerate(read_records(path)):
        if isinstance(rec, Record):
            if id_column is not None and id_column not in rec.data:
                have = ", ".join(list(rec.data)[:20]) or "none"
                raise InputError(
                    f"`id_column=` {id_column!r} is not a column of this input (line "
                    f"{rec.line} has: {have}); pass one of those, or leave it out for "
                    "line-N ids",
                    path=os.fspath(path),
                )
            return
        if i > 100:
            return


def build_requests(
    records: Iterable[Record | BadLine],
    template: PromptTemplate,
    *,
    model: str | None = None,
    id_column: str | None = None,
    endpoint: str = "/v1/chat/completions",
) -> Iterator[RequestLine | BadLine]:
    """One request per record; BadLines pass through, a failing record becomes one.

    ``custom_id`` is the ``id_column`` value (missing, empty or repeated ->
    BadLine naming the line) or ``line-<n>``. ``model`` falls back to the
    template's. Raises ConfigError at the call for a missing model or an
    endpoint a template cannot fill.
    """
    use_model = model or template.model
    if not use_model:
        raise ConfigError("model", model, "give `model=` or set 'model' in the template")
    kind = endpoint_of(endpoint)
    if kind not in _ENDPOINTS:
        raise ConfigError("endpoint", endpoint, f"one of {', '.join(sorted(_ENDPOINTS))}")
    if kind == "/embeddings" and template.system is not None:
        raise ConfigError("endpoint", endpoint, "an embeddings request has no system message")
    return _build(records, template, use_model, id_column, endpoint, kind)


def _build(
    records: Iterable[Record | BadLine],
    template: PromptTemplate,
    model: str,
    id_column: str | None,
    endpoint: str,
    kind: str,
) -> Iterator[RequestLine | BadLine]:
    with SeenKeys() as seen:  # bounded memory, every repeat found
        yield from _build_lines(records, template, model, id_column, endpoint, kind, seen)


def _build_lines(
    records: Iterable[Record | BadLine],
    template: PromptTemplate,
    model: str,
    id_column: str | None,
    endpoint: str,
    kind: str,
    seen: SeenKeys,
) -> Iterator[RequestLine | BadLine]:
    for rec in records:
        if isinstance(rec, BadLine):
            yield rec
            continue
        cid = f"line-{rec.line}"
        if id_column is not None:
            value = rec.data.get(id_column)
            if value is None:
                yield BadLine(rec.line, f"id column {id_column!r} is missing")
                continue
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                yield BadLine(
                    rec.line,
                    f"id column {id_column!r} must be text or a number, got {_type_name(value)}",
                )
                continue
            cid = str(value).strip()
            if not cid:
                yield BadLine(rec.line, f"id column {id_column!r} is empty")
                continue
            first = seen.first(cid, rec.line)
            if first is not None:
                yield BadLine(rec.line, f"custom_id {cid!r:.80} repeats line {first}", cid, first)
                continue
        try:
            system, user = template.render(rec.data, line=rec.line)
        except InputError as exc:
            reason = str(exc).removeprefix(f"line {rec.line}: ")
            yield BadLine(rec.line, reason, cid)
            continue
        body = _body(kind, model, system, user, template.params)
        yield RequestLine(rec.line, cid, "POST", endpoint, body)
