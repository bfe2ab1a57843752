"""Split a torchvision model for edge inference with edgesplit's Python API.

Uses torchvision.models.NAME(weights=None) where torchvision is installed, else edgesplit.model.zoo's model of
the same architecture (same layers, same parameter names). Run:  python examples/split_torchvision.py --out OUT
"""

import argparse

import torch

import edgesplit
from edgesplit.model import zoo
from edgesplit.model.artifact import load_split, save_split, verify_split
from edgesplit.model.intake import ModelRef
from edgesplit.plan import plan_model

parser = argparse.ArgumentParser(description="Trace, plan and split a torchvision model.")
parser.add_argument("--model", default="resnet18", help="a torchvision.models name (resnet18 also in the zoo)")
parser.add_argument("--device", default="rpi4", help="device preset or profile (see `edgesplit plan --help`)")
parser.add_argument("--server", default="edge-gpu", help="server preset or profile")
parser.add_argument("--link", default="lte", help="link preset, e.g. lte, wifi, lte:up=2")
parser.add_argument("--codec", action="append", help="how features cross, repeatable: fp32 (default), int8, int4+zstd")
parser.add_argument("--out", default=None, help="folder for the split (default: MODEL-split)")
args = parser.parse_args()
out_dir = args.out or f"{args.model}-split"

# 1. The model, and a ModelRef that tells load_split how to rebuild it (an import path, or a zoo name).
try:
    import torchvision

    model = getattr(torchvision.models, args.model)(weights=None)
    ref, shape = ModelRef(f"torchvision.models:{args.model}", {"weights": None}), (1, 3, 224, 224)
    print(f"model: torchvision.models.{args.model}(weights=None)")
except ImportError:
    entry = zoo.get_entry(args.model)
    model, ref, shape = entry.factory(), ModelRef(args.model, {}), entry.input_shape
    print(f"model: torchvision is not installed; using edgesplit.model.zoo.{args.model} (same architecture and names)")
x = torch.rand(*shape)

# 2. Trace: every position in the graph is a candidate cut; the crossing set is what the device sends.
traced = edgesplit.trace(model, x)
print(f"traced with {traced.tracer}: {len(traced.compute_nodes)} compute nodes, {len(traced.cuts)} cuts")
for cut in traced.cuts[1::len(traced.cuts) // 6]:
    shapes = " + ".join("×".join(map(str, t.shape)) for t in cut.crossing)
    print(f"  cut {cut.index:3d} after {cut.after:24s} sends {shapes} ({cut.crossing_bytes / 1e3:.0f} kB)")

# 3. Plan: where to cut for this device, server and link, and which plan wins at which uplink bandwidth.
report = plan_model(traced, device=args.device, server=args.server, link=args.link, codec=args.codec or "fp32",
                    name=args.model, model_ref=ref.to_json(), progress=False)  # model_ref: serve can rebuild it
chosen = report.chosen
print(f"plan for {args.device} -> {args.server} over {args.link}: {chosen.label} ({chosen.kind}), "
      f"{chosen.costs.latency_ms:.1f} ms, {chosen.costs.uplink_bytes / 1e3:.1f} kB up")
print(f"  all on device {report.all_device.costs.latency_ms:.1f} ms, "
      f"all on server {report.all_server.costs.latency_ms:.1f} ms")
print("switch table (best plan by uplink bandwidth):")
for row in report.switch_table:
    print(f"  {row.low_mbps:8.2f} – {row.high_mbps:8.2f} Mbit/s: {row.label}")

# 4. Split at the best plan that really splits: a candidate cut strictly between input and output.
#    (A min-cut head that is not a prefix has head_nodes and no cut_index; save_split records a cut index.)
best = next(p for p in report.ranked
            if p.kind == "split" and p.cut_index is not None and 0 < p.position < len(traced.compute_nodes))
halves = traced.split(best.cut_index)
with torch.no_grad():
    diff = edgesplit.max_abs_diff(halves.tail(*halves.head(x)), model(x))
assert diff <= 1e-4, f"the halves differ from the model by {diff}"
print(f"best real split: {best.label}, {best.costs.latency_ms:.1f} ms, {best.costs.uplink_bytes / 1e3:.1f} kB up; "
      f"tail(*head(x)) vs model(x) max abs diff {diff:.1e}")

# 5. Save the halves as the CLI's `split` verb does, reload them and check them again.
save_split(halves, traced, ref, out_dir, diff)
reloaded, record = load_split(out_dir, model=ref.name)  # a factory split.json names runs only if we name it too
print(f"saved {out_dir}/ (split.json, head.safetensors, tail.safetensors); "
      f"reloaded max abs diff {verify_split(reloaded, model, x):.1e}")
