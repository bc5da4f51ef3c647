"""`run`, `stream` and their async twins: thin shells over the one engine."""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from ._base._checks import user_check_outcome
from ._base._exceptions import ConfigError, PreflightFailed
from ._base._types import Result, Status
from ._core._engine import Engine, Invoker, invoker_for
from ._core._options import build_options
from ._core._portal import Portal

if TYPE_CHECKING:
    from ._core._report import BatchReport
from ._core._stream import RunStream
from ._monitor import Monitor
from ._pipeline import JournaledStream, collect

__all__ = ["AsyncStream", "Stream", "arun", "astream", "run", "stream"]

T = TypeVar("T")

Items = Iterable[Any] | AsyncIterable[Any]


# Engine options the pipeline and the Ray workers set; not options of run().
_INTERNAL = ("previous", "shared_limiter", "validate_item")


def _backend(options: dict[str, Any]) -> str:
    """Pops `backend` ("local" or "ray"; Ray options such as `address`,
    `actors` then go to `conveyor.ray.run_ray`); `monitor=True` becomes the
    default `Monitor()`."""
    for name in _INTERNAL:
        if name in options:
            raise ConfigError(name, options[name], "no such option (it is conveyor's own plumbing)")
    backend = options.pop("backend", "local")
    if backend not in ("local", "ray"):
        raise ConfigError("backend", backend, "'local' (this process) or 'ray' (Ray actors)")
    monitor = options.get("monitor")
    if monitor is True:
        options["monitor"] = Monitor()
    elif monitor is False:
        options["monitor"] = None
    if backend == "ray":
        for name, why in (
            ("memo", "a Memo lives in one process; on Ray each actor would keep its own"),
            ("monitor", "the monitor samples this process, not the Ray actors"),
        ):
            if options.get(name) is not None:
                raise ConfigError(name, options[name], f"only with the local backend ({why})")
    return str(backend)


def _name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _length_hint(items: Any) -> int | None:
    try:
        return len(items)
    except TypeError:
        return None


_PRIVATE_KEYS = ("journal", "journal_force", "rerun", "preflight", "_fn_name")

# rerun="failed": every stored result that is not ok runs again.
_RERUN_FAILED = frozenset({Status.FAILED, Status.TIMED_OUT, Status.CANCELLED})
_RERUNNABLE = {s.value: s for s in (Status.FAILED, Status.TIMED_OUT, Status.CANCELLED, Status.OK)}


def _rerun_statuses(rerun: Any) -> frozenset[Status]:
    """The stored statuses `rerun=` runs again: "failed" or a list of status names."""
    if rerun is None:
        return frozenset()
    if rerun == "failed":
        return _RERUN_FAILED
    names = [rerun] if isinstance(rerun, str) else rerun
    try:
        return frozenset(_RERUNNABLE[str(getattr(n, "value", n))] for n in names)
    except (KeyError, TypeError):
        raise ConfigError(
            "rerun",
            rerun,
            "'failed' (failed, timed_out and cancelled items run again) or a list of "
            f"statuses from {sorted(_RERUNNABLE)}",
        ) from None


def _engine_options(opts_kw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in opts_kw.items() if k not in _PRIVATE_KEYS}


def _validate(opts_kw: dict[str, Any]) -> None:
    build_options(**_engine_options(opts_kw))
    _validate_journal(opts_kw)


def _validate_journal(opts_kw: dict[str, Any]) -> None:
    j = opts_kw.get("journal")
    if j is not None and not isinstance(j, str | os.PathLike):
        raise ConfigError("journal", j, "a path to a journal file (created if missing)")
    checks = opts_kw.get("preflight")
    if checks is not None and (
        not isinstance(checks, list | tuple) or not all(callable(c) for c in checks)
    ):
        raise ConfigError(
            "preflight", checks, "a list of functions taking nothing (None/True passes)"
        )
    rerun = opts_kw.get("rerun")
    _rerun_statuses(rerun)
    if rerun is not None and j is None:
        raise ConfigError(
            "rerun", rerun, "only with journal=PATH (the journal holds what failed last time)"
        )


def _line(result: Result[Any]) -> bytes:
    return orjson.dumps(result.to_dict(), option=orjson.OPT_NON_STR_KEYS, default=repr)


def _journaled(
    items: Items, invoker: Invoker | None, fn: Any, opts_kw: dict[str, Any], backend: str
) -> JournaledStream:
    """The journaled pipeline over the local engine or Ray (see `_pipeline`)."""
    from ._journal._journal import Journal

    kw = _engine_options(opts_kw)
    path = opts_kw["journal"]
    identity = {"kind": "python", "fn": str(opts_kw.get("_fn_name", ""))}
    force = bool(opts_kw.get("journal_force"))
    again = _rerun_statuses(opts_kw.get("rerun"))

    def make(previous: Callable[[str], Any]) -> RunStream:
        if backend == "ray":
            from .ray import stream_ray

            return stream_ray(items, fn, previous=previous, **kw)
        assert invoker is not None
        return AsyncStream(items, invoker, {**kw, "previous": previous})

    return JournaledStream(
        lambda: Journal.open(path, identity=identity, force=force),
        make,
        rerun=again,
        memo=opts_kw.get("memo"),
    )


