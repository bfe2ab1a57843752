"""What does the default profile cost, and how far are its head latencies from heads measured as a whole?

For each model, side by side in one run:
  forward     the whole model's forward time (median of 9 samples: before the reference, and just before and just
              after the default profile);
  default     ``profile_model`` as ``edgesplit profile`` runs it (``measure="calibrate"``): its wall time, and that
              time over (forward × runs), the figure issue 18 bounds by 10;
  reference   heads measured as a whole, the exhaustive mode's way (``--measure all``: a ``Sampler`` per head, ``runs``
              samples in interleaved rounds with the whole model), for every cut — or, where that would take longer
              than ``--reference-seconds``, for an evenly spaced sample of cuts (said in the table: ``sampled``); half
              its rounds run just before the default profile and half just after, so drift shifts both alike;
  errors      |default head_ms - reference| / reference over the reference's cuts with a non-empty head: median and
              worst; also with derived heads rescaled by the calibration's ``scale`` (which the profile
              reports but does not apply), and drift-corrected (each head as a share of its own run's
              whole-model time: the default profile and the reference run seconds apart on a shared machine whose
              speed drifts).

Before the first model, one small profile runs untimed, so one-off imports (fake tensors, the profiler) are not
charged to the first model.

    python bench/profile_accuracy.py [--runs 20] [--threads N] [--models resnet20,vit_b16] [--json OUT]
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
from edgesplit.model.graph import TracedModel, trace
from edgesplit.profile import machine_info, profile_model
from edgesplit.profile.timing import Sampler

RESULTS = Path(__file__).parent / "results"
SMALL = ["small_cnn", "resnet8", "resnet20", "mobilenetv2", "hybrid_vit"]
IMAGENET = ["resnet18", "resnet50", "mobilenetv3_small", "mobilenetv3_large", "vit_ti16", "vit_s16", "vit_b16"]
COST_TARGET = 10.0  # default profile ≤ 10 × forward × runs
VIT_B_SECONDS = 120.0  # default profile of a 12-layer ViT-B/16 at 224×224 on 2 cores
ERROR_TARGET = 0.10  # head-latency median |error| against exhaustive measurement


class Reference:
    """Heads measured as a whole, and the whole model, in interleaved rounds: ``rounds(n)`` takes ``n`` more."""

    def __init__(self, traced: TracedModel, indices: list[int], warmup: int) -> None:
        self.whole = Sampler(traced.graph_module, traced.example_inputs, warmup)
        self.heads = {index: Sampler(traced.split(traced.cuts[index]).head, traced.example_inputs, 1)
                      for index in indices}
        self.seconds = 0.0

    def rounds(self, count: int) -> None:
        started = time.perf_counter()
        for _ in range(count):
            self.whole.sample()
            for sampler in self.heads.values():
                sampler.sample()
        self.seconds += time.perf_counter() - started

    def head_ms(self) -> dict[int, float]:
        return {index: sampler.median_ms for index, sampler in self.heads.items()}


def reference_cuts(traced: TracedModel, forward_ms: float, runs: int, seconds: float) -> list[int]:
    """Every cut with a non-empty head, or an evenly spaced sample whose heads take about ``seconds`` to time."""
    candidates = [cut.index for cut in traced.cuts if cut.position > 0]
    affordable = max(8, int(seconds / (forward_ms / 2e3 * runs)))  # a head costs half a forward on average
    if len(candidates) <= affordable:
        return candidates
    return sorted({candidates[round(k * (len(candidates) - 1) / (affordable - 1))] for k in range(affordable)})


def errors(estimate: dict[int, float], reference: dict[int, float]) -> dict:
    """Median and worst |estimate - reference| / reference over the reference's cuts."""
    relative = {index: (estimate[index] - ms) / ms for index, ms in reference.items()}
    worst = max(relative, key=lambda index: abs(relative[index]))
    return {"median_abs": statistics.median(abs(v) for v in relative.values()), "max_abs": abs(relative[worst]),
            "max_abs_at": worst, "median_signed": statistics.median(relative.values())}


