"""How long each node takes on a machine: from a roofline preset, a measured device profile, or this host."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgesplit.plan.hardware import ComputePreset, HardwareError, MachineSpec, parse_machine
from edgesplit.plan.workload import Workload
from edgesplit.profile import DeviceProfile, device_profile, load_device_profile, memory_bandwidth_gb_s, profile_model

__all__ = ["HostProfiler", "Machine", "measured_machine", "preset_machine", "resolve_machine"]


@dataclass
class Machine:
    """Per-node latency of one model on one machine, with its memory, bandwidth and power (None if unknown)."""

    label: str
    kind: str  # "preset", "host" or "profile"
    node_ms: dict[str, float]
    model_ms: float
    memory_gb_s: float
    prefix_head_ms: dict[int, float] | None = None  # measured heads of topological-prefix cuts, by position
    prefix_tail_ms: dict[int, float] | None = None
    memory_bytes: int | None = None
    weight_storage_bytes: int | None = None
    active_w: float | None = None
    idle_w: float | None = None
    source: str = ""
    _cumulative_ms: np.ndarray | None = field(default=None, repr=False)

    def prefix_ms(self, position: int, workload: Workload) -> tuple[float, float]:
        """Head and tail time of the prefix cut at ``position``: measured where there is one, else node sums."""
        if self._cumulative_ms is None:
            self._cumulative_ms = np.concatenate([[0.0], np.cumsum([self.node_ms[n] for n in workload.node_names])])
        summed_head = float(self._cumulative_ms[position])
        summed_tail = float(self._cumulative_ms[-1] - self._cumulative_ms[position])
        head = self.prefix_head_ms.get(position, summed_head) if self.prefix_head_ms else summed_head
        tail = self.prefix_tail_ms.get(position, summed_tail) if self.prefix_tail_ms else summed_tail
        return head, tail

    def prefix_ms_many(self, positions: np.ndarray, workload: Workload) -> tuple[np.ndarray, np.ndarray]:
        """``prefix_ms`` of every position in ``positions`` at once: head times and tail times (the same floats)."""
        self.prefix_ms(0, workload)  # the running sums, made once
        cumulative = self._cumulative_ms
        head, tail = cumulative[positions], cumulative[-1] - cumulative[positions]
        if self.prefix_head_ms or self.prefix_tail_ms:
            head, tail = head.copy(), tail.copy()
            for i, position in enumerate(positions.tolist()):
                if self.prefix_head_ms and position in self.prefix_head_ms:
                    head[i] = self.prefix_head_ms[position]
                if self.prefix_tail_ms and position in self.prefix_tail_ms:
                    tail[i] = self.prefix_tail_ms[position]
        return head, tail

    def head_ms(self, head: frozenset[str], workload: Workload) -> float:
        """Time to run ``head``: the measured prefix head where there is one, else the sum of its nodes."""
        position = workload.position_of_prefix(head)
        if self.prefix_head_ms is not None and position in self.prefix_head_ms:
            return self.prefix_head_ms[position]
        return sum(self.node_ms[name] for name in head)

    def tail_ms(self, head: frozenset[str], workload: Workload) -> float:
        """Time to run everything not in ``head``."""
        position = workload.position_of_prefix(head)
        if self.prefix_tail_ms is not None and position in self.prefix_tail_ms:
            return self.prefix_tail_ms[position]
        return sum(ms for name, ms in self.node_ms.items() if name not in head)

    def stream_ms(self, nbytes: float) -> float:
        """Time to stream ``nbytes`` through memory once (what a cast or copy of that size costs)."""
        return nbytes / (self.memory_gb_s * 1e9) * 1e3

    @property
    def knows_power(self) -> bool:
        return self.active_w is not None and self.idle_w is not None


def preset_machine(preset: ComputePreset, workload: Workload) -> Machine:
    """A roofline estimate: each node is bound by arithmetic or by memory traffic, plus a fixed overhead."""
    node_ms = {
        node.name: max(node.macs / preset.effective_macs_per_s, node.bytes_moved / (preset.memory_gb_s * 1e9)) * 1e3
        + preset.overhead_ms
        for node in workload.nodes
    }
    return Machine(label=preset.name, kind="preset", node_ms=node_ms, model_ms=sum(node_ms.values()),
                   memory_gb_s=preset.memory_gb_s, memory_bytes=preset.memory_bytes,
                   weight_storage_bytes=preset.weight_storage_bytes, active_w=preset.active_w,
                   idle_w=preset.idle_w, source=preset.source)


def measured_machine(profile: DeviceProfile, workload: Workload, spec: MachineSpec, label: str,
                     host_gb_s: Callable[[], float]) -> Machine:
    """A machine from measured latencies, scaled by the spec's speed factor, with power borrowed from a preset."""
    if profile.model.fingerprint != workload.fingerprint:
        raise HardwareError(
            f"device profile '{label}' was measured on model {profile.model.name} (graph {profile.model.fingerprint}), "
            f"not on {workload.name} (graph {workload.fingerprint}); profile this model on that device with "
            "`edgesplit profile MODEL --save-device NAME.json`")
    scale = 1 / spec.speed
    node_ms = {n.name: n.latency_ms * scale for n in profile.nodes}
    missing = [name for name in workload.node_names if name not in node_ms]
    if missing:
        raise HardwareError(f"device profile '{label}' has no latency for node {missing[0]}; measure it again")
    borrowed = spec.preset
    memory_gb_s = profile.machine.memory_gb_s or host_gb_s()
    return Machine(
        label=label, kind=spec.kind, node_ms=node_ms, model_ms=profile.model_ms * scale,
        memory_gb_s=memory_gb_s * spec.speed,
        prefix_head_ms={c.position: c.head_ms * scale for c in profile.cuts},
        prefix_tail_ms={c.position: c.tail_ms * scale for c in profile.cuts},
        memory_bytes=borrowed.memory_bytes if borrowed else None,
        weight_storage_bytes=borrowed.weight_storage_bytes if borrowed else None,
        active_w=borrowed.active_w if borrowed else None, idle_w=borrowed.idle_w if borrowed else None,
        source=(f"measured on {profile.machine.cpu_model} ({profile.machine.threads} threads)"
                + (f" under ONNX Runtime ({profile.runtime})" if profile.runtime != "torch" else "")
                + (f", scaled ×{spec.speed:g}" if spec.speed != 1 else "")
                + (f"; power and memory of preset {borrowed.name}" if borrowed else "")),
    )


