"""The summary of an `edgesplit infer` run: its file schema (``kind: edgesplit.infer``, version 1) and its table.

``run_inference`` (``runtime/infer.py``) builds an :class:`InferSummary` and writes it as the ``summary`` of
``{"summary": ..., "records": [...]}`` (`edgesplit infer --json`, `edgesplit run`'s ``infer_*.json``). Readers
import it from here: :func:`load_infer_summary` reads such a file (or a bare summary), :func:`summary_table` turns
one into the console table.

Version 1 gained fields after its first release (``final_mbps_is_lower_bound``, ``fixed_cost_ms``). A summary is
built with every field; reading is *lenient* on request (``InferSummary.read(data, lenient=True)``, the default of
:func:`load_infer_summary`): a field an older file lacks takes the value that file meant, and keys this edgesplit
does not know are kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from rich.markup import escape
from rich.table import Table

from edgesplit.versioned import read_versioned

__all__ = ["INFER_KIND", "INFER_VERSION", "InferSummary", "LatencyMs", "SwitchRecord", "load_infer_summary",
           "percentile", "summary_table"]

INFER_KIND = "edgesplit.infer"
INFER_VERSION = 1


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0–100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


class LatencyMs(BaseModel):
    """Per-request latency in ms (head, encoding, every attempt, decoding); None for a run of no requests."""

    model_config = ConfigDict(extra="allow")

    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    max: float | None

    @classmethod
    def of(cls, latencies: Sequence[float]) -> LatencyMs:
        """The percentiles, mean and maximum of ``latencies`` (ms), to the µs."""
        return cls(p50=_rounded(percentile(latencies, 50)), p95=_rounded(percentile(latencies, 95)),
                   p99=_rounded(percentile(latencies, 99)),
                   mean=_rounded(sum(latencies) / len(latencies)) if latencies else None,
                   max=_rounded(max(latencies, default=None)))


class SwitchRecord(BaseModel):
    """One change of plan: the index of the first request on the new plan, the two labels, the estimate then."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    request: int
    from_label: str = Field(alias="from")
    to_label: str = Field(alias="to")
    mbps: float


class InferSummary(BaseModel):
    """An `edgesplit infer` run at a glance (the ``summary`` of its JSON file); the keys are the file's, in order."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["edgesplit.infer"] = INFER_KIND
    version: Literal[1] = INFER_VERSION
    model: str  # the plan's model name
    model_id: str | None  # the id the server knows it by
    server: str  # the server's URL
    source: str  # where the images came from
    images: int
    requests: int
    batch: int  # images per request
    seconds: float  # sending every image, first request to last answer
    throughput_ips: float | None  # images per second
    latency_ms: LatencyMs
    bytes_sent: int  # request frame bytes that crossed the uplink
    bytes_per_image: float
    switch_count: int
    switches: list[SwitchRecord]
    routes: dict[str, int]  # requests per plan label
    server_results: int
    device_results: int
    fallbacks: int  # results computed on the device because the server did not answer
    outages: int
    recoveries: int
    retries: int
    probes: int
    final_route: str | None  # the plan running at the end
    final_mbps: float | None  # the uplink estimate at the end
    final_mbps_is_lower_bound: bool  # the transfers were too short to time: the link is at least this fast
    fixed_cost_ms: float | None  # what a request costs beyond its transfer and the server's time
    rtt_floor_ms: float | None  # fixed_cost_ms by the name of earlier releases
    accuracy: float | None  # against the source's labels
    agreement: float | None  # predictions that match the whole model run on this machine
    max_abs_diff: float | None  # largest difference of the first output from the whole model's

    @classmethod
    def read(cls, data: Mapping[str, Any], *, lenient: bool = False) -> InferSummary:
        """``data`` (a summary as written) as an InferSummary; ``lenient`` accepts what older files lack."""
        return cls.model_validate(_lenient(data) if lenient else data)

    def to_json(self) -> dict[str, Any]:
        """The summary as written in a file: plain JSON data, the file's key names (``from``, ``to``)."""
        return self.model_dump(by_alias=True)


