"""`run_file`: an OpenAI Batch input file (or records + a template) against any
OpenAI-compatible endpoint, at the full allowed speed, resumable.

source (streamed lines) -> plan (keys, skip what the journal holds, --limit)
-> engine (limits, retries, breaker) -> HTTP -> sink (journal + output, each
custom_id exactly once) -> report.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._api import AsyncStream
from .._base._exceptions import ConfigError, InputError
from .._base._types import Status
from .._core._options import AUTO_MAX
from .._core._portal import Portal
from .._core._report import new_batch_id
from .._journal._journal import Journal
from .._pipeline import JournaledStream
from ._batchfile import (
    BadLine,
    RequestLine,
    read_requests,
    validate_file,
)
from ._cache import ResponseCache
from ._http import Endpoint, OpenAIClient
from ._runparts import (
    Item,
    _Caller,
    _identity,
    _invoke,
    _items,
    _settings_json,
    default_journal_path,
    engine_options_for,
    format_line,
    is_stream,
    item_key,
)
from ._runparts import (
    _cost as _cost,  # re-exported: tests price requests with it
)
from ._runsupport import _count_lines, _PlainOutput, _RemoteCaller, _Sized
from ._structured import (
    resolve_schema,
    schema_problems,
)
from ._template import check_records

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

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


# Results that end an item for good; cancelled/skipped items stay pending so a
# resumed run sends them.
_TERMINAL = (Status.OK, Status.FAILED, Status.TIMED_OUT)


DEFAULT_FIXED = 100  # the concurrency when none is given and "auto" gives way (or on Ray)
# Told no concurrency, a run uses "auto" until the server shows it meters a
# rate (rate-limit headers or a 429), then a fixed DEFAULT_FIXED paced by the
# server's budget: in benchmarks/concurrency_auto.py auto beats or matches a
# fixed 100 on every server (benchmarks/RESULTS.md; issue 13).
DEFAULT_AUTO = True


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
    # Provider batch mode (`mode="batch"`, see `conveyor.openai._batchmode`).
    mode: str = "online"  # or "batch": /v1/files + /v1/batches at half price
    deadline: float | str | None = None  # seconds (or "6h") from the first start
    completion_window: str = "24h"
    max_enqueued_tokens: int | None = None  # per model, prompt tokens in unfinished batches
    poll: float | str = 60.0  # seconds between polls of one batch, at least
    batch_max_lines: int = 50_000
    batch_max_bytes: int = 200_000_000
    stuck_after: float | str = 6 * 3600.0  # no change in a batch for this long: cancel, re-drive
    deadline_margin: float | str | None = None  # default: a tenth of the deadline, 2 s..30 min
    max_redrives: int = 3  # batch submissions of one line beyond the first


def _check(s: RunSettings) -> None:
    if s.mode not in ("online", "batch"):
        raise ConfigError("mode", s.mode, '"online" or "batch"')
    if s.mode == "batch" and s.ray is not None:
        raise ConfigError("ray", s.ray, "unset with mode='batch' (the provider runs the batch)")
    if s.limit is not None and (not isinstance(s.limit, int) or s.limit < 1):
        raise ConfigError("limit", s.limit, "a whole number >= 1")
    if s.journal is True and s.output is None:
        raise ConfigError("journal", True, "needs an output path, or journal=None")
    if isinstance(s.reask, bool) or not isinstance(s.reask, int) or not 0 <= s.reask <= 100:
        raise ConfigError("reask", s.reask, "a whole number 0..100")


def _rule(s: RunSettings) -> Any:
    # Checked (and a bad schema refused) before anything else happens.
    return resolve_schema(s.schema)


def _strict_check(input_path: Path, s: RunSettings, rule: Any = None) -> None:
    if s.template is not None:
        bad = [x for x in _items(input_path, s, rule) if isinstance(x, BadLine)]
        problems = [b.from_file(input_path).describe() for b in bad]
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
    if s.mode == "batch":
        from ._batchmode import arun_batch

        if s.concurrency is None:  # the online re-drive's concurrency, as online would choose
            s = dataclasses.replace(s, concurrency=concurrency_options(s)["concurrency"])
        return await arun_batch(path, s, endpoint, rule=rule, _control=_control)
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
            engine_options = engine_options_for(s, rule, chosen)
            if s.monitor is not None:
                if s.ray is not None:
                    raise ConfigError(
                        "monitor", s.monitor, "only on this machine (it samples this process)"
                    )
                engine_options["monitor"] = s.monitor
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
                # Batch by batch (every result ready now), not one `__anext__` a result.
                while batch := await stream.next_batch():
                    if sink is not None:
                        for result in batch:
                            if result.status in _TERMINAL:
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


def _done(journal: Journal | None) -> int:
    if journal is None:
        return 0
    counts = journal.status_counts()
    return sum(v for k, v in counts.items() if k != "pending")


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
