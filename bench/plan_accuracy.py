"""Does the planner's predicted end-to-end latency match a plan run end to end over a rate-limited link?

For each zoo model (its documented input size, natural-photo inputs), at each link rate, several plans:
all-device, all-server sending the fp32 tensor, all-server in the best input format, the cheapest-to-send
single-tensor cut in each third of the graph, the cheapest cut where 2+ tensors cross, and the planner's choice.
Predicted = the PlanEntry's latency from `plan_model` (device = this host's saved profile, scaled by
--device-slowdown; server = the same profile; link custom:up=R,down=R,rtt=<the RTT measured on the emulated link
with an empty request>; photo samples for the PNG/JPEG candidates). Measured = the plan run on this host, its
payload sent through the emulated link and answered with the model's output bytes (see bench/_splitbench.py),
median over rounds that take one sample of every plan of every model in turn.
Relative error = (predicted - measured) / measured.

    python bench/plan_accuracy.py [--quick] [--rates 1,10,100] [--rounds 7] [--paced] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from edgesplit.model import zoo
from edgesplit.model.graph import Cut, TracedModel
from edgesplit.profile import machine_info
from edgesplit.progress import progress_bar
from edgesplit.views import human_bytes

from _splitbench import (RESULTS, add_measurement_arguments, PlanRun, Prepared, bucket_bytes, device_spec, link_note, make_link, measure_rtt_ms,
                         plan_at, predicted_parts, prepare, relative, shapes_text, short_label)

TARGET_MEDIAN, TARGET_MAX = 0.10, 0.25
# TCP over Ethernet: a full frame carries 1448 payload bytes (MSS with timestamps) in 1514 bytes that tbf counts.
WIRE_OVERHEAD = 1514 / 1448


def interior_cuts(traced: TracedModel, thirds: int = 3) -> list[tuple[str, Cut]]:
    """The single-tensor cut that sends the fewest bytes in each third of the graph, and the cheapest 2+ cut."""
    end = len(traced.compute_nodes)
    inner = [c for c in traced.cuts if 0 < c.position < end]
    singles = [c for c in inner if len(c.crossing) == 1]
    picks = []
    for k in range(thirds):
        window = singles[k * len(singles) // thirds:(k + 1) * len(singles) // thirds]
        if window:
            picks.append((f"interior {k + 1}/{thirds}", min(window, key=lambda c: (c.crossing_bytes, c.index))))
    multis = [c for c in inner if len(c.crossing) >= 2]
    if multis:
        picks.append(("2+ tensors", min(multis, key=lambda c: (c.crossing_bytes, c.index))))
    return picks


def plans_for(report, picks: list[tuple[str, Cut]]) -> list[tuple[list[str], object]]:  # noqa: ANN001
    """(roles, PlanEntry) for the plans measured at one rate, each plan once."""
    by_label: dict[str, tuple[list[str], object]] = {}

    def add(role: str, entry) -> None:  # noqa: ANN001
        by_label.setdefault(entry.label, ([], entry))[0].append(role)

    add("all-device", report.all_device)
    add("all-server fp32", next(e for e in report.ranked if e.kind == "all-server" and e.input_format == "tensor"))
    add("best input format", report.all_server)
    for role, cut in picks:
        add(role, next(e for e in report.ranked
                       if e.kind == "split" and e.head_nodes is None and e.cut_index == cut.index))
    add("chosen", report.chosen)
    return list(by_label.values())


def summarize(cases: list[dict]) -> dict:
    errors = [c["error"] for c in cases]
    clean = [c for c in cases if not c["emulator_artifact"]]
    worst = max(cases, key=lambda c: abs(c["error"]))
    networked = [c for c in cases if c["predicted"]["network_ms"] >= 1.0]
    computed = [c for c in cases if c["predicted"]["device_ms"] + c["predicted"]["server_ms"] >= 1.0]
    return {
        "cases": len(cases), "median_abs": statistics.median(abs(e) for e in errors),
        "max_abs": abs(worst["error"]), "max_at": f"{worst['model']} {worst['plan']} at {worst['rate_mbit']:g} Mbit/s",
        "median_signed": statistics.median(errors),
        "within_10pct": sum(abs(e) <= 0.10 for e in errors) / len(errors),
        "within_25pct": sum(abs(e) <= 0.25 for e in errors) / len(errors),
        "network_measured_over_predicted": statistics.median(
            c["measured"]["network_ms"] / c["predicted"]["network_ms"] for c in networked) if networked else None,
        "compute_measured_over_predicted": statistics.median(
            (c["measured"]["device_ms"] + c["measured"]["server_ms"])
            / (c["predicted"]["device_ms"] + c["predicted"]["server_ms"]) for c in computed) if computed else None,
        "emulator_artifacts": sum(c["emulator_artifact"] for c in cases),
        "median_abs_without_artifacts": statistics.median(abs(c["error"]) for c in clean) if clean else None,
        "max_abs_without_artifacts": max(abs(c["error"]) for c in clean) if clean else None,
        "median_abs_wire_adjusted": statistics.median(abs(c["error_wire_adjusted"]) for c in cases),
        "max_abs_wire_adjusted": max(abs(c["error_wire_adjusted"]) for c in cases),
    }


def attribution(case: dict) -> tuple[str, str]:
    """Which part of the prediction is furthest off (measured - predicted, in ms), and the likely cause."""
    names = {"device_ms": "device", "encode_ms": "encode", "network_ms": "network", "decode_ms": "decode",
             "server_ms": "server"}
    gaps = {names[p]: case["measured"][p] - case["predicted"][p] for p in names}
    part = max(gaps, key=lambda k: abs(gaps[k]))
    if part != "network":
        cause = f"compute: {part} {'slower' if gaps[part] > 0 else 'faster'} than profiled"
    elif case["tcp_retransmits"] >= (len(case["samples_ms"]) + 1) // 2:
        cause = "emulator: tbf queue overflow, TCP retransmission timeouts"
    elif case["bucket_bytes"] and 0 < -gaps[part] <= 1.1 * case["bucket_bytes"] * 8 / (case["rate_mbit"] * 1e3) + 0.5:
        cause = (f"emulator: tbf's {case['bucket_bytes']} B bucket passes the first "
                 f"{'(and only) ' if case['sub_bucket'] else ''}frame at line speed")
    else:
        cause = f"network {'slower' if gaps[part] > 0 else 'faster'} than nominal"
    return f"{part} {gaps[part]:+.2f} ms", cause


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(sorted(zoo.ZOO)))
    parser.add_argument("--rates", default="1,10,100", help="link rates in Mbit/s, both ways")
    parser.add_argument("--rounds", type=int, default=7, help="timed samples of each plan (median)")
    parser.add_argument("--host-runs", type=int, default=10, help="profiling rounds for the planner")
    add_measurement_arguments(parser)
    parser.add_argument("--quick", action="store_true",
                        help="about a minute: small_cnn, resnet8, hybrid_vit; 3 rounds; 3 profiling rounds")
    parser.add_argument("--json", type=Path, default=RESULTS / "plan_accuracy.json")
    args = parser.parse_args()
    if args.quick:
        args.models, args.rounds, args.host_runs = "small_cnn,resnet8,hybrid_vit", 3, 3
    torch.set_num_threads(args.threads)
    rates = [float(r) for r in args.rates.split(",")]
    console = Console(width=200)
    started, load_before = time.perf_counter(), os.getloadavg()
    note = link_note(args.paced)
    console.print(f"link: {note}; load average {load_before[0]:.2f} on {os.cpu_count()} cores")

    cases: list[dict] = []
    models: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="plan-accuracy-") as folder:
        prepared: list[Prepared] = []
        for name in args.models.split(","):
            prepared.append(prepare(name, None, host_runs=args.host_runs, workdir=Path(folder)))
        picks = {p.name: interior_cuts(p.traced) for p in prepared}
        with contextlib.ExitStack() as stack:
            links = {rate: stack.enter_context(make_link(rate, args.paced)) for rate in rates}
            rtts = {rate: measure_rtt_ms(link) for rate, link in links.items()}
            runs: list[tuple[float, list[str], PlanRun]] = []
            for rate in rates:
                for p in prepared:
                    report = plan_at(p, rate, rtts[rate], args.device_slowdown)
                    models.setdefault(p.name, {
                        "input_shape": list(p.shape), "cuts": len(p.traced.cuts), "model_ms": p.model_ms,
                        "profile_seconds": p.profile_seconds, "device": device_spec(p, args.device_slowdown),
                        "chosen": {}})["chosen"][f"{rate:g}"] = report.chosen.label
                    runs += [(rate, roles, PlanRun(p, entry, args.device_slowdown))
                             for roles, entry in plans_for(report, picks[p.name])]
            for _, _, run in runs:
                run.warm_up()
            with progress_bar() as bar:
                task = bar.add_task("plans over the links", total=args.rounds * len(runs), status="")
                # Every round takes one sample of every plan at every rate, so all see the same machine states.
                for round_number in range(args.rounds):
                    for rate, _, run in runs:
                        bar.update(task, status=f"round {round_number + 1}/{args.rounds}, "
                                                f"{run.prepared.name} at {rate:g} Mbit/s")
                        run.sample(round_number, links[rate])
                        bar.advance(task)
            for rate, roles, run in runs:
                predicted, measured = predicted_parts(run.entry), run.measured()
                wire = predicted["total_ms"] + (WIRE_OVERHEAD - 1) * (
                    run.entry.costs.uplink_ms + run.entry.costs.downlink_ms)
                cases.append({
                    "model": run.prepared.name, "rate_mbit": rate, "rtt_ms": rtts[rate], "link": links[rate].kind,
                    "plan": short_label(run.entry), "label": run.entry.label, "roles": roles,
                    "kind": run.entry.kind, "cut_index": run.entry.cut_index,
                    "position": run.entry.position, "crossing": shapes_text(run.entry),
                    "crossing_tensors": len(run.entry.crossing),
                    "uplink_bytes_predicted": run.entry.costs.uplink_bytes,
                    "uplink_bytes_measured_mean": measured.pop("uplink_bytes_mean"),
                    "tcp_retransmits": measured.pop("retransmits"),
                    "bucket_bytes": bucket_bytes(links[rate]),
                    "sub_bucket": run.entry.costs.uplink_bytes + 16 <= bucket_bytes(links[rate]) and (
                        run.entry.kind != "all-device"),
                    "predicted": predicted, "measured": measured,
                    "error": relative(predicted["total_ms"], measured["total_ms"]),
                    "error_wire_adjusted": relative(wire, measured["total_ms"]),
                    "samples_ms": [s.total_ms for s in run.samples]})

    for case in cases:
        case["largest_gap"], case["cause"] = attribution(case)
        case["emulator_artifact"] = case["cause"].startswith("emulator")
    per_rate = {f"{rate:g}": summarize([c for c in cases if c["rate_mbit"] == rate]) for rate in rates}
    overall = summarize(cases)
    met = overall["median_abs"] <= TARGET_MEDIAN and overall["max_abs"] <= TARGET_MAX

    table = Table(title=f"predicted vs measured end-to-end latency — {machine_info().cpu_model}, "
                        f"{torch.get_num_threads()} threads, device = host/{args.device_slowdown:g}, server = host, "
                        f"{args.rounds} rounds; ★ = the planner's choice at that rate")
    table.add_column("model")
    table.add_column("plan")
    table.add_column("crossing")
    table.add_column("payload", justify="right")
    for rate in rates:
        table.add_column(f"{rate:g} Mbit/s pred → meas ms", justify="right")
        table.add_column("err", justify="right")
    keys = list(dict.fromkeys((c["model"], c["plan"]) for c in cases))
    for model, plan in keys:
        row = {c["rate_mbit"]: c for c in cases if (c["model"], c["plan"]) == (model, plan)}
        any_case = next(iter(row.values()))
        cells = [model, plan, any_case["crossing"], human_bytes(any_case["uplink_bytes_predicted"])]
        for rate in rates:
            c = row.get(rate)
            if c is None:
                cells += ["—", ""]
                continue
            star = "★ " if "chosen" in c["roles"] else ""
            style = "red" if abs(c["error"]) > TARGET_MAX else ("yellow" if abs(c["error"]) > TARGET_MEDIAN else "")
            cells += [f"{star}{c['predicted']['total_ms']:.2f} → {c['measured']['total_ms']:.2f}",
                      f"[{style}]{c['error']:+.1%}[/]" if style else f"{c['error']:+.1%}"]
        table.add_row(*cells)
    console.print(table)

    summary = Table(title="relative error of the planner's end-to-end prediction")
    for column in ("rate", "cases", "median |err|", "max |err|", "bias (median)", "≤10%", "≤25%",
                   "network meas/pred", "compute meas/pred", "emulator artefacts", "median / max |err| without",
                   "worst case"):
        summary.add_column(column, justify="left" if column in ("rate", "worst case") else "right")
    for key, s in [*((f"{k} Mbit/s", v) for k, v in per_rate.items()), ("all", overall)]:
        summary.add_row(key, str(s["cases"]), f"{s['median_abs']:.1%}", f"{s['max_abs']:.1%}",
                        f"{s['median_signed']:+.1%}", f"{s['within_10pct']:.0%}", f"{s['within_25pct']:.0%}",
                        f"{s['network_measured_over_predicted']:.3f}" if s["network_measured_over_predicted"] else "—",
                        f"{s['compute_measured_over_predicted']:.3f}" if s["compute_measured_over_predicted"] else "—",
                        str(s["emulator_artifacts"]),
                        f"{s['median_abs_without_artifacts']:.1%} / {s['max_abs_without_artifacts']:.1%}"
                        if s["median_abs_without_artifacts"] is not None else "—",
                        s["max_at"])
    console.print(summary)
    misses = sorted((c for c in cases if abs(c["error"]) > TARGET_MEDIAN), key=lambda c: -abs(c["error"]))
    causes: dict[str, int] = {}
    for c in cases:
        if abs(c["error"]) > TARGET_MAX:
            kind = c["cause"].split(",")[0] if c["cause"].startswith("emulator") else c["cause"]
            causes[kind] = causes.get(kind, 0) + 1
    console.print(f"cases off by more than {TARGET_MAX:.0%}, by likely cause: "
                  + ("; ".join(f"{n} × {k}" for k, n in sorted(causes.items(), key=lambda kv: -kv[1])) or "none"))
    for c in misses[:8]:
        console.print(f"  miss {c['error']:+.1%}: {c['model']} {c['plan']} at {c['rate_mbit']:g} Mbit/s — "
                      f"predicted {c['predicted']['total_ms']:.2f} ms, measured {c['measured']['total_ms']:.2f} ms; "
                      f"largest gap: {c['largest_gap']} ({c['cause']})"
                      + (f"; {c['tcp_retransmits']} TCP segments retransmitted over {args.rounds} rounds"
                         if c["tcp_retransmits"] else ""))
    explanation = (
        "The planner prices a transfer at payload bits / nominal rate. (1) tbf counts whole Ethernet frames, so TCP "
        f"moves 1448 payload bytes per 1514 counted (×{WIRE_OVERHEAD:.3f}): bulk transfers take ~5% longer than "
        "predicted. (2) tbf's bucket (one 1514-B frame up to 24 Mbit/s, 0.5 ms of data above) "
        "passes its bytes at line speed after an idle moment, so every request is up to one frame time (12 ms at "
        "1 Mbit/s) faster than on a real link, and sub-kilobyte payloads (JPEG/PNG of a 32×32 input, pooled "
        "features) cost ~0 ms: an emulator artefact, not a planner error. (3) tbf's queue holds max(64 KB, 0.2 s of data); at rates under ~2.6 Mbit/s a request over "
        "~64 KB sent in one TCP window overflows it, and the lost tail waits for a retransmission timeout (~1 s): "
        "an emulator artefact too. (4) Compute parts come from the saved profile, which times each head back to back; "
        "in a split run the device and server idle during each transfer, and on this VM a run right after an idle "
        "moment is up to ~2× slower (compute meas/pred > 1), besides the machine's drift between profiling and "
        "measuring.")
    console.print(explanation)
    console.print(f"wire-overhead diagnostic (not the planner's prediction): adding {WIRE_OVERHEAD - 1:.1%} to the "
                  f"predicted transfer times gives median |err| {overall['median_abs_wire_adjusted']:.1%}, "
                  f"max {overall['max_abs_wire_adjusted']:.1%}")
    console.print(f"target median |err| ≤ {TARGET_MEDIAN:.0%} and max |err| ≤ {TARGET_MAX:.0%}: "
                  f"{'met' if met else 'NOT met'} (median {overall['median_abs']:.1%}, max {overall['max_abs']:.1%}; "
                  f"without the {overall['emulator_artifacts']} emulator artefacts: median "
                  f"{overall['median_abs_without_artifacts']:.1%}, max {overall['max_abs_without_artifacts']:.1%}); "
                  f"{time.perf_counter() - started:.0f} s")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "machine": machine_info().model_dump(), "threads": torch.get_num_threads(), "link": note,
        "rates_mbit": rates, "rounds": args.rounds, "host_runs": args.host_runs,
        "device_slowdown": args.device_slowdown, "quick": args.quick,
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "error_definition": "(predicted - measured) / measured, end to end; parts in 'predicted'/'measured'",
        "target": {"median_abs": TARGET_MEDIAN, "max_abs": TARGET_MAX, "met": met},
        "overall": overall, "per_rate": per_rate, "explanation": explanation,
        "wire_adjusted_note": "error_wire_adjusted is a diagnostic: predicted transfer times × 1514/1448 "
                              "(TCP/IP + Ethernet headers per full frame); the planner does not do this",
        "models": models, "cases": cases, "seconds": time.perf_counter() - started}, indent=2))
    console.print(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()
