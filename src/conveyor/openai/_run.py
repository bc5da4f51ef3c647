"""`run_file`: an OpenAI Batch input file (or records + a template) against any
OpenAI-compatible endpoint, at the full allowed speed, resumable.

source (streamed lines) -> plan (keys, skip what the journal holds, --limit)
-> engine (limits, retries, breaker) -> HTTP -> sink (journal + output, each
custom_id exactly once) -> report.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .._api import AsyncStream
from .._base._exceptions import ConfigError, FatalError, InputError
from .._base._types import Result, Status
from .._core._attempt import current_attempt, report_cached
from .._core._options import AUTO_MAX, Breaker
from .._core._portal import Portal
from .._core._report import new_batch_id
from .._core._retry import RetryPolicy
from .._journal._journal import Journal
from .._pipeline import JournaledStream
from ._batchfile import (
    BadLine,
    RequestLine,
    format_bad_line,
    format_error,
    format_response,
    read_requests,
    validate_file,
)
from ._cache import InflightDedupe, ResponseCache, body_tokens, request_key
from ._http import Answer, AuthError, Endpoint, HTTPClientError, HTTPRetryable, OpenAIClient
from ._structured import (
    Validator,
    format_invalid,
    parsed_of,
    prepare,
    reask_request,
    resolve_schema,
    schema_problems,
)
from ._template import PromptTemplate, build_requests, check_records, read_records
from ._tokens import request_estimate

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._core._report import BatchReport
    from .._core._stream import RunStream

__all__ = [
    "RunSettings",
    "arun_file",
    "default_journal_path",
    "is_stream",
    "run_file",
    "run_file_settings",
]

log = logging.getLogger("conveyor")

Item = RequestLine | BadLine

# Results that end an item for good; cancelled/skipped items stay pending so a
# resumed run sends them.
_TERMINAL = (Status.OK, Status.FAILED, Status.TIMED_OUT)


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
    if result.status is Status.OK and isinstance(result.value, Answer):
        a = result.value
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
    return BadLine(bad.line, bad.reason, None, bad.duplicate_of)


DEFAULT_FIXED = 100  # the concurrency when none is given and "auto" is not used
# "auto" as the default is built but off: on servers of capacity 64 a fixed
# 100 is already near the ideal, and auto's ramp cost 1-10% of a 20 s run's
# throughput there (benchmarks/RESULTS.md, concurrency_auto.py; issue 13).
DEFAULT_AUTO = False


@dataclass
class RunSettings:
    """Everything `run_file` needs besides the input; the CLI fills it from flags."""

    output: Path | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str = "OPENAI_API_KEY"
    headers: dict[str, str] = field(default_factory=dict)
    # A whole number, "auto" (found from latency: `_core._congestion`), or None:
    # the default, `concurrency_options` below.
    concurrency: int | str | None = None
    concurrency_min: int | None = None  # bounds of "auto"
    concurrency_max: int | None = None
    rpm: float | None = None
    tpm: float | None = None
    limit_window: float = 60.0
    burst: float = 1.0
    retries: int = 5
    timeout: float | None = 600.0
    journal: Path | bool | None = True  # True: beside the output; False/None: none
    force: bool = False
    limit: int | None = None
    strict: bool = False
    template: Path | None = None
    model: str | None = None
    id_column: str | None = None
    endpoint: str = "/v1/chat/completions"
    dedupe: bool = True
    cache: Path | None = None
    breaker: bool = True
    give_up: float | None = 120.0  # seconds of total failure before the run stops
    fail_fast: bool = False
    batch_id: str | None = None
    on_progress: Callable[[Any], Any] | None = None
    progress_interval: float = 1.0
    ray: str | None = None  # a Ray address ("local", "auto", host:port): run on actors
    actors: int = 2
    monitor: Any = None  # a conveyor.Monitor: resources sampled while it runs
    # A JSON Schema (path or dict) or a Pydantic model every answer must match.
    schema: Any = None
    reask: int = 2  # times an invalid answer is asked again
    # A limiter shared with other runs in this process (`conveyor serve`: one budget per
    # upstream for all its batches): the engine's `shared_limiter`.
    shared_limiter: Any = field(default=None, repr=False)


def _check(s: RunSettings) -> None:
    if s.limit is not None and (not isinstance(s.limit, int) or s.limit < 1):
        raise ConfigError("limit", s.limit, "a whole number >= 1")
    if s.journal is True and s.output is None:
        raise ConfigError("journal", True, "needs an output path, or journal=None")
    if isinstance(s.reask, bool) or not isinstance(s.reask, int) or not 0 <= s.reask <= 100:
        raise ConfigError("reask", s.reask, "a whole number 0..100")


def _rule(s: RunSettings) -> Any:
    # Checked (and a bad schema refused) before anything else happens.
    return resolve_schema(s.schema)


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
    return prepare(items, input_path, rule)


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


def _strict_check(input_path: Path, s: RunSettings, rule: Any = None) -> None:
    if s.template is not None:
        bad = [x for x in _items(input_path, s, rule) if isinstance(x, BadLine)]
        problems = [f"{input_path}:{b.line}: {b.reason}" for b in bad]
    else:
        check = validate_file(input_path)
        problems = check.problems() + schema_problems(read_requests(input_path), input_path, rule)
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise InputError(
            f"`strict=True`: {len(problems)} bad line(s), nothing was sent:\n  {shown}{more}\n"
            "Fix them, or run without `strict=True` to send the valid lines and get an "
            "error line for each bad one.",
            path=str(input_path),
        )


class _Caller:
    """The task function: one request, deduplicated and cached when asked."""

    # Connection failures before the endpoint ever answered that mean "wrong
    # URL or server down": stop with one line instead of failing every item.
    UNREACHABLE_AFTER = 5

    def __init__(self, client: OpenAIClient, cache: ResponseCache | None) -> None:
        self._client = client
        self._cache = cache
        self._inflight: InflightDedupe[str, Answer] = InflightDedupe()
        self._answered = False
        self._refused = 0

    async def _post(self, req: RequestLine) -> Answer:
        try:
            answer = await self._client.post(req.endpoint, req.body)
        except HTTPRetryable as exc:
            if exc.status_code is None and not self._answered:
                # Not this item's fault: if it runs out of attempts before
                # the stop, it is cancelled (a resume sends it), not failed.
                exc.resumable = True  # type: ignore[attr-defined]
                self._refused += 1
                if self._refused >= self.UNREACHABLE_AFTER:
                    raise FatalError(
                        f"cannot reach {self._client.endpoint.base_url} ({exc}); is the server "
                        "running? check `base_url=` / OPENAI_BASE_URL. Nothing was lost: run "
                        "the same command again to resume."
                    ) from None
            else:
                self._answered = True
            raise
        except (HTTPClientError, AuthError):
            self._answered = True
            raise
        self._answered = True
        return answer

    async def __call__(self, req: Item) -> Answer:
        if isinstance(req, BadLine):  # rejected by cost() before any attempt
            raise InputError(req.reason, line=req.line)
        req = reask_request(req, current_attempt())  # the same request, or its re-ask
        if self._cache is None:
            return await self._post(req)
        key = request_key(req.url, req.body)
        hit = self._cache.get(key)
        if hit is not None:
            report_cached()
            return Answer(hit.status_code, orjson.loads(hit.body), None)
        sent = False

        async def send() -> Answer:
            nonlocal sent
            sent = True
            answer = await self._post(req)
            assert self._cache is not None
            # The body as received: an exact-size copy, not an encoder's buffer.
            raw = answer.raw if answer.raw is not None else orjson.dumps(answer.body)
            self._cache.put(key, answer.status, raw, tokens=body_tokens(answer.body))
            return answer

        answer = await self._inflight.run(key, send)
        if not sent:
            report_cached()
        return answer


def _cost(item: Item) -> tuple[float, float]:
    """(input, output) tokens a request reserves: budgets that meter them apart
    (Anthropic's input and output tokens) take each, a total budget the sum."""
    if isinstance(item, BadLine):
        raise InputError(item.reason, line=item.line)
    prompt, output = request_estimate(item.body, item.endpoint)
    return float(prompt), float(output)


def _refuse_overwriting_input(path: Path, s: RunSettings) -> None:
    """The output (or journal) must never be the input: `force` would erase it."""
    targets = [("output", s.output)]
    if isinstance(s.journal, Path | str):
        targets.append(("journal", Path(s.journal)))
    for what, target in targets:
        if target is None:
            continue
        try:
            same = os.path.samefile(path, target)
        except OSError:
            same = False
        if same:
            raise ConfigError(
                what, str(target), f"a path other than the input file {path} (it would erase it)"
            )


async def arun_file(
    input_path: str | os.PathLike[str], settings: RunSettings, *, _control: Any = None
) -> BatchReport:
    """Send every request of `input_path`; see `RunSettings` for the knobs."""
    s = settings
    _check(s)
    path = Path(input_path)
    piped = is_stream(path)
    _refuse_overwriting_input(path, s)
    rule = _rule(s)
    if s.strict and piped:
        raise InputError(
            "`strict=True` checks every line before sending any, so it reads the input twice; "
            "a pipe can be read once: save it to a file first, or run without `strict=True`",
            path=str(path),
        )
    if s.strict:
        _strict_check(path, s, rule)
    if s.template is not None and not piped:
        check_records(path, s.id_column)
    endpoint = Endpoint.resolve(
        s.base_url, api_key=s.api_key, api_key_env=s.api_key_env, headers=s.headers
    )
    journal: Journal | None = None
    jpath: Path | None = None
    if s.journal is True and s.output is not None:
        jpath = default_journal_path(s.output)
    elif isinstance(s.journal, Path | str):
        jpath = Path(s.journal)
    if jpath is not None:
        journal = Journal.open(jpath, identity=_identity(path, s, endpoint), force=s.force)
    cache: ResponseCache | None = None
    if s.cache is not None:
        cache = ResponseCache(s.cache)
    elif s.dedupe:
        cache = ResponseCache(None)
    resumed = 0
    models: Counter[str] = Counter()
    sink: _PlainOutput | None = None
    try:
        items = _items(path, s, rule)

        # The resume rule is the pipeline's: finished lines are counted, not sent.
        finished: Callable[[str], Any] = lambda key: None  # noqa: E731 - set by make()

        def plan() -> Iterator[Item]:
            nonlocal resumed
            pending = 0
            for item in items:
                if isinstance(item, RequestLine) and len(models) < 64:
                    models[str(item.body.get("model"))] += 1
                if finished(item_key(item)) is not None:
                    resumed += 1
                    continue
                if s.limit is not None and pending >= s.limit:
                    return
                pending += 1
                yield item

        total = None if piped else _count_lines(path)
        if journal is not None:
            # One batch id across resumes: the journal's, once it has one.
            batch_id = s.batch_id or journal.get_meta("batch_id") or new_batch_id()
            s.batch_id = batch_id
            journal.update_meta(
                {
                    "total_items": None if total is None else str(total),
                    "run_settings": _settings_json(path, s),
                    "batch_id": batch_id,
                    "concurrency": str(concurrency_options(s)["concurrency"]),
                    "rpm": None if s.rpm is None else str(s.rpm),
                    "tpm": None if s.tpm is None else str(s.tpm),
                }
            )
        elif s.output is not None:
            sink = _PlainOutput(Path(s.output))  # no journal: no resume, a fresh file
        chosen = concurrency_options(s)
        pool = chosen["concurrency"]
        if not isinstance(pool, int):
            pool = s.concurrency_max or AUTO_MAX
        async with OpenAIClient(endpoint, concurrency=pool) as client:
            engine_options: dict[str, Any] = {
                **chosen,
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
            }
            if s.monitor is not None:
                if s.ray is not None:
                    raise ConfigError(
                        "monitor", s.monitor, "only on this machine (it samples this process)"
                    )
                engine_options["monitor"] = s.monitor
            if s.shared_limiter is not None:
                engine_options["shared_limiter"] = s.shared_limiter
            todo = _Sized(plan(), None if total is None else max(0, total - _done(journal)))

            def make(previous: Callable[[str], Any]) -> RunStream:
                nonlocal finished
                finished = previous
                if s.ray is not None:
                    from .._core._settings import RunSettings as Settings
                    from ..ray._run import cluster_stream

                    if s.concurrency == "auto":
                        raise ConfigError(
                            "concurrency",
                            "auto",
                            'a whole number on Ray actors ("auto" runs on one machine: '
                            "find the server's concurrency there, then give it with ray=), "
                            "or leave it out for 100",
                        )
                    # Each actor opens its own session; the key comes from its environment.
                    remote = _RemoteCaller(endpoint.base_url, s.api_key_env, s.headers,
                                           s.api_key, pool)  # fmt: skip
                    # Our own options (validate_item=) go in as settings, not as run_ray's.
                    cluster = {"address": s.ray, "actors": s.actors}
                    on_ray = Settings(engine=dict(engine_options), backend="ray", cluster=cluster)
                    return cluster_stream(todo, remote, on_ray)
                return AsyncStream(todo, _invoke(_Caller(client, cache)), engine_options)

            stream: JournaledStream | RunStream
            if journal is not None:
                opened = journal
                stream = JournaledStream(
                    lambda: opened,
                    make,
                    output=s.output,
                    format_line=format_line,
                    overwrite=s.force,
                    close_journal=False,
                    # The output line holds the whole answer: not stored twice.
                    store_values=False,
                )
            else:
                stream = make(lambda key: None)
            if _control is not None:
                stream.attach_control(_control)
            report: BatchReport | None = None
            try:
                async for result in stream:
                    if sink is not None and result.status in _TERMINAL:
                        await sink.add(result)
                report = stream.report
            except BaseException as exc:
                report = getattr(exc, "report", None) or stream.report
                raise
            finally:
                await stream.aclose()
                if report is not None:
                    _annotate(report, resumed, cache, journal, s)
                    if models:
                        model = models.most_common(1)[0][0]
                        report.extra["model"] = model
                        if journal is not None:
                            journal.set_meta("model", model)
        assert report is not None
        return report
    finally:
        if sink is not None:
            await sink.close()
        if journal is not None:
            journal.close()
        if cache is not None:
            cache.close()


def _annotate(
    report: BatchReport,
    resumed: int,
    cache: ResponseCache | None,
    journal: Journal | None,
    s: RunSettings,
) -> None:
    report.extra["resumed_skipped"] = resumed
    if cache is not None:
        report.extra["cache"] = cache.stats()
    if journal is not None:
        report.extra["journal"] = str(journal.path)
        # Failed results the output holds, this run's and earlier runs'
        # (a resume skips those, but they are not successes).
        counts = journal.status_counts()
        report.extra["journal_failed"] = counts.get("failed", 0) + counts.get("timed_out", 0)
    if s.output is not None:
        report.extra["output"] = str(s.output)
    if s.rpm:
        report.extra["rpm_limit"] = s.rpm
    if s.tpm:
        report.extra["tpm_limit"] = s.tpm


class _PlainOutput:
    """The output without a journal: lines appended as results arrive."""

    def __init__(self, path: Path) -> None:
        self._f = path.open("wb")

    async def add(self, result: Result[Any]) -> None:
        self._f.write(format_line(result))

    async def close(self) -> None:
        self._f.close()


class _Sized(Iterator[Item]):
    """An iterator that knows roughly how many items it will give (for the ETA)."""

    def __init__(self, it: Iterator[Item], n: int | None) -> None:
        self._it = it
        self._n = n

    def __iter__(self) -> _Sized:
        return self

    def __next__(self) -> Item:
        return next(self._it)

    def __len__(self) -> int:
        if self._n is None:
            raise TypeError("length unknown")
        return self._n


_COUNT_LIMIT = 2 << 30  # count lines of inputs up to 2 GiB (about a second per GiB)


def _count_lines(path: Path) -> int | None:
    """Non-blank-ish line count for progress totals; None for huge files."""
    try:
        size = path.stat().st_size
        if size > _COUNT_LIMIT:
            return None
        n = 0
        last = b"\n"
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                n += chunk.count(b"\n")
                last = chunk[-1:]
        return n + (0 if last == b"\n" else 1)
    except OSError:
        return None


def _done(journal: Journal | None) -> int:
    if journal is None:
        return 0
    counts = journal.status_counts()
    return sum(v for k, v in counts.items() if k != "pending")


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


class _RemoteCaller:
    """The task function shipped to Ray actors (it must pickle): each actor
    opens its own pooled session on first use and reads the API key from its
    own environment unless one was given explicitly."""

    def __init__(
        self,
        base_url: str,
        api_key_env: str,
        headers: dict[str, str],
        api_key: str | None,
        concurrency: int,
    ) -> None:
        self._args = (base_url, api_key_env, dict(headers), api_key, concurrency)
        self._caller: _Caller | None = None
        self._client: OpenAIClient | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_args": self._args, "_caller": None, "_client": None}

    async def __call__(self, req: Item) -> Answer:
        if self._caller is None:
            base_url, key_env, headers, key, concurrency = self._args
            endpoint = Endpoint.resolve(base_url, api_key=key, api_key_env=key_env,
                                        headers=headers)  # fmt: skip
            client = OpenAIClient(endpoint, concurrency=concurrency)
            await client.__aenter__()  # lives as long as the actor
            if self._ready():
                await client.__aexit__(None, None, None)  # another call got there first
            else:
                self._client, self._caller = client, _Caller(client, None)
        assert self._caller is not None
        return await self._caller(req)

    def _ready(self) -> bool:
        # A method, so the check is re-read after the await above.
        return self._caller is not None


def _invoke(caller: _Caller) -> Any:
    async def invoke(item: Item, engine: Any) -> Answer:
        return await caller(item)

    return invoke


def concurrency_options(s: RunSettings) -> dict[str, Any]:
    """The engine's concurrency options for these settings.

    A number or "auto" is taken as given. Not given: on one machine, "auto"
    that gives way to a fixed `DEFAULT_FIXED` as soon as the server shows it
    meters a rate (rate-limit headers or a 429: a provider, whose budget
    then paces the run); on Ray actors, a fixed `DEFAULT_FIXED`.
    """
    bounds = {"concurrency_min": s.concurrency_min, "concurrency_max": s.concurrency_max}
    if s.concurrency is not None:
        return {"concurrency": s.concurrency, **bounds}
    if s.ray is not None or not DEFAULT_AUTO:
        return {"concurrency": DEFAULT_FIXED, **bounds}
    return {"concurrency": "auto", **bounds, "auto_until_limits": DEFAULT_FIXED}


def run_file(input_path: str | os.PathLike[str], **settings: Any) -> BatchReport:
    """Sync wrapper of `arun_file`: `run_file("requests.jsonl", output="out.jsonl", rpm=500)`.

    Ctrl+C (and SIGTERM) stop admitting requests, let those in flight finish,
    flush the journal and raise `Interrupted`; run it again to resume.
    """
    s = RunSettings(**settings)
    if s.output is not None:
        s.output = Path(s.output)
    return run_file_settings(input_path, s)


def run_file_settings(input_path: str | os.PathLike[str], settings: RunSettings) -> BatchReport:
    """`run_file` with a ready `RunSettings` (what the CLI uses)."""
    with Portal(signals=(signal.SIGINT, signal.SIGTERM)) as portal:
        return portal.call(lambda control: arun_file(input_path, settings, _control=control))
