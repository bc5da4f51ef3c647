"""The parts of one `run_file` run that online and batch mode share: the
journal path and identity, the input reader, each line's key and output
line, the settings `conveyor retry` re-reads, and the engine's options and
task function for online requests."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .._base._exceptions import ConfigError, FatalError, InputError
from .._base._types import Result, Status
from .._core._attempt import current_attempt, report_cached
from .._core._options import Breaker
from .._core._retry import RetryPolicy
from ._batchfile import (
    BadLine,
    RequestLine,
    format_bad_line,
    format_error,
    format_response,
    format_response_raw,
    read_requests,
)
from ._cache import InflightDedupe, ResponseCache, body_tokens
from ._http import Answer, AuthError, Endpoint, HTTPClientError, HTTPRetryable, OpenAIClient
from ._structured import Validator, format_invalid, parsed_of, prepare, reask_request
from ._template import PromptTemplate, build_requests, read_records
from ._tokens import request_estimate

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator

    from ._run import RunSettings

__all__ = [
    "LINE_KEY_PREFIX",
    "Item",
    "default_journal_path",
    "engine_options_for",
    "format_line",
    "item_key",
]

Item = RequestLine | BadLine
_OK = Status.OK  # read per output line: a constant, not EnumType.__getattr__ (3.11)


def default_journal_path(output: str | os.PathLike[str]) -> Path:
    """`results.jsonl` -> `results.jsonl.conveyor.db`, beside the output."""
    p = Path(output)
    return p.with_name(p.name + ".conveyor.db")


def _fingerprint(path: Path) -> str:
    """Size plus a hash of the head and tail: cheap on a 10 GB file, and any
    edit that changes the lines near either end or the length shows."""
    st = path.stat()
    h = hashlib.blake2b(digest_size=12)
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return f"{st.st_size}:{h.hexdigest()}"


STREAM = "-"  # the input of a run fed by stdin, a pipe or a FIFO, as stored for `retry`


def is_stream(path: Path) -> bool:
    """True for stdin (`-`), a pipe or FIFO (`<(...)`, `/dev/stdin` on a pipe) or a
    terminal: read once, as it comes; False for a regular file. A directory,
    a missing path or a device that never ends (/dev/zero) is an InputError."""
    if str(path) == STREAM:
        return True
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError("no such file; check the path", path=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read it: {exc.strerror or exc}", path=str(path)) from None
    if stat.S_ISREG(st.st_mode):
        return False
    if stat.S_ISDIR(st.st_mode):
        raise InputError("is a directory, not a file", path=str(path))
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode) or _is_tty_or_null(path):
        return True
    raise InputError(
        "is a device, not a file or a pipe (it would be read forever): give a file, a pipe "
        "(`<(...)`), or - for stdin",
        path=str(path),
    )


def _is_tty_or_null(path: Path) -> bool:
    try:
        if os.path.samefile(path, os.devnull):
            return True
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.isatty(fd)
    finally:
        os.close(fd)


# Keys of lines without a usable custom_id start with NUL, which no sane
# custom_id does: a valid custom_id "line:2" cannot collide with bad line 2.
LINE_KEY_PREFIX = "\x00line:"


def item_key(item: Item) -> str:
    """custom_id; a line whose id is missing or repeated is keyed by its line."""
    if isinstance(item, RequestLine):
        return item.custom_id
    if item.custom_id is not None and item.duplicate_of is None:
        return item.custom_id
    return f"{LINE_KEY_PREFIX}{item.line}"


def format_line(result: Result[Any]) -> bytes:
    """The Batch API output line for one terminal result."""
    item = result.item
    if isinstance(item, BadLine):
        bad = item if item.duplicate_of is None else _anonymous(item)
        return format_bad_line(bad)
    custom_id = item.custom_id if isinstance(item, RequestLine) else result.key
    if result.status is _OK and isinstance(result.value, Answer):
        a = result.value
        if a.raw is not None and not a.checked:
            # The body as received, not parsed and encoded again (the same JSON).
            line = format_response_raw(custom_id, a.status, a.raw, a.request_id)
            if line is not None:
                return line
        return parsed_of(format_response(custom_id, a.status, a.body, a.request_id), a)
    invalid = format_invalid(custom_id, result)
    if invalid is not None:
        return invalid
    meta = result.meta
    code_seen = meta.get("status_code")
    answered_2xx = code_seen is not None and 200 <= int(code_seen) < 300
    if code_seen is not None and not answered_2xx:
        return format_response(
            custom_id, int(meta["status_code"]), meta.get("body"), meta.get("request_id")
        )
    err = result.error
    if result.status is Status.TIMED_OUT:
        code = "timeout"
    elif answered_2xx:
        code = "invalid_response"  # a 2xx whose body is not a result
    elif err is not None and err.type == "HTTPRetryable":
        code = "connection_error"
    else:
        code = "request_failed"
    message = err.message if err else result.status.value
    return format_error(custom_id, code, f"{message} (after {result.attempts} attempt(s))")


def _anonymous(bad: BadLine) -> BadLine:
    # A repeated custom_id's error line must not repeat the id: the output
    # holds each custom_id exactly once, and this line names its line number.
    return BadLine(bad.line, bad.reason, None, bad.duplicate_of, source=bad.source)


def _items(input_path: Path, s: RunSettings, rule: Any = None) -> Iterator[Item]:
    """The input's requests, each line's answer schema checked (`_structured.prepare`)."""
    if s.template is not None:
        tpl = PromptTemplate.load(s.template)
        items: Iterator[Item] = build_requests(
            read_records(input_path), tpl, model=s.model, id_column=s.id_column, endpoint=s.endpoint
        )
    elif s.model is not None:
        raise ConfigError("model", s.model, "only with a template (records input)")
    else:
        items = read_requests(input_path)
    return _from_file(prepare(items, input_path, rule), input_path)


def bad_line_error(bad: BadLine) -> InputError:
    """The item error of a bad line: `in.jsonl:3 (custom_id 'x'): why`."""
    exc = InputError(bad.describe())
    exc.path, exc.line = bad.source, bad.line
    return exc


def _from_file(items: Iterator[Item], path: Path) -> Iterator[Item]:
    """Every bad line naming the input file, also those made after reading
    (a template that fails for a record, a bad schema in a line)."""
    for item in items:
        yield item if isinstance(item, RequestLine) else item.from_file(path)


def _identity(input_path: Path, s: RunSettings, endpoint: Endpoint) -> dict[str, str]:
    stream = is_stream(input_path)
    ident = {
        "kind": "records" if s.template else "batch",
        # A stream cannot be fingerprinted: its custom_ids say what is done.
        "input": "<stream>" if stream else str(input_path.resolve()),
        "input_fingerprint": "stream" if stream else _fingerprint(input_path),
        "base_url": endpoint.base_url,
    }
    if s.template is not None:
        ident["template_fingerprint"] = _fingerprint(s.template)
        ident["model"] = s.model or ""
        ident["id_column"] = s.id_column or ""
    return ident


class _Caller:
    """The task function: one request, deduplicated and cached when asked."""

    # Connection failures before the endpoint ever answered that mean "wrong
    # URL or server down": stop with one line instead of failing every item.
    UNREACHABLE_AFTER = 5

    def __init__(self, client: OpenAIClient, cache: ResponseCache | None) -> None:
        self._client = client
        self._cache = cache
        self._inflight: InflightDedupe[str | bytes, Answer] = InflightDedupe()
        self._answered = False
        self._refused = 0

    def _failed(self, exc: Exception) -> Exception:
        """Note what a failed request says of the endpoint; the error to raise."""
        if isinstance(exc, HTTPRetryable):
            if exc.status_code is None and not self._answered:
                # Not this item's fault: if it runs out of attempts before
                # the stop, it is cancelled (a resume sends it), not failed.
                exc.resumable = True  # type: ignore[attr-defined]
                self._refused += 1
                if self._refused >= self.UNREACHABLE_AFTER:
                    return FatalError(
                        f"cannot reach {self._client.endpoint.base_url} ({exc}); is the server "
                        "running? check `base_url=` / OPENAI_BASE_URL. Nothing was lost: run "
                        "the same command again to resume."
                    )
            else:
                self._answered = True
        elif isinstance(exc, HTTPClientError | AuthError):
            self._answered = True
        return exc

    async def _post(self, req: RequestLine) -> Answer:
        client = self._client
        try:
            answer = client.answer(*await client.exchange(req.endpoint, req.body))
        except Exception as exc:
            err = self._failed(exc)
            if err is exc:
                raise
            raise err from None
        self._answered = True
        return answer

    async def __call__(self, req: Item) -> Answer:
        if isinstance(req, BadLine):  # rejected by cost() before any attempt
            raise bad_line_error(req)
        attempt = current_attempt()
        if attempt is not None and attempt.reask is not None:
            req = reask_request(req, attempt)  # the same request, asked again
        cache = self._cache
        if cache is None:
            return await self._post(req)
        key = cache.key_for(req.url, req.body)
        hit = cache.get(key)
        if hit is not None:
            report_cached()
            return Answer(hit.status_code, orjson.loads(hit.body), None)
        inflight = self._inflight
        if not inflight.lead(key):
            return await self._join(req, key)
        # The usual case: nobody sends the same request now; this call leads.
        # (`_post` and `_keep` written out here: two coroutine layers less.)
        client = self._client
        try:
            try:
                answer = client.answer(*await client.exchange(req.endpoint, req.body))
            except Exception as exc:
                err = self._failed(exc)
                if err is exc:
                    raise
                raise err from None
            self._answered = True
            self._keep(key, answer)
        except Exception as exc:
            inflight.fail(key, exc)
            raise
        except BaseException:
            inflight.drop(key)
            raise
        inflight.done(key, answer)
        return answer

    def _keep(self, key: str | bytes, answer: Answer) -> None:
        cache = self._cache
        assert cache is not None
        # The body as received: an exact-size copy, not an encoder's buffer.
        raw = answer.raw if answer.raw is not None else orjson.dumps(answer.body)
        # In memory the usage is counted at a hit (most answers never have one).
        tokens = None if cache.in_memory else body_tokens(answer.body)
        cache.put(key, answer.status, raw, tokens=tokens)

    async def _join(self, req: RequestLine, key: str | bytes) -> Answer:
        """The same request is in flight: its answer is this one's too (or this
        call sends it after all, if that one was cancelled)."""
        sent = False

        async def send() -> Answer:
            nonlocal sent
            sent = True
            answer = await self._post(req)
            self._keep(key, answer)
            return answer

        answer = await self._inflight.run(key, send)
        if not sent:
            report_cached()
        return answer


def _cost(item: Item) -> tuple[float, float]:
    """(input, output) tokens a request reserves: budgets that meter them apart
    (Anthropic's input and output tokens) take each, a total budget the sum."""
    if isinstance(item, BadLine):
        raise bad_line_error(item)
    prompt, output = request_estimate(item.body, item.endpoint)
    return float(prompt), float(output)


def engine_options_for(
    s: RunSettings, rule: Any = None, chosen: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The engine's options for these settings: the limits of every online
    request, `conveyor run` and batch mode's online re-drive alike (`chosen`:
    the concurrency options, `_run.concurrency_options`)."""
    return {
        **(
            chosen
            if chosen is not None
            else {
                "concurrency": s.concurrency if s.concurrency is not None else 100,
                "concurrency_min": s.concurrency_min,
                "concurrency_max": s.concurrency_max,
            }
        ),
        "retries": RetryPolicy(retries=s.retries, base=0.5, cap=30.0),
        "timeout": s.timeout,
        "rpm": s.rpm,
        "tpm": s.tpm,
        "cost": _cost,
        "limit_window": s.limit_window,
        "burst": s.burst,
        "probe_first": True,
        # OpenAI counts max_tokens at admission and keeps it counted.
        "refund_unused": False,
        "key": item_key,
        "breaker": (
            # Probes stay frequent (one request per 2 s at most) so the
            # run resumes soon after an outage ends.
            Breaker(threshold=10, cooldown=1.0, max_cooldown=2.0, give_up=s.give_up)
            if s.breaker
            else None
        ),
        "fail_fast": s.fail_fast,
        "batch_id": s.batch_id,
        "on_progress": s.on_progress,
        "progress_interval": s.progress_interval,
        # Answers are validated (and re-asked) where they arrive: here or on the actors.
        "validate_item": Validator(rule),
        "reask": s.reask,
        # A limiter shared with other runs in this process (`conveyor serve`).
        **({"shared_limiter": s.shared_limiter} if s.shared_limiter is not None else {}),
    }


_RERUN_FIELDS = ("template", "model", "id_column", "endpoint", "concurrency", "rpm", "tpm",
                 "retries", "timeout", "api_key_env", "limit_window", "burst")  # fmt: skip


def _settings_json(path: Path, s: RunSettings) -> str:
    """What `conveyor retry` needs to run this input again (never the key)."""
    d: dict[str, Any] = {"input": STREAM if is_stream(path) else str(path.resolve())}
    for name in _RERUN_FIELDS:
        v = getattr(s, name)
        d[name] = str(v) if isinstance(v, Path) else v
    d["output"] = None if s.output is None else str(Path(s.output).resolve())
    d["base_url"] = s.base_url
    d["reask"] = s.reask
    # A schema file is kept by path (a dict or a model cannot be rebuilt by `conveyor retry`).
    if isinstance(s.schema, str | os.PathLike):
        d["schema"] = str(Path(s.schema).resolve())
    return orjson.dumps(d).decode()


class _Invoke:
    """The engine's invoker for online requests. Our transport ends a request
    when cancelled, so attempts time out without a task each
    (`conveyor._core._engine.cancels_cleanly`)."""

    cancels_cleanly = True
    __slots__ = ("_caller",)

    def __init__(self, caller: _Caller) -> None:
        self._caller = caller

    def __call__(self, item: Item, engine: Any) -> Coroutine[Any, Any, Answer]:
        return self._caller(item)  # the coroutine itself: one frame less per resume


def _invoke(caller: _Caller) -> Any:
    return _Invoke(caller)
