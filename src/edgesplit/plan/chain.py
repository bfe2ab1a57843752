"""Plans over a chain of K machines: which tier runs each node, and what that costs (`edgesplit plan --topology`).

Costs of one inference on the chain ``M0 > L0 > M1 > … > MK`` when the farthest tier used is J:

    latency = Σ_t compute on tier t + Σ_{l<J} (encode on M_l + payload ÷ uplink_l + decode on M_{l+1}
                                               + rtt_l + hop_ms + result ÷ downlink_l)
    device energy = active × (compute₀ + encode₀) + tx₀ × airtime₀ + rx₀ × result time₀ + idle × the rest
    throughput = 1 / the slowest stage: a tier's busy time (compute + decode + encode) or a link's airtime

Encode and decode include, besides the codec, the per-byte work of every message (framing, the socket) on the
sender and the receiver, measured on this host (:func:`message_host_ms_per_byte`) and scaled to each machine
as codec times are: a slow relay that receives and sends megabytes per request pays for them in its busy time.
They also include the serving stack's fixed CPU per message (``message_ms``: HTTP, the event loop, thread
hand-offs; sender and receiver), once per hop used, scaled likewise: a middle tier pays for the message it
receives and the one it sends on, whatever their size, in its busy time and in the latency.

For each J, latency and energy are sums over nodes and tensors, so the exact placement over all monotone
assignments of the DAG is one layered min-cut (:func:`edgesplit.plan.tiers.min_cost_tiers`); the chosen plan is the
best over J. The pipeline's throughput (a maximum) and per-tier memory limits (a peak) are not sums: for those the
exact DP over placements contiguous in topological order (:func:`edgesplit.plan.tiers.best_contiguous`, as PipeEdge
partitions) is used, and every min-cut placement is checked against the limits and kept only if it fits.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np

from edgesplit.compress.payload import PlanCodec, parse_codecs
from edgesplit.errors import EdgesplitError
from edgesplit.model.graph import TracedModel
from edgesplit.plan.costs import CostModel, Objective, parse_objective
from edgesplit.plan.hardware import Link, parse_link
from edgesplit.plan.leakage import LeakageTable, bounded, leakage_violations
from edgesplit.plan.machines import HostProfiler, Machine, resolve_machine
from edgesplit.plan.schema import (ChainEntry, ChainPlanReport, ChainSwitchRange, Constraints, HopCost, LinkSummary,
                                   MachineSummary, SentTensor, TierStage)
from edgesplit.plan.tiers import TierProblem, best_contiguous, best_contiguous_sum, min_cost_tiers
from edgesplit.plan.topology import Topology, parse_topology
from edgesplit.plan.workload import OUTPUT, Workload, workload_of

__all__ = ["ChainModel", "message_host_ms_per_byte", "plan_chain", "plan_chain_workload"]

_SWEEP = (0.1, 1000.0)  # first-link Mbit/s covered by the switch table
_SWEEP_POINTS = 400


@dataclass
class Placement:
    """Every compute node's tier (the inputs on tier 0, the output on ``last_tier``), and how it was found."""

    label: str
    method: str
    tier_of: dict[str, int]
    last_tier: int


@dataclass
class Breakdown:
    """A placement's costs, split so that they can be recomputed at any first-link bandwidth."""

    placement: Placement
    compute_ms: np.ndarray  # per tier 0..J
    decode_ms: np.ndarray
    encode_ms: np.ndarray
    memory_bytes: list[int]
    weight_bytes: list[int]
    crossing: list[list[str]]  # per link 0..J-1: the values crossing it
    payload_bytes: np.ndarray  # per link
    result_bytes: int


_MESSAGE_TIMING_S = 10.0  # the whole measurement's deadline (it takes about 50 ms on an idle host)


