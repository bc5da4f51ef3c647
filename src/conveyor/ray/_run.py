"""The Ray entry points: `run_ray`, `arun_ray`, `stream_ray` (see `conveyor.ray`)."""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._base._exceptions import ConfigError
from .._core._options import build_options
from .._core._portal import Portal
from .._core._stream import RunStream
from ._driver import ClusterRun, ClusterSettings, split_concurrency
from ._pool import RayPool, import_ray
from ._worker import WorkerSettings

if TYPE_CHECKING:
    from .._core._report import BatchReport

__all__ = ["ClusterStream", "arun_ray", "check_ray_available", "run_ray", "stream_ray"]

Items = Iterable[Any] | AsyncIterable[Any]

DEFAULT_PER_ACTOR = 16
"""Concurrency per actor when `concurrency` is not given."""

_MAX_CHUNK = 512
_NOT_ON_RAY = {
    "waves": "fixed waves need one barrier across the cluster; use the local engine",
    "batch_size": "fixed waves need one barrier across the cluster; use the local engine",
    "on_batch": "there are no waves on Ray; use on_result",
    "shared_limiter": "the Ray backend brings its own global limiter",
    "clock": "workers run on their own clocks",
}


def check_ray_available() -> None:
    """Raise `RayNotInstalled` (saying `pip install 'conveyor[ray]'`) unless Ray imports."""
    import_ray()


class ClusterStream(RunStream):
    """Results of a Ray run in completion order; `.report` once iteration ends.

    The same shape as `conveyor.astream()`: iterate (or call `next_batch()`
    for every result ready now), then read `.report`. Use `async with` (or
    `aclose()`) when you may stop early. `workers` lists the live actor
    handles. `attach_control(control)` routes Ctrl+C to a graceful stop
    (what `conveyor run` does for the local engine).
    """

    def __init__(self, make: Callable[[], ClusterRun]) -> None:
        def make_started() -> ClusterRun:
            run = make()
            run.start()
            return run

        super().__init__(make_started)

    @property
    def workers(self) -> list[Any]:
        run = self._run
        return run.workers if isinstance(run, ClusterRun) else []


def _length_hint(items: Any) -> int | None:
    try:
        return len(items)
    except TypeError:
        return None


