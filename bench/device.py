"""The device side, measured (issue 20): what a device pays to run its half with the torch client against the
torch-free bundle client, and what int8 heads buy and cost.

Per zoo model (default small_cnn at 1×1×28×28, trained on MNIST, and mobilenetv3_small, mobilenetv3_large and
resnet50 at 224×224, random-init weights, seed 0):

  plan      `edgesplit plan M --weights W --device D --server edge-gpu --link L --keep-input --codec fp32
            --codec int8` (presets: nothing timed), with the first of rpi4/lte, rpi4/wifi, mcu/wifi,
            mcu/ethernet whose switch table has a split; its routes with a head are "the planner's cuts"
  bundle    `edgesplit export plan.json --out bundle --quantize int8 --data SPEC` (small_cnn: mnist, 128
            calibration + 1000 held-out images; the 224 models: the 24 Kodak photos, 12 + 12)
  RSS       peak resident memory (``ru_maxrss`` of the process, from ``wait4``) of the device process sending
            --images images one at a time over one route with a head (the plan's chosen one where it has a head)
            to a real `edgesplit serve` on 127.0.0.1: the torch client (`edgesplit infer PLAN --route L
            --no-check`) against the bundle client (`python -m edgesplit.device BUNDLE --route L --no-check`);
            both with --threads torch/onnxruntime threads (OMP_NUM_THREADS too), and their wall time; and the
            bundle client pinned to the all-device plan (its whole model.onnx loaded, as in an outage); and the
            bundle client with only the edgesplit-device wheel's dependencies importable (the rest installed here
            blocked at import: httpx imports its command line, click, when it is installed)
  start-up  wall time and peak RSS of `python -c "import edgesplit.runtime.client"` (the torch client's import)
            against `python -c "import edgesplit.device.client"`, median of 3 (once, not per model)
  heads     at each of the planner's cuts: the PyTorch head (fx, fp32), the bundle's float ONNX head under
            onnxruntime and the int8 head (the bundle's, or, where export kept the float head because int8 lost
            accuracy, the same quantization of it calibrated on the same images), batch 1, timed interleaved in
            --rounds rounds (median), one session/torch thread each
  accuracy  the int8 accuracy drop export measured end to end (head, codec, server tail) on held-out test
            images, for small_cnn trained on MNIST and on Fashion-MNIST (`edgesplit train ... --limit`)
  size      bytes on disk per route: float head, int8 head, what the device runs, and the whole bundle

Preparation (training, planning, exporting) is cached in --work and needs no exclusive lock; timings do:

    .venv/bin/python bench/device.py --prepare-only          # plans and bundles, under flock -s if you like
    flock -x /tmp/es.lock .venv/bin/python bench/device.py   # measures; writes bench/results/device.json

Optional part, where ExecuTorch imports (`pip install 'edgesplit[pte]'`, in a separate venv: bench/README.md):

  --pte     only this part, on the cached plans and bundles: at each of the planner's cuts, the head lowered to an
            ExecuTorch program as `edgesplit export --format pte` lowers it (XNNPACK partitioner, batch 1), checked
            against PyTorch, and timed interleaved with the PyTorch head and the bundle's ONNX head under
            onnxruntime (--rounds rounds, median; one thread each: torch, the ORT session, ExecuTorch's
            threadpool); writes --pte-json (bench/results/device_pte.json)

        /tmp/es-excl /tmp/etvenv/bin/python bench/device.py --pte --models small_cnn,mobilenetv3_small,resnet50

Needs MNIST, Fashion-MNIST and Kodak from --data-dir (default ../shared/data beside the checkout); the package does
not, only this benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = "small_cnn,mobilenetv3_small,mobilenetv3_large,resnet50"
TOKEN = "device-bench-token-0123456789abcdef"
PLAN_ARGS = ["--server", "edge-gpu", "--keep-input", "--codec", "fp32", "--codec", "int8"]
# Device and link presets tried in turn until the plan's switch table has a route with a head (a split).
SETTINGS = [("rpi4", "lte"), ("rpi4", "wifi"), ("mcu", "wifi"), ("mcu", "ethernet:up=100,down=100")]


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with mnist/, fashion-mnist/, kodak/")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgesplit-device-bench"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=8, help="images each client sends")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--train-limit", type=int, default=30000, help="train images (one epoch)")
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "device.json")
    parser.add_argument("--pte", action="store_true", help="only the ExecuTorch heads (needs executorch)")
    parser.add_argument("--pte-json", type=Path, default=ROOT / "bench" / "results" / "device_pte.json")
    return parser.parse_args()


def _data_dir(given: Path | None) -> Path:
    candidates = [given] if given else [ROOT.parent / "shared" / "data", Path("/work/shared/data")]
    for folder in candidates:
        if folder and all((folder / name).is_dir() for name in ("mnist", "fashion-mnist", "kodak")):
            return folder
    sys.exit(f"bench/device.py needs MNIST, Fashion-MNIST and Kodak in a folder with mnist/, fashion-mnist/ and "
             f"kodak/ (looked in {', '.join(str(c) for c in candidates)}); pass --data-dir")


def _edgesplit(*args: str, threads: int = 1) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "edgesplit", *args], capture_output=True, text=True, env=env,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"edgesplit {' '.join(args)} failed: {done.stderr.strip()[-1500:]}")
    return done.stdout


# ---- preparation (cached) -----------------------------------------------------------------------------------------


def _weights(model: str, folder: Path, data: Path, dataset: str, args: argparse.Namespace) -> tuple[Path, dict]:
    path = folder / "weights.safetensors"
    record_path = folder / "train.json"
    if not path.exists():
        if model == "small_cnn":
            _edgesplit("train", "small_cnn", "--data", f"{dataset}:{data / dataset}", "--epochs", "1", "--batch-size",
                       "128", "--lr", "3e-3", "--limit", str(args.train_limit), "--out", str(path), "--json", str(record_path), "-q",
                       threads=args.threads)
        else:
            import torch
            from safetensors.torch import save_file

            from edgesplit.model import zoo

            torch.manual_seed(0)
            save_file({k: v.contiguous() for k, v in zoo.ZOO[model].factory().eval().state_dict().items()}, path)
            record_path.write_text(json.dumps({"weights": "random init, seed 0"}))
    return path, json.loads(record_path.read_text())


def _photo_classes(work: Path, data: Path) -> Path:
    """Kodak as a one-class image folder (`folder:` specs want class subfolders)."""
    folder = work / "kodak-folder"
    (folder / "photo").mkdir(parents=True, exist_ok=True)
    for png in sorted((data / "kodak").glob("*.png")):
        link = folder / "photo" / png.name
        if not link.exists():
            link.symlink_to(png)
    return folder


def _mnist_pngs(work: Path, data: Path, count: int) -> Path:
    from PIL import Image

    from edgesplit.model.data import load_dataset

    folder = work / "mnist-png"
    if len(list(folder.glob("*.png"))) < count:
        folder.mkdir(parents=True, exist_ok=True)
        images = load_dataset(f"mnist:{data / 'mnist'}", limit=count).test_images[:count]
        for i, image in enumerate(images):
            Image.fromarray((image[0].numpy() * 255).round().astype("uint8"), "L").save(folder / f"{i:03d}.png")
    return folder


def prepare(model: str, dataset: str, work: Path, data: Path, args: argparse.Namespace) -> dict:
    """Weights, plan and int8 bundle of ``model`` (trained on ``dataset`` for small_cnn), cached in ``work``."""
    key = model if model != "small_cnn" else f"small_cnn-{dataset}"
    folder = work / key
    folder.mkdir(parents=True, exist_ok=True)
    weights, trained = _weights(model, folder, data, dataset, args)
    plan, bundle = folder / "plan.json", folder / "bundle"
    if not plan.exists():
        for device, link in SETTINGS:
            _edgesplit("plan", model, "--weights", str(weights), "--device", device, "--link", link, *PLAN_ARGS,
                       "--json", str(folder / "planning.json"), "-q")
            if any(row["kind"] == "split" for row in json.loads((folder / "planning.json").read_text())["switch_table"]):
                break
        (folder / "planning.json").rename(plan)
    if not (bundle / "manifest.json").exists():
        if bundle.exists():
            for leftover in bundle.iterdir():
                leftover.unlink()
        spec, calibration, holdout = ((f"{dataset}:{data / dataset}", 128, 1000) if model == "small_cnn" else
                                      (f"folder:{_photo_classes(work, data)}", 12, 12))
        started = time.perf_counter()
        _edgesplit("export", str(plan), "--out", str(bundle), "--quantize", "int8", "--data", spec,
                   "--calibration", str(calibration), "--holdout", str(holdout), "--json",
                   str(folder / "export.json"), threads=args.threads)
        (folder / "export_s").write_text(f"{time.perf_counter() - started:.2f}")
    return {"key": key, "model": model, "dataset": dataset if model == "small_cnn" else None, "folder": folder,
            "weights": weights, "trained": trained, "plan": plan, "bundle": bundle,
            "export_s": float((folder / "export_s").read_text())}


# ---- processes: serve, clients, imports ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Serve:
    """`edgesplit serve PLAN` on 127.0.0.1, ready when /readyz answers 200."""

    def __init__(self, plan: Path, token_file: Path, threads: int):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen([sys.executable, "-m", "edgesplit", "serve", str(plan), "--port",
                                      str(self.port), "--token-file", str(token_file), "--log-level", "warning"],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"edgesplit serve exited: {self.proc.stderr.read().decode()[-1500:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("edgesplit serve did not become ready in 180 s")
            time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Serve:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def measured_process(command: list[str], threads: int, timeout_s: float = 600) -> dict:
    """Run ``command``; its wall time and peak RSS (MB: GNU time's %M, the maximum resident set size).

    Through /usr/bin/time, not ``wait4`` on a child of this process: Linux keeps a process's RSS high-water mark
    across fork and exec, so a child of a bench process that has imported torch reports at least that process's
    RSS (a first run measured 324 MB for every client that way)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.NamedTemporaryFile(suffix=".rss") as rss:
        started = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *command], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout_s, check=False)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:5])} … failed ({done.returncode}): {done.stderr.decode()[-1500:]}")
        kilobytes = int(Path(rss.name).read_text().split()[-1])
    return {"wall_s": wall, "peak_rss_mb": kilobytes / 1024}


