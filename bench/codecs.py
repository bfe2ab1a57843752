"""How fast are the codecs on a weak device, and what do they send? Encode and decode throughput, payload size and
error of every codec on the tensors that cross real cuts.

Tensors (one sample each, as a device sends them):
  resnet8 cuts   the feature a zoo resnet8 (random-init weights, seed 0: sizes and value ranges are those of an
                 untrained network, not a trained one) produces at each --cuts node for the photo crops that
                 edgesplit bundles (``sample_images("photos")``, 3×32×32); timed on the first crop, bytes
                 averaged and errors maximised over all 16
  relu 1 MiB     ``torch.randn(1, 64, 64, 64).relu()``: 262,144 float32 values, half of them zero

Side by side in one run, on the same tensors:
  raw            what "no codec" costs: ``tensor.numpy().tobytes()`` and ``np.frombuffer(...).reshape(...)``
                 (no header, no checks, a zero-copy view on decode)
  codecs         ``parse_codec(spec).encode(tensor)`` and ``decode(payload)`` (the bounded decoder), each spec
                 uncalibrated: quantization ranges come from each payload, ANS models are adaptive

Throughput is MB (10^6 bytes) of float32 input per second, from the median of --repeats timings (each a loop
long enough to last a few ms), with the time of one call in µs; "× raw" is the codec's time over raw's. One torch
thread by default, to stand in for a weak device (numpy, zstd and the ANS coder are single-threaded anyway).

    python bench/codecs.py [--repeats 7] [--threads 1] [--model resnet8] [--cuts layers_0_relu,layers_1_relu]
                           [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edgesplit.model import zoo
from edgesplit.codecs import decode, parse_codec
from edgesplit.model.data import sample_images
from edgesplit.model.graph import trace
from edgesplit.profile import machine_info

RESULTS = Path(__file__).parent / "results"
SPECS = ["fp32", "fp16", "bf16", "zstd", "fp16+zstd", "int8", "int8:channel", "int4+zstd", "int4+ans", "int2+ans",
         "int8+ans"]
MIN_SAMPLE_S = 0.005  # each timing loops the call until it lasts this long


def seconds_per_call(action: Callable[[], object], repeats: int) -> float:
    """Median seconds of one call, over ``repeats`` timed loops of as many calls as fill MIN_SAMPLE_S."""
    action()  # warm up (imports, allocator)
    start = time.perf_counter()
    action()
    once = max(time.perf_counter() - start, 1e-7)
    loops = max(1, int(MIN_SAMPLE_S / once))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            action()
        samples.append((time.perf_counter() - start) / loops)
    return statistics.median(samples)


def cut_features(model_name: str, cut_names: list[str]) -> dict[str, torch.Tensor]:
    """label -> N×... features of the photo crops at each cut (a single crossing tensor per cut)."""
    entry = zoo.get_entry(model_name)
    images = sample_images("photos", entry.input_shape[1:])
    torch.manual_seed(0)
    traced = trace(entry.factory(in_channels=entry.input_shape[1]), images[:1].clone())
    found = {}
    for name in cut_names:
        cut = traced.cut(name)
        if len(cut.crossing) != 1:
            raise SystemExit(f"cut {name} sends {len(cut.crossing)} tensors; pick a block boundary")
        head = traced.split(cut).head
        with torch.no_grad():
            batch = torch.cat([head(images[i:i + 1])[0] for i in range(len(images))])
        found[f"{model_name} @ {name} {'×'.join(map(str, batch.shape[1:]))}"] = batch
    return found


def measure(label: str, samples: torch.Tensor, spec: str | None, repeats: int) -> dict:
    """One codec (None: raw) on one tensor: times on the first sample, bytes and error over all of them."""
    timed = samples[:1].contiguous()
    shape = tuple(timed.shape)
    if spec is None:
        def encode(t: torch.Tensor) -> bytes:
            return t.numpy().tobytes()

        def decoder(b: bytes) -> np.ndarray:
            return np.frombuffer(b, dtype=np.float32).reshape(shape)
    else:
        encode, decoder = parse_codec(spec).encode, decode
    payload = encode(timed)
    encode_s = seconds_per_call(lambda: encode(timed), repeats)
    decode_s = seconds_per_call(lambda: decoder(payload), repeats)
    sizes, error = [], 0.0
    for i in range(len(samples)):
        x = samples[i:i + 1].contiguous()
        data = encode(x)
        restored = torch.as_tensor(np.array(decoder(data))) if spec is None else decode(data)
        sizes.append(len(data))
        error = max(error, float((restored.float() - x).abs().max()))
    input_bytes = timed.numel() * 4
    return {"tensor": label, "codec": spec or "raw", "input_bytes": input_bytes, "bytes": statistics.mean(sizes),
            "ratio_vs_fp32": input_bytes / statistics.mean(sizes), "max_abs_error": error,
            "encode_ms": encode_s * 1e3, "decode_ms": decode_s * 1e3,
            "encode_mb_s": input_bytes / encode_s / 1e6, "decode_mb_s": input_bytes / decode_s / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 stands in for a weak device)")
    parser.add_argument("--model", default="resnet8")
    parser.add_argument("--cuts", default="layers_0_relu,layers_1_relu", help="cut nodes of --model, by name")
    parser.add_argument("--json", type=Path, default=RESULTS / "codecs.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tensors = cut_features(args.model, [c.strip() for c in args.cuts.split(",") if c.strip()])
    torch.manual_seed(0)
    tensors["relu 1 MiB 64×64×64"] = torch.randn(1, 64, 64, 64).relu()
    rows = []
    with Progress() as progress:
        task = progress.add_task("codecs", total=len(tensors) * (len(SPECS) + 1))
        for label, samples in tensors.items():
            base = measure(label, samples, None, args.repeats)
            rows.append(base)
            progress.advance(task)
            for spec in SPECS:
                row = measure(label, samples, spec, args.repeats)
                row["encode_x_raw"] = row["encode_ms"] / base["encode_ms"]
                row["decode_x_raw"] = row["decode_ms"] / base["decode_ms"]
                rows.append(row)
                progress.advance(task)

    table = Table(title=f"codec throughput, {args.threads} torch thread(s), median of {args.repeats}: "
                        "MB/s of float32 input; × raw = time over tobytes/frombuffer")
    for column in ("tensor", "codec", "bytes", "vs fp32", "max |err|", "encode MB/s", "decode MB/s", "encode µs",
                   "decode µs", "encode × raw", "decode × raw"):
        table.add_column(column, justify="left" if column in ("tensor", "codec") else "right")
    previous = None
    for row in rows:
        table.add_row(row["tensor"] if row["tensor"] != previous else "", row["codec"], f"{row['bytes']:,.0f}",
                      f"{row['ratio_vs_fp32']:.2f}×", f"{row['max_abs_error']:.3g}", f"{row['encode_mb_s']:,.0f}",
                      f"{row['decode_mb_s']:,.0f}", f"{row['encode_ms'] * 1e3:,.0f}",
                      f"{row['decode_ms'] * 1e3:,.0f}", f"{row.get('encode_x_raw', 1):.1f}×",
                      f"{row.get('decode_x_raw', 1):.1f}×", end_section=row is rows[-1] or row["codec"] == SPECS[-1])
        previous = row["tensor"]
    Console(width=180).print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "machine": machine_info().model_dump(), "threads": args.threads, "repeats": args.repeats,
        "model": args.model, "weights": "random init (torch.manual_seed(0)), not trained",
        "inputs": "sample_images('photos'): 16 crops; timed on the first, bytes mean / error max over all",
        "rows": rows}, indent=2))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
