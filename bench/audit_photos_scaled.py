"""Learned-decoder inversion of 64×64 photo crops at the cuts of a ResNet-50 and of two transformers.

Issue 21, item 4: victims larger than the 32×32 patches of `audit_reference.py`, a deeper model, and token cuts.
The attacker's decoder is the audit's (`privacy.inversion.build_decoder`, chosen from the cut's shapes): a conv
upsampler with log2(stride) stages for conv cuts, a token-to-patch decoder (`privacy.decoders.TokenDecoder`) for
token cuts.

Data: `patches:` crops of the Kodak photos (`load_patches`, split by photo: the decoder and the model train on the
crops of 19 photos, the victims are crops of the 5 held-out photos, rotated by their rotation label). Models (the
zoo's classes at 64×64, 4 rotation classes): ResNet-50, the hybrid ViT (conv stem, 16×16 tokens of 64 dims) and a
ViT-S/16 (4×4 tokens + a class token, 384 dims). With ``--train-epochs MODEL=E`` a model first trains E epochs on
the rotation task of the training crops (no pretrained weights exist offline); with 0 its weights stay random.

Per cut: PSNR and SSIM of the victims' reconstructions (mean and median), the mean-image baseline, the decoder
used, the time, and FIA-Flow's published ResNet-50 figures (layer1 30.0 dB / 0.81 SSIM, layer4 20.3 dB) beside
the closest cuts. Results are merged into the JSON per model, so models can be run in separate invocations.

    flock -x /tmp/es.lock .venv/bin/python bench/audit_photos_scaled.py --models resnet50 --train-epochs resnet50=6 \
        --max-train-seconds 240 --epochs 6
    flock -x /tmp/es.lock .venv/bin/python bench/audit_photos_scaled.py --models hybrid_vit,vit_s16 \
        --train-epochs hybrid_vit=10,vit_s16=0 --max-train-seconds 120 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgesplit.model.data import SPLIT_SEED, TEST_FRACTION, _image_files, _photo_split, load_patches
from edgesplit.model.graph import trace
from edgesplit.model.zoo import HybridViT, VisionTransformer, resnet50
from edgesplit.privacy.figures import plot_reconstructions
from edgesplit.privacy.inversion import learned_inversion, mean_image_baseline
from edgesplit.privacy.metrics import psnr, ssim

ROOT = Path(__file__).resolve().parent
FIA_FLOW = {  # FIA-Flow's published figures for a trained ResNet-50 on ImageNet (224×224), learned attack
    "layer1": {"psnr": 30.0, "ssim": 0.81},
    "layer4": {"psnr": 20.3, "ssim": None},
}
# The cuts audited per model: (label, node-name prefix: the last cut whose node starts with it, FIA-Flow's cut).
CUTS = {
    "resnet50": [("layer1", "layer1", "layer1"), ("layer2", "layer2", None), ("layer3", "layer3", None),
                 ("layer4", "layer4", "layer4")],
    "hybrid_vit": [("stem", "stem", None), ("block 1", "blocks_0", None), ("block 3", "blocks_2", None),
                   ("norm", "norm", None)],
    "vit_s16": [("layer 1", "encoder_layers_encoder_layer_0", None),
                ("layer 6", "encoder_layers_encoder_layer_5", None),
                ("layer 12", "encoder_layers_encoder_layer_11", None), ("ln", "encoder_ln", None)],
}


def build(name: str, size: int) -> nn.Module:
    if name == "resnet50":
        return resnet50(3, 4)
    if name == "hybrid_vit":
        return HybridViT(3, 4, image_size=size)
    if name == "vit_s16":
        return VisionTransformer(12, 6, 384, 1536, image_size=size, num_classes=4)
    raise SystemExit(f"unknown model {name!r}; choose from {', '.join(CUTS)}")


def train_rotation(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int,
                   max_seconds: float | None = None) -> list[float]:
    """AdamW with a one-cycle schedule on the rotation labels, batch 64, no augmentation (a flip changes the
    label); stops early after the epoch that passes ``max_seconds``."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * math.ceil(len(images) / 64))
    losses = []
    model.train()
    for _ in range(epochs):
        order, total = torch.randperm(len(images), generator=generator), 0.0
        for i in range(0, len(images), 64):
            idx = order[i:i + 64]
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        losses.append(total / len(images))
        print(f"  train epoch {len(losses)}/{epochs} loss {losses[-1]:.3f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            break
    model.eval()
    return losses


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        predictions = torch.cat([model(images[i:i + 128]).argmax(1) for i in range(0, len(images), 128)])
    return float((predictions == labels).double().mean())


def pick_cut(traced, prefix: str):
    matches = [c for c in traced.cuts if c.after == prefix or c.after.startswith(prefix + "_")]
    if not matches:
        raise SystemExit(f"no cut after a node starting with {prefix!r}; cuts: {[c.after for c in traced.cuts]}")
    cut = matches[-1]
    # A residual block's last node inside it may be its branch, with the skip still crossing beside it: the next
    # cut (after the residual add) sends the block's output alone.
    following = [c for c in traced.cuts if c.position > cut.position]
    if len(cut.crossing) > 1 and following and len(following[0].crossing) == 1:
        cut = following[0]
    return cut


def stats(values: torch.Tensor) -> dict[str, float]:
    return {"mean": float(values.mean()), "median": float(values.double().quantile(0.5))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent.parent / "shared" / "data"))
    parser.add_argument("--size", type=int, default=64, help="crop side in pixels")
    parser.add_argument("--models", default="resnet50,hybrid_vit,vit_s16")
    parser.add_argument("--cuts", default=None, help="labels to keep, comma-separated (default: all of CUTS)")
    parser.add_argument("--train-epochs", default="resnet50=4,hybrid_vit=10,vit_s16=0",
                        help="MODEL=EPOCHS rotation-task training before the audit (0: random weights)")
    parser.add_argument("--max-train-seconds", type=float, default=None, help="stop model training after this")
    parser.add_argument("--epochs", type=int, default=8, help="decoder training epochs")
    parser.add_argument("--victims", type=int, default=64)
    parser.add_argument("--aux-limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", "--out", dest="out", default=str(ROOT / "results" / "audit_photos_scaled.json"),
                        help="the JSON written (merged per model with what it already holds)")
    parser.add_argument("--figures", default=str(ROOT / "results" / "audit_photos_scaled"),
                        help="folder of the reconstruction grids (photos-scaled-MODEL.png)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    kodak = Path(args.data_dir) / "kodak"
    if not kodak.is_dir():
        raise SystemExit(f"no Kodak photos in {kodak}; pass --data-dir")
    data = load_patches(kodak, image_size=args.size)
    files = [p.name for p in _image_files(kodak)]
    train_ids, test_ids = _photo_split(len(files), TEST_FRACTION, SPLIT_SEED)
    aux = data.train_images[:args.aux_limit]
    victims = data.test_images[:args.victims]
    baseline = mean_image_baseline(aux, len(victims))
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report.update({
        "benchmark": "audit_photos_scaled", "crop": args.size, "threads": args.threads,
        "data": {"train_photos": [files[i] for i in train_ids], "victim_photos": [files[i] for i in test_ids],
                 "aux_crops": len(aux), "victims": len(victims)},
        "decoder_epochs": args.epochs, "fia_flow": FIA_FLOW,
        "mean_image": {"psnr": stats(psnr(baseline, victims)), "ssim": stats(ssim(baseline, victims))},
    })
    report.setdefault("models", {})
    epochs_by_model = dict((k, int(v)) for k, v in (item.split("=") for item in args.train_epochs.split(",") if item))
    keep = set(args.cuts.split(",")) if args.cuts else None
    for name in args.models.split(","):
        model_started = time.perf_counter()
        torch.manual_seed(args.seed)
        model = build(name, args.size)
        epochs = epochs_by_model.get(name, 0)
        print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
              f"{epochs} training epochs", flush=True)
        losses = train_rotation(model, data.train_images, data.train_labels, epochs, args.seed,
                                args.max_train_seconds) if epochs else []
        model.eval()
        train_seconds = time.perf_counter() - model_started
        entry = {"weights": f"trained {len(losses)} epochs on the rotation task" if epochs else "random (untrained)",
                 "train_loss": losses, "train_seconds": train_seconds,
                 "rotation_accuracy": accuracy(model, victims, data.test_labels[:len(victims)]), "cuts": []}
        traced = trace(model, data.train_images[:1])
        rows = []
        for label, prefix, fia in CUTS[name]:
            if keep is not None and label not in keep:
                continue
            cut = pick_cut(traced, prefix)
            shapes = [list(t.shape[1:]) for t in cut.crossing]
            result = learned_inversion(traced.split(cut), aux, victims, epochs=args.epochs, batch_size=64,
                                       held_out=0.1, seed=args.seed)
            p, s = psnr(result.reconstructions, victims), ssim(result.reconstructions, victims)
            row = {"label": label, "after": cut.after, "crossing": shapes, "decoder": type(result.decoder).__name__,
                   "decoder_params": sum(q.numel() for q in result.decoder.parameters()),
                   "psnr": stats(p), "ssim": stats(s), "seconds": result.seconds, "epochs_run": result.epochs,
                   "held_out_mse": result.held_out_loss, "fia_flow_cut": fia}
            entry["cuts"].append(row)
            rows.append((f"{label} · {row['psnr']['mean']:.1f} dB / {row['ssim']['mean']:.2f}",
                         result.reconstructions[:8]))
            print(f"  {label:9s} {cut.after:40s} {str(shapes):18s} {row['decoder']:12s} "
                  f"PSNR {row['psnr']['mean']:5.2f} (median {row['psnr']['median']:5.2f})  "
                  f"SSIM {row['ssim']['mean']:.3f} (median {row['ssim']['median']:.3f})  {result.seconds:6.1f} s",
                  flush=True)
        figure = Path(args.figures) / f"photos-scaled-{name}.png"
        plot_reconstructions(victims[:8], rows, figure,
                             f"{name} ({entry['weights']}), {args.size}×{args.size} Kodak crops of held-out photos: "
                             "learned decoder per cut")
        entry["figure"] = str(figure.relative_to(ROOT)) if figure.is_relative_to(ROOT) else str(figure)
        entry["seconds"] = time.perf_counter() - model_started
        report["models"][name] = entry
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")  # after every model: a later one may be cut short
    report["seconds_this_run"] = time.perf_counter() - started
    out.write_text(json.dumps(report, indent=2) + "\n")

    base = report["mean_image"]
    print(f"\n{args.size}×{args.size} crops; mean image {base['psnr']['mean']:.2f} dB / {base['ssim']['mean']:.3f}")
    print(f"{'model':11s} {'cut':9s} {'crossing':16s} {'PSNR mean/median':>17s} {'SSIM mean/median':>17s} "
          f"{'FIA-Flow (ResNet-50)':>21s}")
    for name, entry in report["models"].items():
        for row in entry["cuts"]:
            fia = FIA_FLOW.get(row["fia_flow_cut"] or "")
            fia_text = (f"{fia['psnr']:.1f} dB / {fia['ssim']:.2f}" if fia and fia["ssim"] else
                        f"{fia['psnr']:.1f} dB / —" if fia else "")
            print(f"{name:11s} {row['label']:9s} {str(row['crossing']):16s} "
                  f"{row['psnr']['mean']:7.2f} / {row['psnr']['median']:6.2f}   "
                  f"{row['ssim']['mean']:6.3f} / {row['ssim']['median']:6.3f}   {fia_text:>21s}")
    print(f"run time {report['seconds_this_run']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
