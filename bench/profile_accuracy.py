"""How well do per-node latencies predict the latency of a head? For every cut of every zoo model.

The planner adds node latencies to price heads it never ran, so their sum must match a measured head.
Two estimates, side by side, against the head measured as a whole with torch.utils.benchmark:
  in-context  each node timed between timestamps during whole-graph runs (what edgesplit uses);
  isolated    each node timed alone in a loop (the per-layer micro-benchmark of Neurosurgeon-style tools).
Relative error = (estimate - measured) / measured, over cuts with a non-empty head (position ≥ 1).

It also profiles each model both ways, side by side: the default mode (``measure="calibrate"``: heads and tails
summed from node latencies, a few cuts run whole to calibrate, memory from liveness) and the exhaustive one
(``--measure all``: every head and tail run whole). It reports each mode's profile seconds, their ratio, the
default's seconds per (whole-model forward × runs), and the |error| of the default's head latency against the
exhaustive measurement over cuts with a non-empty head (median and worst), and whether head peak memory agrees.

    python bench/profile_accuracy.py [--runs 20] [--threads N] [--models small_cnn,resnet20] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from edgesplit.model import zoo
from edgesplit.model.graph import trace
from edgesplit.profile import machine_info, profile_model

RESULTS = Path(__file__).parent / "results"


def summarize(per_cut: list[dict], field: str) -> dict[str, float]:
    """Relative error (and the largest miss in ms) of a summed-node estimate against the measured heads."""
    heads = [c for c in per_cut if c["index"] >= 1]  # cut 0 has an empty head
    relative = [(c[field] - c["head_ms"]) / c["head_ms"] for c in heads]
    magnitudes = [abs(v) for v in relative]
    worst = max(range(len(heads)), key=lambda i: magnitudes[i])
    return {"median_abs": statistics.median(magnitudes), "max_abs": magnitudes[worst],
            "max_abs_at": f"{heads[worst]['model']} cut {heads[worst]['index']} ({heads[worst]['head_ms']:.3f} ms head)",
            "max_abs_ms": max(abs(c[field] - c["head_ms"]) for c in heads), "median_signed": statistics.median(relative)}


def compare_modes(default, exhaustive, default_seconds: float, exhaustive_seconds: float, runs: int) -> dict:
    """The default profile against the exhaustive one of the same model: cost, and head-latency error."""
    relative = [(d.head_ms - e.head_ms) / e.head_ms for d, e in zip(default.cuts, exhaustive.cuts)
                if d.position > 0 and e.head_ms > 0]
    magnitudes = [abs(v) for v in relative]
    worst = max(range(len(relative)), key=lambda i: magnitudes[i])
    heads = [(d, e) for d, e in zip(default.cuts, exhaustive.cuts) if d.position > 0]
    return {"default_seconds": default_seconds, "all_seconds": exhaustive_seconds,
            "ratio": exhaustive_seconds / default_seconds,
            "default_model_ms": default.model_ms, "all_model_ms": exhaustive.model_ms,
            "default_per_forward_run": default_seconds / (default.model_ms / 1e3 * runs),
            "measured_cuts": default.calibration.cuts,
            "head_median_abs_error": statistics.median(magnitudes), "head_max_abs_error": magnitudes[worst],
            "head_max_abs_error_at": f"cut {heads[worst][0].index} ({heads[worst][1].head_ms:.3f} ms head)",
            "head_median_signed_error": statistics.median(relative),
            "calibration": default.calibration.model_dump(),
            "peak_bytes_max_abs_error": max(abs(d.head_peak_bytes - e.head_peak_bytes) / max(e.head_peak_bytes, 1)
                                            for d, e in heads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", default=",".join(sorted(zoo.ZOO)))
    parser.add_argument("--json", type=Path, default=RESULTS / "profile_accuracy.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=180)
    rows = []
    for name in args.models.split(","):
        entry = zoo.get_entry(name)
        torch.manual_seed(0)
        traced = trace(entry.factory(), torch.randn(entry.input_shape))
        started = time.perf_counter()
        default = profile_model(traced, name=name, runs=args.runs)
        default_seconds = time.perf_counter() - started
        started = time.perf_counter()
        report = profile_model(traced, name=name, runs=args.runs, measure="all")
        per_cut = [{"model": name, "index": c.index, "after": c.after, "head_ms": c.head_ms,
                    "summed_in_context_ms": c.head_ms_summed,
                    "summed_isolated_ms": sum(n.latency_isolated_ms for n in report.nodes[:c.position])}
                   for c in report.cuts]
        rows.append({"model": name, "cuts": len(report.cuts), "model_ms": report.model_ms,
                     "in_context": summarize(per_cut, "summed_in_context_ms"),
                     "isolated": summarize(per_cut, "summed_isolated_ms"),
                     "per_cut": per_cut, "profile_seconds": time.perf_counter() - started,
                     "modes": compare_modes(default, report, default_seconds, time.perf_counter() - started,
                                            args.runs)})

    every_cut = [c for row in rows for c in row["per_cut"]]
    pooled = {"in_context": summarize(every_cut, "summed_in_context_ms"),
              "isolated": summarize(every_cut, "summed_isolated_ms")}
    table = Table(title=f"summed-node vs measured head latency — {machine_info().cpu_model}, "
                        f"{torch.get_num_threads()} threads, {args.runs} runs")
    for column in ("model", "cuts", "whole ms", "in-context median |err|", "in-context max |err|",
                   "in-context max miss ms", "isolated median |err|", "isolated max |err|", "isolated bias"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows + [{"model": "all cuts", "cuts": sum(r["cuts"] for r in rows), "model_ms": float("nan"), **pooled}]:
        table.add_row(row["model"], str(row["cuts"]), f"{row['model_ms']:.3f}",
                      f"{row['in_context']['median_abs']:.1%}", f"{row['in_context']['max_abs']:.1%}",
                      f"{row['in_context']['max_abs_ms']:.3f}",
                      f"{row['isolated']['median_abs']:.1%}", f"{row['isolated']['max_abs']:.1%}",
                      f"{row['isolated']['median_signed']:+.1%}")
    console.print(table)
    console.print(f"largest relative miss (in-context): {pooled['in_context']['max_abs_at']}")
    target_met = pooled["in_context"]["median_abs"] <= 0.15
    console.print(f"target median |err| ≤ 15% (in-context): {'met' if target_met else 'NOT met'}; "
                  f"isolated/in-context median error ratio "
                  f"{pooled['isolated']['median_abs'] / max(pooled['in_context']['median_abs'], 1e-9):.1f}×")
    modes = Table(title="default profile (calibrate) vs --measure all: cost and head-latency error of the default")
    for column in ("model", "cuts", "measured", "default s", "all s", "ratio", "default s / (forward × runs)",
                   "head median |err|", "head max |err|", "calibration median |err|", "peak bytes max |err|"):
        modes.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        m = row["modes"]
        modes.add_row(row["model"], str(row["cuts"]), str(len(m["measured_cuts"])), f"{m['default_seconds']:.1f}",
                      f"{m['all_seconds']:.1f}", f"{m['ratio']:.1f}×", f"{m['default_per_forward_run']:.1f}",
                      f"{m['head_median_abs_error']:.1%}", f"{m['head_max_abs_error']:.1%}",
                      f"{m['calibration']['head_median_abs_error']:.1%}", f"{m['peak_bytes_max_abs_error']:.1%}")
    console.print(modes)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine_info().model_dump(), "runs": args.runs,
                                     "threads": torch.get_num_threads(), "pooled": pooled, "models": rows}, indent=2))
    console.print(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()
