"""The main job end to end, on data the packages bundle: train, profile, split, verify on real images."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from .artifact import load_split, save_split, verify_split
from .data import load_dataset
from .graph import max_abs_diff, trace
from .intake import ModelRef, build_model, load_model, save_weights
from .plots import plot_profile
from .profile import ProfileReport, device_profile, profile_model
from .train import evaluate, train_classifier
from .views import human_bytes, profile_table, split_table

DEMO_EPOCHS = 15
DEMO_RUNS = 10


def run_demo(out_dir: Path, console: Console, progress: bool = True) -> dict:
    """Train the small CNN on digits, profile it and ResNet-8, split at the fewest-bytes cut, verify the halves."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"out_dir": str(out_dir)}

    console.rule("1. train small_cnn on scikit-learn's digits")
    digits = load_dataset("digits")
    ref = ModelRef("small_cnn", {"in_channels": 1, "num_classes": digits.num_classes})
    torch.manual_seed(0)
    network = build_model(ref)
    trained = train_classifier(network, digits, epochs=DEMO_EPOCHS, seed=0, progress=progress)
    weights = out_dir / "small_cnn_digits.safetensors"
    save_weights(network, weights, ref, (1, *digits.input_shape),
                 {"dataset": digits.name, "test_accuracy": trained.test_accuracy})
    console.print(f"test accuracy {trained.test_accuracy:.2%} on {len(digits.test_labels)} held-out digits "
                  f"({trained.seconds:.0f} s)")
    summary["train"] = {"model": "small_cnn", "dataset": digits.name, "epochs": DEMO_EPOCHS,
                        "test_accuracy": trained.test_accuracy, "weights": str(weights)}

    reports: dict[str, ProfileReport] = {}
    for step, (name, model_weights) in enumerate((("small_cnn", weights), ("resnet8", None)), start=2):
        console.rule(f"{step}. profile {name} on this machine")
        loaded = load_model(name, weights=model_weights)
        report = profile_model(trace(loaded.module, loaded.example_input), name=name, runs=DEMO_RUNS,
                               progress=progress)
        console.print(profile_table(report))
        _write(out_dir / f"profile_{name}.json", report.model_dump_json(indent=2))
        plot_profile(report, out_dir / f"profile_{name}.png")
        reports[name] = report
    _write(out_dir / "device_this_machine.json",
           device_profile(reports["small_cnn"], "this_machine").model_dump_json(indent=2))

    console.rule("4. split small_cnn at the interior cut with the fewest crossing bytes")
    report = reports["small_cnn"]
    interior = [c for c in report.cuts if 0 < c.position < report.model.nodes]
    chosen = min(interior, key=lambda c: (c.crossing_bytes, c.index))
    loaded = load_model("small_cnn", weights=weights)
    traced = trace(loaded.module, loaded.example_input)
    halves = traced.split(chosen.index)
    split_dir = out_dir / "split_small_cnn"
    save_split(halves, traced, loaded.ref, split_dir,
               max_abs_diff(halves(loaded.example_input), loaded.module(loaded.example_input)))
    reloaded, record = load_split(split_dir)
    console.print(split_table(record))

    console.rule("5. verify the reloaded halves against the whole model on held-out digits")
    images, labels = digits.test_images, digits.test_labels
    difference = verify_split(reloaded, loaded.module, images)
    with torch.no_grad():
        whole_predictions = loaded.module(images).argmax(1)
        split_predictions = reloaded(images).argmax(1)
    agreement = (whole_predictions == split_predictions).float().mean().item()
    split_accuracy = (split_predictions == labels).float().mean().item()
    console.print(f"{len(labels)} test images: max abs diff {difference:.2e}, predictions agree on {agreement:.2%}, "
                  f"accuracy split {split_accuracy:.2%} = whole {evaluate(loaded.module, images, labels):.2%}; "
                  f"{human_bytes(record.crossing_bytes)} cross per image instead of "
                  f"{human_bytes(report.cuts[0].crossing_bytes)} of raw input")
    summary["split"] = {"dir": str(split_dir), "cut": record.cut.model_dump(), "crossing_bytes": record.crossing_bytes,
                        "input_bytes": report.cuts[0].crossing_bytes, "test_images": len(labels),
                        "max_abs_diff": difference, "agreement": agreement, "split_accuracy": split_accuracy}
    summary["profiles"] = {name: {"json": str(out_dir / f"profile_{name}.json"),
                                  "plot": str(out_dir / f"profile_{name}.png"), "macs": r.model.macs,
                                  "cuts": r.model.cuts, "model_ms": r.model_ms} for name, r in reports.items()}
    summary["seconds"] = time.perf_counter() - started
    _write(out_dir / "demo.json", json.dumps(summary, indent=2))

    console.rule("done")
    table = Table(title=f"results in {out_dir}/ ({summary['seconds']:.0f} s)", show_header=False)
    for label, path in (("trained weights", weights), ("profiles (JSON, PNG)", out_dir / "profile_*.{json,png}"),
                        ("device profile", out_dir / "device_this_machine.json"), ("split halves", split_dir),
                        ("summary", out_dir / "demo.json")):
        table.add_row(label, str(path))
    console.print(table)
    return summary


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