# What a version-1 file may lack, and what it meant: fields added after the first release, and those that the
# report has always read as optional.
_LENIENT_DEFAULTS: dict[str, Any] = {
    "model_id": None, "server_results": 0, "device_results": 0, "probes": 0, "final_route": None,
    "final_mbps": None, "final_mbps_is_lower_bound": False, "rtt_floor_ms": None, "accuracy": None,
    "agreement": None, "max_abs_diff": None}


def _lenient(data: Any) -> Any:
    """``data`` with what an older summary lacks filled in (``fixed_cost_ms`` was ``rtt_floor_ms``)."""
    if not isinstance(data, Mapping):
        return data
    filled = {**_LENIENT_DEFAULTS, **data}
    filled.setdefault("fixed_cost_ms", filled["rtt_floor_ms"])
    return filled


def load_infer_summary(path: str | Path, *, lenient: bool = True) -> InferSummary:
    """The summary in ``path``: an `edgesplit infer --json` file (``{"summary": ..., "records": ...}``) or a bare
    summary; a one-line EdgesplitError for a missing, unreadable, other-kind, other-version or malformed file."""
    def unwrap(data: Any) -> Any:
        summary = data.get("summary", data) if isinstance(data, dict) else data
        return _lenient(summary) if lenient else summary

    return read_versioned(path, InferSummary, kind=INFER_KIND, version=INFER_VERSION, what="inference run",
                          make="`edgesplit infer PLAN --server URL --json FILE`", again="run it again",
                          unwrap=unwrap)


def summary_table(summary: InferSummary | Mapping[str, Any]) -> Table:
    """The run at a glance: images, throughput, latency percentiles, bytes, switches, fallbacks, accuracy.

    ``summary`` may also be a summary as written (a dict), read leniently."""
    if not isinstance(summary, InferSummary):
        summary = InferSummary.read(summary, lenient=True)
    table = Table(title=escape(f"{summary.model} via {summary.server}: {summary.images} images from "
                               f"{summary.source}"), show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    latency = summary.latency_ms
    table.add_row("images / requests", f"{summary.images} / {summary.requests} (batch {summary.batch})")
    table.add_row("throughput", f"{summary.throughput_ips or 0:.1f} images/s over {summary.seconds:.2f} s")
    table.add_row("latency p50 / p95 / p99", "n/a" if latency.p50 is None else
                  f"{latency.p50:.1f} / {latency.p95:.1f} / {latency.p99:.1f} ms")
    table.add_row("bytes sent", f"{summary.bytes_sent:,} ({summary.bytes_per_image:,.0f} per image)")
    table.add_row("routes", escape(", ".join(f"{label} ×{n}" for label, n in summary.routes.items())))
    switches = escape("; ".join(f"#{s.request} {s.from_label} → {s.to_label} at {s.mbps:.3g} Mbit/s"
                                for s in summary.switches))
    table.add_row("switches", f"{summary.switch_count}" + (f": {switches}" if switches else ""))
    table.add_row("fallbacks", f"{summary.fallbacks} result(s) on the device, {summary.outages} outage(s), "
                               f"{summary.recoveries} recovery(ies), {summary.retries} retry(ies)")
    mbps = summary.final_mbps
    at_least = "≥ " if summary.final_mbps_is_lower_bound else ""  # transfers too short to time
    fixed = summary.fixed_cost_ms
    table.add_row("uplink estimate", "n/a" if mbps is None else f"{at_least}{mbps:.3g} Mbit/s (fixed cost "
                  f"{'n/a' if fixed is None else f'{fixed:.3g}'} ms per request)")
    if summary.accuracy is not None:
        table.add_row("accuracy", f"{summary.accuracy:.2%}")
    if summary.agreement is not None:
        table.add_row("agreement with the model run here", f"{summary.agreement:.2%} (max abs diff "
                      f"{summary.max_abs_diff:.2e})")
    return table
