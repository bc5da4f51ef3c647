"""The Ray entry points: `run_ray`, `arun_ray`, `stream_ray` (see `conveyor.ray`)."""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Unpack

from .._base._exceptions import ConfigError
from .._core._portal import Portal
from .._core._settings import RayOptions, RunSettings, check_items, length_hint, parse_settings
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
    "memo": "a Memo lives in one process; on Ray each actor would keep its own",
    "monitor": "the monitor samples this process, not the Ray actors",
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


def _whole(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(name, value, f"a whole number {lo}..{hi}")
    return value


def _prepare(
    items: Items,
    fn: Callable[[Any], Any],
    settings: RunSettings,
    *,
    keep_results: bool,
    deliver: bool,
    previous: Callable[[str], Any] | None = None,
) -> Callable[[], ClusterRun]:
    """Validate everything now (before Ray starts); return the run's constructor."""
    check_items(items, fn)
    engine = settings.engine
    for name, why in _NOT_ON_RAY.items():
        if engine.get(name) not in (None, False):
            raise ConfigError(name, engine[name], f"not available with the Ray backend: {why}")
    cluster = settings.cluster
    address = cluster.get("address", "local")
    actors = cluster.get("actors", 2)
    chunk_size = cluster.get("chunk_size")
    max_restarts = cluster.get("max_restarts")
    actor_options = cluster.get("actor_options")
    ray_init = cluster.get("ray_init")
    if not isinstance(address, str) or not address:
        raise ConfigError("address", address, "'local', 'auto' or a Ray cluster address")
    _whole("actors", actors, 1, 10_000)
    concurrency = engine.get("concurrency")
    if isinstance(concurrency, str):
        raise ConfigError(
            "concurrency",
            concurrency,
            "a whole number on Ray actors: each actor runs its own share, and one "
            "controller for the cluster is not built yet; find the server's concurrency "
            'with concurrency="auto" on one machine (conveyor.run), then give it here',
        )
    total = DEFAULT_PER_ACTOR * actors if concurrency is None else concurrency
    opts = settings.options(concurrency=total, previous=previous)
    shares = split_concurrency(opts.concurrency, actors)
    size = _whole("chunk_size", chunk_size, 1, 100_000) if chunk_size is not None else None
    if size is None:
        size = max(1, min(max(shares), _MAX_CHUNK))
        hint = length_hint(items)
        if hint is not None:  # a short input still reaches every actor
            size = max(1, min(size, -(-hint // (2 * actors))))
    lanes = max(2, -(-2 * max(shares) // size))  # enough chunks to keep each share busy
    restarts = (
        2 * actors if max_restarts is None else _whole("max_restarts", max_restarts, 0, 10**6)
    )
    cluster_settings = ClusterSettings(
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
            rpm=opts.rpm,
            tpm=opts.tpm,
            limit_window=opts.limit_window,
            actor_options=actor_options,
            init_options=ray_init,
            actors=actors,
        )
        return ClusterRun(
            pool,
            items,
            cluster_settings,
            opts,
            keep_results=keep_results,
            deliver=deliver,
            length_hint=length_hint(items),
        )

    return make


def _ray_settings(options: Mapping[str, object]) -> RunSettings:
    check_ray_available()  # before anything else: the install hint comes first
    return parse_settings(options, backend="ray", pipeline=False, check_engine=False)


def cluster_stream(
    items: Items,
    fn: Callable[[Any], Any],
    settings: RunSettings,
    *,
    previous: Callable[[str], Any] | None = None,
) -> ClusterStream:
    """`stream_ray` over parsed settings (`conveyor.stream(backend="ray")` and the
    journaled pipeline, which adds its `previous` lookup)."""
    check_ray_available()
    make = _prepare(items, fn, settings, keep_results=False, deliver=True, previous=previous)
    return ClusterStream(make)


async def cluster_arun(
    items: Items, fn: Callable[[Any], Any], settings: RunSettings
) -> BatchReport:
    """`arun_ray` over parsed settings."""
    check_ray_available()
    make = _prepare(items, fn, settings, keep_results=True, deliver=False)
    return await _collect(make, None)


def cluster_run(items: Items, fn: Callable[[Any], Any], settings: RunSettings) -> BatchReport:
    """`run_ray` over parsed settings."""
    check_ray_available()
    make = _prepare(items, fn, settings, keep_results=True, deliver=False)
    with Portal() as portal:
        return portal.call(lambda control: _collect(make, control))


def stream_ray(
    items: Items,
    fn: Callable[[Any], Any],
    **options: Unpack[RayOptions],
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
    return cluster_stream(items, fn, _ray_settings(options))


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
    **options: Unpack[RayOptions],
) -> BatchReport:
    """`run_ray` for async code: await the report (results in input order)."""
    return await cluster_arun(items, fn, _ray_settings(options))


def run_ray(
    items: Items,
    fn: Callable[[Any], Any],
    **options: Unpack[RayOptions],
) -> BatchReport:
    """Run `fn` over every item on Ray actors; the report holds results in input order.

    The options are those of `stream_ray`. Raises `RayNotInstalled` (with the
    install command) when Ray is missing, `RayConnectError` when the cluster
    cannot be reached, `WorkersLost` when every worker died and none could
    be restarted, and like `conveyor.run` `Interrupted` on Ctrl+C and a
    `FatalError` raised by `fn`, each carrying the report.
    """
    return cluster_run(items, fn, _ray_settings(options))
