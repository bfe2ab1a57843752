"""How much does edgesplit's plan gain over fixed strategies and Neurosurgeon's rule, measured over an emulated link?

For each model and each link rate (both ways) of a sweep, the planner (`plan_model`: this host's saved profile,
device slowed by --device-slowdown, photo samples so that PNG and JPEG inputs are candidates) ranks every plan.
Strategies compared, each run end to end over the emulated link (see bench/_splitbench.py):
  edgesplit     the planner's choice among all its candidates (input as 8-bit/PNG/JPEG/fp32, prefix cuts, min-cut heads);
  all-device    the whole model on the device;
  all-server    the input sent as PNG, the whole model on the server;
  Neurosurgeon  Kang et al.'s rule: the best of all-device, all-server sending the fp32 tensor, and every
                topological-prefix (chain) cut sending float32 features, priced by the same cost model
                (the same profile, so the same per-layer and per-prefix times: only the candidate set differs).
Regret = (measured latency of edgesplit's choice - the best measured) / the best measured, where the best is taken
over every plan measured at that rate: the strategies above and the --top K best-predicted plans (not every
candidate: most prefix cuts send far more than the input and are never close).
Speed-up = a baseline's measured latency / edgesplit's measured latency (the same rounds, the same machine states).

    python bench/plan_vs_baselines.py [--quick] [--models resnet20:128,mobilenetv2:96] [--rates 0.5,1,...]
        [--top 3] [--rounds 5] [--paced] [--json OUT] [--plot OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from edgesplit.profile import machine_info
from edgesplit.progress import progress_bar

from _splitbench import (RESULTS, add_measurement_arguments, PlanRun, Prepared, device_spec, link_note, make_link, measure_rtt_ms, plan_at,
                         predicted_parts, prepare, short_label)

STRATEGIES = ("edgesplit", "all-device", "all-server PNG", "Neurosurgeon")
BASELINES = STRATEGIES[1:]
TARGET_REGRET = 0.05
COLOURS = {"edgesplit": "black", "all-device": "#dd8452", "all-server PNG": "#4c72b0", "Neurosurgeon": "#55a868"}


def neurosurgeon(report):  # noqa: ANN001, ANN201 - PlanReport -> PlanEntry
    """The best chain plan: all-device, the fp32 input tensor, or a prefix cut sending float32 features."""
    chain = [e for e in report.ranked if e.kind == "all-device"
             or (e.kind == "all-server" and e.input_format == "tensor")
             or (e.kind == "split" and e.head_nodes is None)]
    return min(chain, key=lambda e: e.costs.latency_ms)


def strategies(report) -> dict:  # noqa: ANN001
    return {"edgesplit": report.chosen, "all-device": report.all_device,
            "all-server PNG": next(e for e in report.ranked if e.kind == "all-server" and e.input_format == "png"),
            "Neurosurgeon": neurosurgeon(report)}


def parse_models(text: str) -> list[tuple[str, int | None]]:
    out = []
    for item in text.split(","):
        name, _, size = item.partition(":")
        out.append((name, int(size) if size else None))
    return out


def spread(run: PlanRun) -> list[float]:
    totals = sorted(s.total_ms for s in run.samples)
    q = statistics.quantiles(totals, n=4) if len(totals) >= 2 else [totals[0]] * 3
    return [q[0], q[2]]


def plot(rows: list[dict], models: list[str], rates: list[float], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(models), figsize=(max(9.0, 6.2 * len(models)), 6.0), dpi=120, squeeze=False)
    for axis, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model]
        x = [r["rate_mbit"] for r in mine]
        # Neurosurgeon last and dashed: where it picks all-device its line lies on all-device's.
        for name in ("all-server PNG", "all-device", "Neurosurgeon", "edgesplit"):
            measured = [r["strategies"][name]["measured_ms"] for r in mine]
            predicted = [r["strategies"][name]["predicted_ms"] for r in mine]
            bold = name == "edgesplit"
            axis.plot(x, measured, label=f"{name}, measured", color=COLOURS[name], linewidth=2.6 if bold else 1.6,
                      linestyle=(0, (5, 3)) if name == "Neurosurgeon" else "-", marker="o" if bold else "s",
                      markersize=6 if bold else 4, zorder=4 if bold else 3)
            axis.plot(x, predicted, color=COLOURS[name], linestyle=":", linewidth=1.1, alpha=0.8, zorder=2)
        best = [r["best_measured_ms"] for r in mine]
        axis.scatter(x, best, marker="x", color="#c44e52", s=36, zorder=5, label="best of the plans measured")
        previous = None
        for r in mine:  # name edgesplit's choice where it changes
            if r["chosen_short"] != previous:
                axis.annotate(r["chosen_short"], (r["rate_mbit"], r["strategies"]["edgesplit"]["measured_ms"]),
                              textcoords="offset points", xytext=(4, -14), ha="left", fontsize=7, color="#333333",
                              bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
            previous = r["chosen_short"]
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks(rates)
        axis.set_xticklabels([f"{r:g}" for r in rates])
        axis.set_xlabel("link rate, both ways (Mbit/s)")
        axis.set_ylabel("end-to-end latency per inference (ms)")
        axis.grid(True, which="major", alpha=0.3)
        axis.set_title(model, fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="grey", linestyle=":", linewidth=1.1))
    labels.append("dotted: the planner's prediction for the same strategy")
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.1, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet20:128,mobilenetv2:96", help="NAME:SIZE,... (square inputs)")
    parser.add_argument("--rates", default="0.5,1,2,5,10,20,50,100", help="link rates in Mbit/s, both ways")
    parser.add_argument("--top", type=int, default=3, help="also measure the K best-predicted plans at each rate")
    parser.add_argument("--rounds", type=int, default=5, help="timed samples of each plan (median)")
    parser.add_argument("--host-runs", type=int, default=3, help="profiling rounds for the planner")
    add_measurement_arguments(parser)
    parser.add_argument("--quick", action="store_true",
                        help="about a minute: resnet8 at 64×64, rates 0.5,2,10,50; 3 rounds; 3 profiling rounds")
    parser.add_argument("--json", type=Path, default=RESULTS / "plan_vs_baselines.json")
    parser.add_argument("--plot", type=Path, default=RESULTS / "plan_vs_baselines.png")
    args = parser.parse_args()
    if args.quick:
        args.models, args.rates, args.rounds, args.host_runs = "resnet8:64", "0.5,2,10,50", 3, 3
    torch.set_num_threads(args.threads)
    rates = [float(r) for r in args.rates.split(",")]
    console = Console(width=200)
    started, load_before = time.perf_counter(), os.getloadavg()
    note = link_note(args.paced)
    console.print(f"link: {note}; load average {load_before[0]:.2f} on {os.cpu_count()} cores")

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="plan-vs-baselines-") as folder:
        prepared: list[Prepared] = [prepare(name, size, host_runs=args.host_runs, workdir=Path(folder))
                                    for name, size in parse_models(args.models)]
        with contextlib.ExitStack() as stack:
            links = {rate: stack.enter_context(make_link(rate, args.paced)) for rate in rates}
            rtts = {rate: measure_rtt_ms(link) for rate, link in links.items()}
            cells: list[dict] = []  # one per (model, rate): its report, its strategies and its runs by label
            for p in prepared:
                for rate in rates:
                    report = plan_at(p, rate, rtts[rate], args.device_slowdown)
                    chosen = strategies(report)
                    wanted = {e.label: e for e in [*chosen.values(), *report.ranked[:args.top]]}
                    cells.append({"prepared": p, "rate": rate, "report": report, "strategies": chosen,
                                  "runs": {label: PlanRun(p, e, args.device_slowdown) for label, e in wanted.items()}})
            every = [(cell, run) for cell in cells for run in cell["runs"].values()]
            for _, run in every:
                run.warm_up()
            with progress_bar() as bar:
                task = bar.add_task("plans over the links", total=args.rounds * len(every), status="")
                # Every round takes one sample of every plan at every rate, so all see the same machine states.
                for round_number in range(args.rounds):
                    for cell, run in every:
                        bar.update(task, status=f"round {round_number + 1}/{args.rounds}, "
                                                f"{cell['prepared'].name} at {cell['rate']:g} Mbit/s")
                        run.sample(round_number, links[cell["rate"]])
                        bar.advance(task)

        for cell in cells:
            p, rate, report = cell["prepared"], cell["rate"], cell["report"]
            measured = {label: run.measured() for label, run in cell["runs"].items()}
            best_label = min(measured, key=lambda label: measured[label]["total_ms"])
            best = measured[best_label]["total_ms"]
            chosen_ms = measured[report.chosen.label]["total_ms"]
            row = {
                "model": p.label, "rate_mbit": rate, "rtt_ms": rtts[rate], "link": links[rate].kind,
                "chosen": report.chosen.label, "chosen_short": short_label(report.chosen),
                "best_measured": best_label, "best_measured_short": short_label(cell["runs"][best_label].entry),
                "best_measured_ms": best, "regret": (chosen_ms - best) / best,
                "strategies": {}, "measured_plans": []}
            for name, entry in cell["strategies"].items():
                m = measured[entry.label]
                row["strategies"][name] = {
                    "label": entry.label, "short": short_label(entry), "predicted_ms": entry.costs.latency_ms,
                    "measured_ms": m["total_ms"], "iqr_ms": spread(cell["runs"][entry.label]),
                    "speedup_of_edgesplit": m["total_ms"] / chosen_ms,
                    "predicted_speedup_of_edgesplit": entry.costs.latency_ms / report.chosen.costs.latency_ms}
            for label, run in cell["runs"].items():
                row["measured_plans"].append({
                    "label": label, "short": short_label(run.entry), "predicted_rank": next(
                        i for i, e in enumerate(report.ranked) if e.label == label) + 1,
                    "predicted": predicted_parts(run.entry), "measured": measured[label],
                    "iqr_ms": spread(run), "samples_ms": [s.total_ms for s in run.samples],
                    "tcp_retransmits": measured[label]["retransmits"]})
            rows.append(row)

    models = [p.label for p in prepared]
    table = Table(title=f"measured end-to-end latency (ms) by strategy — {machine_info().cpu_model}, "
                        f"{torch.get_num_threads()} thread(s), device = host/{args.device_slowdown:g}, server = host, "
                        f"median of {args.rounds} rounds; speed-up = baseline / edgesplit")
    for column in ("model", "Mbit/s", "edgesplit's choice", "edgesplit", "all-device", "all-server PNG",
                   "Neurosurgeon (its choice)", "× vs device", "× vs PNG", "× vs Neurosurgeon", "best measured",
                   "regret"):
        table.add_column(column, justify="left" if column in ("model", "edgesplit's choice", "best measured",
                                                              "Neurosurgeon (its choice)") else "right")
    for r in rows:
        s = r["strategies"]
        regret_style = "red" if r["regret"] > TARGET_REGRET else ""
        table.add_row(r["model"], f"{r['rate_mbit']:g}", r["chosen_short"], f"{s['edgesplit']['measured_ms']:.1f}",
                      f"{s['all-device']['measured_ms']:.1f}", f"{s['all-server PNG']['measured_ms']:.1f}",
                      f"{s['Neurosurgeon']['measured_ms']:.1f} ({s['Neurosurgeon']['short']})",
                      *(f"{s[b]['speedup_of_edgesplit']:.2f}" for b in BASELINES),
                      f"{r['best_measured_short']} {r['best_measured_ms']:.1f}",
                      f"[{regret_style}]{r['regret']:+.1%}[/]" if regret_style else f"{r['regret']:+.1%}")
    console.print(table)

    def geomean(values: list[float]) -> float:
        return math.exp(statistics.fmean(math.log(v) for v in values))

    summary = {
        "max_regret": max(r["regret"] for r in rows),
        "max_regret_at": max(rows, key=lambda r: r["regret"])["model"] + " at "
                         + f"{max(rows, key=lambda r: r['regret'])['rate_mbit']:g} Mbit/s",
        "median_regret": statistics.median(r["regret"] for r in rows),
        "rates_over_target": [f"{r['model']} at {r['rate_mbit']:g}" for r in rows if r["regret"] > TARGET_REGRET],
        "speedup_geomean": {b: geomean([r["strategies"][b]["speedup_of_edgesplit"] for r in rows]) for b in BASELINES},
        "speedup_range": {b: [min(r["strategies"][b]["speedup_of_edgesplit"] for r in rows),
                              max(r["strategies"][b]["speedup_of_edgesplit"] for r in rows)] for b in BASELINES},
        "chosen_is_best_measured": sum(r["chosen"] == r["best_measured"] for r in rows) / len(rows),
    }
    met = summary["max_regret"] <= TARGET_REGRET
    console.print("speed-up of edgesplit's choice, geometric mean over models and rates (min–max): " + "; ".join(
        f"vs {b} {summary['speedup_geomean'][b]:.2f}× ({summary['speedup_range'][b][0]:.2f}–"
        f"{summary['speedup_range'][b][1]:.2f}×)" for b in BASELINES))
    console.print(f"edgesplit's choice was the fastest plan measured in {summary['chosen_is_best_measured']:.0%} of "
                  f"{len(rows)} (model, rate) cells; median regret {summary['median_regret']:+.1%}")
    for r in rows:
        if r["regret"] > TARGET_REGRET:
            chosen_iqr = r["strategies"]["edgesplit"]["iqr_ms"]
            best_plan = next(m for m in r["measured_plans"] if m["label"] == r["best_measured"])
            console.print(f"  regret {r['regret']:+.1%}: {r['model']} at {r['rate_mbit']:g} Mbit/s — chose "
                          f"{r['chosen_short']} ({r['strategies']['edgesplit']['predicted_ms']:.1f} ms predicted, "
                          f"{r['strategies']['edgesplit']['measured_ms']:.1f} measured, IQR "
                          f"{chosen_iqr[0]:.1f}–{chosen_iqr[1]:.1f}); best measured {r['best_measured_short']} "
                          f"({best_plan['predicted']['total_ms']:.1f} predicted, {r['best_measured_ms']:.1f} measured, "
                          f"IQR {best_plan['iqr_ms'][0]:.1f}–{best_plan['iqr_ms'][1]:.1f})")
    console.print(f"target regret ≤ {TARGET_REGRET:.0%} at every rate: {'met' if met else 'NOT met'} "
                  f"(max {summary['max_regret']:+.1%}, {summary['max_regret_at']}); "
                  f"{time.perf_counter() - started:.0f} s")

    title = (f"edgesplit vs fixed strategies and Neurosurgeon, measured over an emulated link "
             f"({'paced loopback' if args.paced else 'netns + tbf'}), median of {args.rounds} runs\n"
             f"device = this host slowed {args.device_slowdown:g}×, server = this host; "
             "labels: edgesplit's choice from that rate up")
    console.print(f"plot written to {plot(rows, models, rates, args.plot, title)}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "machine": machine_info().model_dump(), "threads": torch.get_num_threads(), "link": note,
        "models": {p.label: {"input_shape": list(p.shape), "cuts": len(p.traced.cuts), "model_ms": p.model_ms,
                             "profile_seconds": p.profile_seconds, "device": device_spec(p, args.device_slowdown)}
                   for p in prepared},
        "rates_mbit": rates, "rounds": args.rounds, "top": args.top, "host_runs": args.host_runs,
        "device_slowdown": args.device_slowdown, "quick": args.quick,
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "definitions": {
            "regret": "(measured edgesplit - best measured) / best measured, best over the strategies and the "
                      f"{args.top} best-predicted plans at that rate",
            "speedup_of_edgesplit": "measured baseline / measured edgesplit",
            "Neurosurgeon": "best predicted of all-device, all-server fp32 tensor and prefix cuts with fp32 "
                            "features, by edgesplit's cost model (same profile)"},
        "target": {"max_regret": TARGET_REGRET, "met": met}, "summary": summary, "rows": rows,
        "seconds": time.perf_counter() - started}, indent=2))
    console.print(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()
