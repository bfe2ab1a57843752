"""Facts about the machine a profile is measured on: CPU, cores, threads, versions and memory bandwidth.

Benchmarks record ``machine_info()`` beside their numbers too; the planner scales codec costs by
``memory_gb_s``.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import time
from pathlib import Path

import torch
from pydantic import BaseModel

__all__ = ["MachineInfo", "machine_info", "memory_bandwidth_gb_s"]


class MachineInfo(BaseModel):
    """The machine a profile was measured on."""

    hostname: str
    cpu_model: str
    cores: int
    threads: int
    platform: str
    python_version: str
    torch_version: str
    memory_gb_s: float | None = None  # streaming copy bandwidth; the planner scales codec costs by it


def machine_info() -> MachineInfo:
    """Describe this machine: CPU model, cores, torch threads, versions."""
    return MachineInfo(
        hostname=socket.gethostname(), cpu_model=_cpu_model(), cores=os.cpu_count() or 1,
        threads=torch.get_num_threads(), platform=platform.platform(),
        python_version=platform.python_version(), torch_version=torch.__version__,
        memory_gb_s=round(memory_bandwidth_gb_s(), 2),
    )


@functools.lru_cache(maxsize=4)
def memory_bandwidth_gb_s(megabytes: int = 32, repeats: int = 5) -> float:
    """This machine's streaming copy bandwidth (bytes read + written per second), best of ``repeats``; measured
    once per process (profile, plan and compress all ask for it)."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * 4 / best / 1e9


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            # x86 says "model name"; Raspberry Pi and Jetson kernels say "Model" or "Hardware".
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
