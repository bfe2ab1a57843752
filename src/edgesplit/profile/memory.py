"""Measure the peak memory one call needs on this machine, from the torch profiler's allocator events."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile

__all__ = ["peak_memory_bytes"]


@contextlib.contextmanager
def _silence_stderr_fd() -> Iterator[None]:
    # The profiler's C++ side writes start/stop banners straight to file descriptor 2.
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_bytes(function: Callable[..., Any], args: tuple[Any, ...]) -> int:
    """Peak bytes the CPU allocator holds for one call beyond what existed before (outputs and workspace)."""
    with torch.no_grad():
        function(*args)  # first-call allocations (lazy init, caches) are not part of the steady state
        with _silence_stderr_fd(), torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            function(*args)
        with tempfile.TemporaryDirectory() as folder:
            trace_path = Path(folder) / "trace.json"
            prof.export_chrome_trace(str(trace_path))
            events = json.loads(trace_path.read_text())["traceEvents"]
    deltas = [e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0]
    live = peak = 0
    for event in sorted(deltas, key=lambda e: e["ts"]):
        live += int(event["args"]["Bytes"])
        peak = max(peak, live)
    return peak