def resolve_machine(spec_text: str, workload: Workload, measure_host: Callable[[], DeviceProfile],
                    host_gb_s: Callable[[], float]) -> Machine:
    """The machine a spec names; ``measure_host`` profiles this host when the spec says ``host``."""
    spec = parse_machine(spec_text)
    if spec.kind == "preset":
        return preset_machine(spec.preset, workload)  # type: ignore[arg-type]
    profile = measure_host() if spec.kind == "host" else load_device_profile(spec.base)
    return measured_machine(profile, workload, spec, spec_text, host_gb_s)


class HostProfiler:
    """Profiles this host at most once per model, for every spec that says ``host``."""

    def __init__(self, traced, name: str, runs: int, progress: bool) -> None:  # noqa: ANN001 - TracedModel
        self.traced, self.name, self.runs, self.progress = traced, name, runs, progress
        self._profile: DeviceProfile | None = None
        self._gb_s: float | None = None

    def profile(self) -> DeviceProfile:
        if self._profile is None:
            report = profile_model(self.traced, name=self.name, runs=self.runs, progress=self.progress)
            self._profile = device_profile(report, name="host")
        return self._profile

    def memory_gb_s(self) -> float:
        if self._gb_s is None:
            self._gb_s = memory_bandwidth_gb_s()
        return self._gb_s