def startup(threads: int, repeats: int = 3) -> dict:
    result = {}
    for name, module in (("torch_client", "edgesplit.runtime.client"), ("bundle_client", "edgesplit.device.client")):
        runs = [measured_process([sys.executable, "-c", f"import {module}"], threads) for _ in range(repeats)]
        result[name] = {"module": module, "import_s": statistics.median(r["wall_s"] for r in runs),
                        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs)}
    return result


def _route(manifest: dict, plan: dict) -> dict | None:
    """The route both clients run: the plan's chosen one if it has a head, else the first with a head."""
    with_head = [r for r in manifest["routes"] if r["head"] is not None]
    chosen = [r for r in with_head if r["label"] == plan["chosen"]["label"]]
    return (chosen or with_head or [None])[0]


def _outside_device_wheel() -> list[str]:
    """Top-level modules installed here whose distributions are outside the edgesplit-device wheel's dependency
    closure (device-dist/pyproject.toml, markers without extras), and that the bundle client would import here
    only because they are installed: httpx imports its command line (click, pygments, rich) when it can. A device
    that installed the wheel has none of them."""
    import re
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo = list(tomllib.loads((ROOT / "device-dist" / "pyproject.toml").read_text())["project"]["dependencies"])
    closure: set[str] = set()
    while todo:
        requirement = Requirement(todo.pop())
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name not in closure:
            closure.add(name)
            try:
                todo.extend(metadata.requires(name) or [])
            except metadata.PackageNotFoundError:
                pass
    outside = []
    for module, dists in metadata.packages_distributions().items():
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", module) and module not in sys.stdlib_module_names and \
                module != "edgesplit" and not any(canonicalize_name(d) in closure for d in dists):
            outside.append(module)
    return sorted(outside)


