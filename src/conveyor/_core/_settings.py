"""The options of a call, declared once for every entry point.

`run`/`arun`/`stream`/`astream` and Ray's `run_ray`/`arun_ray`/`stream_ray`
take their options as typed keyword arguments (`**options:
Unpack[RunOptions]`), so an IDE and mypy see each name and its type, and
`parse_settings` turns them into one `RunSettings`: the engine's options
(checked by `build_options`), the Ray backend's, and the journaled
pipeline's. A new option is declared here (and, for the engine, validated in
`_options.build_options`), not in each entry point.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from .._base._exceptions import ConfigError
from .._base._types import Status
from ._options import build_options

if TYPE_CHECKING:
    from .._base._clock import Clock
    from .._monitor import Monitor
    from ._memo import Memo
    from ._options import Breaker, Options
    from ._progress import ProgressSnapshot
    from ._retry import RetryPolicy

__all__ = [
    "ClusterOptions",
    "EngineOptions",
    "RayOptions",
    "RunOptions",
    "RunSettings",
    "check_items",
    "length_hint",
    "parse_settings",
    "rerun_statuses",
]


class EngineOptions(TypedDict, total=False):
    """The options of every run, on this machine or on Ray (see `conveyor.run`)."""

    concurrency: int | Literal["auto"] | None
    concurrency_min: int | None
    concurrency_max: int | None
    waves: bool
    batch_size: int | None
    timeout: float | None
    retries: int | RetryPolicy
    rpm: float | None
    tpm: float | None
    cost: Callable[[Any], float | tuple[float, float]] | None
    limit_window: float
    burst: float
    probe_first: bool
    refund_unused: bool
    breaker: Breaker | bool | None
    adaptive: bool
    fail_fast: bool
    key: Callable[[Any], Any] | None
    callbacks: object
    on_start: Callable[..., Any] | None
    on_result: Callable[..., Any] | None
    on_error: Callable[..., Any] | None
    on_batch: Callable[..., Any] | None
    grace: float
    clock: Clock | None
    batch_id: str | None
    on_progress: Callable[[ProgressSnapshot], Any] | None
    progress_interval: float
    worker_init: Callable[[], Any] | None
    worker_teardown: Callable[[], Any] | None
    memo: Memo | None
    monitor: Monitor | bool | None
    validate: Callable[[Any], Any] | None
    reask: int


class ClusterOptions(TypedDict, total=False):
    """The Ray backend's own options (see `conveyor.ray.stream_ray`)."""

    address: str
    actors: int
    chunk_size: int | None
    max_restarts: int | None
    actor_options: dict[str, Any] | None
    ray_init: dict[str, Any] | None


class RayOptions(EngineOptions, ClusterOptions, total=False):
    """The options of `conveyor.ray.run_ray` and its twins."""


class RunOptions(RayOptions, total=False):
    """The options of `conveyor.run` and its twins: the engine's, the journal's,
    and with `backend="ray"` the Ray backend's."""

    backend: Literal["local", "ray"]
    journal: str | os.PathLike[str] | None
    journal_force: bool
    rerun: str | Sequence[str | Status] | None
    preflight: Sequence[Callable[[], object | Awaitable[object]]] | None


_ENGINE = frozenset(EngineOptions.__annotations__)
_CLUSTER = frozenset(ClusterOptions.__annotations__)
_PIPELINE = frozenset({"journal", "journal_force", "rerun", "preflight"})

# Engine options the pipeline, Ray's workers and conveyor.openai set; not options of run().
_INTERNAL = ("previous", "shared_limiter", "validate_item")

# rerun="failed": every stored result that is not ok runs again.
_RERUN_FAILED = frozenset({Status.FAILED, Status.TIMED_OUT, Status.CANCELLED})
_RERUNNABLE = {s.value: s for s in (Status.FAILED, Status.TIMED_OUT, Status.CANCELLED, Status.OK)}


