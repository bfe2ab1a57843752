"""PNG figures for the stages' results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from .profile import ProfileReport  # noqa: E402


def plot_profile(report: ProfileReport, path: str | Path) -> Path:
    """Crossing bytes (log scale) and cumulative head latency against cut index, with the input size marked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cuts = report.cuts
    index = [c.index for c in cuts]
    figure, bytes_axis = plt.subplots(figsize=(10, 5.4), dpi=120)
    bytes_axis.bar(index, [max(c.crossing_bytes, 1) for c in cuts], color="#4c72b0", alpha=0.75,
                   label="bytes crossing (float32)")
    bytes_axis.axhline(cuts[0].crossing_bytes, color="#4c72b0", linestyle=":", linewidth=1.2,
                       label="raw input bytes")
    bytes_axis.set_yscale("log")
    bytes_axis.set_xlabel("cut index (head = nodes before the cut)")
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
