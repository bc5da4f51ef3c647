"""The Ray side of a cluster run: connect, start the limiter and the workers.

`RayPool` implements the driver's `WorkerPool`. Ray is imported only when a
pool opens, so `conveyor.ray` imports without Ray installed and says how to
install it when it is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any

from .._base._exceptions import (
    ConfigError,
    RayConnectError,
    RayNotInstalled,
)
from ._limiter import LimiterActor
from ._worker import WorkerActor, WorkerSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from types import ModuleType

    from ._wire import WireBatch, WireEntry

__all__ = ["RayConnectError", "RayNotInstalled", "RayPool", "import_ray"]

log = logging.getLogger("conveyor")

_CLOSE_TIMEOUT = 30.0  # seconds a worker gets to finish and close at the end
_PROBE_TIMEOUT = 5.0  # seconds to reach a cluster address before Ray's own long retries


def import_ray() -> ModuleType:
    """Ray itself, or `RayNotInstalled` with the install command."""
    try:
        import ray  # optional: imported on use
    except ImportError as exc:
        raise RayNotInstalled(str(exc)) from exc
    return ray


def _probe(address: str) -> None:
    """Fail fast on an address nothing listens at (`ray.init` retries for minutes)."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: let Ray interpret it
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_PROBE_TIMEOUT):
            pass
    except OSError as exc:
        raise RayConnectError(
            f"nothing answers at the Ray address {address!r} ({exc.strerror or exc}): check "
            "the head node's address and port (ray://HEAD:10001 for Ray Client, HEAD:6379 "
            "on a cluster node), that `ray start --head` ran there, and the firewall"
        ) from exc


def _connect(ray: ModuleType, address: str, init_options: dict[str, Any]) -> bool:
    """Start or join Ray; True when this call started it (so it also shuts it down)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, **init_options}
    if address == "local":
        kwargs.setdefault("include_dashboard", False)
    else:
        if address != "auto":
            _probe(address)
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except Exception as exc:
        where = "a local Ray instance" if address == "local" else f"the Ray cluster at {address!r}"
        hint = (
            "check that the machine has free memory and /tmp space"
            if address == "local"
            else "start one with `ray start --head` (then use 'auto'), check the address "
            "(ray://HEAD:10001 or HEAD:6379), or use 'local'"
        )
        raise RayConnectError(
            f"could not start or join {where}: {type(exc).__name__}: {exc}; {hint}"
        ) from exc
    return True


async def _wait(ref: Any) -> Any:
    return await ref


class RayPool:
    """Workers are async Ray actors; one more actor holds the global limiter."""

    def __init__(
        self,
        fn: Callable[[Any], Any],
        settings: Callable[[int, int], WorkerSettings],
        *,
        address: str = "local",
        rpm: float | None = None,
        tpm: float | None = None,
        limit_window: float = 60.0,
        actor_options: dict[str, Any] | None = None,
        init_options: dict[str, Any] | None = None,
        shutdown: bool | None = None,
        actors: int = 1,
    ) -> None:
        self._fn = fn
        self._actors = actors
        self._settings = settings
        self._address = address
        self._rpm = rpm
        self._tpm = tpm
        self._window = limit_window
        self._actor_options = dict(actor_options or {})
        self._init_options = dict(init_options or {})
        self._shutdown = shutdown
        self._ray: Any = None
        self._started_ray = False
        self._fn_ref: Any = None
        self._worker_cls: Any = None
        self._limiter: Any = None
        self._worker_options: dict[str, Any] = {}

    async def open(self) -> None:
        ray = self._ray = import_ray()
        self._started_ray = _connect(ray, self._address, self._init_options)
        try:
            self._fn_ref = ray.put(self._fn)
        except Exception as exc:
            raise ConfigError(
                "fn",
                self._fn,
                f"a function Ray can pickle to send to its workers ({type(exc).__name__}: "
                f"{exc}); define it at module level and keep open clients out of its closure",
            ) from exc
        self._worker_cls = ray.remote(WorkerActor)
        self._worker_options = self._fit_options(ray)
        # The limiter is tiny and I/O-bound: it must not take a CPU slot from a worker.
        self._limiter = (
            ray.remote(LimiterActor)
            .options(num_cpus=0, max_concurrency=1)
            .remote(self._rpm, self._tpm, self._window)
        )

    def _fit_options(self, ray: Any) -> dict[str, Any]:
        # One CPU each: a worker is one process with one event loop (and the
        # threads of sync functions, which share its interpreter lock). Spread
        # over the nodes, so the calls leave through every machine.
        opts: dict[str, Any] = {"num_cpus": 1, "scheduling_strategy": "SPREAD"}
        opts.update(self._actor_options)
        if "num_cpus" in self._actor_options:
            return opts
        try:
            cpus = float(ray.cluster_resources().get("CPU", 0.0))
        except Exception:
            return opts
        if 0 < cpus < self._actors:
            # Actors that cannot be placed would wait (and hold their items) forever.
            opts["num_cpus"] = cpus / self._actors
            log.info(
                "%d workers on %g CPUs: each takes %.2f CPU (set actor_options num_cpus to choose)",
                self._actors,
                cpus,
                opts["num_cpus"],
            )
        return opts

    async def start_worker(self, worker_id: int, concurrency: int) -> Any:
        settings = self._settings(worker_id, concurrency)
        return self._worker_cls.options(**self._worker_options).remote(
            self._fn_ref, settings, self._limiter
        )

    async def run_chunk(self, worker: Any, chunk: list[WireEntry]) -> AsyncIterator[WireBatch]:
        gen = worker.run.options(num_returns="streaming").remote(chunk)
        async for ref in gen:
            yield await ref

    def is_worker_lost(self, exc: BaseException) -> bool:
        ray = self._ray
        return ray is not None and isinstance(exc, ray.exceptions.RayActorError)

    def worker_cannot_start(self, exc: BaseException) -> bool:
        return bool(getattr(exc, "actor_init_failed", False))

    async def stop_worker(self, worker: Any, kind: str) -> None:
        await worker.stop.remote(str(kind))  # plain text over the wire

    async def discard_worker(self, worker: Any) -> None:
        self._ray.kill(worker, no_restart=True)

    async def close(self, workers: list[Any]) -> dict[str, Any]:
        ray = self._ray
        if ray is None:
            return {}
        stats: dict[str, Any] = {}
        try:
            outs = await asyncio.gather(
                *(asyncio.wait_for(_wait(w.close.remote()), _CLOSE_TIMEOUT) for w in workers),
                return_exceptions=True,
            )
            stats["workers"] = [o for o in outs if isinstance(o, dict)]
            for o in outs:
                if isinstance(o, BaseException):
                    log.warning("a worker did not close cleanly: %s: %s", type(o).__name__, o)
            if self._limiter is not None:
                with contextlib.suppress(Exception):
                    stats["limiter"] = await asyncio.wait_for(
                        _wait(self._limiter.stats.remote()), _CLOSE_TIMEOUT
                    )
        finally:
            for w in workers:
                with contextlib.suppress(Exception):
                    ray.kill(w, no_restart=True)
            if self._limiter is not None:
                with contextlib.suppress(Exception):
                    ray.kill(self._limiter, no_restart=True)
            shutdown = self._started_ray if self._shutdown is None else self._shutdown
            if shutdown and ray.is_initialized():
                ray.shutdown()
        return stats