@functools.cache
def message_host_ms_per_byte(repeats: int = 5, deadline_s: float = _MESSAGE_TIMING_S) -> tuple[float, float]:
    """This host's ms per payload byte of handling a message on a hop, beyond the codec: (sender, receiver).

    What a tier does with every byte it sends or receives, whatever it computes: the sender frames the tensor as
    it is sent (the fp32 frame: header and a copy) and writes it to a socket; the receiver reads it from the
    socket and decodes the frame. Timed here on tensors of 0.25–4 MB through a local socket pair and fitted as
    fixed + per byte over the quickest of each size's repeats (the fixed part is ``message_ms``'s, measured with
    the serving stack);
    :class:`ChainModel` scales the slopes to each machine as it scales codec times (:meth:`CostModel.on_machine`).
    Measured once per process (about 50 ms), so chain plans depend on this host's figures as on its profile.
    Every wait has a deadline: past ``deadline_s`` in all it raises EdgesplitError (a host too busy to measure).
    """
    import socket
    import threading

    import torch

    from edgesplit.codecs import decode, parse_codec
    from edgesplit.compress.payload import fit_fixed_per_byte

    codec = parse_codec("fp32")
    samples = []
    until = time.monotonic() + deadline_s

    def left() -> float:
        remaining = until - time.monotonic()
        if remaining <= 0:
            raise EdgesplitError(f"timing this host's message handling took over {deadline_s:g} s (a busy host?); "
                                 "plan again when it is quieter")
        return remaining

    sender, receiver = socket.socketpair()
    try:
        for size in (1 << 18, 1 << 20, 1 << 22):
            x = torch.rand(1, size // 4)
            framer = codec.calibrate(x)
            timed: list[tuple[float, float]] = []
            for attempt in range(repeats + 1):  # the first of each size warms up (allocations, the thread)
                got: list[bytes] = []
                failed: list[BaseException] = []

                def read(count: int) -> None:
                    buffer, done = bytearray(count), 0
                    view = memoryview(buffer)
                    try:
                        while done < count:
                            receiver.settimeout(max(until - time.monotonic(), 1e-3))
                            received = receiver.recv_into(view[done:], count - done)
                            if not received:
                                raise ConnectionError("the socket pair closed")
                            done += received
                    except (OSError, ConnectionError) as error:  # socket.timeout is an OSError
                        failed.append(error)
                        return
                    got.append(bytes(buffer))

                start = time.perf_counter()
                payload = framer.encode(x)
                reader = threading.Thread(target=read, args=(len(payload),), daemon=True)
                reader.start()
                sender.settimeout(left())
                try:
                    sender.sendall(payload)
                except OSError:
                    left()  # a timeout past the deadline says so; anything else is the reader's failure below
                sent = time.perf_counter()
                reader.join(left())
                if reader.is_alive() or failed or not got:
                    left()
                    raise EdgesplitError(f"timing this host's message handling failed: "
                                         f"{failed[0] if failed else 'the reader did not finish'}")
                decode(got[0])
                done = time.perf_counter()
                if attempt:  # the receiver's share: the read that outlasts the send, and the decode
                    timed.append(((sent - start) * 1e3, (done - sent) * 1e3))
            # the quickest of the repeats: other processes on the host only ever add to a time
            samples.append((len(payload), min(t[0] for t in timed), min(t[1] for t in timed)))
    finally:
        sender.close()
        receiver.close()
    return fit_fixed_per_byte(samples, 1)[1], fit_fixed_per_byte(samples, 2)[1]


class ChainModel:
    """Costs of any placement of ``workload`` on a chain of machines joined by links, with one codec on every hop.

    Values (the model's inputs, then its nodes in topological order) are numbered; everything a placement costs is
    computed with array operations over them, so evaluating a placement of 1,000 nodes takes about a millisecond.
    """

    def __init__(self, workload: Workload, machines: list[Machine], links: list[Link], codec: PlanCodec,
                 host_gb_s: float, *, hop_ms: float, memory_limits: list[int | None] | None = None,
                 message_ms_per_byte: tuple[float, float] = (0.0, 0.0),
                 message_ms: tuple[float, float] = (0.0, 0.0)) -> None:
        """``message_ms_per_byte``: this host's ms per payload byte that the sender and the receiver of a hop
        spend on the message beyond the codec (framing, the socket; :func:`message_host_ms_per_byte` measures it),
        added to each tier's encode and decode time, scaled to that machine. ``message_ms``: this host's CPU ms
        per message, whatever its size, that the sender (posting the request and reading its answer) and the
        receiver (parsing it, checking it, answering) of a hop spend in the serving stack (HTTP, the event loop,
        thread hand-offs): added once per hop used to the sender's encode and the receiver's decode time, scaled to
        that machine, so it counts in each tier's busy time (the pipeline's slowest stage) as well as in the
        latency. ``hop_ms`` stays a wait (latency only, not scaled)."""
        self.workload, self.machines, self.links, self.codec, self.hop_ms = workload, machines, links, codec, hop_ms
        self.message_ms_per_byte = message_ms_per_byte
        self.message_ms = message_ms
        self.tiers = len(machines)
        self.memory_limits = [limit if limit is not None else machine.memory_bytes
                              for limit, machine in zip(memory_limits or [None] * self.tiers, machines)]
        hops = [CostModel(workload, machines[l], machines[l + 1], links[l], codec, host_gb_s)
                for l in range(self.tiers - 1)]
        self.values = [*workload.inputs, *workload.node_names]
        self.index = {v: i for i, v in enumerate(self.values)}
        self.first_node = len(workload.inputs)
        count = len(self.values)
        end = len(workload.nodes)
        self.position = np.concatenate([np.full(self.first_node, -1), np.arange(end)])
        specs = [workload.tensors.get(v) for v in self.values]
        self.spec = dict(zip(self.values, specs))
        self.is_tensor = np.array([s is not None for s in specs])
        self.nbytes = np.array([s.nbytes if s is not None else 0 for s in specs], dtype=float)
        # per value: payload bytes; per link: encode time on the sender and decode time on the receiver
        self.payload = np.array([codec.payload_bytes(s) if s is not None else math.inf for s in specs])
        self.encode = [np.array([hop.codec_ms(codec, s, hop.device, encode=True) if s is not None else math.inf
                                 for s in specs]) for hop in hops]
        self.decode = [np.array([hop.codec_ms(codec, s, hop.server, encode=False) if s is not None else math.inf
                                 for s in specs]) for hop in hops]
        send_ms, receive_ms = message_ms_per_byte
        if send_ms or receive_ms:  # every byte of a message: framed and written by the sender, read by the receiver
            payload = np.where(self.is_tensor, self.payload, 0.0)
            for l, hop in enumerate(hops):
                self.encode[l] = self.encode[l] + hop.on_machine(payload * send_ms, hop.device)
                self.decode[l] = self.decode[l] + hop.on_machine(payload * receive_ms, hop.server)
        # per hop: the fixed CPU of one message on the sender (tier l) and on the receiver (tier l + 1)
        self.send_fixed = np.array([hop.on_machine(message_ms[0], hop.device) for hop in hops], dtype=float)
        self.receive_fixed = np.array([hop.on_machine(message_ms[1], hop.server) for hop in hops], dtype=float)
        self.node_ms = np.array([[m.node_ms[n] for n in workload.node_names] for m in machines])
        self.result_bytes = workload.output_bytes
        # the value graph as two arrays: value index -> reader (a value index, or ``count`` for the output)
        readers, sources = [], []
        for value, users in workload.consumers.items():
            for user in users:
                sources.append(self.index[value])
                readers.append(count if user == OUTPUT else self.index[user])
        self.edge_value, self.edge_reader = np.array(sources, dtype=np.int64), np.array(readers, dtype=np.int64)
        reader_position = np.append(self.position, end)[self.edge_reader]
        self.last_reader = self.position.copy()  # the last reader's position (end for the output)
        np.maximum.at(self.last_reader, self.edge_value, reader_position)
        self._weights = [sum(node.params.values()) for node in workload.nodes]

    # --- the min-cut's problem --------------------------------------------------------------------------------

    def weights(self, objective: Objective) -> tuple[float, float, float, float]:
        """(latency weight, energy weight, the device's active and idle power)."""
        device = self.machines[0]
        return (objective.latency_weight, objective.energy_weight, device.active_w or 0.0, device.idle_w or 0.0)

    def link_weights(self, objective: Objective, link: int) -> tuple[float, float, float]:
        """What one ms of encoding, airtime and decoding on ``link`` adds to an additive objective."""
        lw, ew, active, idle = self.weights(objective)
        if link == 0:
            return lw + ew * active, lw + ew * self.links[0].tx_w, lw + ew * idle
        return (lw + ew * idle,) * 3

    def transfer_costs(self, objective: Objective, link: int, mbps: float | None = None) -> np.ndarray:
        """What sending each value over ``link`` adds to an additive objective (math.inf for non-tensors)."""
        encode_w, air_w, decode_w = self.link_weights(objective, link)
        rate = mbps if mbps is not None else self.links[link].uplink_mbps
        airtime = np.where(self.is_tensor, self.payload, 0.0) * 8 / (rate * 1e6) * 1e3
        costs = encode_w * self.encode[link] + air_w * airtime + decode_w * self.decode[link]
        return np.where(self.is_tensor, costs, math.inf)

    def tier_problem(self, last_tier: int, objective: Objective, *, allowed: set[int] | None = None,
                     keep_input: bool = False) -> TierProblem:
        """The additive problem on tiers 0..``last_tier`` (the output pinned to the last), ``allowed`` tiers only."""
        lw, ew, active, idle = self.weights(objective)
        tiers = last_tier + 1
        scale = np.array([lw + ew * (active if t == 0 else idle) for t in range(tiers)])[:, None]
        costs = self.node_ms[:tiers] * scale
        if allowed is not None:
            costs[[t for t in range(tiers) if t not in allowed]] = math.inf
        node_cost = dict(zip(self.workload.node_names, costs.T.tolist()))
        links = np.array([self.transfer_costs(objective, l) for l in range(last_tier)]).reshape(last_tier,
                                                                                                len(self.values))
        if keep_input and last_tier:
            links[0, :self.first_node] = math.inf
        transfer_cost = dict(zip(self.values, links.T.tolist()))
        nodes = [*self.workload.inputs, *self.workload.node_names, OUTPUT]
        return TierProblem(nodes=nodes, consumers=self.workload.consumers, node_cost=node_cost,
                           transfer_cost=transfer_cost, tiers=tiers, on_first=frozenset(self.workload.inputs),
                           on_last=frozenset({OUTPUT}))

    def fixed_cost(self, last_tier: int, objective: Objective) -> float:
        """What every placement with this last tier pays besides nodes and tensors: RTT, hop overhead, the result."""
        lw, ew, _, idle = self.weights(objective)
        total = 0.0
        for l in range(last_tier):
            link = self.links[l]
            result = link.downlink_ms(self.result_bytes)
            encode_w, _, decode_w = self.link_weights(objective, l)
            total += encode_w * self.send_fixed[l] + decode_w * self.receive_fixed[l]  # per message, any placement
            total += (lw + ew * idle) * (link.rtt_ms + self.hop_ms)
            total += lw * result + ew * (link.rx_w if l == 0 else idle) * result
        return total

    # --- evaluating a placement ---------------------------------------------------------------------------------

    def tiers_array(self, placement: Placement) -> np.ndarray:
        """Every value's tier (inputs on 0), and the output's (the last tier) at the end."""
        nodes = np.array([placement.tier_of[n] for n in self.workload.node_names], dtype=np.int64)
        return np.concatenate([np.zeros(self.first_node, dtype=np.int64), nodes, [placement.last_tier]])

    def breakdown(self, placement: Placement) -> Breakdown:
        last = placement.last_tier
        tier = self.tiers_array(placement)
        node_tier = tier[self.first_node:-1]
        made = tier[:-1]
        reach = made.copy()  # the farthest tier that reads each value
        np.maximum.at(reach, self.edge_value, tier[self.edge_reader])
        end = len(self.workload.nodes)
        ms = self.node_ms[node_tier, np.arange(end)]
        compute = np.bincount(node_tier, weights=ms, minlength=last + 1)[:last + 1]
        encode, decode = np.zeros(last + 1), np.zeros(last + 1)
        payload = np.zeros(last)
        crossing = []
        for l in range(last):
            mask = (made <= l) & (reach > l)
            crossing.append([self.values[i] for i in np.flatnonzero(mask)])
            encode[l] = np.where(mask, self.encode[l], 0.0).sum() + self.send_fixed[l]
            decode[l + 1] = np.where(mask, self.decode[l], 0.0).sum() + self.receive_fixed[l]
            payload[l] = np.where(mask, self.payload, 0.0).sum()
        memory = [self._tier_memory(tier, reach, t) for t in range(last + 1)]
        weights = [int(np.bincount(node_tier, weights=self._weights, minlength=last + 1)[t])
                   if len(self.workload.nodes) else 0 for t in range(last + 1)]
        return Breakdown(placement, compute, decode, encode, memory, weights, crossing, payload, self.result_bytes)

    def _tier_memory(self, tier: np.ndarray, reach: np.ndarray, t: int) -> int:
        """Peak live bytes on tier ``t`` running its nodes in topological order: what it receives or makes, held
        until its last reader there has run (to the end when it is sent on)."""
        end = len(self.workload.nodes)
        made = tier[:-1]
        received = (made < t) & (reach >= t)
        held = received | (made == t)
        on_tier = tier[self.edge_reader] == t
        last_here = np.where(made == t, self.position, -1)
        np.maximum.at(last_here, self.edge_value[on_tier],
                      np.append(self.position, end)[self.edge_reader[on_tier]])
        freed = held & (reach == t)  # freed after its last reader on this tier; the others are sent on
        free_at = np.bincount(np.clip(last_here[freed], 0, end), weights=self.nbytes[freed], minlength=end + 1)
        node_bytes = np.where(made[self.first_node:] == t, self.nbytes[self.first_node:], 0.0)
        start = float(self.nbytes[received].sum())
        during = start + np.cumsum(node_bytes) - np.concatenate([[0.0], np.cumsum(free_at[:end - 1])])
        during = during[made[self.first_node:] == t]
        return int(max(start, during.max() if during.size else 0.0))

    def costs(self, parts: Breakdown, objective: Objective, first_mbps: np.ndarray | float | None = None):  # noqa: ANN201
        """(latency ms, throughput fps, bottleneck, device energy mJ or None, objective) of a breakdown; with
        ``first_mbps`` (an array), the same at each of those first-link uplink rates (later links as planned)."""
        last = parts.placement.last_tier
        single = first_mbps is None or np.ndim(first_mbps) == 0
        first = self.links[0]
        rates = np.atleast_1d(np.asarray(first_mbps if first_mbps is not None else first.uplink_mbps, dtype=float))
        up = [self.links[l].uplink_ms(parts.payload_bytes[l]) * np.ones_like(rates) for l in range(last)]
        down = [self.links[l].downlink_ms(parts.result_bytes) * np.ones_like(rates) for l in range(last)]
        if last:
            up[0] = parts.payload_bytes[0] * 8 / (rates * 1e3)
            down[0] = parts.result_bytes * 8 / (rates * first.downlink_mbps / first.uplink_mbps * 1e3)
        fixed = sum(self.links[l].rtt_ms + self.hop_ms for l in range(last))
        latency = parts.compute_ms.sum() + parts.encode_ms.sum() + parts.decode_ms.sum() + fixed \
            + sum(up, np.zeros_like(rates)) + sum(down, np.zeros_like(rates))
        names = [f"tier {t} ({self.machines[t].label})" for t in range(last + 1)]
        names += [f"link {l} ({self.links[l].name})" for l in range(last)]
        stages = np.array([np.full_like(rates, parts.compute_ms[t] + parts.decode_ms[t] + parts.encode_ms[t])
                           for t in range(last + 1)] + [np.maximum(up[l], down[l]) for l in range(last)])
        slowest = stages.max(axis=0)
        throughput = np.where(slowest > 0, 1e3 / np.where(slowest > 0, slowest, 1.0), math.inf)
        device = self.machines[0]
        energy = None
        if device.knows_power:
            busy = parts.compute_ms[0] + parts.encode_ms[0]
            radio = first.tx_w * up[0] + first.rx_w * down[0] if last else 0.0
            airtime = up[0] + down[0] if last else 0.0
            energy = device.active_w * busy + radio + device.idle_w * (latency - busy - airtime)
        if objective.name == "throughput":
            value = slowest
        else:
            value = objective.latency_weight * latency
            if objective.energy_weight:
                value = value + objective.energy_weight * (energy if energy is not None else math.inf)
        if not single:
            return latency, throughput, None, energy, value
        bottleneck = names[int(np.argmax(stages[:, 0]))]
        return (float(latency[0]), float(throughput[0]), bottleneck,
                None if energy is None else float(np.atleast_1d(energy)[0]), float(np.atleast_1d(value)[0]))

    def violations(self, parts: Breakdown, constraints: Constraints, leakage: LeakageTable | None = None,
                   ) -> list[str]:
        found = []
        for t, (memory, weights) in enumerate(zip(parts.memory_bytes, parts.weight_bytes)):
            limit, machine = self.memory_limits[t], self.machines[t]
            if limit is None:
                continue
            needed = memory
            if machine.weight_storage_bytes is not None:
                if weights > machine.weight_storage_bytes:
                    found.append(f"tier {t}'s weights need {_mib(weights)} of {_mib(machine.weight_storage_bytes)}")
            else:
                needed += weights
            if needed > limit:
                found.append(f"tier {t} needs {_mib(needed)} of memory, {_mib(limit)} available")
        if constraints.keep_input_on_device and parts.crossing and any(
                v in self.workload.inputs for v in parts.crossing[0]):
            found.append("the raw input crosses the first link, which --keep-input forbids")
        if constraints.max_uplink_bytes is not None:
            for l, nbytes in enumerate(parts.payload_bytes):
                if nbytes > constraints.max_uplink_bytes:
                    found.append(f"link {l} carries {int(nbytes):,} B, more than {constraints.max_uplink_bytes:,} B")
        if leakage is not None and bounded(constraints) and parts.placement.last_tier > 0:
            # what crosses the first link leaves the device: the audit's figures at that cut bound it
            device = frozenset(n for n, t in parts.placement.tier_of.items() if t == 0)
            found += [f"first link: {v}" for v in leakage_violations(self.workload.position_of_prefix(device),
                                                                      constraints, leakage)]
        return found

    # --- the contiguous DP -----------------------------------------------------------------------------------

    def _per_position(self, values: np.ndarray) -> np.ndarray:
        """For every prefix position p (0..N): the sum of ``values`` over the values crossing p (made before p,
        read at or after it), by a difference array over each value's interval of positions."""
        end = len(self.workload.nodes)
        delta = np.zeros(end + 2)
        finite = self.is_tensor
        np.add.at(delta, self.position[finite] + 1, values[finite])
        np.add.at(delta, self.last_reader[finite] + 1, -values[finite])
        return np.cumsum(delta)[:end + 1]

    def contiguous(self, last_tier: int, objective: Objective, constraints: Constraints,
                   leakage: LeakageTable | None = None) -> Placement | None:
        """The best placement contiguous in topological order on tiers 0..``last_tier`` (limits respected, and
        the leakage bounds on what crosses the first link)."""
        workload = self.workload
        end = len(workload.nodes)
        positions = np.array(sorted({cut.position for cut in workload.prefix_cuts} | {end}))
        count = len(positions)
        lw, ew, active, idle = self.weights(objective)
        bottleneck = objective.name == "throughput"
        link_arrays, encode_at, decode_at = [], [], []
        nbytes = self._per_position(np.where(self.is_tensor, self.payload, 0.0))[positions]
        for l in range(last_tier):
            link = self.links[l]
            enc = self._per_position(np.where(self.is_tensor, self.encode[l], 0.0))[positions] + self.send_fixed[l]
            dec = self._per_position(np.where(self.is_tensor, self.decode[l], 0.0))[positions] + self.receive_fixed[l]
            air = nbytes * 8 / (link.uplink_mbps * 1e6) * 1e3
            if bottleneck:
                cost = np.maximum(air, link.downlink_ms(self.result_bytes))
            else:
                encode_w, air_w, decode_w = self.link_weights(objective, l)
                cost = encode_w * enc + air_w * air + decode_w * dec
            if constraints.max_uplink_bytes is not None:
                cost = np.where(nbytes > constraints.max_uplink_bytes, math.inf, cost)
            if l == 0 and constraints.keep_input_on_device:
                inputs = np.zeros(len(self.values))
                inputs[:self.first_node] = 1.0
                cost = np.where(self._per_position(inputs)[positions] > 0, math.inf, cost)
            if l == 0 and leakage is not None and bounded(constraints):
                leaks = np.array([bool(leakage_violations(int(p), constraints, leakage)) for p in positions])
                cost = np.where(leaks, math.inf, cost)
            cost = np.where(positions == end, math.inf, cost)  # nothing is left to run after the last node
            link_arrays.append(cost)
            encode_at.append(enc)
            decode_at.append(dec)
        most = self._live_curve()[1].max(initial=0.0) + float(workload.prefix_weight_bytes[-1])
        binding = [t for t in range(last_tier + 1) if self.memory_limits[t] is not None
                   and self.memory_limits[t] < most]  # a limit above the whole model's needs never binds
        cumulative = np.concatenate([np.zeros((self.tiers, 1)), np.cumsum(self.node_ms, axis=1)], axis=1)
        label, method = f"best contiguous split, tiers 0–{last_tier} (DP)", "contiguous DP"
        if not bottleneck and not binding:  # a sum of prefix differences: the O(K·P) DP is exact
            scale = [lw + ew * (active if t == 0 else idle) for t in range(last_tier + 1)]
            value, cuts = best_contiguous_sum([scale[t] * cumulative[t][positions] for t in range(last_tier + 1)],
                                              link_arrays)
        else:
            keep = _sampled(count, link_arrays)
            if len(keep) < count:  # the O(K·P²) DP on a subset of the candidate cuts: say so
                label, method = label.replace("(DP)", f"(DP over {len(keep)} of {count} cuts)"), "contiguous DP, sampled"
                positions, link_arrays = positions[keep], [a[keep] for a in link_arrays]
                encode_at, decode_at = [a[keep] for a in encode_at], [a[keep] for a in decode_at]
                count = len(keep)
            upper = np.arange(count)[:, None] <= np.arange(count)[None, :]
            if binding:
                peaks = self._segment_peaks(positions)
                weights_prefix = workload.prefix_weight_bytes.astype(float)[positions]
                weights = weights_prefix[None, :] - weights_prefix[:, None]
            segments = []
            for t in range(last_tier + 1):
                summed = cumulative[t][positions]
                compute = summed[None, :] - summed[:, None]
                if bottleneck:
                    cost = compute + (decode_at[t - 1][:, None] if t > 0 else 0.0) + \
                        (encode_at[t][None, :] if t < last_tier else 0.0)
                else:
                    cost = (lw + ew * (active if t == 0 else idle)) * compute
                cost = np.where(upper, cost, math.inf)
                limit, machine = self.memory_limits[t], self.machines[t]
                if t in binding:
                    if machine.weight_storage_bytes is not None:
                        over = (peaks > limit) | (weights > machine.weight_storage_bytes)
                    else:
                        over = peaks + weights > limit
                    cost = np.where(over, math.inf, cost)
                segments.append(cost)
            if last_tier == 0:
                value, cuts = float(segments[0][0, count - 1]), []
            else:
                value, cuts = best_contiguous(segments, link_arrays, bottleneck=bottleneck)
        if not math.isfinite(value):
            return None
        bounds = [0, *[int(positions[c]) for c in cuts], end]
        tier_of = {}
        for t in range(last_tier + 1):
            for name in workload.node_names[bounds[t]:bounds[t + 1]]:
                tier_of[name] = t
        return Placement(label, method, tier_of, last_tier)

    def _segment_peaks(self, positions: np.ndarray) -> np.ndarray:
        """``[a, b]``: peak live bytes of the segment between candidate positions a ≤ b (what it receives and
        forwards included): the whole run's live-bytes curve over the segment. The maximum over each stretch
        between consecutive candidates, then a running maximum along each row."""
        before, during = self._live_curve()
        stretches = np.array([during[a:b].max() if b > a else 0.0 for a, b in zip(positions[:-1], positions[1:])])
        count = len(positions)
        blocks = np.where(np.arange(count - 1)[None, :] >= np.arange(count)[:, None], stretches[None, :], 0.0)
        running = np.maximum.accumulate(blocks, axis=1)
        peaks = np.concatenate([np.zeros((count, 1)), running], axis=1)  # [a, b]: stretches a .. b − 1
        return np.maximum(peaks, before[positions][:, None])

    def _live_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Live bytes of the whole model's run: ``before[i]`` before node i (i ≤ N), ``during[i]`` while it runs."""
        end = len(self.workload.nodes)
        freed = np.bincount(np.clip(self.last_reader, 0, end), weights=self.nbytes, minlength=end + 1)
        node_bytes = self.nbytes[self.first_node:]
        start = float(self.nbytes[:self.first_node].sum())
        during = start + np.cumsum(node_bytes) - np.concatenate([[0.0], np.cumsum(freed[:end - 1])])
        return np.concatenate([[start], during - freed[:end]]), during


_MAX_DP_CUTS = 1024  # the O(K·P²) DP's P×P matrices: 8 MiB each at this size


def _sampled(count: int, link_arrays: list[np.ndarray]) -> np.ndarray:
    """All candidate cuts up to ``_MAX_DP_CUTS``; beyond, the first and last and, in each of equal stretches of the
    topological order, the one the first link carries most cheaply."""
    if count <= _MAX_DP_CUTS:
        return np.arange(count)
    first = link_arrays[0] if link_arrays else np.zeros(count)
    stretches = np.array_split(np.arange(1, count - 1), _MAX_DP_CUTS - 2)
    picked = [int(s[np.argmin(first[s])]) for s in stretches if len(s)]
    return np.array(sorted({0, count - 1, *picked}))


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.3g} MiB" if nbytes >= 2**20 else f"{nbytes / 1024:.3g} KiB"


