"""Peak memory of a call: measured from the torch profiler's allocator events, or predicted from tensor liveness.

``peak_memory_bytes`` runs a call under the torch profiler and adds up its allocator events.
``liveness_peak_bytes`` predicts the same figure for every head of a graph from one run, without the profiler:
each storage a node allocates is live from that node until its last reader (to the end of the head if a tail
node reads it), views and in-place results share their input's storage, and inputs, parameters and buffers
existed before the call, and each node adds the scratch it allocates while it runs (measured once per node,
in one profiled run of the whole graph). The tolerance against ``peak_memory_bytes`` is in ``tests/test_profile.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import fx
from torch.profiler import ProfilerActivity, record_function
from torch.profiler import profile as torch_profile
from torch.utils._pytree import tree_leaves

__all__ = ["liveness_peak_bytes", "peak_memory_bytes"]


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
        events = _profiled_events(function, args)
    live = peak = 0
    for event in _memory_events(events):
        live += int(event["args"]["Bytes"])
        peak = max(peak, live)
    return peak


def _profiled_events(function: Callable[..., Any], args: tuple[Any, ...]) -> list[dict[str, Any]]:
    """The chrome-trace events of one call of ``function`` under the torch profiler, with memory events."""
    with _silence_stderr_fd(), torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        function(*args)
    with tempfile.TemporaryDirectory() as folder:
        trace_path = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(trace_path))
        return json.loads(trace_path.read_text())["traceEvents"]


def _memory_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The CPU allocator's events, in time order."""
    deltas = [e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0]
    return sorted(deltas, key=lambda e: e["ts"])


_MARK = "edgesplit.node."


def liveness_peak_bytes(graph_module: fx.GraphModule, compute_nodes: Sequence[fx.Node],
                        inputs: tuple[torch.Tensor, ...], positions: Sequence[int]) -> list[int]:
    """Predicted ``peak_memory_bytes`` of the head running the first ``p`` compute nodes, for each ``p`` in
    ``positions``: the largest sum of live storages, plus the running node's scratch, at any node of the head.

    One run of the whole graph under the profiler gives each node's output storages and its scratch (what the
    node allocates beyond its outputs while it runs, e.g. a convolution's unfolded input)."""
    position_of = {node: index for index, node in enumerate(compute_nodes)}
    end = len(compute_nodes)
    storages: dict[fx.Node, set[int]] = {}
    sizes: dict[int, int] = {}

    class Record(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            if node not in position_of:
                result = super().run_node(node)
            else:
                with record_function(f"{_MARK}{position_of[node]}"):
                    result = super().run_node(node)
            tensors = [t for t in tree_leaves(result) if isinstance(t, torch.Tensor)]
            storages[node] = {t.untyped_storage().data_ptr() for t in tensors if t.untyped_storage().nbytes() > 0}
            sizes.update({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors})
            return result

    with torch.no_grad():
        graph_module(*inputs)  # first-call allocations (lazy init, caches) are not part of the steady state
        # Every value stays alive (no garbage collection), so no address is reused within the run.
        events = _profiled_events(lambda *args: Record(graph_module, garbage_collect_values=False).run(*args), inputs)
    held = {t.untyped_storage().data_ptr() for t in (*graph_module.parameters(), *graph_module.buffers())}
    existing = held.union(*(storages[n] for n in graph_module.graph.nodes if n not in position_of))
    allocated: dict[int, int] = {}  # storage -> the node position that allocated it
    last_read: dict[int, int] = {}  # storage -> the last position reading it (``end``: the model output)
    new_bytes = [0] * end
    for node in compute_nodes:
        position = position_of[node]
        for storage in storages[node] - existing:
            if storage not in allocated:
                allocated[storage] = position
                new_bytes[position] += sizes[storage]
            readers = [position_of.get(user, end) for user in node.users] or [position]
            last_read[storage] = max(last_read.get(storage, position), *readers)
    scratch = [max(0, peak - new) for peak, new in zip(_node_peaks(events, end), new_bytes)]
    peaks = []
    for p in positions:
        delta = [0] * (p + 1)
        for storage, start in allocated.items():
            if start < p:
                delta[start] += sizes[storage]
                delta[min(last_read[storage], p - 1) + 1] -= sizes[storage]
        live = peak = 0
        for position, change in enumerate(delta[:p]):
            live += change
            peak = max(peak, live + scratch[position])
        peaks.append(peak)
    return peaks


def _node_peaks(events: list[dict[str, Any]], count: int) -> list[int]:
    """Per compute node, the most bytes allocated at once while it ran, relative to when it started."""
    windows = sorted((e["ts"], e["ts"] + e.get("dur", 0), int(e["name"][len(_MARK):])) for e in events
                     if e.get("ph") == "X" and str(e.get("name", "")).startswith(_MARK))
    memory = _memory_events(events)
    peaks, cursor = [0] * count, 0
    for start, stop, position in windows:
        while cursor < len(memory) and memory[cursor]["ts"] < start:
            cursor += 1
        live = 0
        index = cursor
        while index < len(memory) and memory[index]["ts"] <= stop:
            live += int(memory[index]["args"]["Bytes"])
            peaks[position] = max(peaks[position], live)
            index += 1
    return peaks
