"""The cost model: what one inference costs under a plan, and the objectives the planner minimizes.

latency = device compute + encode + uplink + RTT + decode + server compute + downlink of the result
energy (device) = active power × (compute + encode) + radio power × airtime + idle power × waiting
throughput (pipelined) = 1 / the slowest of three stages: device, network, server
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import EdgesplitError
from ..graph import TensorSpec
from ..hardware import Link
from .machines import Machine
from .mincut import PlacementProblem
from .payload import CastCodec, InputFormat
from .schema import Costs, CrossingTensor
from .workload import OUTPUT, Workload

OBJECTIVES = ("latency", "energy", "throughput", "weighted:L,E")


@dataclass(frozen=True)
class Objective:
    """Minimize ``latency_weight × latency_ms + energy_weight × energy_mj``, or the slowest stage (throughput)."""

    name: str
    latency_weight: float = 0.0
    energy_weight: float = 0.0

    @property
    def needs_power(self) -> bool:
        return self.energy_weight > 0

    @property
    def additive(self) -> bool:
        """Whether the objective is a sum over nodes and tensors (so the min-cut can optimize it)."""
        return self.name != "throughput"

    def value(self, costs: Costs) -> float:
        if self.name == "throughput":
            return 1e3 / costs.throughput_fps if costs.throughput_fps > 0 else math.inf
        energy = costs.energy_mj if costs.energy_mj is not None else math.inf
        return self.latency_weight * costs.latency_ms + (self.energy_weight * energy if self.energy_weight else 0.0)


def parse_objective(spec: str) -> Objective:
    """``latency``, ``energy``, ``throughput`` or ``weighted:L,E`` (L × ms + E × mJ)."""
    text = spec.strip().lower()
    if text == "latency":
        return Objective("latency", latency_weight=1.0)
    if text == "energy":
        return Objective("energy", energy_weight=1.0)
    if text == "throughput":
        return Objective("throughput")
    match = re.fullmatch(r"weighted:([0-9.eE+-]+),([0-9.eE+-]+)", text)
    if match:
        try:
            latency_weight, energy_weight = float(match.group(1)), float(match.group(2))
        except ValueError:
            latency_weight = energy_weight = -1.0
        if latency_weight >= 0 and energy_weight >= 0 and latency_weight + energy_weight > 0:
            return Objective(text, latency_weight, energy_weight)
    raise EdgesplitError(f"unknown objective '{spec}'; use latency, energy, throughput or weighted:L,E "
                         "(L per ms plus E per mJ, e.g. weighted:1,0.5)")


@dataclass(frozen=True)
class Candidate:
    """A placement: the head's nodes (empty for all-server, all nodes for all-device) and how the input goes."""

    label: str
    kind: str  # "all-device", "all-server" or "split"
    head: frozenset[str]
    position: int | None
    input_format: InputFormat | None = None