def plan_chain_workload(model: ChainModel, objective: Objective, constraints: Constraints, *, model_name: str,
                        model_ref: dict | None, topology: Topology, codec_name: str, input_shape: list[int],
                        leakage: LeakageTable | None = None) -> ChainPlanReport:
    """Every placement worth comparing, costed the same way, and the best feasible one (see the module docstring)."""
    from scipy.sparse import csgraph  # noqa: F401 - the min-cut's solver, imported before the clock starts

    start = time.perf_counter()
    k = model.tiers
    placements: list[Placement] = []
    exact = True
    for t in range(k):  # everything on one tier; the tiers before it relay the input
        label = "all on the device" if t == 0 else f"all on tier {t} ({model.machines[t].label})"
        placements.append(Placement(label, "baseline", dict.fromkeys(model.workload.node_names, t), t))
    solved: dict[tuple, Placement] = {}

    def solve(last: int, allowed: set[int] | None, label: str) -> Placement | None:
        nonlocal exact
        key = (last, frozenset(allowed) if allowed is not None else None)
        if key not in solved:
            problem = model.tier_problem(last, objective, allowed=allowed,
                                         keep_input=constraints.keep_input_on_device)
            value, tier_of = min_cost_tiers(problem)
            if not math.isfinite(value):
                return None
            placement = Placement(label, "min-cut", {n: tier_of[n] for n in model.workload.node_names}, last)
            parts = model.breakdown(placement)
            evaluated = model.costs(parts, objective)[4]
            exact &= math.isclose(value + model.fixed_cost(last, objective), evaluated, rel_tol=1e-6, abs_tol=1e-6)
            solved[key] = placement
        return solved[key]

    if objective.additive:
        for i in range(k):
            for j in range(i + 1, k):  # the best using exactly the pair (i, j); the others relay
                names = (model.machines[i].label, model.machines[j].label)
                found = solve(j, {i, j}, f"best two-tier: tiers {i}+{j} ({names[0]} + {names[1]})")
                if found is not None:
                    placements.append(found)
        for last in range(1, k):
            found = solve(last, None, f"best using tiers 0–{last} (min-cut)")
            if found is not None:
                placements.append(found)
    for last in range(1, k):
        found = model.contiguous(last, objective, constraints, leakage)
        if found is not None:
            placements.append(found)
    entries = []
    for placement in placements:
        if placement.tier_of:  # the farthest tier that runs a node computes the output: no hop carries it further
            placement.last_tier = max(placement.tier_of.values())
        parts = model.breakdown(placement)
        entries.append((parts, _entry(model, parts, objective, constraints, leakage)))
    feasible = [pair for pair in entries if pair[1].feasible]
    if not feasible:
        nearest = min(entries, key=lambda pair: len(pair[1].violations))[1]
        raise EdgesplitError(f"no placement on {topology.text} meets the constraints (the nearest: "
                             f"{'; '.join(nearest.violations)}); relax one of them")
    best_parts, best = min(feasible, key=lambda pair: (pair[1].objective, pair[1].latency_ms))
    chosen = best
    table = _switch_table(model, objective, feasible)
    machines = [_machine_summary(spec, m) for spec, m in zip(topology.machines, model.machines)]
    links = [LinkSummary(spec=spec, uplink_mbps=link.uplink_mbps, downlink_mbps=link.downlink_mbps,
                         rtt_ms=link.rtt_ms, tx_w=link.tx_w, rx_w=link.rx_w, source=link.source)
             for spec, link in zip(topology.links, model.links)]
    return ChainPlanReport(
        model=model_name, model_ref=model_ref, fingerprint=model.workload.fingerprint, input_shape=input_shape,
        topology=topology.text, machines=machines, links=links, hop_ms=topology.hop_ms, codec=codec_name,
        objective=objective.name, constraints=constraints, chosen=chosen,
        baselines=_unique([entry for _, entry in entries]), switch_table=table, min_cut_exact=exact,
        planner_ms=(time.perf_counter() - start) * 1e3)


