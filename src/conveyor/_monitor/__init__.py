"""_monitor: what a run samples while it goes on (memory, CPU, GPU through nvidia-smi,
the user's own gauges), behind `conveyor.Monitor`. The policy (when to sample, when a
limit is exceeded) is `_core._sampler`; this part only probes. Imports _base and _core."""

from ._monitor import GAUGE_NAME, Monitor

__all__ = ["GAUGE_NAME", "Monitor"]
