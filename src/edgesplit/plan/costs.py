"""The cost model: what one inference costs under a plan, and the objectives the planner minimizes.

latency = device compute + encode + uplink + RTT + decode + server compute + downlink of the result
energy (device) = active power × (compute + encode) + radio power × airtime + idle power × waiting
throughput (pipelined) = 1 / the slowest of three stages: device, network, server
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from edgesplit.compress.payload import InputFormat, PlanCodec, ReportedCodec
from edgesplit.errors import EdgesplitError
from edgesplit.model.graph import TensorSpec
from edgesplit.plan.hardware import Link
from edgesplit.plan.machines import Machine
from edgesplit.plan.mincut import FlowGraph, PlacementProblem
from edgesplit.plan.schema import Costs, SentTensor
from edgesplit.plan.workload import OUTPUT, Workload

__all__ = ["OBJECTIVES", "Candidate", "CostModel", "LinkSweep", "Objective", "TransferCosts", "at_link", "trusted",
           "parse_objective"]

OBJECTIVES = ("latency", "energy", "throughput", "weighted:L,E")
_NAMELESS_PAYLOADS = (PlanCodec, ReportedCodec)  # codec classes whose payload_bytes reads the name only as above


def trusted(cls):  # noqa: ANN001, ANN201 - a pydantic model class; returns its builder
    """``cls.model_construct`` for callers that pass every field: the same instance (``__dict__`` in the schema's
    field order, every field marked set), about 3× quicker. ``model_construct`` loops over the fields in Python
    looking for aliases and defaults (5 µs for Costs, more than validating it); a plan builds two thousand of
    these at 1,000 nodes. ``tests/test_plan.py::test_trusted_equals_model_construct`` holds it to
    ``model_construct``, so a pydantic that stores instances differently fails there, not silently."""
    names = tuple(cls.__pydantic_fields__)
    if (cls.__pydantic_post_init__ or cls.__pydantic_root_model__ or cls.model_config.get("extra") == "allow"
            or any(f.alias is not None or f.validation_alias is not None for f in cls.__pydantic_fields__.values())):
        return cls.model_construct  # nothing to gain safely: fall back
    new, set_attribute = cls.__new__, object.__setattr__

    def build(**values):  # noqa: ANN003, ANN202
        if tuple(values) != names:  # another order (or a field missing: KeyError) - put them in the schema's
            values = {name: values[name] for name in names}
        instance = new(cls)
        set_attribute(instance, "__dict__", values)
        set_attribute(instance, "__pydantic_fields_set__", set(names))
        set_attribute(instance, "__pydantic_extra__", None)
        set_attribute(instance, "__pydantic_private__", None)
        return instance

    return build


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
    """A placement: a topological-prefix ``position``, or a closed ``head`` of nodes, and how the input goes.

    All-device is the prefix of every node (nothing crosses but the result is already on the device); all-server
    is position 0, sending the input as the float tensor or, with ``input_format``, as pixels, PNG or JPEG.
    """

    label: str
    kind: str  # "all-device", "all-server" or "split"
    position: int | None
    head: frozenset[str] | None = None  # only for heads that are not prefixes
    input_format: InputFormat | None = None
    codec: PlanCodec | None = None  # how the crossing tensors are sent, when not the cost model's codec

    def nodes(self, workload: Workload) -> frozenset[str]:
        """The head's node names."""
        return self.head if self.head is not None else workload.prefix(self.position)  # type: ignore[arg-type]


