"""`run`, `stream` and their async twins: thin shells over the one engine."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from ._base._checks import user_check_outcome
from ._base._exceptions import ConfigError, PreflightFailed
from ._base._types import Result
from ._core._engine import Engine, Invoker, invoker_for
from ._core._portal import Portal
from ._core._settings import RunOptions, RunSettings, check_items, length_hint, parse_settings

if TYPE_CHECKING:
    from ._core._report import BatchReport
from ._core._stream import RunStream
from ._monitor import Monitor
from ._pipeline import JournaledStream, collect

__all__ = ["AsyncStream", "Stream", "arun", "astream", "run", "stream"]

T = TypeVar("T")

Items = Iterable[Any] | AsyncIterable[Any]


def _name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


_LOCAL_ONLY = (
    ("memo", "a Memo lives in one process; on Ray each actor would keep its own"),
    ("monitor", "the monitor samples this process, not the Ray actors"),
)


def _settings(items: Any, fn: Any, options: Mapping[str, object]) -> RunSettings:
    """Check the call before anything starts (Ray checks its engine options itself);
    `monitor=True` becomes the default `Monitor()`."""
    check_items(items, fn)
    settings = parse_settings(_with_monitor(options), fn_name=_name(fn))
    if settings.backend == "ray":
        for name, why in _LOCAL_ONLY:
            if settings.engine.get(name) is not None:
                raise ConfigError(
                    name, settings.engine[name], f"only with the local backend ({why})"
                )
    return settings


def _with_monitor(options: Mapping[str, object]) -> Mapping[str, object]:
    monitor = options.get("monitor")
    if monitor is True:
        return {**options, "monitor": Monitor()}
    if monitor is False:
        return {**options, "monitor": None}
    return options


def _journaled(
    items: Items, invoker: Invoker | None, fn: Any, settings: RunSettings
) -> JournaledStream:
    """The journaled pipeline over the local engine or Ray (see `_pipeline`)."""
    from ._journal._journal import Journal

    path = settings.journal
    assert path is not None
    identity = {"kind": "python", "fn": settings.fn_name}

    def make(previous: Callable[[str], Any]) -> RunStream:
        if settings.backend == "ray":
            from .ray._run import cluster_stream

            return cluster_stream(items, fn, settings, previous=previous)
        assert invoker is not None
        return AsyncStream(items, invoker, settings, previous=previous)

    return JournaledStream(
        lambda: Journal.open(path, identity=identity, force=settings.journal_force),
        make,
        rerun=settings.rerun,
        memo=settings.engine.get("memo"),
    )


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


async def _arun(items: Items, invoker: Invoker, settings: RunSettings, control: Any) -> BatchReport:
    await _preflight(settings.preflight)
    if settings.journal is not None:
        return await collect(_journaled(items, invoker, None, settings), control)
    engine = Engine(
        invoker,
        settings.options(),
        keep_results=True,
        deliver=False,
        length_hint=length_hint(items),
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


async def arun(
    items: Items, fn: Callable[[Any], Any], **options: Unpack[RunOptions]
) -> BatchReport:
    """Run `fn` over every item concurrently; the report holds results in input order.

    `fn` may be async (awaited on this loop) or sync (run on threads). Errors
    are captured as results, never raised one by one. See `run()` for options.
    """
    settings = _settings(items, fn, options)
    if settings.backend == "ray":
        await _preflight(settings.preflight)  # before Ray starts, as on this machine
        if settings.journal is not None:
            return await collect(_journaled(items, None, fn, settings))
        from .ray._run import cluster_arun

        return await cluster_arun(items, fn, settings)
    return await _arun(items, invoker_for(fn), settings, None)


def run(items: Items, fn: Callable[[Any], Any], **options: Unpack[RunOptions]) -> BatchReport:
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
    cancelled, and reports the ok ones from the journal (a partial re-run);
    a list of statuses picks others.

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

    `backend="ray"` runs on Ray actors (with the options of
    `conveyor.ray.run_ray`: `address`, `actors`, ...).
    """
    settings = _settings(items, fn, options)
    if settings.backend == "ray":
        if settings.preflight:
            with Portal() as portal:  # before Ray starts, as on this machine
                portal.call(lambda control: _preflight(settings.preflight))
        if settings.journal is not None:
            with Portal() as portal:
                return portal.call(
                    lambda control: collect(_journaled(items, None, fn, settings), control)
                )
        from .ray._run import cluster_run

        return cluster_run(items, fn, settings)
    invoker = invoker_for(fn)
    with Portal() as portal:
        return portal.call(lambda control: _arun(items, invoker, settings, control))


def run_with_invoker(items: Items, invoker: Invoker, **options: Any) -> BatchReport:
    """`run()` for callers that bring their own invoker (the executors); they may
    set the engine's internal hooks (`shared_limiter=`)."""
    internal = {k: options.pop(k) for k in ("shared_limiter",) if k in options}
    settings = parse_settings(options)
    if internal:
        settings = replace(settings, engine={**settings.engine, **internal})
        settings.options()
    with Portal() as portal:
        return portal.call(lambda control: _arun(items, invoker, settings, control))


class AsyncStream(RunStream):
    """Results in completion order; `.report` is set once iteration ends.

    Use `async with` (or `aclose()`) when you may stop early, so in-flight
    work is cancelled and awaited.
    """

    def __init__(
        self,
        items: Items,
        invoker: Invoker,
        options: RunSettings | Mapping[str, Any],
        *,
        previous: Callable[[str], Any] | None = None,
    ) -> None:
        settings = options if isinstance(options, RunSettings) else RunSettings(dict(options))
        internal: dict[str, Any] = {} if previous is None else {"previous": previous}
        settings.options(**internal)  # refuse bad options now, not at the first result

        def make() -> Engine:
            engine = Engine(
                invoker,
                settings.options(**internal),
                keep_results=False,
                deliver=True,
                length_hint=length_hint(items),
            )
            engine.start(items)
            return engine

        super().__init__(make)


def astream(
    items: Items, fn: Callable[[Any], Any], **options: Unpack[RunOptions]
) -> AsyncStream | JournaledStream | RunStream:
    """Results as they complete (each with its index and key); bounded memory.

    With `journal=`, finished items are reported from the journal instead of
    run (the resume rule of `conveyor._pipeline`) and every new result is
    committed as it is handed out; `backend="ray"` runs on Ray actors.
    """
    settings = _settings(items, fn, options)
    if settings.journal is not None:
        return _journaled(items, invoker_for(fn), fn, settings)
    if settings.backend == "ray":
        from .ray._run import cluster_stream

        return cluster_stream(items, fn, settings)
    return AsyncStream(items, invoker_for(fn), settings)


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


def stream(items: Items, fn: Callable[[Any], Any], **options: Unpack[RunOptions]) -> Stream:
    """Results in completion order as a plain iterator; `.report` at the end."""
    return Stream(astream(items, fn, **options))