def _unique(entries: list[ChainEntry]) -> list[ChainEntry]:
    """Entries in their order, the later of two equal placements dropped (its label kept in the first's)."""
    seen: dict[tuple, ChainEntry] = {}
    for entry in entries:
        key = (entry.last_tier, tuple(sorted(entry.assignment.items())))
        if key not in seen:
            seen[key] = entry
    return list(seen.values())


def _entry(model: ChainModel, parts: Breakdown, objective: Objective, constraints: Constraints,
           leakage: LeakageTable | None = None) -> ChainEntry:
    latency, throughput, bottleneck, energy, value = model.costs(parts, objective)
    placement = parts.placement
    last = placement.last_tier
    stages = []
    for t in range(last + 1):
        names = [n for n in model.workload.node_names if placement.tier_of[n] == t]
        stages.append(TierStage(tier=t, machine=model.machines[t].label, nodes=len(names),
                                first=names[0] if names else None, last=names[-1] if names else None,
                                compute_ms=float(parts.compute_ms[t]), decode_ms=float(parts.decode_ms[t]),
                                encode_ms=float(parts.encode_ms[t]), memory_bytes=int(parts.memory_bytes[t]),
                                weight_bytes=int(parts.weight_bytes[t])))
    hops = []
    for l in range(last):
        link = model.links[l]
        sent = [SentTensor(name=s.name, shape=s.shape, dtype=s.dtype, nbytes=s.nbytes,
                           payload_bytes=int(model.payload[model.index[v]])) for v in parts.crossing[l]
                if (s := model.spec[v]) is not None]
        hops.append(HopCost(link=link.name, crossing=sent, payload_bytes=int(parts.payload_bytes[l]),
                            transfer_ms=link.uplink_ms(parts.payload_bytes[l]), rtt_ms=link.rtt_ms,
                            overhead_ms=model.hop_ms, result_ms=link.downlink_ms(parts.result_bytes)))
    found = model.violations(parts, constraints, leakage)
    return ChainEntry(label=placement.label, method=placement.method, last_tier=last,
                      assignment=dict(placement.tier_of), stages=stages, hops=hops, latency_ms=latency,
                      throughput_fps=throughput, bottleneck=bottleneck, energy_mj=energy, objective=value,
                      feasible=not found, violations=found)


