"""What does the planner choose for ImageNet-size models on real device classes and links, and what crosses?

For each 224×224 zoo model (random-init weights, seed 0: sizes and costs are those of the real architectures; no
accuracy can be measured without trained ImageNet weights, so none is claimed here), for each device preset
(rpi4, jetson-nano, phone-npu) × link preset (3g, lte, wifi, 5g), with an edge-gpu (T4) server:

  edgesplit       the planner's choice among all its candidates (input as 8-bit/PNG/JPEG/fp32, every prefix cut with
                  every codec of --codecs, min-cut heads), under the latency objective;
  all-device      the whole model on the device;
  all-server JPEG the photo sent as a JPEG (quality 90), the whole model on the server;
  Neurosurgeon    Kang et al.'s rule: the best of all-device, all-server with the fp32 tensor, and every
                  topological-prefix cut sending float32 features — the same cost model, a smaller candidate set.

Speed-up = the baseline's predicted latency / edgesplit's predicted latency. These are the cost model's predictions
from the presets' published figures (peak MAC/s × utilisation, memory bandwidth, link rates and RTTs; see
``edgesplit.plan.hardware``), not measurements on those devices: bench/plan_vs_baselines.py measures the same
comparison end to end over emulated links on this host, for smaller models.

Where the planner keeps the model whole, the best split plan is shown too (its cut, codec and predicted latency).
Then, at every cut the planner chose or found best among splits for a model (any device × link), the bytes per inference of every codec of
--codecs on the --photos images (mean over images; each image encoded alone, quantization calibrated on the batch):
what each codec would send there, next to the JPEG of the whole photo.

Photos: a folder of PNG/JPEG files (default ../shared/data/kodak when it exists, else the two photographs that
scikit-learn bundles, cut into crops), resized to 224×224.

    python bench/imagenet_plans.py [--models mobilenetv3_small,mobilenetv3_large,resnet50,vit_ti16,vit_s16]
        [--codecs fp16,int8,int8:channel,int4+zstd,int4+ans] [--photos DIR] [--samples 4] [--json OUT]
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

from edgesplit.codecs import parse_codec
from edgesplit.compress.payload import PlanCodec, measure_codec, measure_input_formats, node_outputs
from edgesplit.model import zoo
from edgesplit.model.data import sample_images
from edgesplit.model.graph import trace
from edgesplit.plan.costs import CostModel, parse_objective
from edgesplit.plan.hardware import PRESETS, parse_link
from edgesplit.plan.machines import preset_machine
from edgesplit.plan.planner import make_plan
from edgesplit.plan.schema import Constraints, PlanEntry, PlanReport
from edgesplit.plan.workload import workload_of
from edgesplit.profile import machine_info
from edgesplit.profile.machine import memory_bandwidth_gb_s
from edgesplit.progress import progress_bar

RESULTS = Path(__file__).parent / "results"
KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"
DEVICES = ("rpi4", "jetson-nano", "phone-npu")
LINKS = ("3g", "lte", "wifi", "5g")
SERVER = "edge-gpu"
BASELINES = ("all-device", "all-server JPEG", "Neurosurgeon")


def neurosurgeon(report: PlanReport) -> PlanEntry:
    """The best chain plan sending float32: all-device, the fp32 input tensor, or a prefix cut with fp32 features."""
    chain = [e for e in report.ranked if e.kind == "all-device"
             or (e.kind == "all-server" and e.input_format == "tensor")
             or (e.kind == "split" and e.head_nodes is None and e.codec in (None, "fp32"))]
    return min(chain, key=lambda e: e.costs.latency_ms)


def baselines(report: PlanReport) -> dict[str, PlanEntry]:
    return {"all-device": report.all_device,
            "all-server JPEG": next(e for e in report.ranked if e.kind == "all-server" and e.input_format == "jpeg"),
            "Neurosurgeon": neurosurgeon(report)}


def prefix_values(workload) -> list[str]:  # noqa: ANN001 - Workload
    """The tensors that cross some topological-prefix cut: the only ones a codec other than the first is costed on."""
    names: list[str] = []
    for cut in workload.prefix_cuts:
        for name in (t.name for t in cut.crossing):
            if name not in names and workload.tensors.get(name) is not None:
                names.append(name)
    return names


def entry_summary(entry: PlanEntry) -> dict:
    return {"label": entry.label, "kind": entry.kind, "codec": entry.codec, "input_format": entry.input_format,
            "cut_index": entry.cut_index, "after": entry.after, "latency_ms": entry.costs.latency_ms,
            "device_ms": entry.costs.device_ms, "uplink_ms": entry.costs.uplink_ms,
            "server_ms": entry.costs.server_ms, "uplink_bytes": entry.costs.uplink_bytes,
            "crossing": [t.name for t in entry.crossing]}


@torch.no_grad()
def bytes_at(traced, names: list[str], photos: torch.Tensor, codecs: list[str]) -> dict[str, float]:  # noqa: ANN001
    """Mean payload bytes per photo of each codec for the tensors ``names`` (one inference's crossing)."""
    captured = node_outputs(traced, photos, set(names))
    sizes = {"fp32 (raw)": float(sum(captured[n][0].numel() * 4 for n in names))}
    for spec in codecs:
        codec = parse_codec(spec)
        total = 0.0
        for name in names:
            batch = captured[name]
            calibrated = codec.calibrate(batch)
            total += statistics.fmean(len(calibrated.encode(batch[i:i + 1])) for i in range(len(batch)))
        sizes[spec] = total
    return sizes


def run_model(name: str, photos: torch.Tensor, codecs: list[str], bar, task) -> dict:  # noqa: ANN001
    torch.manual_seed(0)
    model = zoo.ZOO[name].factory().eval()
    started = time.perf_counter()
    traced = trace(model, torch.zeros(1, 3, 224, 224))
    trace_s = time.perf_counter() - started
    workload = workload_of(traced, name)
    values = prefix_values(workload)
    bar.update(task, status=f"{name}: measuring {len(codecs)} codecs on {len(values)} cut tensors")
    started = time.perf_counter()
    first = PlanCodec(parse_codec("fp32"))
    measured = [measure_codec(parse_codec(spec), traced, photos, values) for spec in codecs]
    formats = measure_input_formats(photos, 90)
    measure_s = time.perf_counter() - started
    host_gb_s = memory_bandwidth_gb_s()
    server = preset_machine(PRESETS[SERVER], workload)
    goal = parse_objective("latency")
    rows, chosen_cuts = [], {}
    started = time.perf_counter()
    for device in DEVICES:
        for link in LINKS:
            bar.update(task, status=f"{name}: planning {device} × {link}")
            cost_model = CostModel(workload, preset_machine(PRESETS[device], workload), server, parse_link(link), first,
                                   host_gb_s, 1)
            report = make_plan(cost_model, goal, formats=formats, constraints=Constraints(), model_name=name,
                               model_ref={"name": name}, device_spec=device, server_spec=SERVER, link_spec=link,
                               codec_name="fp32", input_shape=[1, 3, 224, 224], codecs=measured)
            chosen = report.chosen
            row = {"device": device, "link": link, "edgesplit": entry_summary(chosen),
                   "baselines": {k: entry_summary(e) for k, e in baselines(report).items()},
                   "speedup": {k: e.costs.latency_ms / chosen.costs.latency_ms for k, e in baselines(report).items()}}
            best_split = min((e for e in report.ranked if e.kind == "split"), key=lambda e: e.costs.latency_ms)
            row["best_split"] = entry_summary(best_split)
            rows.append(row)
            for entry in (chosen, best_split):
                if entry.kind == "split":
                    chosen_cuts[", ".join(t.name for t in entry.crossing)] = [t.name for t in entry.crossing]
    plan_s = (time.perf_counter() - started) / (len(DEVICES) * len(LINKS))
    bar.update(task, status=f"{name}: bytes per codec at {len(chosen_cuts)} chosen cuts")
    cut_bytes = {label: bytes_at(traced, names, photos, codecs) for label, names in chosen_cuts.items()}
    jpeg = next(f for f in formats if f.name == "jpeg").payload_bytes
    return {"model": name, "params": sum(p.numel() for p in model.parameters()), "cuts": len(traced.cuts),
            "nodes": len(traced.compute_nodes), "tracer": traced.tracer, "trace_s": trace_s,
            "codec_measure_s": measure_s, "plan_s_each": plan_s, "jpeg_bytes": jpeg, "rows": rows,
            "bytes_at_chosen_cuts": cut_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mobilenetv3_small,mobilenetv3_large,resnet50,vit_ti16,vit_s16")
    parser.add_argument("--codecs", default="fp16,int8,int8:channel,int4+zstd,int4+ans")
    parser.add_argument("--photos", type=Path, default=KODAK if KODAK.is_dir() else None,
                        help="folder of photos (default: ../shared/data/kodak when present, else scikit-learn's)")
    parser.add_argument("--samples", type=int, default=4, help="photos to measure codecs and bytes on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=RESULTS / "imagenet_plans.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    photos = sample_images(str(args.photos) if args.photos else "photos", (3, 224, 224), args.samples)
    results = []
    with progress_bar(True) as bar:
        task = bar.add_task("ImageNet-size plans", total=len(models), status="")
        for name in models:
            results.append(run_model(name, photos, codecs, bar, task))
            bar.advance(task)

    console = Console(width=max(Console().width, 200))
    for result in results:
        table = Table(title=f"{result['model']} at 224×224 ({result['params'] / 1e6:.1f} M params, {result['cuts']} "
                            f"cuts): predicted latency (ms) and edgesplit's speed-up over each baseline "
                            f"(server {SERVER})")
        text = ("device", "link", "edgesplit chooses", "best split")
        for column in ("device", "link", "edgesplit chooses", "ms", *[f"× {b}" for b in BASELINES], "best split",
                       "split ms"):
            table.add_column(column, justify="left" if column in text else "right")
        for row in result["rows"]:
            chosen, split = row["edgesplit"], row["best_split"]
            table.add_row(row["device"], row["link"], chosen["label"], f"{chosen['latency_ms']:.1f}",
                          *[f"{row['speedup'][b]:.2f}" for b in BASELINES], split["label"],
                          f"{split['latency_ms']:.1f}")
        console.print(table)
        sizes = Table(title=f"{result['model']}: bytes per inference at the chosen cuts (mean of {args.samples} "
                            f"photos; the JPEG of the photo: {result['jpeg_bytes']:,.0f} B)")
        sizes.add_column("cut (tensors crossing)")
        keys = ["fp32 (raw)", *codecs]
        for key in keys:
            sizes.add_column(key, justify="right")
        for label, by_codec in result["bytes_at_chosen_cuts"].items():
            sizes.add_row(label, *[f"{by_codec[k]:,.0f}" for k in keys])
        console.print(sizes)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine_info().model_dump(), "server": SERVER, "devices": DEVICES, "links": LINKS,
                                     "codecs": codecs, "photos": str(args.photos) if args.photos else "photos",
                                     "samples": args.samples, "weights": "random init (seed 0), no accuracy measured",
                                     "models": results}, indent=2, default=float) + "\n")
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
