"""NVIDIA GPUs through `nvidia-smi` (the preflight checks and the live monitor).

Absent tools are said, never papered over: `read_gpus` returns the GPUs or
the reason there are none to read (not installed, failed, timed out).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

__all__ = ["GPU_QUERY", "Gpu", "parse_nvidia_smi", "read_gpus"]

GPU_QUERY = (
    "--query-gpu=index,name,utilization.gpu,memory.used,memory.total",
    "--format=csv,noheader,nounits",
)


@dataclass(frozen=True)
class Gpu:
    index: str
    name: str
    utilization: float
    used_mb: float
    total_mb: float

    @property
    def memory_percent(self) -> float:
        return 100.0 * self.used_mb / self.total_mb if self.total_mb > 0 else 0.0


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """GPUs from `nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total
    --format=csv,noheader,nounits` output; unparseable lines are skipped."""
    gpus: list[Gpu] = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 5:
            continue
        try:
            util, used, total = (float(c) for c in cells[2:])
        except ValueError:  # "[N/A]" on some boards
            continue
        gpus.append(Gpu(cells[0], cells[1], util, used, total))
    return gpus


def read_gpus(nvidia_smi: str = "nvidia-smi", timeout: float = 5.0) -> list[Gpu] | str:
    """The GPUs `nvidia-smi` reports now, or why none could be read."""
    exe = shutil.which(nvidia_smi)
    if exe is None:
        return f"{nvidia_smi} not found: no NVIDIA GPU to sample"
    try:
        proc = subprocess.run([exe, *GPU_QUERY], capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"{nvidia_smi} gave no answer within {timeout:g} s"
    except OSError as exc:
        return f"cannot run {exe}: {exc.strerror or exc}"
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        return f"{nvidia_smi} exited {proc.returncode}: {msg[0] if msg else 'no message'}"
    gpus = parse_nvidia_smi(proc.stdout.decode(errors="replace"))
    return gpus or f"{nvidia_smi} listed no GPU it could read"
