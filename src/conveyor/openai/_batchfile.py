"""OpenAI Batch API files: read and check the input, format the output.

The input is one JSON object per line: ``{"custom_id", "method", "url",
"body"}``. Reading is a stream over binary lines (a 10 GB file is never held
in memory): each line becomes a `RequestLine` or a `BadLine` that says what is
wrong and where, and a bad line never stops the reader.

Memory does not grow with the input: the duplicate-``custom_id`` index is a
`SeenKeys` (a fixed 4 MB Bloom filter in front of a scratch SQLite file that
holds every id and its first line; the file is read only when the filter
says "maybe", so every repeat is still found). Pass
``check_duplicates=False`` when a journal already enforces unique keys.
Reading alone runs at about 2.6 s per million 515-byte lines on this machine.

The output is the Batch API output format, one JSON line per request::

    {"id": "batch_req_...", "custom_id": ..., "response": {"status_code",
     "request_id", "body"}, "error": null}

with ``response: null`` and ``error: {"code", "message"}`` for a request that
got no HTTP answer (timeout, connection error, bad input line).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, BinaryIO, Final

import orjson

from .._base._exceptions import InputError
from .._journal._keys import SeenKeys
from ._tokens import request_estimate

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_URLS",
    "BadLine",
    "FileCheck",
    "RequestLine",
    "endpoint_of",
    "format_bad_line",
    "format_error",
    "format_response",
    "iter_lines",
    "read_output",
    "read_requests",
    "too_long",
    "validate_file",
]

DEFAULT_URLS: Final = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
)

# One request line may carry base64 images (OpenAI allows 20 MB each), so the
# cap is generous; it only exists so one corrupt newline-less file cannot eat
# the machine's memory.
DEFAULT_MAX_LINE_BYTES: Final = 64 * 1024 * 1024

_DRAIN_CHUNK: Final = 1024 * 1024  # how an oversized line is skipped
_BOM: Final = b"\xef\xbb\xbf"
_WS: Final = b" \t\r\n\f\v"
_MAX_ID_SHOWN: Final = 80
# Bad lines kept in a `FileCheck`; the rest are counted only.
_MAX_BAD_KEPT: Final = 1000


@functools.lru_cache(maxsize=256)  # a file has a handful of urls; two calls a line
def endpoint_of(url: str) -> str:
    """The endpoint path without the ``/v1`` prefix: ``/v1/embeddings`` -> ``/embeddings``."""
    u = url.strip()
    if not u.startswith("/"):
        u = "/" + u
    if u.startswith("/v1/"):
        u = u[3:]
    return u.rstrip("/") or "/"


@dataclass(slots=True)
class RequestLine:
    """One valid request from an input file (``line`` is 1-based).

    ``url`` is kept as written; ``endpoint`` is its form without ``/v1``
    (``/chat/completions``), the one the token estimator and transport use.
    """

    line: int
    custom_id: str
    method: str
    url: str
    body: dict[str, Any]
    endpoint: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.endpoint = endpoint_of(self.url)


@dataclass(frozen=True, slots=True)
class BadLine:
    """An input line that cannot be sent, and why (``line`` is 1-based).

    ``custom_id`` is set when it could be read; ``duplicate_of`` is the first
    line holding the same id, so an output writer can tell that this line's id
    already belongs to another request.
    """

    line: int
    reason: str
    custom_id: str | None = None
    duplicate_of: int | None = None
    # The file it was read from (set by the readers; not part of equality).
    source: str | None = field(default=None, compare=False)

    @property
    def where(self) -> str:
        """`file:line`, or `input line N` when the file is not known."""
        return f"{self.source}:{self.line}" if self.source else f"input line {self.line}"

    @property
    def place(self) -> str:
        """`file:line (custom_id 'x')`: the line and, when it has one, its item's key."""
        if self.custom_id is not None and self.duplicate_of is None:
            return f"{self.where} (custom_id {_show_id(self.custom_id)})"
        return self.where

    def describe(self) -> str:
        """`file:line (custom_id 'x'): reason`: what and where, for a person."""
        return f"{self.place}: {self.reason}"

    def from_file(self, path: str | os.PathLike[str]) -> BadLine:
        """This bad line, naming the file it was read from (kept if already set)."""
        if self.source is not None:
            return self
        return replace(self, source=source_name(path))