def _switch_table(model: ChainModel, objective: Objective, feasible: list) -> list[ChainSwitchRange]:  # noqa: ANN001
    """The best of the feasible placements at each first-link bandwidth (a log grid of 400 points, later links as
    planned): each placement's costs recomputed from its breakdown, nothing re-solved."""
    grid = np.geomspace(*_SWEEP, _SWEEP_POINTS)
    values = np.array([model.costs(parts, objective, grid)[4] for parts, _ in feasible]).T
    winners = np.argmin(values, axis=1)
    table: list[ChainSwitchRange] = []
    for i, winner in enumerate(winners):
        label = feasible[int(winner)][1].label
        low = float(grid[0]) if i == 0 else float(math.sqrt(grid[i - 1] * grid[i]))
        if table and table[-1].label == label:
            continue
        if table:
            table[-1].high_mbps = float(f"{low:.4g}")
        table.append(ChainSwitchRange(low_mbps=float(f"{low:.4g}"), high_mbps=_SWEEP[1], label=label))
    return table


def _machine_summary(spec: str, machine: Machine) -> MachineSummary:
    return MachineSummary(spec=spec, kind=machine.kind, model_ms=machine.model_ms, memory_bytes=machine.memory_bytes,
                          active_w=machine.active_w, idle_w=machine.idle_w, source=machine.source)


