"""PNG figures for the stages' results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from edgesplit.compress.rate import CompressReport
from edgesplit.plan.costs import LinkSweep, parse_objective
from edgesplit.plan.schema import ChainPlanReport, PlanReport
from edgesplit.profile import ProfileReport

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

_SPLIT_LINES = 40  # thin lines for at most this many split plans, best-ranked first


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (no display), imported when the first figure is drawn.

    matplotlib takes about 0.6 s to import; every CLI start and every command that draws nothing would pay it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def plot_profile(report: ProfileReport, path: str | Path) -> Path:
    """Crossing bytes (log scale) and cumulative head latency against cut index, with the input size marked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cuts = report.cuts
    index = [c.index for c in cuts]
    plt = pyplot()
    figure, bytes_axis = plt.subplots(figsize=(10, 5.4), dpi=120)
    bytes_axis.bar(index, [max(c.crossing_bytes, 1) for c in cuts], color="#4c72b0", alpha=0.75,
                   label="bytes crossing (float32)")
    bytes_axis.axhline(cuts[0].crossing_bytes, color="#4c72b0", linestyle=":", linewidth=1.2,
                       label="raw input bytes")
    bytes_axis.set_yscale("log")
    bytes_axis.set_xlabel("cut index (head = nodes before the cut)")
    bytes_axis.xaxis.set_major_locator(plt.MaxNLocator(integer=True))  # cuts are whole: no tick at 2.5
    bytes_axis.set_ylabel("bytes crossing the network", color="#4c72b0")
    multi = [c.index for c in cuts if len(c.crossing) > 1]
    if multi:
        bytes_axis.scatter(multi, [cuts[i].crossing_bytes for i in multi], marker="v", color="#c44e52", s=14,
                           zorder=3, label="2+ tensors cross (inside a block)")

    latency_axis = bytes_axis.twinx()
    latency_axis.plot(index, [c.head_ms for c in cuts], color="#dd8452", linewidth=2, label="head latency, measured")
    latency_axis.plot(index, [c.head_ms_summed for c in cuts], color="#dd8452", linestyle="--", linewidth=1.2,
                      label="head latency, sum of nodes")
    latency_axis.set_ylabel("head latency on this machine (ms)", color="#dd8452")
    latency_axis.set_ylim(bottom=0)

    handles = bytes_axis.get_legend_handles_labels()
    more = latency_axis.get_legend_handles_labels()
    bytes_axis.legend(handles[0] + more[0], handles[1] + more[1], loc="upper center", bbox_to_anchor=(0.5, -0.13),
                      ncol=3, fontsize=8, frameon=False)
    machine = report.machine
    bytes_axis.set_title(f"{report.model.name}: {report.model.macs / 1e6:.1f} M MACs, {len(cuts)} cuts — "
                         f"{machine.cpu_model}, {machine.threads} threads", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_plan(report: PlanReport, path: str | Path) -> Path:
    """End-to-end latency against uplink bandwidth (log-log): all-device, all-server, each cut, the chosen envelope."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bandwidth = np.geomspace(report.switch_table[0].low_mbps, report.switch_table[-1].high_mbps, 400)
    entries = report.ranked
    latency = LinkSweep([e.costs for e in entries], parse_objective("latency"), report.link).values(bandwidth)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(10, 5.8), dpi=120)
    splits = [i for i, e in enumerate(entries) if e.kind == "split"][:_SPLIT_LINES]
    for n, i in enumerate(splits):
        axis.plot(bandwidth, latency[:, i], color="#8c8c8c", linewidth=0.6, alpha=0.5,
                  label=f"split plans ({len(splits)} best shown)" if n == 0 else None)
    palette = ["#4c72b0", "#55a868", "#8172b2", "#64b5cd"]
    servers = [i for i, e in enumerate(entries) if e.kind == "all-server"]
    for colour, i in zip(palette, servers):
        axis.plot(bandwidth, latency[:, i], color=colour, linewidth=1.8, label=entries[i].label)
    device = next(i for i, e in enumerate(entries) if e.kind == "all-device")
    axis.plot(bandwidth, latency[:, device], color="#dd8452", linewidth=2, linestyle="--", label="all on device")
    allowed = [i for i, e in enumerate(entries) if e.feasible]
    objective_values = LinkSweep([entries[i].costs for i in allowed], parse_objective(report.objective),
                                 report.link, report.device.idle_w).values(bandwidth)
    best = np.array(allowed)[np.argmin(objective_values, axis=1)]
    axis.plot(bandwidth, latency[np.arange(len(bandwidth)), best], color="black", linewidth=2.6, alpha=0.85,
              label=f"chosen plan at each bandwidth ({report.objective})")
    axis.axvline(report.link.uplink_mbps, color="#c44e52", linestyle=":", linewidth=1.5)
    axis.scatter([report.link.uplink_mbps], [report.chosen.costs.latency_ms], color="#c44e52", zorder=5, s=40,
                 label=f"{report.link.spec} uplink {report.link.uplink_mbps:g} Mbit/s: {report.chosen.label}")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("uplink bandwidth (Mbit/s)")
    axis.set_ylabel("end-to-end latency per inference (ms)")
    axis.grid(True, which="major", alpha=0.3)
    axis.set_title(f"{report.model}: {report.device.spec} → {report.server.spec}, RTT {report.link.rtt_ms:g} ms, "
                   f"codec {report.codec}", fontsize=10)
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


_TIER_COLOURS = ["#dd8452", "#4c72b0", "#55a868", "#8172b2", "#c44e52", "#937860", "#da8bc3", "#8c8c8c"]


def plot_chain_plan(report: ChainPlanReport, path: str | Path) -> Path:
    """A chain plan in two panels: each placement's latency as time per stage (compute per tier, each hop's transfer
    with its codec, RTT and overhead, the result coming back), and where the chosen one runs each node."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = sorted([report.chosen, *[e for e in report.baselines if e.assignment != report.chosen.assignment
                                       or e.last_tier != report.chosen.last_tier]], key=lambda e: e.latency_ms)
    tiers = len(report.machines)
    plt = pyplot()
    figure, (timeline, strip) = plt.subplots(2, 1, figsize=(11, 3.2 + 0.45 * len(entries)), dpi=120,
                                             gridspec_kw={"height_ratios": [max(len(entries), 2), 1.2]})
    labelled: set[str] = set()
    for row, entry in enumerate(entries):
        start = 0.0
        pieces = []
        for t, stage in enumerate(entry.stages):
            pieces.append((stage.decode_ms + stage.compute_ms + stage.encode_ms, _TIER_COLOURS[t % 8], None,
                           f"tier {t}: {report.machines[t].spec}"))
            if t < entry.last_tier:
                hop = entry.hops[t]
                pieces.append((hop.transfer_ms + hop.rtt_ms + hop.overhead_ms, "white", "///",
                               "a hop: payload, RTT, overhead"))
        pieces.append((sum(hop.result_ms for hop in entry.hops), "#bbbbbb", None, "the result coming back"))
        for width, colour, hatch, label in pieces:
            if width <= 0:
                continue
            timeline.barh(row, width, left=start, color=colour, hatch=hatch, edgecolor="#555555", linewidth=0.5,
                          label=label if label not in labelled else None)
            labelled.add(label)
            start += width
        timeline.text(start, row, f"  {_short_ms(entry.latency_ms)} ms", va="center", fontsize=8)
    timeline.set_yticks(range(len(entries)), [("▶ " if e is report.chosen else "") + e.label for e in entries],
                        fontsize=8)
    timeline.invert_yaxis()
    timeline.set_xlim(0, 1.1 * max(e.latency_ms for e in entries))
    timeline.set_xlabel("latency of one inference (ms): time per stage, in order")
    timeline.set_title(f"{report.model} on {report.topology} (codec {report.codec}, objective {report.objective})",
                       fontsize=10)
    timeline.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    chosen = report.chosen
    names = list(chosen.assignment)
    placed = np.array([chosen.assignment[n] for n in names])
    for t in range(tiers):
        nodes = np.flatnonzero(placed == t)
        if nodes.size:
            strip.bar(nodes, np.ones(nodes.size), width=1.0, color=_TIER_COLOURS[t % 8],
                      label=f"tier {t} {report.machines[t].spec}: {nodes.size} nodes")
    for t, hop in enumerate(chosen.hops):
        boundary = np.flatnonzero(placed > t)
        if boundary.size:
            strip.axvline(boundary[0] - 0.5, color="black", linewidth=1)
            size = f"{hop.payload_bytes / 1e6:.3g} MB" if hop.payload_bytes >= 1e6 else f"{hop.payload_bytes / 1e3:.3g} kB"
            strip.text(boundary[0], 1.05, f" link {t}: {size}", fontsize=8, va="bottom")
    strip.set_xlim(-0.5, len(names) - 0.5)
    strip.set_ylim(0, 1.5)
    strip.set_yticks([])
    strip.set_xlabel(f"nodes in topological order: where the chosen placement runs each ({chosen.label})")
    strip.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=min(tiers, 4), fontsize=8, frameon=False)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _short_ms(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _annotate_stacked(axis: plt.Axes, labels: list[tuple[float, float, str, str]]) -> None:
    """Label points on a log-x axis, lifting a label above any neighbour's it would overlap (with headroom)."""
    accuracies = [y for _, y, _, _ in labels]
    y_range = (max(accuracies) - min(accuracies)) if len(accuracies) > 1 else 0.0
    placed: list[tuple[float, float, int]] = []
    for x, y, text, colour in sorted(labels):
        level = 0
        while any(abs(math.log10(max(x, 1e-9)) - px) < 0.15 and abs(y - py) <= 0.05 * y_range and level == pl
                  for px, py, pl in placed):
            level += 1
        placed.append((math.log10(max(x, 1e-9)), y, level))
        axis.annotate(text, (x, y), fontsize=7, xytext=(4, 4 + 9 * level), textcoords="offset points", color=colour)
    axis.margins(y=0.05 + 0.06 * max((level for _, _, level in placed), default=0))


def plot_rate_accuracy(report: CompressReport, path: str | Path) -> Path:
    """Accuracy against bytes per inference (log): codecs as points, bottleneck widths as a line, input as squares."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(9, 5.4), dpi=120)
    styles = {"codec": ("o", "#4c72b0", "feature codecs"), "input": ("s", "#8c8c8c", "input offloading"),
              "bottleneck": ("D", "#55a868", "learned bottleneck")}
    labels = []
    for kind, (marker, colour, label) in styles.items():
        points = sorted((c for c in report.configurations if c.kind == kind), key=lambda c: c.bytes_per_inference)
        if not points:
            continue
        x, y = [c.bytes_per_inference for c in points], [c.accuracy * 100 for c in points]
        axis.plot(x, y, marker=marker, color=colour, linestyle="-" if kind == "bottleneck" else "none",
                  markersize=6, label=label)
        labels += [(c.bytes_per_inference, c.accuracy * 100, c.name.removeprefix("input as "), colour) for c in points]
    _annotate_stacked(axis, labels)
    axis.axhline(report.baseline_accuracy * 100, color="black", linestyle="--", linewidth=1,
                 label=f"uncompressed model {report.baseline_accuracy:.2%}")
    axis.axhline((report.baseline_accuracy - 0.01) * 100, color="#c44e52", linestyle=":", linewidth=1,
                 label="1-point drop")
    axis.axvline(report.float32_bytes, color="#dd8452", linestyle=":", linewidth=1, label="float32 features")
    axis.set_xscale("log")
    axis.set_xlabel("bytes sent per inference (frame headers included)")
    axis.set_ylabel("top-1 accuracy (%)")
    axis.set_title(f"{report.model} on {report.data}: cut {report.cut_index} after {report.after}", fontsize=10)
    axis.grid(True, which="both", alpha=0.25)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


__all__ = ["plot_chain_plan", "plot_plan", "plot_profile", "plot_rate_accuracy", "pyplot"]