def measure_model(name: str, runs: int, reference_seconds: float) -> dict:
    entry = zoo.get_entry(name)
    torch.manual_seed(0)
    traced = trace(entry.factory().eval(), torch.randn(entry.input_shape))
    forward = Sampler(traced.graph_module, traced.example_inputs, 2)
    for _ in range(3):
        forward.sample()
    indices = reference_cuts(traced, forward.median_ms, runs, reference_seconds)
    # The reference brackets the default profile, half its rounds before and half after, so a machine whose
    # speed drifts during the measurement shifts both alike.
    bracket = Reference(traced, indices, warmup=3)
    bracket.rounds(runs // 2)
    before_ms = bracket.whole.median_ms
    for _ in range(3):
        forward.sample()
    started = time.perf_counter()
    default = profile_model(traced, name=name, runs=runs, progress=False)
    seconds = time.perf_counter() - started
    for _ in range(3):
        forward.sample()
    forward_ms = forward.median_ms
    after_start = len(bracket.whole.samples_ms)
    bracket.rounds(runs - runs // 2)
    after_ms = statistics.median(bracket.whole.samples_ms[after_start:])
    reference, reference_whole_ms, reference_seconds_taken = bracket.head_ms(), bracket.whole.median_ms, bracket.seconds
    cuts = {c.index: c for c in default.cuts}
    drift = {i: cuts[i].head_ms / default.model_ms * reference_whole_ms for i in indices}
    calibration = default.calibration
    return {
        "model": name, "input_shape": list(entry.input_shape), "cuts": len(traced.cuts),
        "nodes": len(traced.compute_nodes), "macs": default.model.macs, "forward_ms": forward_ms, "runs": runs,
        "default_seconds": seconds, "per_forward_run": seconds / (forward_ms / 1e3 * runs),
        "default_model_ms": default.model_ms, "measured_cuts": calibration.cuts, "scale": calibration.scale,
        "calibration": calibration.model_dump(),
        "reference": {"cuts": indices, "sampled": len(indices) < sum(c.position > 0 for c in traced.cuts),
                      "seconds": reference_seconds_taken, "whole_ms": reference_whole_ms,
                      "whole_ms_before": before_ms, "whole_ms_after": after_ms,
                      "head_ms": {str(i): ms for i, ms in reference.items()}},
        "head_error": errors({i: cuts[i].head_ms for i in indices}, reference),
        "head_error_derived_only": (errors({i: cuts[i].head_ms for i in indices if not cuts[i].measured},
                                           {i: ms for i, ms in reference.items() if not cuts[i].measured})
                                    if any(not cuts[i].measured for i in indices) else None),
        "scaled_error": errors({i: cuts[i].head_ms if cuts[i].measured else cuts[i].head_ms_summed * calibration.scale
                                for i in indices}, reference),
        "drift_corrected_error": errors(drift, reference),
        "per_cut": [{"index": i, "after": cuts[i].after, "measured": cuts[i].measured, "reference_ms": reference[i],
                     "head_ms": cuts[i].head_ms, "head_ms_summed": cuts[i].head_ms_summed,
                     "head_ms_drift_corrected": drift[i]} for i in indices],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", default=",".join(name for name in SMALL + IMAGENET if name in zoo.ZOO))
    parser.add_argument("--reference-seconds", type=float, default=20.0,
                        help="time the reference may spend on a model's heads before it samples cuts")
    parser.add_argument("--json", type=Path, default=RESULTS / "profile_accuracy.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=200)
    warm = trace(zoo.small_cnn(), torch.randn(1, 1, 8, 8))
    profile_model(warm, runs=2, progress=False)  # one-off imports, not charged to the first model
    rows = []
    for name in args.models.split(","):
        rows.append(measure_model(name, args.runs, args.reference_seconds))
        row = rows[-1]
        console.print(f"{name}: default {row['default_seconds']:.1f} s = {row['per_forward_run']:.1f} × forward × "
                      f"runs, head median |err| {row['head_error']['median_abs']:.1%}")

    table = Table(title=f"default profile: cost and head-latency error against heads measured whole — "
                        f"{machine_info().cpu_model}, {torch.get_num_threads()} threads, {args.runs} runs")
    for column in ("model", "input", "cuts", "forward ms", "default s", "× forward × runs", "measured", "scale",
                   "reference cuts", "head median |err|", "head worst |err| (cut)", "rescaled median |err|",
                   "drift-corrected median |err|"):
        table.add_column(column, justify="left" if column in ("model", "input") else "right")
    for row in rows:
        reference, head = row["reference"], row["head_error"]
        table.add_row(row["model"], "×".join(map(str, row["input_shape"][1:])), str(row["cuts"]),
                      f"{row['forward_ms']:.2f}", f"{row['default_seconds']:.1f}", f"{row['per_forward_run']:.1f}",
                      str(len(row["measured_cuts"])), f"{row['scale']:.2f}",
                      f"{len(reference['cuts'])}{' sampled' if reference['sampled'] else ' (all)'}",
                      f"{head['median_abs']:.1%}", f"{head['max_abs']:.1%} ({head['max_abs_at']})",
                      f"{row['scaled_error']['median_abs']:.1%}", f"{row['drift_corrected_error']['median_abs']:.1%}")
    console.print(table)
    worst_cost = max(rows, key=lambda r: r["per_forward_run"])
    console.print(f"cost ≤ {COST_TARGET:.0f} × forward × runs: "
                  f"{'met' if worst_cost['per_forward_run'] <= COST_TARGET else 'NOT met'} "
                  f"(worst {worst_cost['model']}: {worst_cost['per_forward_run']:.1f})")
    for row in rows:
        if row["model"] == "vit_b16":
            console.print(f"ViT-B/16 224×224 default profile ≤ {VIT_B_SECONDS:.0f} s: "
                          f"{'met' if row['default_seconds'] <= VIT_B_SECONDS else 'NOT met'} "
                          f"({row['default_seconds']:.1f} s, {torch.get_num_threads()} threads)")
    pooled = statistics.median(abs((c["head_ms"] - c["reference_ms"]) / c["reference_ms"])
                               for row in rows for c in row["per_cut"])
    pooled_drift = statistics.median(abs((c["head_ms_drift_corrected"] - c["reference_ms"]) / c["reference_ms"])
                                     for row in rows for c in row["per_cut"])
    console.print(f"head median |err| ≤ {ERROR_TARGET:.0%} over every reference cut: "
                  f"{'met' if pooled <= ERROR_TARGET else 'NOT met'} ({pooled:.1%}; drift-corrected "
                  f"{pooled_drift:.1%}); per model worst: "
                  + ", ".join(f"{r['model']} {r['head_error']['max_abs']:.0%}" for r in rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine_info().model_dump(), "runs": args.runs,
                                     "threads": torch.get_num_threads(), "head_median_abs_error": pooled,
                                     "head_median_abs_error_drift_corrected": pooled_drift,
                                     "models": rows}, indent=2))
    console.print(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()
