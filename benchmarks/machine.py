"""What machine a benchmark ran on, recorded beside every result (shared by the bench_* scripts)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> str:
    """The 1/5/15-minute load average, e.g. "1.23 0.98 0.75": the machine is shared, so record it."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_info() -> dict[str, object]:
    import torch

    return {"nproc": os.cpu_count(),
            "sched_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu": cpu_model(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(), "loadavg": loadavg()}