def source_name(path: str | os.PathLike[str]) -> str:
    """How messages name an input: its path, or `stdin` for `-`."""
    name = os.fspath(path)
    return "stdin" if name == "-" else name


def _show_id(custom_id: str) -> str:
    if len(custom_id) > _MAX_ID_SHOWN:
        custom_id = custom_id[:_MAX_ID_SHOWN] + "..."
    return repr(custom_id)


def _type_name(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _open_binary(path: str | os.PathLike[str]) -> BinaryIO:
    """Open for reading, translating OSError into an InputError naming the file;
    `-` is standard input (a copy of its descriptor: closing it keeps stdin)."""
    try:
        if os.fspath(path) == "-":
            return os.fdopen(os.dup(0), "rb")
        return open(path, "rb")  # the caller's `with` closes it
    except FileNotFoundError:
        raise InputError("file not found; check the path", path=os.fspath(path)) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a file", path=os.fspath(path)) from None
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror or exc}", path=os.fspath(path)) from None


def iter_lines(
    path: str | os.PathLike[str], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[tuple[int, bytes | None]]:
    """Yield ``(line_number, content)`` for every physical line, streaming.

    Content has surrounding whitespace (CRLF included) and a UTF-8 BOM on
    line 1 removed; a blank line yields ``b""``. A line longer than
    ``max_line_bytes`` yields ``None`` and is skipped without being held in
    memory. The file is opened on the first ``next()`` (an InputError then if
    it cannot be) and closed when the iterator ends or is closed.
    """
    with _open_binary(path) as f:
        lineno = 0
        while True:
            raw = f.readline(max_line_bytes + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                del raw
                # Drain the rest of the oversized line in bounded chunks.
                while (rest := f.readline(_DRAIN_CHUNK)) and not rest.endswith(b"\n"):
                    pass
                yield lineno, None
                continue
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            # A big line lives once: the unstripped bytes go before the caller
            # parses, and this frame keeps no reference while suspended.
            line = [raw.strip(_WS)]
            del raw
            yield lineno, line.pop()


MAX_DEPTH = 64
"""The deepest nesting a line may have: far more than any request needs (OpenAI's
structured outputs allow 5 levels of schema), far less than the JSON encoder's
limit when the body is sent again (orjson: 254) or a recursive walk's."""


def nesting_problem(raw: bytes, obj: Any) -> str | None:
    """Why a parsed line is nested too deep, or None (cheap: only lines with more
    than MAX_DEPTH brackets are walked, without recursion)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return None
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return (
                f"JSON nested more than {MAX_DEPTH} levels deep: no request needs that; "
                "flatten the line"
            )
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))
    return None


def _json_error(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as ude:
        hint = ""
        if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or raw.count(b"\x00") * 3 >= len(raw):
            hint = (
                "; the file looks UTF-16 encoded (PowerShell and some editors write that): "
                "convert it with `iconv -f UTF-16 -t UTF-8 IN > OUT`"
            )
        return f"not UTF-8: invalid byte 0x{raw[ude.start]:02x} at byte {ude.start + 1}{hint}"
    if "depth limit" in str(exc) or "recursion" in str(exc).lower():
        return (
            f"JSON nested more than {MAX_DEPTH} levels deep (past the parser's limit): "
            "flatten the line"
        )
    hint = ""
    if raw[:1] == b"[":
        hint = " (each line must be one JSON object, not an array)"
    # orjson counts lines within the text it was given (always line 1 here):
    # "line 1 column 7 (char 6)" would contradict the input line named before it.
    detail = re.sub(r": line 1 column (\d+) \(char \d+\)$", r" at column \1", str(exc))
    return f"not valid JSON: {detail}{hint}"


class _Parser:
    """Turns one stripped line into a RequestLine or BadLine; owns the id index."""

    __slots__ = ("allowed", "allowed_text", "check_duplicates", "seen")

    def __init__(self, allowed_urls: Iterable[str], *, check_duplicates: bool) -> None:
        urls = tuple(allowed_urls)
        self.allowed = frozenset(endpoint_of(u) for u in urls)
        self.allowed_text = ", ".join(urls)
        self.check_duplicates = check_duplicates
        self.seen: SeenKeys | None = SeenKeys() if check_duplicates else None

    def close(self) -> None:
        if self.seen is not None:
            self.seen.close()

    def parse(self, lineno: int, raw: bytes) -> RequestLine | BadLine:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return BadLine(lineno, _json_error(raw, exc))
        if (too_deep := nesting_problem(raw, obj)) is not None:
            return BadLine(lineno, too_deep)
        if not isinstance(obj, dict):
            return BadLine(lineno, f"line must be a JSON object, got {_type_name(obj)}")

        if "custom_id" not in obj or obj["custom_id"] is None:
            return BadLine(lineno, "missing custom_id")
        cid = obj["custom_id"]
        if not isinstance(cid, str) or not cid:
            return BadLine(
                lineno, f"custom_id must be a non-empty string, got {_type_name(cid)} {cid!r:.40}"
            )
        if self.seen is not None:
            first = self.seen.first(cid, lineno)
            if first is not None:
                return BadLine(
                    lineno, f"custom_id {_show_id(cid)} repeats line {first}", cid, first
                )

        method = obj.get("method")
        if method is None:
            return BadLine(lineno, "missing method (must be POST)", cid)
        if not isinstance(method, str) or method.upper() != "POST":
            return BadLine(lineno, f"method must be POST, got {method!r:.40}", cid)

        url = obj.get("url")
        if url is None:
            return BadLine(lineno, f"missing url (one of {self.allowed_text})", cid)
        if not isinstance(url, str) or endpoint_of(url) not in self.allowed:
            return BadLine(lineno, f"url {url!r:.80} is not one of {self.allowed_text}", cid)

        body = obj.get("body")
        if body is None:
            return BadLine(lineno, "missing body (a JSON object)", cid)
        if not isinstance(body, dict):
            return BadLine(lineno, f"body must be a JSON object, got {_type_name(body)}", cid)
        return RequestLine(lineno, cid, "POST", url, body)


def too_long(path: str | os.PathLike[str], lineno: int, max_line_bytes: int) -> BadLine:
    """The bad line for a line over ``max_line_bytes`` (never read into memory)."""
    limit = (
        f"{max_line_bytes >> 20} MiB"
        if max_line_bytes >= 1 << 20 and max_line_bytes % (1 << 20) == 0
        else f"{max_line_bytes:,} bytes"
    )
    return BadLine(
        lineno,
        f"the line is longer than {limit} (the limit of one input line; "
        "OpenAI takes at most 50 MB of images per request): send large images by URL "
        "or split the request",
        source=source_name(path),
    )


def _check_exists(path: str | os.PathLike[str]) -> None:
    # Fail at the call, not at the first next(), for the common mistake.
    if os.fspath(path) != "-" and not os.path.exists(path):
        raise InputError("file not found; check the path", path=os.fspath(path))


def read_requests(
    path: str | os.PathLike[str],
    *,
    allowed_urls: Iterable[str] = DEFAULT_URLS,
    check_duplicates: bool = True,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[RequestLine | BadLine]:
    """Stream an OpenAI Batch input file: a RequestLine or BadLine per non-blank line.

    Never raises for a line's content; raises InputError if the file cannot
    be opened. Memory is one line plus the duplicate-id index (see module
    docstring); ``check_duplicates=False`` drops the index.
    """
    _check_exists(path)
    return _read_requests(path, allowed_urls, check_duplicates, max_line_bytes)


def _read_requests(
    path: str | os.PathLike[str],
    allowed_urls: Iterable[str],
    check_duplicates: bool,
    max_line_bytes: int,
) -> Iterator[RequestLine | BadLine]:
    parser = _Parser(allowed_urls, check_duplicates=check_duplicates)
    try:
        for lineno, raw in iter_lines(path, max_line_bytes=max_line_bytes):
            if raw is None:
                yield too_long(path, lineno, max_line_bytes)
            elif raw:
                item = parser.parse(lineno, raw)
                del raw  # not held while the request is sent
                yield item if isinstance(item, RequestLine) else item.from_file(path)
    finally:
        parser.close()


@dataclass(slots=True)
class FileCheck:
    """What one full read of an input file found (for ``--strict`` and ``--dry-run``).

    ``bad_lines`` keeps the first 1,000 bad lines; ``bad`` counts all of them.
    Token totals are filled only when ``validate_file(estimate=True)``:
    ``prompt_tokens`` is estimated input, ``max_output_tokens`` the output the
    requests may reserve (``max_tokens`` or the default, times ``n``).
    """

    path: str
    lines: int = 0
    valid: int = 0
    bad: int = 0
    blank: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)
    endpoints: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    max_output_tokens: int = 0

    @property
    def ok(self) -> bool:
        """True when every non-blank line is a valid request."""
        return self.bad == 0

    @property
    def bad_omitted(self) -> int:
        """Bad lines counted but not kept in ``bad_lines``."""
        return self.bad - len(self.bad_lines)

    def add(
        self, item: RequestLine | BadLine, *, estimate: bool = False, max_bad: int = _MAX_BAD_KEPT
    ) -> RequestLine | None:
        """Count one parsed line (the one scan step of `validate_file` and `--dry-run`);
        returns the request when the line is valid."""
        if isinstance(item, BadLine):
            self.bad += 1
            if len(self.bad_lines) < max_bad:
                self.bad_lines.append(item)
            return None
        self.valid += 1
        self.endpoints[item.endpoint] += 1
        model = item.body.get("model")
        self.models[model if isinstance(model, str) else "(none)"] += 1
        if estimate:
            prompt, output = request_estimate(item.body, item.endpoint)
            self.prompt_tokens += prompt
            self.max_output_tokens += output
        return item

    def problems(self) -> list[str]:
        """One ``path:line: reason`` text per kept bad line, then a count of the rest."""
        out = [b.from_file(self.path).describe() for b in self.bad_lines]
        if self.bad_omitted:
            out.append(f"... and {self.bad_omitted} more bad lines in {self.path}")
        return out


def validate_file(
    path: str | os.PathLike[str],
    *,
    allowed_urls: Iterable[str] = DEFAULT_URLS,
    estimate: bool = False,
    max_bad: int = _MAX_BAD_KEPT,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> FileCheck:
    """Read the whole file once and count what is in it; nothing is sent.

    Raises InputError only if the file cannot be opened.
    """
    _check_exists(path)
    check = FileCheck(path=os.fspath(path))
    parser = _Parser(allowed_urls, check_duplicates=True)
    try:
        for lineno, raw in iter_lines(path, max_line_bytes=max_line_bytes):
            check.lines = lineno
            if raw == b"":
                check.blank += 1
                continue
            if raw is None:
                item: RequestLine | BadLine = too_long(path, lineno, max_line_bytes)
            else:
                item = parser.parse(lineno, raw)
                del raw
                if isinstance(item, BadLine):
                    item = item.from_file(path)
            check.add(item, estimate=estimate, max_bad=max_bad)
    finally:
        parser.close()
    return check


# -- output -----------------------------------------------------------------

_DUMP_OPTS: Final = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


def _request_id(custom_id: str | None, line: int | None) -> str:
    """``batch_req_<32 hex>``: the same custom_id always gets the same id.

    Stable across runs so a resumed run writes identical lines; a line
    without a readable custom_id is keyed by its line number instead.
    """
    key = custom_id.encode() if custom_id is not None else f"\x00line:{line}".encode()
    return "batch_req_" + hashlib.blake2b(key, digest_size=16).hexdigest()


def format_response(
    custom_id: str | None, status_code: int, body: Any, request_id: str | None
) -> bytes:
    """One output line for a request the server answered (any status, 400s included).

    ``body`` is the parsed JSON response (or its raw text when it was not
    JSON); ``request_id`` is the server's ``x-request-id``, if any.
    """
    return orjson.dumps(
        {
            "id": _request_id(custom_id, None),
            "custom_id": custom_id,
            "response": {"status_code": status_code, "request_id": request_id, "body": body},
            "error": None,
        },
        option=_DUMP_OPTS,
    )


def format_response_raw(
    custom_id: str | None, status_code: int, raw: bytes, request_id: str | None
) -> bytes | None:
    """`format_response` with the body as the server sent it, spliced in instead of
    parsed and encoded again; None when `raw` is not a JSON object on one line
    (then `format_response`). `raw` must be a body that parsed as JSON."""
    # `find`, not `in`: `b"\n" in raw` first tries the operand as an integer and
    # formats and clears a TypeError (~2,300 instructions each, issue 18).
    if raw[:1] != b"{" or raw[-1:] != b"}" or raw.find(b"\n") >= 0 or raw.find(b"\r") >= 0:
        return None
    return b"".join(
        (
            b'{"id":"',
            _request_id(custom_id, None).encode(),
            b'","custom_id":',
            orjson.dumps(custom_id),
            b',"response":{"status_code":',
            str(int(status_code)).encode(),
            b',"request_id":',
            orjson.dumps(request_id),
            b',"body":',
            raw,
            b'},"error":null}\n',
        )
    )


def format_error(
    custom_id: str | None,
    code: str,
    message: str,
    *,
    line: int | None = None,
    where: str | None = None,
) -> bytes:
    """One output line for a request that got no HTTP answer.

    ``code`` is a short machine word (``timeout``, ``connection_error``,
    ``invalid_request_line``); with ``line`` the message names the input line
    (``where``, e.g. ``in.jsonl:12``, else ``input line 12``) and the error
    carries ``"line"`` too.
    """
    error: dict[str, Any] = {"code": code, "message": message}
    if line is not None:
        error["message"] = f"{where or f'input line {line}'}: {message}"
        error["line"] = line
    return orjson.dumps(
        {
            "id": _request_id(custom_id, line),
            "custom_id": custom_id,
            "response": None,
            "error": error,
        },
        option=_DUMP_OPTS,
    )


def format_bad_line(bad: BadLine) -> bytes:
    """The output line for an input line that could not be sent."""
    # The message names the file and the custom_id when known: `in.jsonl:12 ...: why`.
    where = bad.place if bad.source is not None else None
    return format_error(
        bad.custom_id, "invalid_request_line", bad.reason, line=bad.line, where=where
    )


def read_output(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Stream the objects of a Batch output file (blank lines skipped).

    A last line cut short without its newline (a crash mid-write) is
    skipped; any other unreadable line raises InputError naming it.
    """
    _check_exists(path)
    return _read_output(path)


def _read_output(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            text = raw.strip(_WS)
            if lineno == 1 and text.startswith(_BOM):
                text = text[len(_BOM) :]
            if not text:
                continue
            try:
                obj = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                obj, reason = None, _json_error(text, exc)
            else:
                reason = f"output line must be a JSON object, got {_type_name(obj)}"
            if isinstance(obj, dict):
                yield obj
            elif raw.endswith(b"\n"):
                raise InputError(reason, path=os.fspath(path), line=lineno)
            # else: only the final line can lack its newline - a torn write, skipped.
