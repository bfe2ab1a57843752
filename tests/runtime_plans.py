"""Plans for runtime tests: a real plan of a zoo model, with its switch table set to the routes a test needs.

The planner rarely splits these small models on these presets (sending a 32×32 JPEG is cheap), so tests name
the routes they exercise; everything else in the plan (model, fingerprint, weights) is what `plan` wrote.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgesplit.model.graph import trace
from edgesplit.model.intake import ModelRef, build_model, save_weights
from edgesplit.plan import plan_model
from edgesplit.plan.schema import PlanReport, SwitchRange


def write_model(folder: Path, name: str = "resnet8", seed: int = 0,
                shape: tuple[int, ...] | None = None) -> tuple[Path, tuple[int, ...]]:
    """A seeded, untrained zoo model saved as safetensors (with how to rebuild it); its input shape.

    ``shape`` overrides the zoo's input shape (small_cnn on the bundled digits is 1×1×8×8).
    """
    from edgesplit.model.zoo import ZOO

    torch.manual_seed(seed)
    shape = tuple(shape or ZOO[name].input_shape)
    ref = ModelRef(name, {"in_channels": shape[1]})
    model = build_model(ref).eval()
    path = folder / f"{name}.safetensors"
    save_weights(model, path, ref, shape)
    return path, shape


def make_plan(folder: Path, name: str = "resnet8", routes: list[tuple[float, float, dict]] | None = None,
              compress_files: list[str] = (), weights: Path | None = None,
              shape: tuple[int, ...] | None = None) -> PlanReport:
    """Plan ``name`` (seeded weights in ``folder``, or ``weights``), then set its switch table to ``routes``.

    Each route is (low Mbit/s, high Mbit/s, fields) where fields hold ``kind`` and ``cut_index`` or
    ``head_nodes``, and ``codec``; the label is made from them. Without ``routes`` the plan is left as planned.
    """
    if weights is None:
        weights, shape = write_model(folder, name, shape=shape)
    from edgesplit.model.intake import load_model

    loaded = load_model(name, weights=weights)
    traced = trace(loaded.module, loaded.example_input)
    plan = plan_model(traced, device="rpi4", server="edge-gpu", link="wifi", codec=["fp32"], name=name,
                      model_ref={**loaded.ref.to_json(), "weights": str(weights)}, host_runs=2, progress=False)
    return plan if routes is None else with_routes(plan, routes, compress_files)


def with_routes(plan: PlanReport, routes: list[tuple[float, float, dict]],
                compress_files: list[str] = ()) -> PlanReport:
    """``plan`` with its switch table set to ``routes`` (as ``make_plan`` takes them), without planning again."""
    table = []
    for low, high, fields in routes:
        kind = fields.get("kind", "split")
        label = fields.get("label") or (
            "all on device" if kind == "all-device" else
            f"{kind} {fields.get('cut_index', fields.get('head_nodes'))} [{fields.get('codec', 'fp32')}]")
        table.append(SwitchRange(low_mbps=low, high_mbps=high, label=label, kind=kind,
                                 position=fields.get("position"), cut_index=fields.get("cut_index"),
                                 head_nodes=fields.get("head_nodes"), codec=fields.get("codec")))
    data = plan.model_dump()
    data["switch_table"] = [row.model_dump() for row in table]
    data["constraints"]["compress_files"] = list(compress_files)
    return PlanReport.model_validate(data)


def save_plan(plan: PlanReport, path: Path) -> Path:
    path.write_text(plan.model_dump_json(indent=2))
    return path
