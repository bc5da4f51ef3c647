"""`conveyor.Monitor`: the probes a run samples while it goes on.

    monitor = conveyor.Monitor(
        gauges={"db_connections": lambda: pool.in_use},
        limits={"system_memory_percent": 90, "db_connections": 8},
    )
    conveyor.run(jobs, process, monitor=monitor)

Metrics, each a number (units in the name):

- `process_rss_mb`, `process_cpu_percent`: this process (CPU time over the
  last interval; 100% is one core busy); `children_rss_mb`: its child
  processes (`conveyor exec` jobs) -- through psutil, when installed;
- `system_memory_percent`, `system_memory_available_mb`,
  `system_cpu_percent`: the machine (psutil);
- `gpu_utilization_percent`, `gpu_memory_percent` (the busiest GPU, as the
  preflight's `--max-gpu-memory` reads them) and `gpuN_*` per GPU, from
  `nvidia-smi` when it is installed;
- each gauge by its name: a function taking nothing and returning a number
  (or a dict of numbers, named `gauge.key`).

What cannot be read is said in `unavailable` (and in the report), never
invented: without nvidia-smi there is no GPU metric and a GPU limit cannot
stop the run, which the report says.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from typing import TYPE_CHECKING, Any

from .._base._exceptions import ConfigError
from ._gpu import read_gpus

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["GAUGE_NAME", "Monitor"]

log = logging.getLogger("conveyor")

GAUGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")

_PROCESS = ("process_rss_mb", "process_cpu_percent", "children_rss_mb")
_SYSTEM = ("system_memory_percent", "system_memory_available_mb", "system_cpu_percent")
_GPU = ("gpu_utilization_percent", "gpu_memory_percent")
_MB = 2**20


def _number(name: str, value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(name, value, what)
    return float(value)


class Monitor:
    """Resources sampled every `interval` seconds while a run goes on.

    `gauges`: name -> function returning a number (or a dict of them).
    `limits`: metric -> maximum; a sample above it for `patience` samples in
    a row stops the run (`ResourceLimitExceeded`, resumable). `floors`:
    metric -> minimum, the same below it (`system_memory_available_mb`:
    e.g. do not go on under 4 GB available). `system` and
    `gpu` turn those probes off; `gpu=None` (default) samples GPUs when
    `nvidia_smi` is found.
    """

    def __init__(
        self,
        *,
        interval: float = 1.0,
        gauges: Mapping[str, Callable[[], Any]] | None = None,
        limits: Mapping[str, float] | None = None,
        floors: Mapping[str, float] | None = None,
        patience: int = 1,
        system: bool = True,
        gpu: bool | None = None,
        nvidia_smi: str = "nvidia-smi",
    ) -> None:
        interval = _number("interval", interval, "seconds > 0 between samples")
        if interval <= 0:
            raise ConfigError("interval", interval, "seconds > 0 between samples")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigError("patience", patience, "a whole number >= 1 (samples in a row)")
        self.interval = interval
        self.patience = patience
        self.gauges = dict(gauges or {})
        for name, fn in self.gauges.items():
            if not isinstance(name, str) or not GAUGE_NAME.match(name):
                raise ConfigError(
                    "gauges", name, "names of letters, digits, _ and . (e.g. db_in_use)"
                )
            if not callable(fn):
                raise ConfigError(f"gauges[{name!r}]", fn, "a function taking nothing")
        self.limits = {
            str(k): _number(f"limits[{k!r}]", v, "a number (the metric's maximum)")
            for k, v in (limits or {}).items()
        }
        self.floors = {
            str(k): _number(f"floors[{k!r}]", v, "a number (the metric's minimum)")
            for k, v in (floors or {}).items()
        }
        self.system = bool(system)
        self.gpu = gpu
        self.nvidia_smi = nvidia_smi
        self.unavailable: dict[str, str] = {}
        self._psutil: Any = None
        self._proc: Any = None
        self._cpu_last: tuple[float, float] | None = None
        self._gauge_failed: set[str] = set()
        self._started = False

    def __repr__(self) -> str:
        return (
            f"Monitor(interval={self.interval:g}, gauges={sorted(self.gauges)}, "
            f"limits={self.limits}, floors={self.floors})"
        )

    def known_metrics(self) -> set[str]:
        """Names the probes may report (per-GPU and dict-gauge names aside)."""
        names = set(self.gauges)
        names.update(_PROCESS[:2])
        if self.system:
            names.update(_PROCESS + _SYSTEM)
        if self.gpu is not False:
            names.update(_GPU)
        return names

    def _start(self) -> None:
        self._started = True
        if self.system:
            try:
                import psutil  # type: ignore[import-untyped,unused-ignore]
            except ImportError:
                self.unavailable["system"] = (
                    "psutil is not installed (pip install psutil): no system memory/CPU "
                    "or child-process figures"
                )
            else:
                self._psutil = psutil
                self._proc = psutil.Process()
                self._proc.cpu_percent(None)  # the first call only starts the count
                psutil.cpu_percent(None)
        if self.gpu is not False:
            found = read_gpus(self.nvidia_smi)
            if isinstance(found, str):
                self.unavailable["gpu"] = found
        for metric in [*self.limits, *self.floors]:
            if metric not in self.known_metrics() and not metric.startswith(("gpu", *self.gauges)):
                log.warning("monitor: no probe reports %r; its limit cannot stop the run", metric)
        if "gpu" in self.unavailable:
            gpu_limits = [m for m in [*self.limits, *self.floors] if m.startswith("gpu")]
            if gpu_limits:
                log.warning(
                    "monitor: %s; the limits on %s cannot be enforced",
                    self.unavailable["gpu"],
                    ", ".join(gpu_limits),
                )

    def sample(self) -> dict[str, float]:
        """Every metric now (blocking: nvidia-smi may take a moment; the engine
        calls this off the event loop)."""
        if not self._started:
            self._start()
        out: dict[str, float] = {}
        self._process(out)
        if self._psutil is not None:
            self._system(out)
        if self.gpu is not False and "gpu" not in self.unavailable:
            self._gpus(out)
        for name, fn in self.gauges.items():
            self._gauge(name, fn, out)
        return out

    def _process(self, out: dict[str, float]) -> None:
        if self._proc is not None:
            try:
                out["process_rss_mb"] = self._proc.memory_info().rss / _MB
                out["process_cpu_percent"] = float(self._proc.cpu_percent(None))
            except self._psutil.Error:
                pass
            return
        # Without psutil: CPU time from os.times(), RSS from /proc (Linux).
        t = os.times()
        now = (time.monotonic(), t.user + t.system)
        if self._cpu_last is not None:
            dt = now[0] - self._cpu_last[0]
            if dt > 0:
                out["process_cpu_percent"] = 100.0 * (now[1] - self._cpu_last[1]) / dt
        self._cpu_last = now
        try:
            with open("/proc/self/statm", encoding="ascii") as f:
                pages = int(f.read().split()[1])
            out["process_rss_mb"] = pages * os.sysconf("SC_PAGE_SIZE") / _MB
        except (OSError, ValueError, IndexError):
            pass

    def _system(self, out: dict[str, float]) -> None:
        ps = self._psutil
        vm = ps.virtual_memory()
        out["system_memory_percent"] = float(vm.percent)
        out["system_memory_available_mb"] = vm.available / _MB
        out["system_cpu_percent"] = float(ps.cpu_percent(None))
        rss = 0
        try:
            for child in self._proc.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except ps.Error:  # gone since it was listed
                    continue
        except ps.Error:
            pass
        out["children_rss_mb"] = rss / _MB

    def _gpus(self, out: dict[str, float]) -> None:
        found = read_gpus(self.nvidia_smi)
        if isinstance(found, str):
            self.unavailable["gpu"] = found  # it stopped answering: said, not guessed
            log.warning("monitor: %s; GPU sampling stops", found)
            return
        for g in found:
            out[f"gpu{g.index}_utilization_percent"] = g.utilization
            out[f"gpu{g.index}_memory_percent"] = g.memory_percent
            out[f"gpu{g.index}_memory_mb"] = g.used_mb
        out["gpu_utilization_percent"] = max(g.utilization for g in found)
        out["gpu_memory_percent"] = max(g.memory_percent for g in found)

    def _gauge(self, name: str, fn: Callable[[], Any], out: dict[str, float]) -> None:
        try:
            value = fn()
            values = value.items() if isinstance(value, dict) else [(None, value)]
            for sub, v in values:
                key = name if sub is None else f"{name}.{sub}"
                out[key] = _number(key, v, "a number")
        except Exception as exc:
            if name not in self._gauge_failed:
                self._gauge_failed.add(name)
                self.unavailable[f"gauge {name}"] = f"raised {type(exc).__name__}: {exc}"
                log.warning(
                    "monitor: gauge %s raised %s: %s (skipped)", name, type(exc).__name__, exc
                )