_BLOCK = """import importlib.abc, sys
class _NotOnDevice(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError(name + ' is not installed on the device')
sys.meta_path.insert(0, _NotOnDevice())
sys.argv = ['edgesplit.device', *sys.argv[1:]]
import runpy
runpy.run_module('edgesplit.device', run_name='__main__')
"""


def clients(prepared: dict, images: Path, args: argparse.Namespace, token_file: Path) -> dict:
    manifest = json.loads((prepared["bundle"] / "manifest.json").read_text())
    plan = json.loads(prepared["plan"].read_text())
    route = _route(manifest, plan)
    if route is None:
        return {"route": None, "note": "the plan's switch table has no route with a head"}
    common = ["--server", None, "--token-file", str(token_file), "--images", str(images), "--limit",
              str(args.images), "--route", route["label"], "--no-check"]
    result = {"route": route["label"], "runs": route["runs"], "images": args.images}
    with Serve(prepared["plan"], token_file, args.threads) as server:
        common[1] = server.url
        torch_json, device_json = prepared["folder"] / "infer-torch.json", prepared["folder"] / "infer-device.json"
        result["torch_client"] = measured_process(
            [sys.executable, "-m", "edgesplit", "infer", str(prepared["plan"]), *common, "--json", str(torch_json),
             "-q"], args.threads)
        result["bundle_client"] = measured_process(
            [sys.executable, "-m", "edgesplit.device", str(prepared["bundle"]), *common, "--threads",
             str(args.threads), "--json", str(device_json)], args.threads)
        # The same client pinned to the table's all-device plan: the bundle's whole model (model.onnx, what a
        # fallback runs) loaded and run for every image, the memory a device needs while the server is gone.
        local_json = prepared["folder"] / "infer-device-local.json"
        local = [*common]
        local[local.index("--route") + 1] = _all_device_label(plan)
        # The same run as bundle_client, with only the edgesplit-device wheel's dependencies importable (what a
        # device that installed that wheel has): everything else installed here is blocked at import.
        blocked = f"BLOCKED = {set(_outside_device_wheel())!r}\n" + _BLOCK
        result["bundle_client_device_deps"] = measured_process(
            [sys.executable, "-c", blocked, str(prepared["bundle"]), *common, "--threads", str(args.threads)],
            args.threads)
        result["bundle_client_all_device"] = measured_process(
            [sys.executable, "-m", "edgesplit.device", str(prepared["bundle"]), *local, "--threads",
             str(args.threads), "--json", str(local_json)], args.threads)
    for name, path in (("torch_client", torch_json), ("bundle_client", device_json),
                       ("bundle_client_all_device", local_json)):
        summary = json.loads(path.read_text())
        summary = summary.get("summary", summary)
        result[name]["summary"] = {k: summary.get(k) for k in ("images", "requests", "routes", "server_results", "device_results", "fallbacks", "seconds",
                                                                 "accuracy", "bytes_sent") if k in summary}
    result["ratio"] = result["bundle_client"]["peak_rss_mb"] / result["torch_client"]["peak_rss_mb"]
    result["ratio_all_device"] = (result["bundle_client_all_device"]["peak_rss_mb"] /
                                  result["torch_client"]["peak_rss_mb"])
    result["ratio_device_deps"] = (result["bundle_client_device_deps"]["peak_rss_mb"] /
                                   result["torch_client"]["peak_rss_mb"])
    return result