@dataclass
class CostModel:
    """Costs of any placement of ``workload`` on ``device`` and ``server`` over ``link`` with ``codec``."""

    workload: Workload
    device: Machine
    server: Machine
    link: Link
    codec: CastCodec
    host_gb_s: float  # this host's memory bandwidth: image codec times measured here scale by it
    batch: int = 1

    def crossing(self, candidate: Candidate) -> list[CrossingTensor]:
        if candidate.kind != "split":
            return []
        return [CrossingTensor(name=t.name, shape=list(t.shape), dtype=t.dtype, nbytes=t.nbytes,
                               payload_bytes=self.codec.payload_bytes(t))
                for t in self.workload.crossing(candidate.head)]

    def evaluate(self, candidate: Candidate, link: Link | None = None) -> Costs:
        """Predicted costs of one inference under ``candidate`` (over ``link``, default the model's link)."""
        link = link or self.link
        workload, device, server = self.workload, self.device, self.server
        if candidate.kind == "all-device":
            return self._costs(device_ms=device.model_ms, encode_ms=0.0, uplink_bytes=0, decode_ms=0.0,
                               server_ms=0.0, downlink_bytes=0, link=link, networked=False,
                               head=frozenset(workload.node_names))
        if candidate.kind == "all-server" and candidate.input_format is not None:
            fmt = candidate.input_format
            return self._costs(
                device_ms=0.0, encode_ms=fmt.encode_host_ms * self.batch * self.host_gb_s / device.memory_gb_s,
                uplink_bytes=round(fmt.payload_bytes * self.batch),
                decode_ms=fmt.decode_host_ms * self.batch * self.host_gb_s / server.memory_gb_s,
                server_ms=server.model_ms, downlink_bytes=workload.output_bytes, link=link, networked=True,
                head=frozenset())
        tensors = workload.crossing(candidate.head)
        return self._costs(
            device_ms=device.head_ms(candidate.head, workload),
            encode_ms=sum(device.stream_ms(self.codec.work_bytes(t)) for t in tensors),
            uplink_bytes=sum(self.codec.payload_bytes(t) for t in tensors),
            decode_ms=sum(server.stream_ms(self.codec.work_bytes(t)) for t in tensors),
            server_ms=server.tail_ms(candidate.head, workload), downlink_bytes=workload.output_bytes, link=link,
            networked=True, head=candidate.head)

    def _costs(self, *, device_ms: float, encode_ms: float, uplink_bytes: int, decode_ms: float, server_ms: float,
               downlink_bytes: int, link: Link, networked: bool, head: frozenset[str]) -> Costs:
        uplink_ms, downlink_ms = link.uplink_ms(uplink_bytes), link.downlink_ms(downlink_bytes)
        rtt_ms = link.rtt_ms if networked else 0.0
        latency = device_ms + encode_ms + uplink_ms + rtt_ms + decode_ms + server_ms + downlink_ms
        stages = [device_ms + encode_ms, max(uplink_ms, downlink_ms), decode_ms + server_ms]
        compute_mj = radio_mj = idle_mj = energy_mj = None
        if self.device.knows_power:
            compute_mj = self.device.active_w * (device_ms + encode_ms)  # type: ignore[operator]
            radio_mj = link.tx_w * uplink_ms + link.rx_w * downlink_ms
            idle_mj = self.device.idle_w * (rtt_ms + decode_ms + server_ms)  # type: ignore[operator]
            energy_mj = compute_mj + radio_mj + idle_mj
        return Costs(
            device_ms=device_ms, encode_ms=encode_ms, uplink_ms=uplink_ms, rtt_ms=rtt_ms, decode_ms=decode_ms,
            server_ms=server_ms, downlink_ms=downlink_ms, latency_ms=latency,
            throughput_fps=1e3 / max(stages) if max(stages) > 0 else math.inf,
            uplink_bytes=uplink_bytes, downlink_bytes=downlink_bytes, device_compute_mj=compute_mj,
            radio_mj=radio_mj, idle_mj=idle_mj, energy_mj=energy_mj,
            head_memory_bytes=self.workload.head_activation_bytes(head) if head else self._input_memory(),
            head_weight_bytes=self.workload.head_weight_bytes(head))

    def _input_memory(self) -> int:
        return self.workload.input_bytes

    def placement_problem(self, objective: Objective, link: Link | None = None) -> PlacementProblem:
        """The min-cut problem whose cheapest closed head minimizes ``objective`` (an additive one)."""
        link = link or self.link
        workload, device, server = self.workload, self.device, self.server
        lw, ew = objective.latency_weight, objective.energy_weight
        active, idle = (device.active_w or 0.0), (device.idle_w or 0.0)

        def transfer(tensor: TensorSpec | None) -> float:
            if tensor is None:
                return math.inf
            encode = device.stream_ms(self.codec.work_bytes(tensor))
            airtime = link.uplink_ms(self.codec.payload_bytes(tensor))
            decode = server.stream_ms(self.codec.work_bytes(tensor))
            return lw * (encode + airtime + decode) + ew * (active * encode + link.tx_w * airtime + idle * decode)

        nodes = [*workload.inputs, *workload.node_names, OUTPUT]
        device_cost = {name: (lw + ew * active) * ms for name, ms in device.node_ms.items()}
        server_cost = {name: (lw + ew * idle) * ms for name, ms in server.node_ms.items()}
        transfer_cost = {value: transfer(spec) for value, spec in workload.tensors.items()}
        return PlacementProblem(nodes=nodes, consumers=workload.consumers, device_cost=device_cost,
                                server_cost=server_cost, transfer_cost=transfer_cost,
                                on_device=frozenset(workload.inputs), on_server=frozenset({OUTPUT}))


def at_link(costs: Costs, link: Link, device: Machine) -> Costs:
    """The same plan's costs over another link: transfer times, radio energy and RTT change, compute does not."""
    uplink_ms = link.uplink_ms(costs.uplink_bytes)
    downlink_ms = link.downlink_ms(costs.downlink_bytes)
    rtt_ms = link.rtt_ms if costs.rtt_ms or costs.uplink_bytes else 0.0
    latency = (costs.device_ms + costs.encode_ms + uplink_ms + rtt_ms + costs.decode_ms + costs.server_ms
               + downlink_ms)
    stages = [costs.device_ms + costs.encode_ms, max(uplink_ms, downlink_ms), costs.decode_ms + costs.server_ms]
    update: dict[str, float | None] = dict(uplink_ms=uplink_ms, downlink_ms=downlink_ms, rtt_ms=rtt_ms,
                                           latency_ms=latency, throughput_fps=1e3 / max(stages))
    if costs.energy_mj is not None:
        radio = link.tx_w * uplink_ms + link.rx_w * downlink_ms
        idle = device.idle_w * (rtt_ms + costs.decode_ms + costs.server_ms)  # type: ignore[operator]
        update.update(radio_mj=radio, idle_mj=idle, energy_mj=costs.device_compute_mj + radio + idle)
    return costs.model_copy(update=update)