def plan_chain(traced: TracedModel, topology: Topology | str, *, codec: str = "fp32", objective: str = "latency",
               constraints: Constraints | None = None, name: str = "model", model_ref: dict | None = None,
               host_runs: int = 10, progress: bool = True, leakage: LeakageTable | None = None,
               message_ms: tuple[float, float] = (0.0, 0.0)) -> ChainPlanReport:
    """Plan ``traced`` on a chain of machines (see :mod:`edgesplit.plan.topology` for the grammar); ``leakage``
    (an audit's table) bounds what crosses the first link, as ``constraints`` say. ``message_ms``: this host's
    CPU ms per message of the serving stack, (sender, receiver) of a hop (:class:`ChainModel`); 0 unless measured
    (``bench/multitier.py`` measures it on the real relays)."""
    topology = parse_topology(topology) if isinstance(topology, str) else topology
    workload = workload_of(traced, name)
    host = HostProfiler(traced, name, host_runs, progress)
    machines = [resolve_machine(spec, workload, host.profile, host.memory_gb_s) for spec in topology.machines]
    links = [parse_link(spec) for spec in topology.links]
    codecs = parse_codecs(codec)
    if len(codecs) != 1:
        raise EdgesplitError("a chain plan sends every hop with one codec; give one --codec")
    constraints = constraints or Constraints()
    limits = list(topology.memory_bytes) or [None] * topology.tiers
    if constraints.device_memory_bytes is not None:
        limits[0] = constraints.device_memory_bytes  # --device-memory: tier 0's
    model = ChainModel(workload, machines, links, PlanCodec(codecs[0]), host.memory_gb_s(), hop_ms=topology.hop_ms,
                       memory_limits=limits, message_ms_per_byte=message_host_ms_per_byte(), message_ms=message_ms)
    return plan_chain_workload(model, parse_objective(objective), constraints, model_name=name,
                               model_ref=model_ref, topology=topology, codec_name=codecs[0].spec,
                               input_shape=list(traced.example_inputs[0].shape), leakage=leakage)