def _whole(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(name, value, f"a whole number {lo}..{hi}")
    return value


def _prepare(
    items: Items,
    fn: Callable[[Any], Any],
    *,
    keep_results: bool,
    deliver: bool,
    address: str,
    actors: int,
    concurrency: int | None,
    rpm: float | None,
    tpm: float | None,
    cost: Callable[[Any], float | tuple[float, float]] | None,
    limit_window: float,
    chunk_size: int | None,
    max_restarts: int | None,
    actor_options: dict[str, Any] | None,
    ray_init: dict[str, Any] | None,
    options: dict[str, Any],
) -> Callable[[], ClusterRun]:
    """Validate everything now (before Ray starts); return the run's constructor."""
    if not isinstance(items, Iterable | AsyncIterable):
        raise ConfigError("items", type(items).__name__, "an iterable or async iterable of items")
    if not callable(fn):
        raise ConfigError("fn", fn, "a function (sync or async) taking one item")
    for name, why in _NOT_ON_RAY.items():
        if options.get(name) not in (None, False):
            raise ConfigError(name, options[name], f"not available with the Ray backend: {why}")
    if not isinstance(address, str) or not address:
        raise ConfigError("address", address, "'local', 'auto' or a Ray cluster address")
    _whole("actors", actors, 1, 10_000)
    total = DEFAULT_PER_ACTOR * actors if concurrency is None else concurrency
    opts = build_options(
        concurrency=total, rpm=rpm, tpm=tpm, cost=cost, limit_window=limit_window, **options
    )
    shares = split_concurrency(opts.concurrency, actors)
    size = _whole("chunk_size", chunk_size, 1, 100_000) if chunk_size is not None else None
    if size is None:
        size = max(1, min(max(shares), _MAX_CHUNK))
        hint = _length_hint(items)
        if hint is not None:  # a short input still reaches every actor
            size = max(1, min(size, -(-hint // (2 * actors))))
    lanes = max(2, -(-2 * max(shares) // size))  # enough chunks to keep each share busy
    restarts = (
        2 * actors if max_restarts is None else _whole("max_restarts", max_restarts, 0, 10**6)
    )
    settings = ClusterSettings(
        workers=actors,
        concurrency=opts.concurrency,
        chunk_size=size,
        chunks_per_worker=lanes,
        max_restarts=restarts,
    )
    for name, value in (("actor_options", actor_options), ("ray_init", ray_init)):
        if value is not None and not isinstance(value, dict):
            raise ConfigError(name, value, "a dict of keyword arguments for Ray")

    def worker_settings(worker_id: int, share: int) -> WorkerSettings:
        return WorkerSettings(
            worker_id=worker_id,
            concurrency=share,
            timeout=opts.timeout,
            retry=opts.retry,
            breaker=opts.breaker,
            adaptive=opts.adaptive,
            grace=opts.grace,
            cost=opts.cost,
            validate=opts.validate,
            reask=opts.reask,
        )

    def make() -> ClusterRun:
        pool = RayPool(
            fn,
            worker_settings,
            address=address,
            rpm=rpm,
            tpm=tpm,
            limit_window=opts.limit_window,
            actor_options=actor_options,
            init_options=ray_init,
            actors=actors,
        )
        return ClusterRun(
            pool,
            items,
            settings,
            opts,
            keep_results=keep_results,
            deliver=deliver,
            length_hint=_length_hint(items),
        )

    return make


def stream_ray(
    items: Items,
    fn: Callable[[Any], Any],
    *,
    address: str = "local",
    actors: int = 2,
    concurrency: int | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
    cost: Callable[[Any], float | tuple[float, float]] | None = None,
    limit_window: float = 60.0,
    chunk_size: int | None = None,
    max_restarts: int | None = None,
    actor_options: dict[str, Any] | None = None,
    ray_init: dict[str, Any] | None = None,
    **options: Any,
) -> ClusterStream:
    """Results of `fn` over `items` on Ray, in completion order (an async iterator).

    This is the seam for the journal and the output sink: feed each result
    to them as it arrives, exactly as with `conveyor.astream()`. Memory stays
    bounded: at most two chunks per actor are out at a time.

    `actors` workers share `concurrency` (default 16 per actor); `rpm`/`tpm`
    (with `cost`) are global limits per `limit_window` seconds. `chunk_size`
    (default: an actor's share, at most 512) items go to an actor per call:
    raise it for many short CPU-bound items (each call costs a few ms).
    `max_restarts` (default 2 per actor) caps replacements of dead actors.
    `actor_options` go to Ray's `.options()` for each worker (`num_cpus`,
    `num_gpus`, `resources`, `runtime_env`, `scheduling_strategy`; default
    one CPU each, less when the cluster has fewer CPUs than actors, spread
    over the nodes), `ray_init` to `ray.init()` when this call starts or
    joins Ray. Other options as for
    `conveyor.run`: `timeout`, `retries`, `breaker`, `adaptive`, `grace`
    (run on the workers) and `key`, `callbacks`, `on_start`/`on_result`/
    `on_error`, `fail_fast`, `batch_id`, `on_progress` (on the driver).
    Waves are not available on Ray.
    """
    check_ray_available()
    make = _prepare(
        items,
        fn,
        keep_results=False,
        deliver=True,
        address=address,
        actors=actors,
        concurrency=concurrency,
        rpm=rpm,
        tpm=tpm,
        cost=cost,
        limit_window=limit_window,
        chunk_size=chunk_size,
        max_restarts=max_restarts,
        actor_options=actor_options,
        ray_init=ray_init,
        options=options,
    )
    return ClusterStream(make)


async def _collect(make: Callable[[], ClusterRun], control: Any) -> BatchReport:
    run = make()
    if control is not None:
        control.attach(run)
    run.start()
    try:
        await run.wait()
    finally:
        await run.aclose()
    report = run.report()
    err = run.outcome(report)
    if err is not None:
        raise err
    return report


async def arun_ray(
    items: Items,
    fn: Callable[[Any], Any],
    *,
    address: str = "local",
    actors: int = 2,
    concurrency: int | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
    cost: Callable[[Any], float | tuple[float, float]] | None = None,
    limit_window: float = 60.0,
    chunk_size: int | None = None,
    max_restarts: int | None = None,
    actor_options: dict[str, Any] | None = None,
    ray_init: dict[str, Any] | None = None,
    **options: Any,
) -> BatchReport:
    """`run_ray` for async code: await the report (results in input order)."""
    check_ray_available()
    make = _prepare(
        items,
        fn,
        keep_results=True,
        deliver=False,
        address=address,
        actors=actors,
        concurrency=concurrency,
        rpm=rpm,
        tpm=tpm,
        cost=cost,
        limit_window=limit_window,
        chunk_size=chunk_size,
        max_restarts=max_restarts,
        actor_options=actor_options,
        ray_init=ray_init,
        options=options,
    )
    return await _collect(make, None)


def run_ray(
    items: Items,
    fn: Callable[[Any], Any],
    *,
    address: str = "local",
    actors: int = 2,
    concurrency: int | None = None,
    rpm: float | None = None,
    tpm: float | None = None,
    cost: Callable[[Any], float | tuple[float, float]] | None = None,
    limit_window: float = 60.0,
    chunk_size: int | None = None,
    max_restarts: int | None = None,
    actor_options: dict[str, Any] | None = None,
    ray_init: dict[str, Any] | None = None,
    **options: Any,
) -> BatchReport:
    """Run `fn` over every item on Ray actors; the report holds results in input order.

    The options are those of `stream_ray`. Raises `RayNotInstalled` (with the
    install command) when Ray is missing, `RayConnectError` when the cluster
    cannot be reached, `WorkersLost` when every worker died and none could
    be restarted, and like `conveyor.run` `Interrupted` on Ctrl+C and a
    `FatalError` raised by `fn`, each carrying the report.
    """
    check_ray_available()
    make = _prepare(
        items,
        fn,
        keep_results=True,
        deliver=False,
        address=address,
        actors=actors,
        concurrency=concurrency,
        rpm=rpm,
        tpm=tpm,
        cost=cost,
        limit_window=limit_window,
        chunk_size=chunk_size,
        max_restarts=max_restarts,
        actor_options=actor_options,
        ray_init=ray_init,
        options=options,
    )
    with Portal() as portal:
        return portal.call(lambda control: _collect(make, control))
