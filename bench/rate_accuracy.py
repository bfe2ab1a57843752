"""Bytes per image against top-1 accuracy: feature codecs and learned bottlenecks vs sending the input image.

For each data set (MNIST, Fashion-MNIST; 28×28 gray) a residual zoo model (resnet8, in_channels=1) is trained
once (cached), then at each cut (default 11: after layers_0_relu, 16×28×28; 20: after layers_1_relu, 32×14×14):
  codecs        fp32, fp16, int8, int4+zstd, int2+ans and a few more (``evaluate_codecs``: calibrated on 256 train
                images, each test image encoded alone, decoded, classified by the unchanged tail)
  bottleneck    one slimmable learned bottleneck per cut (``train_bottleneck``, widths 25/50/75/100%), each width
                measured end to end (``evaluate_bottleneck``: encoder, intB+ans frame, decoder, fine-tuned tail)
and, once per data set, the input-offloading baselines: the test image as PNG and WebP lossless (classified by
the model as it is: lossless), and as JPEG and WebP at several qualities, classified by the full model
fine-tuned for --finetune-epochs on --finetune-limit training images passed through that same format and quality
(only where the model as it is loses accuracy on them; the better of fine-tuned and as-is accuracy counts, so the
baseline is never weakened by its fine-tuning).

Targets (the issue): at ≤ 1 point accuracy drop from the uncompressed model, ≥ 20× fewer bytes than float32
features at the same cut, and fewer bytes than the best PNG/JPEG/WebP input offloading at equal accuracy.

    python bench/rate_accuracy.py [--quick] [--datasets mnist,fashion-mnist] [--cuts 11,20]
        [--bottleneck 11=12x4x2,20=12x2x2] [--train-limit N] [--epochs N] [--eval-limit N] [--seed N]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from edgesplit.compress.bottleneck import BottleneckConfig, TrainingPlan, train_bottleneck
from edgesplit.compress.rate import (DEFAULT_CODECS, SLIMMABLE_WIDTHS, Configuration, evaluate_bottleneck,
                                evaluate_codecs)
from edgesplit.model.data import Dataset, load_dataset
from edgesplit.model.graph import trace
from edgesplit.compress.pictures import round_trip_pictures
from edgesplit.profile import machine_info
from edgesplit.model.train import evaluate, train_classifier
from edgesplit.model.zoo import resnet8

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
EXTRA_CODECS = ("int8+ans", "int4+ans", "int3+ans", "int4:channel+ans", "int2:channel+ans", "int1+ans")
MAX_DROP = 0.01
TARGET_RATIO = 20.0
CALIBRATION_IMAGES = 256
console = Console(width=170)


# ---- classifier ------------------------------------------------------------------------------------------------

def subset(ds: Dataset, train_limit: int | None) -> Dataset:
    if train_limit is None:
        return ds
    return Dataset(ds.name, ds.train_images[:train_limit], ds.train_labels[:train_limit], ds.test_images,
                   ds.test_labels, ds.classes)


def cache_key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def trained_model(ds: Dataset, args: argparse.Namespace, cache: Path | None) -> tuple[torch.nn.Module, dict]:
    """resnet8 trained on ``ds`` (its first --train-limit images), from the cache when it was trained before."""
    settings = {"dataset": ds.name, "train_images": len(ds.train_labels), "epochs": args.epochs,
                "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "model": "resnet8"}
    key = f"{ds.name}-resnet8-{cache_key(settings)}"
    torch.manual_seed(args.seed)
    model = resnet8(in_channels=1, num_classes=ds.num_classes)
    path = cache / f"{key}.pt" if cache else None
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=True)
        model.load_state_dict(saved["state"])
        model.eval()
        return model, {**settings, "key": key, "seconds": saved["seconds"], "cached": True,
                       "test_accuracy": saved["test_accuracy"]}
    result = train_classifier(model, ds, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": model.state_dict(), "seconds": result.seconds,
                    "test_accuracy": result.test_accuracy}, path)
    model.eval()
    return model, {**settings, "key": key, "seconds": result.seconds, "cached": False,
                   "test_accuracy": result.test_accuracy}


# ---- input offloading ------------------------------------------------------------------------------------------

def input_formats(args: argparse.Namespace) -> list[tuple[str, str, dict, bool]]:
    """(name, Pillow format, save options, lossy) for every input-offloading baseline."""
    formats = [("input as png", "PNG", {"optimize": True}, False),
               ("input as webp lossless", "WEBP", {"lossless": True, "quality": 100, "method": 6}, False)]
    formats += [(f"input as jpeg q{q}", "JPEG", {"quality": q, "optimize": True}, True) for q in args.jpeg]
    formats += [(f"input as webp q{q}", "WEBP", {"quality": q, "method": 6}, True) for q in args.webp]
    return formats


def round_trip_images(images: torch.Tensor, fmt: str, options: dict) -> tuple[torch.Tensor, list[int], float, float]:
    """Every image saved alone in ``fmt`` and read back: (decoded images, sizes, median ms encode, decode)."""
    trip = round_trip_pictures(images, {"format": fmt, **options})
    return trip.decoded, trip.sizes, statistics.median(trip.encode_s) * 1e3, statistics.median(trip.decode_s) * 1e3


def input_offloading(model: torch.nn.Module, ds: Dataset, images: torch.Tensor, labels: torch.Tensor,
                     baseline: float, model_key: str, args: argparse.Namespace, cache: Path | None) -> list[dict]:
    """Each input format measured (and, when lossy, the full model fine-tuned on it); cached per settings."""
    found = []
    finetune = subset(ds, args.finetune_limit)
    for name, fmt, options, lossy in input_formats(args):
        settings = {"model": model_key, "format": fmt, "options": options, "eval": len(labels),
                    "finetune_images": len(finetune.train_labels), "finetune_epochs": args.finetune_epochs,
                    "finetune_lr": args.finetune_lr, "seed": args.seed}
        path = cache / f"input-{ds.name}-{cache_key(settings)}.json" if cache else None
        if path is not None and path.exists():
            found.append(json.loads(path.read_text()))
            continue
        started = time.perf_counter()
        decoded, sizes, encode_ms, decode_ms = round_trip_images(images, fmt, options)
        as_is = evaluate(model, decoded, labels)
        retrained = None
        if lossy and args.finetune_epochs > 0 and as_is < baseline:  # a format that costs no accuracy: as is
            train_decoded, _, _, _ = round_trip_images(finetune.train_images, fmt, options)
            tuned = copy.deepcopy(model)
            result = train_classifier(tuned, Dataset(ds.name, train_decoded, finetune.train_labels, decoded, labels,
                                                     ds.classes),
                                      epochs=args.finetune_epochs, batch_size=args.batch_size, lr=args.finetune_lr,
                                      seed=args.seed)
            retrained = result.test_accuracy
        accuracy = max(as_is, retrained if retrained is not None else as_is)
        row = {"name": name, "format": fmt, "options": options, "lossy": lossy,
               "bytes_per_inference": float(np.mean(sizes)), "accuracy": accuracy, "accuracy_as_is": as_is,
               "accuracy_retrained": retrained, "accuracy_drop": baseline - accuracy, "encode_ms": encode_ms,
               "decode_ms": decode_ms, "seconds": time.perf_counter() - started}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(row, indent=2))
        found.append(row)
    return found


def input_configuration(row: dict, float32_bytes: int) -> Configuration:
    return Configuration(name=row["name"], kind="input", codecs=[], bytes_per_inference=row["bytes_per_inference"],
                         compression=float32_bytes / row["bytes_per_inference"], accuracy=row["accuracy"],
                         accuracy_drop=row["accuracy_drop"], encode_ms=row["encode_ms"], decode_ms=row["decode_ms"])


# ---- bottleneck ------------------------------------------------------------------------------------------------

def parse_bottlenecks(text: str) -> dict[int, list[tuple[int, int, int]]]:
    """``11=8x4x2,20=8x2x2`` → {cut: [(channels, stride, bits), ...]} (a cut may be named more than once)."""
    found: dict[int, list[tuple[int, int, int]]] = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        cut, _, shape = item.partition("=")
        channels, stride, bits = (int(v) for v in shape.split("x"))
        found.setdefault(int(cut), []).append((channels, stride, bits))
    return found


def bottleneck_at(model: torch.nn.Module, example: torch.Tensor, cut: int, shape: tuple[int, int, int],
                  ds: Dataset, images: torch.Tensor, labels: torch.Tensor, baseline: float, float32_bytes: int,
                  model_key: str, args: argparse.Namespace, cache: Path | None) -> tuple[list[Configuration], dict]:
    channels, stride, bits = shape
    traced = trace(model, example)
    split = traced.split(cut)
    in_channels = split.cut.crossing[0].shape[1]
    config = BottleneckConfig(in_channels, channels, stride, bits, tuple(SLIMMABLE_WIDTHS))
    plan = TrainingPlan(feature_epochs=args.bn_feature_epochs, task_epochs=args.bn_task_epochs,
                        batch_size=args.bn_batch_size, lr=args.bn_lr, train_limit=args.bn_train_limit, seed=args.seed)
    checkpoint = None
    if cache is not None:
        checkpoint = cache / f"bottleneck-{ds.name}-cut{cut}-{channels}x{stride}x{bits}-" \
                             f"{cache_key(model_key, cut, shape, plan.__dict__)}"
    trained, tail, log = train_bottleneck(split, model, ds, config, plan, checkpoint_dir=checkpoint)
    configurations = evaluate_bottleneck(split, trained, tail, images, labels, baseline, float32_bytes)
    label = f"{channels}x{stride}x{bits}"
    for c in configurations:
        c.name = c.name.replace("bottleneck", f"bottleneck {label}:", 1)
    summary = {"cut": cut, "channels": channels, "stride": stride, "bits": bits, "widths": list(config.widths),
               "feature_epochs": plan.feature_epochs, "task_epochs": plan.task_epochs, "batch_size": plan.batch_size,
               "lr": plan.lr, "train_images": min(len(ds.train_labels), plan.train_limit or len(ds.train_labels)),
               "feature_loss": log.feature_loss, "task_loss": log.task_loss, "train_seconds": log.seconds,
               "resumed_from_epoch": log.resumed_from_epoch,
               "results": [{"width": c.width, "code_channels": c.code_channels, "bytes": c.bytes_per_inference,
                            "accuracy": c.accuracy, "drop": c.accuracy_drop} for c in configurations]}
    return configurations, summary


# ---- verdict, tables, plot -------------------------------------------------------------------------------------

def verdict(configurations: list[Configuration], baseline: float, float32_bytes: int) -> dict:
    features = sorted((c for c in configurations if c.kind != "input" and c.accuracy_drop <= MAX_DROP + 1e-12),
                      key=lambda c: c.bytes_per_inference)
    inputs = [c for c in configurations if c.kind == "input"]
    out: dict = {"baseline_accuracy": baseline, "float32_bytes": float32_bytes, "max_drop": MAX_DROP}
    if not features:
        return {**out, "best_feature": None, "ratio_target_met": False, "beats_input": False}
    best = features[0]
    ratio = float32_bytes / best.bytes_per_inference
    at_least = sorted((c for c in inputs if c.accuracy >= best.accuracy - 1e-12), key=lambda c: c.bytes_per_inference)
    basis = "accuracy ≥ the feature configuration's"
    if not at_least:
        at_least = sorted((c for c in inputs if c.accuracy_drop <= MAX_DROP + 1e-12),
                          key=lambda c: c.bytes_per_inference)
        basis = "within 1 point of baseline (none as accurate as the feature configuration)"
    rival = at_least[0] if at_least else None
    return {**out, "best_feature": best.name, "best_feature_bytes": best.bytes_per_inference,
            "best_feature_accuracy": best.accuracy, "best_feature_drop": best.accuracy_drop, "ratio_vs_float32": ratio,
            "ratio_target_met": ratio >= TARGET_RATIO, "best_input": rival.name if rival else None,
            "best_input_bytes": rival.bytes_per_inference if rival else None,
            "best_input_accuracy": rival.accuracy if rival else None, "input_basis": basis,
            "beats_input": rival is None or best.bytes_per_inference < rival.bytes_per_inference,
            "input_over_feature": rival.bytes_per_inference / best.bytes_per_inference if rival else None}


def print_cut_table(dataset: str, cut: dict) -> None:
    table = Table(title=f"{dataset}, cut {cut['cut']} (after {cut['after']}, {'×'.join(map(str, cut['shape'][1:]))}, "
                        f"float32 {cut['float32_bytes']:,} B) — baseline {cut['baseline_accuracy']:.2%} on "
                        f"{cut['eval_images']:,} test images")
    for column in ("configuration", "kind", "bytes/image", "× vs float32", "accuracy", "drop (points)",
                   "enc ms", "dec ms"):
        table.add_column(column, justify="left" if column in ("configuration", "kind") else "right")
    for c in sorted(cut["configurations"], key=lambda c: c["bytes_per_inference"]):
        style = "green" if c["accuracy_drop"] <= MAX_DROP + 1e-12 else None
        table.add_row(c["name"], c["kind"], f"{c['bytes_per_inference']:,.1f}", f"{c['compression']:,.1f}×",
                      f"{c['accuracy']:.2%}", f"{c['accuracy_drop'] * 100:+.2f}", f"{c['encode_ms']:.2f}",
                      f"{c['decode_ms']:.2f}", style=style)
    console.print(table)


def print_verdicts(datasets: list[dict]) -> None:
    table = Table(title=f"verdict: fewest bytes at ≤ {MAX_DROP:.0%} accuracy drop (targets: ≥ {TARGET_RATIO:g}× "
                        "vs float32, fewer bytes than the best input offloading at equal accuracy)")
    for column in ("data set", "cut", "best feature config", "bytes", "accuracy", "× vs fp32", "≥ 20×",
                   "best input offloading (≥ its accuracy)", "input bytes", "input acc", "fewer bytes"):
        table.add_column(column, justify="left" if column in ("data set", "best feature config",
                                                               "best input offloading (≥ its accuracy)") else "right")
    for ds in datasets:
        for cut in ds["cuts"]:
            v = cut["verdict"]
            if v["best_feature"] is None:
                table.add_row(ds["name"], str(cut["cut"]), "none within 1 point", *[""] * 3, "no", "", "", "", "no")
                continue
            table.add_row(ds["name"], str(cut["cut"]), v["best_feature"], f"{v['best_feature_bytes']:,.1f}",
                          f"{v['best_feature_accuracy']:.2%}", f"{v['ratio_vs_float32']:,.1f}×",
                          "yes" if v["ratio_target_met"] else "[red]no[/red]",
                          (v["best_input"] or "—") + ("" if v["input_basis"].startswith("accuracy") else " *"),
                          f"{v['best_input_bytes']:,.1f}" if v["best_input_bytes"] else "—",
                          f"{v['best_input_accuracy']:.2%}" if v["best_input_accuracy"] else "—",
                          "yes" if v["beats_input"] else "[red]no[/red]")
    console.print(table)
    if any(c["verdict"].get("input_basis", "").startswith("within") for ds in datasets for c in ds["cuts"]):
        console.print("* no input format reached the feature configuration's accuracy; compared with the smallest "
                      "input within 1 point of baseline instead")


COLOURS = {"codec": "#4c72b0", "bottleneck": "#c44e52", "jpeg": "#dd8452", "webp": "#55a868", "lossless": "#8172b3"}


def plot(ds: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cuts = ds["cuts"]
    figure, axes = plt.subplots(1, len(cuts), figsize=(7.2 * len(cuts), 6.6), dpi=120, squeeze=False, sharey=True)
    low = ds["baseline_accuracy"] - 0.06
    for axis, cut in zip(axes[0], cuts):
        configs = cut["configurations"]
        inputs = [c for c in configs if c["kind"] == "input"]
        for family, colour in (("jpeg", COLOURS["jpeg"]), ("webp q", COLOURS["webp"])):
            rows = sorted((c for c in inputs if family in c["name"]), key=lambda c: c["bytes_per_inference"])
            if rows:
                axis.plot([c["bytes_per_inference"] for c in rows], [c["accuracy"] * 100 for c in rows], "-o",
                          color=colour, markersize=4, label=f"input as {family.strip(' q').upper()} (model retrained)")
                for c in rows:
                    axis.annotate(c["name"].split()[-1], (c["bytes_per_inference"], c["accuracy"] * 100),
                                  textcoords="offset points", xytext=(2, -10), fontsize=6, color=colour)
        for c in inputs:
            if "png" in c["name"] or "lossless" in c["name"]:
                axis.scatter([c["bytes_per_inference"]], [c["accuracy"] * 100], marker="D", color=COLOURS["lossless"],
                             s=30, zorder=4)
                axis.annotate(c["name"].replace("input as ", ""), (c["bytes_per_inference"], c["accuracy"] * 100),
                              textcoords="offset points", xytext=(3, 4), fontsize=6, color=COLOURS["lossless"])
        codecs = [c for c in configs if c["kind"] == "codec"]
        axis.scatter([c["bytes_per_inference"] for c in codecs], [max(c["accuracy"], low) * 100 for c in codecs],
                     marker="s", color=COLOURS["codec"], s=22, zorder=4, label="feature codecs (original tail)")
        for c in codecs:
            axis.annotate(c["name"], (c["bytes_per_inference"], max(c["accuracy"], low) * 100),
                          textcoords="offset points", xytext=(3, 3), fontsize=6, color=COLOURS["codec"], rotation=30)
        families: dict[str, list[dict]] = {}
        for c in configs:
            if c["kind"] == "bottleneck":
                families.setdefault(c["name"].split(":")[0], []).append(c)
        markers = iter("o^vs<>")
        for label, rows in families.items():
            rows.sort(key=lambda c: c["bytes_per_inference"])
            axis.plot([c["bytes_per_inference"] for c in rows], [max(c["accuracy"], low) * 100 for c in rows],
                      "-", marker=next(markers, "o"), color=COLOURS["bottleneck"], markersize=5, linewidth=1.8,
                      label=f"{label} (channels×stride×bits), widths 25–100%")
            for c in rows:
                axis.annotate(f"{c['code_channels']}ch", (c["bytes_per_inference"], max(c["accuracy"], low) * 100),
                              textcoords="offset points", xytext=(-4, 6), fontsize=6, color=COLOURS["bottleneck"])
        base = ds["baseline_accuracy"] * 100
        axis.axhline(base, color="black", linewidth=1, label=f"uncompressed model ({base:.2f}%)")
        axis.axhline(base - MAX_DROP * 100, color="black", linestyle="--", linewidth=1, label="1-point drop")
        axis.axvline(cut["float32_bytes"] / TARGET_RATIO, color="grey", linestyle=":", linewidth=1.2,
                     label=f"float32 / {TARGET_RATIO:g} at this cut")
        axis.set_xscale("log")
        axis.set_ylim(low * 100, min(100.4, base + 1.5))
        axis.set_xlabel("bytes per image (mean, frame headers included; log scale)")
        axis.set_ylabel("top-1 accuracy (%)")
        axis.grid(True, which="both", alpha=0.25)
        axis.set_title(f"cut {cut['cut']}: after {cut['after']} ({'×'.join(map(str, cut['shape'][1:]))}, float32 "
                       f"{cut['float32_bytes']:,} B)", fontsize=9)
    legend: dict[str, object] = {}
    for axis in axes[0]:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    figure.suptitle(f"{ds['name']}: rate vs accuracy, resnet8 ({ds['eval_images']:,} test images; "
                    f"points below {low:.0%} drawn at the bottom edge)", fontsize=10)
    figure.tight_layout(rect=(0, 0.09, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


# ---- main ------------------------------------------------------------------------------------------------------

def run_dataset(name: str, args: argparse.Namespace, cache: Path | None, bottlenecks: dict) -> dict:
    started = time.perf_counter()
    full = load_dataset(f"{name}:{args.data_root / name}")
    ds = subset(full, args.train_limit)
    console.print(f"[bold]{name}[/bold]: training resnet8 on {len(ds.train_labels):,} images, {args.epochs} epochs")
    model, classifier = trained_model(ds, args, cache)
    console.print(f"  classifier: {classifier['test_accuracy']:.2%} on all {len(full.test_labels):,} test images "
                  f"({classifier['seconds']:.0f} s{', cached' if classifier['cached'] else ''})")
    images, labels = full.test_images[:args.eval_limit], full.test_labels[:args.eval_limit]
    baseline = evaluate(model, images, labels)
    console.print(f"  input offloading: {len(input_formats(args))} formats "
                  f"(lossy ones: fine-tune {args.finetune_epochs} epoch on {args.finetune_limit or 'all'} images)")
    inputs = input_offloading(model, ds, images, labels, baseline, classifier["key"], args, cache)
    example = torch.zeros(1, *full.input_shape)
    traced = trace(model, example)
    calibration = ds.train_images[:CALIBRATION_IMAGES]
    cuts = []
    for cut_index in args.cuts:
        split = traced.split(cut_index)
        crossing = split.cut.crossing
        if len(crossing) != 1 or len(crossing[0].shape) != 4:
            raise SystemExit(f"cut {cut_index} sends {[t.shape for t in crossing]}; choose a cut with one 4-D tensor")
        float32_bytes = int(np.prod(crossing[0].shape[1:])) * 4
        cut_started = time.perf_counter()
        console.print(f"  cut {cut_index} (after {split.cut.after}, {list(crossing[0].shape)}): codecs")
        configurations = evaluate_codecs(split, args.codecs, calibration, images, labels, baseline, float32_bytes)
        summaries = []
        for shape in bottlenecks.get(cut_index, []):
            console.print(f"  cut {cut_index}: bottleneck {shape[0]} channels, stride {shape[1]}, {shape[2]} bits")
            found, summary = bottleneck_at(model, example, cut_index, shape, ds, images, labels, baseline,
                                           float32_bytes, classifier["key"], args, cache)
            configurations += found
            summaries.append(summary)
        configurations += [input_configuration(row, float32_bytes) for row in inputs]
        check = evaluate(model, images, labels)  # the model must come out of all this unchanged
        if check != baseline:
            raise SystemExit(f"the model's accuracy changed from {baseline} to {check} during cut {cut_index}")
        cut = {"cut": cut_index, "after": split.cut.after, "shape": list(crossing[0].shape),
               "float32_bytes": float32_bytes, "baseline_accuracy": baseline, "eval_images": len(labels),
               "configurations": [c.model_dump() for c in configurations], "bottlenecks": summaries,
               "verdict": verdict(configurations, baseline, float32_bytes),
               "seconds": time.perf_counter() - cut_started}
        print_cut_table(name, cut)
        cuts.append(cut)
    return {"name": name, "train_images": len(ds.train_labels), "eval_images": len(labels),
            "baseline_accuracy": baseline, "classifier": classifier, "inputs": inputs, "cuts": cuts,
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=None, help="default mnist,fashion-mnist (--quick: mnist)")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cuts", default="11,20")
    parser.add_argument("--train-limit", type=int, default=20000, help="classifier training images (first N)")
    parser.add_argument("--epochs", type=int, default=2, help="classifier epochs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-limit", type=int, default=3000, help="test images measured (first N)")
    parser.add_argument("--codecs", default=",".join(DEFAULT_CODECS + EXTRA_CODECS))
    parser.add_argument("--jpeg", default="95,75,50,25", help="JPEG qualities")
    parser.add_argument("--webp", default="90,50,25,10", help="lossy WebP qualities")
    parser.add_argument("--finetune-limit", type=int, default=5000,
                        help="training images the full model is fine-tuned on per lossy input format")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--bottleneck", default="11=12x4x2,20=12x2x2",
                        help="CUT=CHANNELSxSTRIDExBITS, comma-separated; a cut may be named more than once")
    parser.add_argument("--bn-feature-epochs", type=int, default=1)
    parser.add_argument("--bn-task-epochs", type=int, default=4)
    parser.add_argument("--bn-train-limit", type=int, default=10000)
    parser.add_argument("--bn-batch-size", type=int, default=128)
    parser.add_argument("--bn-lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a ~1-minute smoke run (tiny training and eval sets)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/edgesplit-bench-cache/rate_accuracy"),
                        help="trained weights and measured baselines, reused by reruns with the same settings")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--json", type=Path, default=RESULTS / "rate_accuracy.json")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNGs from the JSON of an earlier run")
    args = parser.parse_args()
    if args.replot:
        stem = args.json.with_suffix("")
        for ds in json.loads(args.json.read_text())["datasets"]:
            console.print(str(plot(ds, stem.parent / f"{stem.name}_{ds['name'].replace('-', '_')}.png")))
        return
    if args.quick:
        args.train_limit, args.epochs, args.eval_limit, args.batch_size = 4000, 2, 500, 64
        args.datasets = args.datasets or "mnist"
        args.finetune_limit, args.jpeg, args.webp = 1000, "75,25", "50"
        args.bn_train_limit, args.bn_feature_epochs, args.bn_task_epochs = 2000, 1, 1
        args.codecs = ",".join(DEFAULT_CODECS + ("int2:channel+ans",))
        if args.json == RESULTS / "rate_accuracy.json":
            args.json = RESULTS / "rate_accuracy_quick.json"
    args.datasets = args.datasets or "mnist,fashion-mnist"
    args.cuts = [int(c) for c in args.cuts.split(",")]
    args.codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    args.jpeg = [int(q) for q in args.jpeg.split(",") if q.strip()]
    args.webp = [int(q) for q in args.webp.split(",") if q.strip()]
    bottlenecks = parse_bottlenecks(args.bottleneck)
    cache = None if args.no_cache else args.cache
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    datasets = [run_dataset(name.strip(), args, cache, bottlenecks) for name in args.datasets.split(",")]
    print_verdicts(datasets)
    stem = args.json.with_suffix("")
    plots = [str(plot(ds, stem.parent / f"{stem.name}_{ds['name'].replace('-', '_')}.png")) for ds in datasets]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine_info().model_dump(), "settings": settings,
                                     "datasets": datasets, "plots": plots,
                                     "seconds": time.perf_counter() - started}, indent=2))
    console.print(f"{time.perf_counter() - started:.0f} s; written to {args.json} and {', '.join(plots)}")


if __name__ == "__main__":
    main()