def _all_device_label(plan: dict) -> str:
    return next((row["label"] for row in plan["switch_table"] if row["kind"] == "all-device"), "all on device")


# ---- head latencies -----------------------------------------------------------------------------------------------


def sampled_medians(samplers: list[list], rounds: int) -> list[list[float]]:
    """Each group's samplers' median ms after ``rounds`` interleaved rounds (one sample of each sampler a round, so
    the machine's drift falls on all of them alike)."""
    for _ in range(rounds):
        for group in samplers:
            for sampler in group:
                sampler.sample()
    return [[sampler.median_ms for sampler in group] for group in samplers]


def heads(prepared: dict, args: argparse.Namespace, data: Path) -> list[dict]:
    import onnxruntime as ort
    import torch

    from edgesplit.plan.schema import load_plan
    from edgesplit.profile.timing import Sampler
    from edgesplit.runtime.deployment import load_deployment
    from edgesplit.runtime.export import _quantize  # the exact quantization `edgesplit export` applies
    from edgesplit.runtime.infer import load_inputs

    torch.set_num_threads(args.threads)
    bundle = prepared["bundle"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    deployment = load_deployment(load_plan(prepared["plan"]), plan_dir=prepared["plan"].parent)
    x = deployment.example(seed=0)
    from edgesplit.device.client import session_options

    options = session_options(args.threads)  # the bundle client's own session options

    def session(path: Path):
        s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed, names = {"input_0": x.numpy()}, [o.name for o in s.get_outputs()]
        return lambda: s.run(names, feed)

    rows, samplers = [], []
    seen = set()
    for route in manifest["routes"]:
        if route["head"] is None or route["cut_index"] in seen:
            continue
        seen.add(route["cut_index"])
        float_file = bundle / route["head"]["name"]
        int8 = route.get("int8") or {}
        if int8.get("file"):
            int8_file, source = bundle / int8["file"]["name"], "bundle"
        else:  # export kept the float head (int8 lost accuracy): quantize it the same way, for timing only
            int8_file, source = prepared["folder"] / f"timing-{float_file.stem}.int8.onnx", "re-quantized"
            if not int8_file.exists():
                spec = (f"{prepared['dataset']}:{data / prepared['dataset']}" if prepared["model"] == "small_cnn"
                        else f"folder:{args.work / 'kodak-folder'}")
                images = load_inputs(deployment.plan.input_shape, data=spec, limit=128).images[:128]
                _quantize(float_file, int8_file, images[: max(1, len(images) // 2)], True)
        route_obj = deployment.route_for_label(route["label"])
        trio = [Sampler(route_obj.split.head, (x,), 3), Sampler(session(float_file), (), 3),
                Sampler(session(int8_file), (), 3)]
        samplers.append(trio)
        rows.append({"route": route["label"], "cut_index": route["cut_index"], "position": route["position"],
                     "runs": route["runs"], "int8_file": source, "int8_used": bool(int8.get("used")),
                     "fp32_bytes": route["head"]["bytes"], "int8_bytes": int8_file.stat().st_size})
    for row, (torch_ms, fp32_ms, int8_ms) in zip(rows, sampled_medians(samplers, args.rounds)):
        row.update(torch_ms=torch_ms, ort_fp32_ms=fp32_ms, ort_int8_ms=int8_ms)
        row["int8_speedup_vs_ort_fp32"] = row["ort_fp32_ms"] / row["ort_int8_ms"]
        row["ort_fp32_speedup_vs_torch"] = row["torch_ms"] / row["ort_fp32_ms"]
    return rows


def pte_heads(prepared: dict, args: argparse.Namespace) -> list[dict]:
    """The optional ExecuTorch part: each planner's-cut head as a .pte program against PyTorch and ORT fp32."""
    import onnxruntime as ort
    import torch
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool

    from edgesplit.device.client import session_options
    from edgesplit.plan.schema import load_plan
    from edgesplit.profile.timing import Sampler
    from edgesplit.runtime.deployment import load_deployment
    from edgesplit.runtime.pte_head import PteHead, export_pte, verify_pte

    torch.set_num_threads(args.threads)
    _unsafe_reset_threadpool(args.threads)
    bundle = prepared["bundle"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    deployment = load_deployment(load_plan(prepared["plan"]), plan_dir=prepared["plan"].parent)
    x = deployment.example(seed=0)
    checks = [deployment.example(seed=seed) for seed in range(1, 4)]
    options = session_options(args.threads)
    rows, samplers, seen = [], [], set()
    for route in manifest["routes"]:
        if route["head"] is None or route["cut_index"] in seen:
            continue
        seen.add(route["cut_index"])
        head = deployment.route_for_label(route["label"]).split.head
        path = prepared["folder"] / f"pte-{Path(route['head']['name']).stem}.pte"
        started = time.perf_counter()
        export_pte(head, (x,), path)
        export_s = time.perf_counter() - started
        program = PteHead(path)
        diff = max(verify_pte(head, program, (c,)) for c in [x, *checks])
        s = ort.InferenceSession(str(bundle / route["head"]["name"]), options, providers=["CPUExecutionProvider"])
        feed, names = {"input_0": x.numpy()}, [o.name for o in s.get_outputs()]
        samplers.append([Sampler(head, (x,), 3), Sampler(lambda s=s, f=feed, n=names: s.run(n, f), (), 3),
                         Sampler(program, (x,), 3)])
        rows.append({"route": route["label"], "cut_index": route["cut_index"], "position": route["position"],
                     "pte_bytes": path.stat().st_size, "onnx_fp32_bytes": route["head"]["bytes"],
                     "export_s": export_s, "pte_max_abs_diff_vs_torch": diff,
                     "executorch_threads": _threadpool_get_thread_count()})
    for row, (torch_ms, fp32_ms, pte_ms) in zip(rows, sampled_medians(samplers, args.rounds)):
        row.update(torch_ms=torch_ms, ort_fp32_ms=fp32_ms, executorch_ms=pte_ms)
        row["executorch_speedup_vs_ort_fp32"] = row["ort_fp32_ms"] / row["executorch_ms"]
        row["executorch_speedup_vs_torch"] = row["torch_ms"] / row["executorch_ms"]
    return rows


def pte_main(args: argparse.Namespace, data: Path, models: list[str]) -> None:
    import executorch
    import onnxruntime
    import torch

    from edgesplit.profile import machine_info
    from edgesplit.runtime.pte_head import executorch_version

    del executorch  # imported first: a missing ExecuTorch stops here, before any work
    started = time.perf_counter()
    result = {"machine": machine_info().model_dump(), "torch_version": torch.__version__,
              "onnxruntime_version": onnxruntime.__version__, "executorch_version": executorch_version(),
              "threads": args.threads, "rounds": args.rounds, "batch": 1, "models": []}
    for model in models:
        p = prepare(model, "mnist", args.work, data, args)
        print(f"ExecuTorch heads of {p['key']} …", flush=True)
        result["models"].append({"key": p["key"], "model": p["model"], "heads": pte_heads(p, args)})
    result["seconds"] = time.perf_counter() - started
    print(f"\nhead latency at the planner's cuts (ms, batch 1, median of {args.rounds}; {args.threads} thread(s))")
    print(f"{'model':<20}{'cut':<40}{'torch fp32':>11}{'ORT fp32':>10}{'ExecuTorch':>11}{'ET × ORT':>10}"
          f"{'.pte kB':>9}{'.onnx kB':>10}{'max |diff|':>12}")
    for m in result["models"]:
        for h in m["heads"]:
            print(f"{m['key']:<20}{h['route'][:39]:<40}{h['torch_ms']:>11.3f}{h['ort_fp32_ms']:>10.3f}"
                  f"{h['executorch_ms']:>11.3f}{h['executorch_speedup_vs_ort_fp32']:>9.2f}×"
                  f"{h['pte_bytes'] / 1e3:>9.1f}{h['onnx_fp32_bytes'] / 1e3:>10.1f}"
                  f"{h['pte_max_abs_diff_vs_torch']:>12.2e}")
    args.pte_json.parent.mkdir(parents=True, exist_ok=True)
    args.pte_json.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwritten to {args.pte_json} ({result['seconds']:.0f} s)")


def sizes(prepared: dict) -> dict:
    bundle = prepared["bundle"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    routes = [{"route": r["label"], "runs": r["runs"], "fp32_head_bytes": r["head"]["bytes"] if r["head"] else 0,
               "int8_head_bytes": (r["int8"]["file"]["bytes"] if r.get("int8") and r["int8"].get("file") else None),
               "encoder_bytes": r["encoder"]["bytes"] if r.get("encoder") else 0, "device_bytes": r["device_bytes"],
               "bytes_on_disk": r["bytes_on_disk"]} for r in manifest["routes"]]
    return {"bundle_bytes": sum(p.stat().st_size for p in bundle.iterdir()),
            "fallback_bytes": manifest["fallback"]["bytes"], "routes": routes}


def accuracy(prepared: dict) -> list[dict]:
    manifest = json.loads((prepared["bundle"] / "manifest.json").read_text())
    return [{"route": r["label"], **{k: r["int8"][k] for k in ("metric", "float_score", "int8_score", "drop",
                                                               "samples", "used")}}
            for r in manifest["routes"] if r.get("int8")]


# ---- report -------------------------------------------------------------------------------------------------------


def _print_tables(result: dict) -> None:
    s = result["startup"]
    print(f"\nstart-up ({result['threads']} thread(s)): import edgesplit.runtime.client "
          f"{s['torch_client']['import_s']:.2f} s, {s['torch_client']['peak_rss_mb']:.0f} MB; import "
          f"edgesplit.device.client {s['bundle_client']['import_s']:.2f} s, {s['bundle_client']['peak_rss_mb']:.0f} MB")
    print("\npeak RSS of the device process (MB), wall time (s); 'all on device': the bundle client running the whole "
          "model (the fallback) for every image")
    print(f"{'model':<24}{'route':<34}{'torch client':>14}{'bundle client':>15}{'bundle/torch':>14}"
          f"{'all on device':>15}{'/torch':>8}{'wheel deps only':>17}{'/torch':>8}")
    for m in result["models"]:
        c = m.get("clients")
        if not c or c.get("route") is None:
            continue
        local = c["bundle_client_all_device"]
        print(f"{m['key']:<24}{c['route'][:33]:<34}{c['torch_client']['peak_rss_mb']:>8.0f} ({c['torch_client']['wall_s']:.1f})"
              f"{c['bundle_client']['peak_rss_mb']:>9.0f} ({c['bundle_client']['wall_s']:.1f}){c['ratio']:>13.0%}"
              f"{local['peak_rss_mb']:>9.0f} ({local['wall_s']:.1f}){c['ratio_all_device']:>7.0%}"
              f"{c['bundle_client_device_deps']['peak_rss_mb']:>11.0f} ({c['bundle_client_device_deps']['wall_s']:.1f})"
              f"{c['ratio_device_deps']:>7.1%}")
    print("\nhead latency at the planner's cuts (ms, batch 1, median)")
    print(f"{'model':<24}{'cut':<30}{'torch fp32':>11}{'ORT fp32':>10}{'ORT int8':>10}{'int8 × ORT fp32':>17}")
    for m in result["models"]:
        for h in m.get("heads", []):
            print(f"{m['key']:<24}{h['route'][:29]:<30}{h['torch_ms']:>11.3f}{h['ort_fp32_ms']:>10.3f}"
                  f"{h['ort_int8_ms']:>10.3f}{h['int8_speedup_vs_ort_fp32']:>16.2f}×")
    print("\nint8 accuracy (export's end-to-end measurement on held-out test images)")
    for m in result["models"]:
        for a in m.get("accuracy", []):
            print(f"{m['key']:<24}{a['route'][:29]:<30}{a['metric']} {a['float_score']:.4f} → {a['int8_score']:.4f} "
                  f"(drop {a['drop'] * 100:.2f} points, {a['samples']} images; int8 {'used' if a['used'] else 'refused'})")
    print("\nbundle size on disk")
    for m in result["models"]:
        z = m["sizes"]
        print(f"{m['key']:<24}bundle {z['bundle_bytes'] / 1e6:.2f} MB (fallback model.onnx {z['fallback_bytes'] / 1e6:.2f} MB)")
        for r in z["routes"]:
            int8 = f"{r['int8_head_bytes'] / 1e6:.3f} MB" if r["int8_head_bytes"] else "not kept"
            print(f"{'':<24}  {r['route'][:40]:<42}fp32 head {r['fp32_head_bytes'] / 1e6:.3f} MB, int8 head {int8}, "
                  f"runs {r['runs']} ({r['device_bytes'] / 1e6:.3f} MB)")


def main() -> None:
    args = _args()
    data = _data_dir(args.data_dir)
    args.work.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.pte:
        pte_main(args, data, models)
        return
    jobs = [(m, "mnist") for m in models]
    if "small_cnn" in models:
        jobs.append(("small_cnn", "fashion-mnist"))  # accuracy only
    started = time.perf_counter()
    prepared = []
    for model, dataset in jobs:
        print(f"preparing {model} ({dataset if model == 'small_cnn' else 'random init'}) …", flush=True)
        prepared.append(prepare(model, dataset, args.work, data, args))
    if args.prepare_only:
        print(f"prepared in {time.perf_counter() - started:.0f} s under {args.work}")
        return
    token_file = args.work / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    import onnxruntime

    from edgesplit.profile import machine_info

    result = {"machine": machine_info().model_dump(), "onnxruntime_version": onnxruntime.__version__,
              "threads": args.threads, "images_per_client": args.images, "rounds": args.rounds,
              "plan_args": PLAN_ARGS, "startup": startup(args.threads), "models": []}
    for p in prepared:
        print(f"measuring {p['key']} …", flush=True)
        plan = json.loads(p["plan"].read_text())
        entry = {"key": p["key"], "model": p["model"], "dataset": p["dataset"], "trained": p["trained"],
                 "plan": {"device": plan["device"]["spec"], "link": plan["link"]["spec"], "chosen": plan["chosen"]["label"],
                          "switch_table": [row["label"] for row in plan["switch_table"]]},
                 "export_s": p["export_s"], "sizes": sizes(p), "accuracy": accuracy(p)}
        if p["dataset"] in (None, "mnist"):
            images = _mnist_pngs(args.work, data, args.images) if p["model"] == "small_cnn" else data / "kodak"
            entry["clients"] = clients(p, images, args, token_file)
            entry["heads"] = heads(p, args, data)
        result["models"].append(entry)
    result["seconds"] = time.perf_counter() - started
    _print_tables(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwritten to {args.json} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