def _check(items: Any, fn: Any) -> None:
    if not isinstance(items, Iterable | AsyncIterable):
        raise ConfigError("items", type(items).__name__, "an iterable or async iterable of items")
    if not callable(fn):
        raise ConfigError("fn", fn, "a function (sync or async) taking one item")


async def _preflight(checks: Any) -> None:
    """Run the user's `preflight=` checks; raise `PreflightFailed` if one fails."""
    if not checks:
        return
    results = []
    for fn in checks:
        try:
            out = fn()
            if inspect.isawaitable(out):
                out = await out
        except Exception as exc:
            results.append(user_check_outcome(fn, exc=exc))
        else:
            results.append(user_check_outcome(fn, out))
    if any(c.status == "fail" for c in results):
        raise PreflightFailed(results, skip_hint="preflight=None")


async def _arun(
    items: Items, invoker: Invoker, opts_kw: dict[str, Any], control: Any
) -> BatchReport:
    await _preflight(opts_kw.get("preflight"))
    if opts_kw.get("journal") is not None:
        return await collect(_journaled(items, invoker, None, opts_kw, "local"), control)
    opts = build_options(**_engine_options(opts_kw))
    engine = Engine(
        invoker, opts, keep_results=True, deliver=False, length_hint=_length_hint(items)
    )
    if control is not None:
        control.attach(engine)
    engine.start(items)
    try:
        await engine.wait()
    finally:
        await engine.aclose()
    report = engine.report()
    err = engine.outcome(report)
    if err is not None:
        raise err
    return report


async def arun(items: Items, fn: Callable[[Any], Any], **options: Any) -> BatchReport:
    """Run `fn` over every item concurrently; the report holds results in input order.

    `fn` may be async (awaited on this loop) or sync (run on threads). Errors
    are captured as results, never raised one by one. See `run()` for options.
    """
    _check(items, fn)
    if _backend(options) == "ray":
        if options.get("journal") is not None:
            _validate_journal(options)
            opts = {**options, "_fn_name": _name(fn)}
            return await collect(_journaled(items, None, fn, opts, "ray"))
        from .ray import arun_ray

        return await arun_ray(items, fn, **options)
    _validate(options)  # before anything starts
    return await _arun(items, invoker_for(fn), {**options, "_fn_name": _name(fn)}, None)


def run(items: Items, fn: Callable[[Any], Any], **options: Any) -> BatchReport:
    """Run `fn` over every item concurrently and return a `BatchReport`.

    Works with or without an event loop already running in this thread (in
    Jupyter the run happens on a helper thread with its own loop). Ctrl+C
    stops admitting items and gives those in flight `grace` seconds; a second
    Ctrl+C cancels them; either way `Interrupted` is raised carrying the report.

    Options: `concurrency` (max in flight, default 16), `waves` + `batch_size`
    (fixed batches with a barrier and an `on_batch` hook), `timeout` (seconds
    per attempt), `retries` (int or `RetryPolicy`), `rpm`, `tpm` + `cost`
    (per-minute limits; `limit_window` changes the minute), `breaker`
    (`True` or `Breaker(...)`), `adaptive`, `fail_fast`, `key`, `callbacks`,
    `on_start`/`on_result`/`on_error`/`on_batch`, `grace`, `batch_id`.

    `journal=PATH` makes the run resumable: a key the journal already holds
    is reported from it, not run again. `rerun="failed"` (with `journal=`)
    runs again the items whose stored result failed, timed out or was
    cancelled, and reports the ok ones from the journal (seed 002's partial
    re-run); a list of statuses picks others.

    `memo=conveyor.Memo()`: a memo the items share (`memo.call(key, fn)`,
    `await memo.acall(key, fn)`, `memo.wrap(fn)`): identical sub-calls in
    flight at once are made once, later ones are answered from it; the
    report's `extra["memo"]` says the calls and tokens it saved. With
    `journal=` its entries are kept in the journal, so a resumed run reuses
    them.

    `monitor=conveyor.Monitor(gauges=..., limits=...)` (or `True`): memory,
    CPU, GPU (nvidia-smi, when present) and your gauges sampled while the
    run goes on, in every `ProgressSnapshot.resources` and in the report's
    `extra["resources"]`; a limit exceeded stops the run with
    `ResourceLimitExceeded` (in-flight items cancelled, resumable).

    Sync functions run on exactly `concurrency` worker threads;
    `worker_init` is called once in each (open a connection into a
    `threading.local`), `worker_teardown` once in each when the run ends. A
    thread stuck past `timeout` is replaced, and its replacement is
    initialised too.

    `validate=check`: `check(value)` returns the value to keep (parsed,
    typed) or raises when the value is not acceptable (`InvalidAnswer`, a
    Pydantic `ValidationError`, any exception). An invalid value is asked
    again: the item gets another attempt, under the same limits, up to
    `reask` times (default 2); `fn` sees why in
    `conveyor.current_attempt().reask` (the previous value, the error and
    its issues) and may change its request. After the last try the item
    fails with the validation errors; `report.validation` counts it all.

    `preflight=[db_reachable, ...]`: functions (sync or async, no argument)
    run before any item; each passes by returning None or True and blocks
    the run by returning False or a reason, or by raising:
    `PreflightFailed` is raised then, listing each failed check.
    """
    _check(items, fn)
    if _backend(options) == "ray":
        if options.get("journal") is not None:
            _validate_journal(options)
            ray_opts = {**options, "_fn_name": _name(fn)}
            with Portal() as portal:
                return portal.call(
                    lambda control: collect(_journaled(items, None, fn, ray_opts, "ray"), control)
                )
        from .ray import run_ray

        return run_ray(items, fn, **options)
    _validate(options)
    invoker = invoker_for(fn)
    opts = {**options, "_fn_name": _name(fn)}
    with Portal() as portal:
        return portal.call(lambda control: _arun(items, invoker, opts, control))


