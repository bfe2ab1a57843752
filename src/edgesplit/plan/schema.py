"""The plan as JSON: versioned pydantic models that `edgesplit plan` writes and the runtime reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, field_validator

from edgesplit.model.graph import TensorSpec
from edgesplit.model.limits import check_input_shape
from edgesplit.versioned import read_versioned

PLAN_VERSION = 1


class Costs(BaseModel):
    """Predicted costs of one inference under one plan (times in ms, energy in mJ on the device)."""

    device_ms: float
    encode_ms: float
    uplink_ms: float
    rtt_ms: float
    decode_ms: float
    server_ms: float
    downlink_ms: float
    latency_ms: float
    throughput_fps: float  # pipelined: one inference per slowest stage (device, network, server)
    uplink_bytes: int
    downlink_bytes: int
    device_compute_mj: float | None
    radio_mj: float | None
    idle_mj: float | None
    energy_mj: float | None
    head_memory_bytes: int  # peak live activations while the head runs (inputs included)
    head_weight_bytes: int


class SentTensor(TensorSpec):
    """A crossing tensor as a plan sends it: its spec (``nbytes`` in memory) and its payload after the codec."""

    payload_bytes: int  # after the codec, with its frame header


class PlanEntry(BaseModel):
    """One way to run the model: all on the device, all on the server, or split after a head."""

    label: str
    kind: Literal["all-device", "all-server", "split"]
    position: int | None  # topological-prefix position, when the head is a prefix (0 = send the input tensor)
    cut_index: int | None  # index among `edgesplit profile`'s candidate cuts, when it is one of them
    after: str | None  # the last head node in topological order
    head_nodes: list[str] | None  # the head, when it is not a topological prefix (found by the min-cut)
    input_format: str | None  # for all-server: how the input is sent (uint8, png, jpeg, or the tensor)
    crossing: list[SentTensor]
    costs: Costs
    objective: float
    feasible: bool
    violations: list[str]
    codec: str | None = None  # how the crossing tensors are sent (a codec spec or a compress configuration)
    accuracy_drop: float | None = None  # measured by `edgesplit compress`, for its configurations


class SwitchRange(BaseModel):
    """Uplink bandwidths in [low, high) Mbit/s for which ``label`` is the best plan."""

    low_mbps: float
    high_mbps: float
    label: str
    kind: str
    position: int | None
    cut_index: int | None
    head_nodes: list[str] | None
    codec: str | None = None


def _rising(table: list) -> list:
    """A switch table's rows in rising, disjoint [low, high) ranges: a client looks its rate up row by row, so rows
    out of order or overlapping would pick a wrong plan without a word."""
    for row in table:
        if not row.low_mbps < row.high_mbps:
            raise ValueError(f"switch-table row '{row.label}' has an empty range [{row.low_mbps}, {row.high_mbps})")
    for lower, upper in zip(table, table[1:]):
        if lower.high_mbps > upper.low_mbps:
            raise ValueError(f"switch-table rows must rise without overlapping: '{lower.label}' ends at "
                             f"{lower.high_mbps} Mbit/s after '{upper.label}' starts at {upper.low_mbps}")
    return table


class MachineSummary(BaseModel):
    spec: str
    kind: str
    model_ms: float
    memory_bytes: int | None
    active_w: float | None
    idle_w: float | None
    source: str


class LinkSummary(BaseModel):
    spec: str
    uplink_mbps: float
    downlink_mbps: float
    rtt_ms: float
    tx_w: float
    rx_w: float
    source: str


class Constraints(BaseModel):
    device_memory_bytes: int | None = None
    max_uplink_bytes: int | None = None
    max_ssim: float | None = None
    max_probe_accuracy: float | None = None
    max_dfil: float | None = None  # highest dFIL (Fisher information bound, from the leakage table) allowed
    leakage_file: str | None = None
    max_accuracy_drop: float | None = None  # for configurations from `edgesplit compress` (0.01 = 1 point)
    keep_input_on_device: bool = False  # a policy that the raw input never leaves the device: no all-server plans
    compress_files: list[str] = []


class PlanReport(BaseModel):
    """Where to cut, predicted costs of every plan, and the bandwidth ranges where each is best."""

    version: int = PLAN_VERSION
    kind: Literal["edgesplit.plan"] = "edgesplit.plan"
    model: str
    model_ref: dict | None  # what rebuilds the model (zoo name or factory, input shape, weights file)
    fingerprint: str
    input_shape: list[int]
    device: MachineSummary
    server: MachineSummary
    link: LinkSummary
    codec: str
    objective: str
    constraints: Constraints
    chosen: PlanEntry
    all_device: PlanEntry
    all_server: PlanEntry  # the best way to send the whole input
    speedup_vs_all_device: float
    speedup_vs_all_server: float
    ranked: list[PlanEntry]
    pareto: list[str]  # labels of plans no other plan beats on latency, energy and uplink bytes at once
    switch_table: list[SwitchRange]
    min_cut_agrees: bool  # the min-cut's best head costs the same as the best of all candidates under the objective
    candidates: int
    planner_ms: float

    _rising_table = field_validator("switch_table")(_rising)

    @field_validator("input_shape")
    @classmethod
    def _bounded_shape(cls, shape: list[int]) -> list[int]:
        # Raises InputShapeError (not a ValueError), so the reader's one-line message says what is wrong.
        return list(check_input_shape(shape, "the plan's input_shape"))


def load_plan(path: str | Path) -> PlanReport:
    """Read a plan JSON, refusing other kinds and versions with a clear message."""
    return read_versioned(path, PlanReport, kind="edgesplit.plan", version=PLAN_VERSION, what="plan",
                          make="`edgesplit plan MODEL ... --json plan.json`", again="plan again")


# --- plans over a chain of K tiers (`edgesplit plan --topology`) -------------------------------------------

CHAIN_PLAN_VERSION = 1


class TierStage(BaseModel):
    """What one tier of a chain plan runs and holds (times in ms on that tier's machine)."""

    tier: int
    machine: str
    nodes: int  # compute nodes it runs (0: it only relays what crosses it)
    first: str | None  # its first and last compute node in topological order
    last: str | None
    compute_ms: float
    decode_ms: float  # decoding what it receives
    encode_ms: float  # encoding what it sends on
    memory_bytes: int  # peak live activations while its segment runs (what it receives and forwards included)
    weight_bytes: int


class HopCost(BaseModel):
    """One link of a chain plan: what crosses it (forwarded tensors included) and what that costs."""

    link: str
    crossing: list[SentTensor]
    payload_bytes: int
    transfer_ms: float  # the payload at the link's uplink rate
    rtt_ms: float
    overhead_ms: float  # the topology's fixed framework cost per hop and message
    result_ms: float  # the result coming back over this link


class ChainEntry(BaseModel):
    """One placement of the model on the chain: every compute node's tier, and its predicted costs."""

    label: str
    method: str  # how it was found: "min-cut", "contiguous DP", "baseline"
    last_tier: int  # the farthest tier used: the output is computed there and sent back down the chain
    assignment: dict[str, int]  # compute node name -> tier (tensors only flow to equal or later tiers)
    stages: list[TierStage]
    hops: list[HopCost]  # links 0 .. last_tier − 1
    latency_ms: float
    throughput_fps: float  # pipelined: one inference per slowest stage (a tier's busy time, or a link)
    bottleneck: str  # which stage limits throughput
    energy_mj: float | None  # on the device (tier 0), when its power is known
    objective: float
    feasible: bool
    violations: list[str]


class ChainSwitchRange(BaseModel):
    """First-link bandwidths in [low, high) Mbit/s for which ``label`` is the best placement (later links as planned)."""

    low_mbps: float
    high_mbps: float
    label: str


class ChainPlanReport(BaseModel):
    """Where each node runs on a chain of machines, with the baselines it beats and a switch table."""

    version: int = CHAIN_PLAN_VERSION
    kind: Literal["edgesplit.chainplan"] = "edgesplit.chainplan"
    model: str
    model_ref: dict | None
    fingerprint: str
    input_shape: list[int]
    topology: str  # the chain in the command-line grammar
    machines: list[MachineSummary]
    links: list[LinkSummary]
    hop_ms: float
    codec: str
    objective: str
    constraints: Constraints
    chosen: ChainEntry
    baselines: list[ChainEntry]  # all on each tier; the best using each pair of tiers; the contiguous DP's best
    switch_table: list[ChainSwitchRange]
    min_cut_exact: bool  # the layered min-cut's value equals its placement's evaluated objective
    planner_ms: float

    _rising_table = field_validator("switch_table")(_rising)

    @field_validator("input_shape")
    @classmethod
    def _bounded_shape(cls, shape: list[int]) -> list[int]:
        return list(check_input_shape(shape, "the plan's input_shape"))

    def entry(self, label: str) -> ChainEntry:
        return next(e for e in [self.chosen, *self.baselines] if e.label == label)


def load_chain_plan(path: str | Path) -> ChainPlanReport:
    """Read a chain plan JSON (`edgesplit plan --topology ... --json`)."""
    return read_versioned(path, ChainPlanReport, kind="edgesplit.chainplan", version=CHAIN_PLAN_VERSION,
                          what="chain plan", make="`edgesplit plan MODEL --topology 'A > LINK > B > LINK > C' --json "
                          "plan.json`", again="plan again")


def plan_kind(path: str | Path) -> str | None:
    """The ``kind`` of the JSON file at ``path`` ("edgesplit.plan", "edgesplit.chainplan", …); None when it cannot
    be read (its reader then says what is wrong)."""
    try:
        with open(path, "rb") as file:
            data = json.loads(file.read(64 << 20))
    except (OSError, ValueError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def is_chain_plan(path: str | Path) -> bool:
    """Whether ``path`` is a chain plan's JSON (its ``kind``)."""
    return plan_kind(path) == "edgesplit.chainplan"


def load_any_plan(path: str | Path) -> PlanReport | ChainPlanReport:
    """A two-tier plan or a chain plan, whichever ``path`` holds."""
    return load_chain_plan(path) if is_chain_plan(path) else load_plan(path)