@dataclass
class CostModel:
    """Costs of any placement of ``workload`` on ``device`` and ``server`` over ``link`` with ``codec``."""

    workload: Workload
    device: Machine
    server: Machine
    link: Link
    codec: PlanCodec  # the codec of min-cut heads and of candidates that name none
    host_gb_s: float  # this host's memory bandwidth: codec times measured here scale by it
    batch: int = 1

    _payloads: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _sent_costs: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _sent_tensors: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _cuts: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _crossings: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def payload_bytes(self, codec: PlanCodec, tensor: TensorSpec) -> int:
        """``codec.payload_bytes(tensor)``, remembered: working out a frame header takes ~20 µs, and the planner
        asks for the same tensors' payloads thousands of times (most tensors of a model share a few shapes)."""
        # A PlanCodec's payload depends on the tensor's name only when it measured that tensor; a ReportedCodec's
        # never. Any other codec class is keyed by name too.
        measured = getattr(codec, "measured_bytes", None)
        by_name = tensor.name if type(codec) not in _NAMELESS_PAYLOADS or tensor.name in measured else None
        key = (codec, by_name, tuple(tensor.shape), tensor.dtype, tensor.nbytes)
        found = self._payloads.get(key)
        if found is None:
            found = self._payloads[key] = codec.payload_bytes(tensor)
        return found

    def codec_ms(self, codec: PlanCodec, tensor: TensorSpec, machine: Machine, encode: bool) -> float:
        """Encode (or decode) time of ``tensor`` on ``machine``: this host's measured time scaled by bandwidth."""
        if codec.sends_as_is:
            return 0.0
        if not codec.timed:  # not measured: reading the tensor and writing the payload once
            return machine.stream_ms(tensor.nbytes + self.payload_bytes(codec, tensor))
        return self.on_machine(codec.encode_host_ms(tensor) if encode else codec.decode_host_ms(tensor), machine)

    def on_machine(self, host_ms, machine: Machine):  # noqa: ANN001, ANN201 - a float or an array of them
        """A time measured on this host (ms), as ``machine`` takes it: scaled by memory bandwidth, as codec times
        are (the chain planner's per-message work too)."""
        return host_ms * self.host_gb_s / machine.memory_gb_s

    def _sent(self, codec: PlanCodec, tensor: TensorSpec) -> tuple[int, float, float]:
        """What sending ``tensor`` with ``codec`` costs: payload bytes, encode ms on the device and decode ms on
        the server, worked out once per tensor and codec."""
        key = (codec, tensor.name, tuple(tensor.shape), tensor.dtype, tensor.nbytes)
        found = self._sent_costs.get(key)
        if found is None:
            found = self._sent_costs[key] = (self.payload_bytes(codec, tensor),
                                             self.codec_ms(codec, tensor, self.device, encode=True),
                                             self.codec_ms(codec, tensor, self.server, encode=False))
        return found

    def _sent_tensor(self, codec: PlanCodec, tensor: TensorSpec) -> SentTensor:
        """``tensor`` as a plan lists it when sent with ``codec``, made once (SentTensor is frozen: plans share it)."""
        key = (codec, tensor.name, tuple(tensor.shape), tensor.dtype, tensor.nbytes)
        found = self._sent_tensors.get(key)
        if found is None:
            # from a validated TensorSpec's fields: nothing left to validate
            found = self._sent_tensors[key] = _build_sent(name=tensor.name, shape=tensor.shape, dtype=tensor.dtype,
                                                          nbytes=tensor.nbytes,
                                                          payload_bytes=self._sent(codec, tensor)[0])
        return found

    def _cut_terms(self, codec: PlanCodec, position: int) -> tuple[float, int, float]:
        """Encode ms, payload bytes and decode ms of what the prefix cut at ``position`` sends with ``codec``
        (summed in the crossing list's order), worked out once per cut and codec."""
        key = (codec, position)
        found = self._cuts.get(key)
        if found is None:
            sent = [self._sent(codec, t) for t in self.workload.cut_at[position].crossing]
            found = self._cuts[key] = (sum(encode for _, encode, _ in sent), sum(size for size, _, _ in sent),
                                       sum(decode for _, _, decode in sent))
        return found

    def crossing(self, candidate: Candidate) -> list[SentTensor]:
        if candidate.kind != "split":
            return []
        codec = candidate.codec or self.codec
        if candidate.head is None:  # a prefix cut: its list made once per codec (a plan lists each cut 1–2 times)
            key = (codec, candidate.position)
            found = self._crossings.get(key)
            if found is None:
                found = self._crossings[key] = [self._sent_tensor(codec, t) for t in self.crossing_tensors(candidate)]
            return list(found)
        return [self._sent_tensor(codec, t) for t in self.crossing_tensors(candidate)]

    def crossing_tensors(self, candidate: Candidate) -> list[TensorSpec]:
        """The tensors a split sends: from the prefix cut's list, or worked out for a min-cut head."""
        if candidate.head is None:
            return list(self.workload.cut_at[candidate.position].crossing)  # type: ignore[index]
        return self.workload.crossing(candidate.head)

    def evaluate(self, candidate: Candidate, link: Link | None = None) -> Costs:
        """Predicted costs of one inference under ``candidate`` (over ``link``, default the model's link)."""
        link = link or self.link
        workload, device, server = self.workload, self.device, self.server
        if candidate.kind == "all-device":
            end = len(workload.nodes)
            return self._costs(device_ms=device.model_ms, encode_ms=0.0, uplink_bytes=0, decode_ms=0.0,
                               server_ms=0.0, downlink_bytes=0, link=link, networked=False,
                               memory=(int(workload.prefix_peak_bytes[end]), int(workload.prefix_weight_bytes[end])))
        if candidate.kind == "all-server" and candidate.input_format is not None:
            fmt = candidate.input_format
            return self._costs(
                device_ms=0.0, encode_ms=fmt.encode_host_ms * self.batch * self.host_gb_s / device.memory_gb_s,
                uplink_bytes=round(fmt.payload_bytes * self.batch),
                decode_ms=fmt.decode_host_ms * self.batch * self.host_gb_s / server.memory_gb_s,
                server_ms=server.model_ms, downlink_bytes=workload.output_bytes, link=link, networked=True,
                memory=(workload.input_bytes, 0))
        codec = candidate.codec or self.codec
        if candidate.head is None:
            position = candidate.position
            encode_ms, uplink_bytes, decode_ms = self._cut_terms(codec, position)  # type: ignore[arg-type]
            device_ms = device.prefix_ms(position, workload)[0]  # type: ignore[arg-type]
            server_ms = server.prefix_ms(position, workload)[1]  # type: ignore[arg-type]
            memory = (int(workload.prefix_peak_bytes[position]), int(workload.prefix_weight_bytes[position]))
        else:
            head = candidate.head
            sent = [self._sent(codec, t) for t in self.workload.crossing(head)]
            encode_ms, uplink_bytes = sum(encode for _, encode, _ in sent), sum(size for size, _, _ in sent)
            decode_ms = sum(decode for _, _, decode in sent)
            device_ms, server_ms = device.head_ms(head, workload), server.tail_ms(head, workload)
            memory = (workload.head_activation_bytes(head), workload.head_weight_bytes(head))
        return self._costs(
            device_ms=device_ms, encode_ms=encode_ms, uplink_bytes=uplink_bytes, decode_ms=decode_ms,
            server_ms=server_ms, downlink_bytes=workload.output_bytes, link=link, networked=True, memory=memory)

    def evaluate_many(self, candidates: list[Candidate]) -> list[Costs]:
        """``[self.evaluate(c) for c in candidates]`` over the model's link, with every prefix split costed at once.

        A plan costs every prefix cut (a thousand on a 1,000-node model); one by one, that is most of the
        planner's time after the min-cut sweep. The prefix splits of each codec are costed here as arrays, with the
        same operations in the same order as ``evaluate`` element by element, so every figure is the same float
        (``tests/test_plan.py::test_batch_costs_equal_one_by_one`` checks it on random DAGs).
        """
        found: list[Costs | None] = [None] * len(candidates)
        groups: dict[int, tuple[PlanCodec, list[int]]] = {}
        for i, candidate in enumerate(candidates):
            if candidate.kind == "split" and candidate.head is None:
                codec = candidate.codec or self.codec
                groups.setdefault(id(codec), (codec, []))[1].append(i)
            else:
                found[i] = self.evaluate(candidate)
        for codec, indices in groups.values():
            costs = self._prefix_costs(codec, [candidates[i].position for i in indices])  # type: ignore[misc]
            for i, cost in zip(indices, costs):
                found[i] = cost
        return found  # type: ignore[return-value]

    def _prefix_costs(self, codec: PlanCodec, positions: list[int]) -> list[Costs]:
        """``evaluate`` of the prefix splits at ``positions`` with ``codec``, as arrays (see ``evaluate_many``)."""
        workload, device, server, link = self.workload, self.device, self.server, self.link
        sent_of: dict[str, tuple[int, float, float]] = {}
        encode, size, decode = [], [], []
        for position in positions:
            cached = self._cuts.get((codec, position))
            if cached is None:
                sent = []
                for tensor in workload.cut_at[position].crossing:
                    terms = sent_of.get(tensor.name)
                    if terms is None:
                        terms = sent_of[tensor.name] = self._sent(codec, tensor)
                    sent.append(terms)
                # summed as _cut_terms sums them (in the crossing list's order, from 0)
                cached = self._cuts[(codec, position)] = (sum(e for _, e, _ in sent), sum(b for b, _, _ in sent),
                                                          sum(d for _, _, d in sent))
            encode.append(cached[0])
            size.append(cached[1])
            decode.append(cached[2])
        at = np.array(positions, dtype=np.int64)
        encode_ms, decode_ms = np.array(encode, dtype=float), np.array(decode, dtype=float)
        uplink_bytes = np.array(size, dtype=np.int64)
        device_ms = device.prefix_ms_many(at, workload)[0]
        server_ms = server.prefix_ms_many(at, workload)[1]
        downlink_bytes = workload.output_bytes
        uplink_ms, downlink_ms = link.uplink_ms(uplink_bytes), link.downlink_ms(downlink_bytes)
        rtt_ms = link.rtt_ms
        latency = device_ms + encode_ms + uplink_ms + rtt_ms + decode_ms + server_ms + downlink_ms
        slowest = np.maximum(np.maximum(device_ms + encode_ms, np.maximum(uplink_ms, downlink_ms)),
                             decode_ms + server_ms)
        with np.errstate(divide="ignore"):
            throughput = np.where(slowest > 0, 1e3 / np.where(slowest > 0, slowest, 1.0), math.inf)
        none = [None] * len(positions)
        compute_mj = radio_mj = idle_mj = energy_mj = none
        if self.device.knows_power:
            compute = self.device.active_w * (device_ms + encode_ms)  # type: ignore[operator]
            radio = link.tx_w * uplink_ms + link.rx_w * downlink_ms
            idle = self.device.idle_w * (rtt_ms + decode_ms + server_ms)  # type: ignore[operator]
            compute_mj, radio_mj, idle_mj = compute.tolist(), radio.tolist(), idle.tolist()
            energy_mj = (compute + radio + idle).tolist()
        uplink_list = uplink_ms.tolist()
        downlink = float(downlink_ms)
        columns = zip(device_ms.tolist(), encode_ms.tolist(), uplink_list, decode_ms.tolist(), server_ms.tolist(),
                      latency.tolist(), throughput.tolist(), uplink_bytes.tolist(), compute_mj, radio_mj, idle_mj,
                      energy_mj, workload.prefix_peak_bytes[at].tolist(), workload.prefix_weight_bytes[at].tolist())
        construct = _build_costs
        rtt = float(rtt_ms)
        return [construct(device_ms=d, encode_ms=e, uplink_ms=u, rtt_ms=rtt, decode_ms=x, server_ms=s,
                          downlink_ms=downlink, latency_ms=lat, throughput_fps=fps, uplink_bytes=b,
                          downlink_bytes=downlink_bytes, device_compute_mj=c, radio_mj=r, idle_mj=i, energy_mj=en,
                          head_memory_bytes=peak, head_weight_bytes=weights)
                for d, e, u, x, s, lat, fps, b, c, r, i, en, peak, weights in columns]

    def _costs(self, *, device_ms: float, encode_ms: float, uplink_bytes: int, decode_ms: float, server_ms: float,
               downlink_bytes: int, link: Link, networked: bool, memory: tuple[int, int]) -> Costs:
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
            head_memory_bytes=memory[0], head_weight_bytes=memory[1])

    def placement_problem(self, objective: Objective, link: Link | None = None) -> PlacementProblem:
        """The min-cut problem whose cheapest closed head minimizes ``objective`` (an additive one)."""
        link = link or self.link
        workload, device, server = self.workload, self.device, self.server
        lw, ew = objective.latency_weight, objective.energy_weight
        active, idle = (device.active_w or 0.0), (device.idle_w or 0.0)

        def transfer(tensor: TensorSpec | None) -> float:
            if tensor is None:
                return math.inf
            payload, encode, decode = self._sent(self.codec, tensor)
            airtime = link.uplink_ms(payload)
            return lw * (encode + airtime + decode) + ew * (active * encode + link.tx_w * airtime + idle * decode)

        nodes = [*workload.inputs, *workload.node_names, OUTPUT]
        device_cost = {name: (lw + ew * active) * ms for name, ms in device.node_ms.items()}
        server_cost = {name: (lw + ew * idle) * ms for name, ms in server.node_ms.items()}
        transfer_cost = {value: transfer(spec) for value, spec in workload.tensors.items()}
        return PlacementProblem(nodes=nodes, consumers=workload.consumers, device_cost=device_cost,
                                server_cost=server_cost, transfer_cost=transfer_cost,
                                on_device=frozenset(workload.inputs), on_server=frozenset({OUTPUT}))


