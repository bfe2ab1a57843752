"""`python -m edgesplit.device BUNDLE --server URL`: `edgesplit infer` from a device bundle, without PyTorch.

Sends images through :class:`edgesplit.device.client.DeviceClient` and prints the same summary table as
`edgesplit infer` (``runtime.summary``); ``--json FILE`` writes the same ``{"summary": ..., "records": [...]}``.
Inputs: ``--images DIR`` (PNG/JPEG files, or class subfolders that give labels; resized and converted as
`edgesplit infer` does, with Pillow) or ``--data digits`` (scikit-learn's bundled digits, the same test split; the
default for a 1×8×8 model). Other data set specs (mnist:DIR, ...) and token-id models need `edgesplit infer`.
User errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np

from edgesplit.errors import EdgesplitError

__all__ = ["load_device_inputs", "main"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"})  # as edgesplit.model.data
_TEST_FRACTION, _SPLIT_SEED = 0.2, 0  # the digits' held-out split, as edgesplit.model.data makes it


class DeviceInputError(EdgesplitError):
    """Inputs the device client cannot read or that do not fit the bundle's model."""


def _stratified_split(labels: np.ndarray) -> np.ndarray:
    """The test indices of ``edgesplit.model.data._stratified_split`` (the same draws, so the same split)."""
    rng = np.random.default_rng(_SPLIT_SEED)
    train, test = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = 0 if len(idx) < 2 else min(max(math.floor(_TEST_FRACTION * len(idx) + 0.5), 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    rng.permutation(np.concatenate(train))
    return rng.permutation(np.concatenate(test))


def _digits(limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, test split, as N×1×8×8 float32 in [0, 1] and labels."""
    spec = importlib.util.find_spec("sklearn")
    table = None
    if spec is not None and spec.submodule_search_locations:
        csv = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            table = np.loadtxt(csv, delimiter=",", dtype=np.float64)
    if table is None or table.shape != (1797, 65):
        raise DeviceInputError("--data digits needs scikit-learn's bundled digits; install it with "
                               "'pip install scikit-learn', or give --images DIR")
    pixels, labels = table[:, :64], table[:, 64].astype(np.int64)
    images = (pixels.astype(np.float32) / np.float32(16)).reshape(-1, 1, 8, 8)
    test = _stratified_split(labels)[:limit]
    return np.ascontiguousarray(images[test]), labels[test]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _read_image(path: Path, channels: int, height: int, width: int) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img).convert("L" if channels == 1 else "RGB")
            img = img.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DeviceInputError(f"cannot read image {path} ({reason}); replace or delete the file") from error
    return pixels.reshape(height, width, channels).transpose(2, 0, 1).astype(np.float32) / np.float32(255)


def load_device_inputs(shape: list[int], *, images: Path | None = None, data: str | None = None,
                       limit: int | None = None) -> tuple[np.ndarray, np.ndarray | None, list[str], str]:
    """(N×C×H×W float32 images, labels or None, names, source) for a model of input ``shape``, as `edgesplit infer`
    loads them from a folder (``--images``) or the bundled digits (``--data digits``)."""
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise DeviceInputError(f"this bundle's model takes {shape} inputs; the device client sends gray or RGB "
                               "images (N×C×H×W); use DeviceClient from Python for other inputs")
    channels, height, width = shape[1:]
    if images is not None and data is not None:
        raise DeviceInputError("give --images DIR or --data digits, not both")
    if images is None and data is None:
        if shape[1:] != [1, 8, 8]:
            raise DeviceInputError(f"this bundle's model takes {channels}×{height}×{width} images; give them with "
                                   "--images DIR")
        data = "digits"
    if data is not None:
        if data.strip().lower() != "digits":
            raise DeviceInputError(f"--data {data}: the device client reads 'digits' only; give other images as "
                                   "--images DIR (or use `edgesplit infer`)")
        if shape[1:] != [1, 8, 8]:
            raise DeviceInputError(f"data set 'digits' has 1×8×8 images and this bundle's model takes "
                                   f"{channels}×{height}×{width}; use --images with a folder of pictures")
        pictures, labels = _digits(limit)
        return pictures, labels, [f"digits#{i}" for i in range(len(pictures))], "digits (test split)"
    folder = Path(images)
    if not folder.is_dir():
        raise DeviceInputError(f"--images {folder} is not a folder; give a folder of PNG/JPEG images")
    found: list[tuple[Path, int | None]] = [(f, None) for f in _image_files(folder)]
    if not found:  # DIR/CLASS/IMAGE: labels are the class folders' sorted order
        classes = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: p.name)
        found = [(f, i) for i, c in enumerate(classes) for f in _image_files(c)]
    if not found:
        raise DeviceInputError(f"folder {folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); put PNG "
                               "or JPEG files in it")
    found = found[:limit]
    pictures = np.stack([_read_image(path, channels, height, width) for path, _ in found])
    labels = [label for _, label in found]
    return (np.ascontiguousarray(pictures), np.array(labels, dtype=np.int64) if None not in labels else None,
            [str(path.relative_to(folder)) for path, _ in found], str(folder))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edgesplit.device",
                                     description="Run a device bundle's head here and its tail on an edgesplit "
                                                 "server (no PyTorch): the summary of `edgesplit infer`.")
    parser.add_argument("bundle", type=Path, metavar="BUNDLE", help="a folder from `edgesplit export`")
    parser.add_argument("--server", required=True, help="the tail server's URL, e.g. http://10.0.0.2:8000")
    parser.add_argument("--token-file", type=Path, help="file whose first line is the server's token (default: "
                                                        "$EDGESPLIT_TOKEN, else none)")
    parser.add_argument("--images", type=Path, help="folder of PNG/JPEG images (class subfolders give labels)")
    parser.add_argument("--data", help="digits (the default for 1×8×8 models)")
    parser.add_argument("--limit", type=int, help="send at most this many images")
    parser.add_argument("--batch", type=int, default=1, help="images per request (1..64)")
    parser.add_argument("--top-k", type=int, default=0, help="ask for the k largest outputs only (0: all)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds an attempt may wait on the network")
    parser.add_argument("--retries", type=int, default=2, help="attempts after the first (same request id)")
    parser.add_argument("--probe-every", type=float, default=2.0, help="seconds between probes")
    parser.add_argument("--initial-mbps", type=float, help="uplink to assume before measuring")
    parser.add_argument("--hysteresis", type=float, default=0.2, help="switch once this far past a threshold")
    parser.add_argument("--route", help="always run this plan of the switch table (its label): no switching")
    parser.add_argument("--no-fallback", action="store_true", help="fail instead of running the whole model here")
    parser.add_argument("--no-check", action="store_true", help="do not run the whole model here for agreement")
    parser.add_argument("--ca-file", type=Path, help="PEM file of the CA that signed an https:// server's "
                                                     "certificate")
    parser.add_argument("--threads", type=int, help="onnxruntime's intra-op threads (default: its own)")
    parser.add_argument("--json", type=Path, dest="json_out", help="also write the result as JSON to this file")
    return parser


def _run(args: argparse.Namespace) -> None:
    from edgesplit.device.client import DeviceClient, run_device_inference
    from edgesplit.runtime.auth import TokenError, token_from
    from edgesplit.runtime.summary import summary_table
    from edgesplit.versioned import write_json

    if not 1 <= args.batch <= 64 or not 0 <= args.top_k <= 255 or (args.limit is not None and args.limit < 1):
        raise DeviceInputError("--batch is 1..64, --top-k 0..255, --limit at least 1")
    if args.threads is not None and args.threads < 1:
        raise DeviceInputError("--threads is at least 1")
    try:
        token = token_from(args.token_file)[0]
    except TokenError as error:
        raise DeviceInputError(str(error)) from error
    with DeviceClient(args.bundle, args.server, token, timeout_s=args.timeout, retries=args.retries,
                      fallback=not args.no_fallback, probe_every_s=args.probe_every, initial_mbps=args.initial_mbps,
                      hysteresis=args.hysteresis, top_k=args.top_k, route=args.route, ca_file=args.ca_file,
                      threads=args.threads) as client:
        shape = list(client.deployment.manifest.input.shape)
        images, labels, names, source = load_device_inputs(shape, images=args.images, data=args.data,
                                                           limit=args.limit)
        result = run_device_inference(client, images, labels, names, source, batch=args.batch,
                                      check=not args.no_check)
    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 160).print(summary_table(result["summary"]))
    if args.json_out is not None:
        write_json(args.json_out, result)


def main(argv: list[str] | None = None) -> int:
    """Run the device client; a user error prints one line to stderr and returns 2."""
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except EdgesplitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