def rerun_statuses(rerun: object) -> frozenset[Status]:
    """The stored statuses `rerun=` runs again: "failed" or a list of status names."""
    if rerun is None:
        return frozenset()
    if rerun == "failed":
        return _RERUN_FAILED
    names = [rerun] if isinstance(rerun, str) else rerun
    try:
        return frozenset(
            _RERUNNABLE[str(getattr(n, "value", n))]
            for n in names  # type: ignore[attr-defined]
        )
    except (KeyError, TypeError):
        raise ConfigError(
            "rerun",
            rerun,
            "'failed' (failed, timed_out and cancelled items run again) or a list of "
            f"statuses from {sorted(_RERUNNABLE)}",
        ) from None


@dataclass(frozen=True)
class RunSettings:
    """One call's options, split by who uses them and checked.

    `engine`: keyword arguments of `build_options` (`options()` builds them,
    with the internal hooks the pipeline and Ray add); `cluster`: the Ray
    backend's options as given (Ray applies its defaults); the rest belongs to
    the journaled pipeline. `fn_name` identifies the function in a journal.
    """

    engine: dict[str, Any] = field(default_factory=dict)
    backend: str = "local"
    cluster: dict[str, Any] = field(default_factory=dict)
    journal: str | os.PathLike[str] | None = None
    journal_force: bool = False
    rerun: frozenset[Status] = frozenset()
    preflight: tuple[Callable[[], Any], ...] = ()
    fn_name: str = ""

    def options(self, **internal: Any) -> Options:
        """The engine's `Options` (plus `previous=`, `shared_limiter=`, ... from us)."""
        return build_options(**{**self.engine, **internal})


def _unknown(name: str) -> TypeError:
    return TypeError(f"got an unexpected keyword argument {name!r}")


def parse_settings(
    options: Mapping[str, object],
    *,
    backend: str | None = None,
    pipeline: bool = True,
    fn_name: str = "",
    check_engine: bool = True,
) -> RunSettings:
    """Split and check a call's options (raises before anything starts).

    `backend` fixes the backend (the Ray entry points); otherwise the
    `backend=` option picks it. `pipeline=False` refuses the journal's
    options (the Ray entry points take none). `check_engine=False` leaves
    the engine's options to the backend (Ray builds them with its own
    defaults)."""
    for name in _INTERNAL:
        if name in options:
            raise ConfigError(name, options[name], "no such option (it is conveyor's own plumbing)")
    kw = dict(options)
    chosen = kw.pop("backend", "local") if backend is None else backend
    if chosen not in ("local", "ray"):
        raise ConfigError("backend", chosen, "'local' (this process) or 'ray' (Ray actors)")
    engine: dict[str, Any] = {}
    cluster: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in kw.items():
        if name in _ENGINE:
            engine[name] = value
        elif name in _CLUSTER and chosen == "ray":
            cluster[name] = value
        elif name in _PIPELINE and pipeline:
            extra[name] = value
        else:
            raise _unknown(name)
    j = extra.get("journal")
    if j is not None and not isinstance(j, str | os.PathLike):
        raise ConfigError("journal", j, "a path to a journal file (created if missing)")
    checks = extra.get("preflight")
    if checks is not None and (
        not isinstance(checks, list | tuple) or not all(callable(c) for c in checks)
    ):
        raise ConfigError(
            "preflight", checks, "a list of functions taking nothing (None/True passes)"
        )
    rerun = extra.get("rerun")
    again = rerun_statuses(rerun)
    if rerun is not None and j is None:
        raise ConfigError(
            "rerun", rerun, "only with journal=PATH (the journal holds what failed last time)"
        )
    settings = RunSettings(
        engine=engine,
        backend=str(chosen),
        cluster=cluster,
        journal=j,
        journal_force=bool(extra.get("journal_force")),
        rerun=again,
        preflight=tuple(checks or ()),
        fn_name=fn_name,
    )
    if check_engine and chosen == "local":
        settings.options()  # refuse a bad engine option now, not at the first result
    return settings


def length_hint(items: Iterable[Any] | object) -> int | None:
    """`len(items)` when the input has one (for progress), else None."""
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_items(items: object, fn: object) -> None:
    """Refuse items that are not iterable and a function that is not callable."""
    if not isinstance(items, Iterable | AsyncIterable):
        raise ConfigError("items", type(items).__name__, "an iterable or async iterable of items")
    if not callable(fn):
        raise ConfigError("fn", fn, "a function (sync or async) taking one item")