class TransferCosts:
    """What sending each value costs under an additive objective, as arrays over a flow graph's transfer edges.

    Encoding and decoding cost the same on any link; airtime scales with 1 / uplink bandwidth. So the transfer
    costs of a whole bandwidth sweep come from two arrays, and the flow graph is compiled only once.
    """

    def __init__(self, model: CostModel, objective: Objective, graph: FlowGraph) -> None:
        lw, ew = objective.latency_weight, objective.energy_weight
        active, idle = (model.device.active_w or 0.0), (model.device.idle_w or 0.0)
        fixed, payload = [], []
        for value in graph.transfer_values:
            spec = model.workload.tensors.get(value)
            if spec is None:
                fixed.append(math.inf)
                payload.append(0.0)
                continue
            size, encode, decode = model._sent(model.codec, spec)
            fixed.append(lw * (encode + decode) + ew * (active * encode + idle * decode))
            payload.append(float(size))
        self.fixed, self.payload = np.array(fixed), np.array(payload)
        self.latency_weight, self.energy_weight = lw, ew

    def at(self, link: Link) -> np.ndarray:
        """Transfer cost of every transfer edge over ``link``."""
        airtime = self.payload * 8 / (link.uplink_mbps * 1e6) * 1e3
        return self.fixed + (self.latency_weight + self.energy_weight * link.tx_w) * airtime