def run_with_invoker(items: Items, invoker: Invoker, **options: Any) -> BatchReport:
    """`run()` for callers that bring their own invoker (the executors)."""
    _validate(options)
    with Portal() as portal:
        return portal.call(lambda control: _arun(items, invoker, options, control))


class AsyncStream(RunStream):
    """Results in completion order; `.report` is set once iteration ends.

    Use `async with` (or `aclose()`) when you may stop early, so in-flight
    work is cancelled and awaited.
    """

    def __init__(self, items: Items, invoker: Invoker, options: dict[str, Any]) -> None:
        build_options(**options)  # refuse bad options now, not at the first result

        def make() -> Engine:
            engine = Engine(
                invoker,
                build_options(**options),
                keep_results=False,
                deliver=True,
                length_hint=_length_hint(items),
            )
            engine.start(items)
            return engine

        super().__init__(make)


def astream(
    items: Items, fn: Callable[[Any], Any], **options: Any
) -> AsyncStream | JournaledStream | RunStream:
    """Results as they complete (each with its index and key); bounded memory.

    With `journal=`, finished items are reported from the journal instead of
    run (the resume rule of `conveyor._pipeline`) and every new result is
    committed as it is handed out; `backend="ray"` runs on Ray actors.
    """
    _check(items, fn)
    backend = _backend(options)
    if options.get("journal") is not None:
        if backend == "local":
            _validate(options)
        else:
            _validate_journal(options)
        return _journaled(items, invoker_for(fn), fn, {**options, "_fn_name": _name(fn)}, backend)
    if backend == "ray":
        from .ray import stream_ray

        return stream_ray(items, fn, **options)
    return AsyncStream(items, invoker_for(fn), options)


class Stream(Iterator[Result[Any]]):
    """The sync face of `AsyncStream`: iterate, then read `.report`.

    The engine runs only while you ask for results; sync task functions keep
    running on their threads in between. Call `close()` (or use `with`) if
    you stop early.
    """

    def __init__(self, inner: AsyncStream | JournaledStream | RunStream) -> None:
        self._inner = inner
        self._portal: Portal | None = Portal()
        self._portal.__enter__()
        self._batch: list[Result[Any]] = []
        self._pos = 0
        self._attached = False

    @property
    def report(self) -> BatchReport | None:
        return self._inner.report

    def __next__(self) -> Result[Any]:
        if self._pos >= len(self._batch):
            if self._portal is None:
                raise StopIteration
            inner = self._inner

            async def pull(control: Any) -> list[Result[Any]]:
                if not self._attached:
                    self._attached = True
                    inner.attach_control(control)
                return await inner.next_batch()

            try:
                self._batch = self._portal.call(pull)
            except BaseException:
                self.close()
                raise
            self._pos = 0
            if not self._batch:
                self.close()
                raise StopIteration
        r = self._batch[self._pos]
        self._pos += 1
        return r

    def close(self) -> None:
        portal, self._portal = self._portal, None
        if portal is not None:
            try:
                portal.call(lambda control: self._inner.aclose())
            finally:
                portal.__exit__(None, None, None)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_portal", None) is not None:
            self.close()


def stream(items: Items, fn: Callable[[Any], Any], **options: Any) -> Stream:
    """Results in completion order as a plain iterator; `.report` at the end."""
    return Stream(astream(items, fn, **options))