class LinkSweep:
    """The objective of many plans at many uplink bandwidths at once, the link's other figures kept.

    Only the transfer times, the radio energy and the idle wait depend on the link; every other part of each
    plan's costs is fixed, so the whole (bandwidth × plan) table is a few array operations.
    """

    def __init__(self, plans: list[Costs], objective: Objective, link: Link, idle_w: float | None = None) -> None:
        # every column in one pass over the plans (a thousand at 1,000 nodes), None as 0
        columns = np.array([(c.device_ms, c.encode_ms, c.decode_ms, c.server_ms, c.uplink_bytes, c.downlink_bytes,
                             c.device_compute_mj or 0.0, bool(c.rtt_ms or c.uplink_bytes)) for c in plans],
                           dtype=float).reshape(len(plans), 8).T
        device_ms, encode_ms, decode_ms, server_ms, uplink_bytes, downlink_bytes, compute_mj, networked = columns
        self.objective, self.link = objective, link
        self.device_stage = device_ms + encode_ms
        self.server_stage = decode_ms + server_ms
        self.uplink_bits = uplink_bytes * 8
        self.downlink_bits = downlink_bytes * 8
        self.networked = networked.astype(bool)
        self.compute_mj = compute_mj.copy()
        self.idle_w = idle_w or 0.0

    def values(self, uplink_mbps: np.ndarray | float) -> np.ndarray:
        """The objective of every plan (columns) at every uplink bandwidth (rows)."""
        up = np.atleast_1d(np.asarray(uplink_mbps, dtype=float))[:, None]
        down = up * (self.link.downlink_mbps / self.link.uplink_mbps)
        uplink_ms = self.uplink_bits / (up * 1e3)
        downlink_ms = self.downlink_bits / (down * 1e3)
        rtt_ms = np.where(self.networked, self.link.rtt_ms, 0.0)
        if self.objective.name == "throughput":
            return np.maximum(np.maximum(self.device_stage, np.maximum(uplink_ms, downlink_ms)), self.server_stage)
        latency = self.device_stage + uplink_ms  # then added to in place, in the same order: the same floats
        latency += rtt_ms
        latency += self.server_stage
        latency += downlink_ms
        latency *= self.objective.latency_weight
        value = latency
        if self.objective.energy_weight:
            energy = (self.compute_mj + self.link.tx_w * uplink_ms + self.link.rx_w * downlink_ms
                      + self.idle_w * (rtt_ms + self.server_stage))
            value = value + self.objective.energy_weight * energy
        return value


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


_build_costs, _build_sent = trusted(Costs), trusted(SentTensor)
