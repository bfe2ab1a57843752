"""Issue 20, what ONNX Runtime offers for int8 heads and for the device client's memory, measured on the bundles
bench/device.py prepares (run ``bench/device.py --prepare-only`` first; they live in its --work folder).

  speed     every head at the planner's cuts (resnet50, mobilenetv3_small, mobilenetv3_large) quantized with
            ``quantize_static`` in each of: QDQ and QOperator format, per-channel and per-tensor weights,
            activations/weights uint8/int8 (U8S8), uint8/uint8 (U8U8), int8/int8 (S8S8), reduce_range; each file
            (and the float head) timed under graph optimisation level ORT_ENABLE_ALL (with the NCHWc/NHWC layout
            transforms) and ORT_ENABLE_EXTENDED (without), batch 1, one thread, interleaved rounds, median; the op
            types left after optimisation show whether layout transforms applied
  profile   onnxruntime's profiler on the float and int8 heads: kernel time per op type (20 runs)
  accuracy  small_cnn trained on Fashion-MNIST and on MNIST, each route with a head quantized with MinMax, Entropy
            and Percentile calibration on 128 and 1000 images, per-tensor weights, symmetric activations, int8
            activations, the first conv kept in float (``nodes_to_exclude``); each measured end to end (head,
            codec, server tail: export's own measurement) on the same 1000 held-out test images
  memory    peak RSS of a process holding one session (plus 13 runs) per session-option set: default, no CPU
            memory arena, no memory pattern, both, no weight prepacking, initializers in their own allocation
  curve     the int8 speed-up along the graph: resnet50 and mobilenetv3_large (the bundles' plans, 224×224) cut at
            CURVE_CUTS (conv1 to layer4; first conv to the last 1×1 conv), each head exported as export exports
            one and quantized in 4 variants (QDQ/QOperator × per-channel/per-tensor, U8S8, MinMax on the 12
            calibration photos), timed with the bundle client's session options against ORT fp32; and head +
            encode for an int8-codec route: fp32 head + the numpy int8 codec, export's int8 head + the codec, and
            export's int8 head with its last DequantizeLinear removed, its uint8 tensor framed directly as an int8
            codec frame (``emit_quantized``, ``quantized_frame``), with what the server decodes from that frame
            against the other two; ``curve-prepare`` makes the files only (cached in WORK/curve, no timing)

    flock -x /tmp/es.lock .venv/bin/python bench/device_int8.py speed profile memory   # timings: exclusive
    .venv/bin/python bench/device_int8.py accuracy                                     # no timing
    .venv/bin/python bench/device_int8.py curve-prepare                                # files, no timing
    flock -x /tmp/es.lock .venv/bin/python bench/device_int8.py curve                  # timings: exclusive
Writes bench/results/device_int8.json (one key per part run; parts not run keep their earlier result).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPEED_MODELS = ["resnet50", "mobilenetv3_small", "mobilenetv3_large"]


def _heads(bundle: Path) -> list[tuple[str, Path]]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    seen, heads = set(), []
    for route in manifest["routes"]:
        if route["head"] and route["cut_index"] not in seen:
            seen.add(route["cut_index"])
            heads.append((route["label"], bundle / route["head"]["name"]))
    return heads


class _Reader:
    def __init__(self, x: np.ndarray, batch: int = 16):
        self.batches = [{"input_0": x[i:i + batch]} for i in range(0, len(x), batch)]

    def get_next(self):
        return self.batches.pop(0) if self.batches else None

    def rewind(self):
        pass


def _calibration(work: Path, key: str, data: Path) -> np.ndarray:
    """The images export calibrated the 224×224 bundles on: the first 12 Kodak photos, as `load_inputs` reads them."""
    path = work / key / "calib.npy"
    if not path.exists():
        from edgesplit.runtime.infer import load_inputs

        manifest = json.loads((work / key / "bundle" / "manifest.json").read_text())
        images = load_inputs(manifest["input"]["shape"], data=f"folder:{work / 'kodak-folder'}", limit=12).images
        np.save(path, images.numpy())
    return np.load(path)


def speed(work: Path, data: Path, rounds: int) -> dict:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnx

    u8, s8 = QuantType.QUInt8, QuantType.QInt8
    variants = [("QDQ U8S8 per-channel (export's)", QuantFormat.QDQ, u8, s8, True, False),
                ("QDQ U8S8 per-tensor", QuantFormat.QDQ, u8, s8, False, False),
                ("QDQ U8S8 per-channel reduce_range", QuantFormat.QDQ, u8, s8, True, True),
                ("QDQ U8U8 per-tensor", QuantFormat.QDQ, u8, u8, False, False),
                ("QDQ S8S8 per-channel", QuantFormat.QDQ, s8, s8, True, False),
                ("QOperator U8S8 per-channel", QuantFormat.QOperator, u8, s8, True, False),
                ("QOperator U8S8 per-tensor", QuantFormat.QOperator, u8, s8, False, False),
                ("QOperator U8S8 per-channel reduce_range", QuantFormat.QOperator, u8, s8, True, True),
                ("QOperator U8U8 per-tensor", QuantFormat.QOperator, u8, u8, False, False)]
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    result = {}
    for key in SPEED_MODELS:
        calibration = _calibration(work, key, data)
        x = calibration[:1].copy()
        for label, float_file in _heads(work / key / "bundle"):
            scratch = Path(tempfile.mkdtemp())
            prepared = scratch / "prepared.onnx"
            quant_pre_process(str(float_file), str(prepared), skip_symbolic_shape=False)
            files = {"fp32": float_file}
            for name, fmt, activations, weights, per_channel, reduce_range in variants:
                target = scratch / (name.replace(" ", "_").replace("'", "") + ".onnx")
                quantize_static(str(prepared), str(target), _Reader(calibration), quant_format=fmt,
                                activation_type=activations, weight_type=weights, per_channel=per_channel,
                                reduce_range=reduce_range, calibrate_method=CalibrationMethod.MinMax)
                files[name] = target
            runs = {}
            for name, path in files.items():
                for level, value in levels.items():
                    options = ort.SessionOptions()
                    options.intra_op_num_threads = options.inter_op_num_threads = 1
                    options.log_severity_level = 3
                    options.graph_optimization_level = value
                    options.optimized_model_filepath = str(scratch / f"optimized-{level}-{path.name}")
                    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    feed = {"input_0": x}
                    for _ in range(4):
                        session.run(None, feed)
                    began = time.perf_counter()
                    session.run(None, feed)
                    repeats = max(1, min(100, int(2e-3 / max(time.perf_counter() - began, 1e-7))))
                    ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
                    runs[(name, level)] = (session, feed, repeats, [], dict(ops))
            for _ in range(rounds):
                for session, feed, repeats, samples, _ in runs.values():
                    began = time.perf_counter()
                    for _ in range(repeats):
                        session.run(None, feed)
                    samples.append((time.perf_counter() - began) / repeats * 1e3)
            base = statistics.median(runs[("fp32", "all")][3])
            rows = []
            for (name, level), (_, _, _, samples, ops) in runs.items():
                ms = statistics.median(samples)
                rows.append({"variant": name, "optimisation": level, "ms": ms, "speedup_vs_fp32": base / ms,
                             "bytes": files[name].stat().st_size, "ops_after_optimisation": ops})
                print(f"{key:<18}{label[:32]:<33}{name:<42}{level:<9}{ms:8.3f} ms {base / ms:6.2f}×", flush=True)
            result[f"{key} | {label}"] = rows
    return result


def profile(work: Path) -> dict:
    import onnxruntime as ort

    result = {}
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    for key in SPEED_MODELS:
        manifest = json.loads((work / key / "bundle" / "manifest.json").read_text())
        route = manifest["routes"][0]
        for kind, record in (("fp32", route["head"]), ("int8", (route.get("int8") or {}).get("file"))):
            if not record:
                continue
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            options.log_severity_level = 3
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "profile")
            session = ort.InferenceSession(str(work / key / "bundle" / record["name"]), options,
                                           providers=["CPUExecutionProvider"])
            for _ in range(20):
                session.run(None, {"input_0": x})
            events = json.loads(Path(session.end_profiling()).read_text())
            per_op = collections.Counter()
            for event in events:
                if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                    per_op[event["args"]["op_name"]] += event["dur"] / 20 / 1e3
            name = f"{key} | {route['label']} | {kind}"
            result[name] = {"kernel_ms": sum(per_op.values()), "per_op_ms": dict(per_op.most_common())}
            print(f"{name:<60} kernels {sum(per_op.values()):.3f} ms: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in per_op.most_common()), flush=True)
    return result


def accuracy(work: Path, data: Path) -> dict:
    import onnx
    import torch
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgesplit.plan.schema import load_plan
    from edgesplit.runtime.deployment import load_deployment
    from edgesplit.runtime.export import ExportSettings, _measure, _quantization_data
    from edgesplit.runtime.onnx_head import OnnxHead

    torch.set_num_threads(1)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    options = [(f"{m} calibration, {n} images", n, m, True, {}, None) for n in (128, 1000) for m in methods]
    options += [("minmax, 128 images, per-tensor weights", 128, "minmax", False, {}, None),
                ("minmax, 128 images, symmetric activations", 128, "minmax", True, {"ActivationSymmetric": True}, None),
                ("minmax, 1000 images, int8 activations", 1000, "minmax", True, {}, "s8"),
                ("minmax, 128 images, first conv in float", 128, "minmax", True, {}, "exclude-first"),
                ("percentile 99.9, 1000 images", 1000, "percentile", True, {"CalibPercentile": 99.9}, None),
                ("percentile 99.99, 1000 images", 1000, "percentile", True, {"CalibPercentile": 99.99}, None)]
    result = {}
    for key in ("small_cnn-fashion-mnist", "small_cnn-mnist"):
        folder, dataset = work / key, key.split("-", 1)[1]
        manifest = json.loads((folder / "bundle" / "manifest.json").read_text())
        deployment = load_deployment(load_plan(folder / "plan.json"), weights=folder / "weights.safetensors",
                                     plan_dir=folder)
        # 1000 calibration images then 1000 held out: every option is measured on the same held-out images.
        held = _quantization_data(deployment, ExportSettings(quantize="int8", data=f"{dataset}:{data / dataset}",
                                                             calibration=1000, holdout=1000))
        rows = []
        for route, entry in zip(deployment.routes, manifest["routes"]):
            if entry["head"] is None:
                continue
            float_file = folder / "bundle" / entry["head"]["name"]
            scratch = Path(tempfile.mkdtemp())
            prepared = scratch / "prepared.onnx"
            quant_pre_process(str(float_file), str(prepared), skip_symbolic_shape=False)
            first_conv = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"][:1]
            for name, count, method, per_channel, extra, special in options:
                target = scratch / f"{len(rows)}.onnx"
                kwargs = {"nodes_to_exclude": first_conv} if special == "exclude-first" else {}
                # Batches of 8 (1000 = 125 × 8): onnxruntime's histogram calibrators (Entropy, Percentile) fail on
                # a last batch of another size ("inhomogeneous shape"); export's reader takes 16 (128 = 8 × 16).
                quantize_static(str(prepared), str(target), _Reader(held.calibration[:count].numpy(), 8),
                                quant_format=QuantFormat.QDQ, weight_type=QuantType.QInt8, per_channel=per_channel,
                                activation_type=QuantType.QInt8 if special == "s8" else QuantType.QUInt8,
                                calibrate_method=methods[method], extra_options=dict(extra), **kwargs)
                measured = _measure(route, OnnxHead(float_file, threads=1), OnnxHead(target, threads=1), held)
                rows.append({"route": entry["label"], "option": name, **measured})
                print(f"{key:<24}{entry['label'][:30]:<31}{name:<44}{measured['float_score']:.4f} → "
                      f"{measured['int8_score']:.4f} (drop {measured['drop'] * 100:.2f} points)", flush=True)
        result[key] = rows
    return result


# ---- the speed curve along the graph, and head + encode (issue 20, int8 heads) ---------------------------------------

# Candidate cuts the curve times (each sends one tensor): resnet50 after conv1's ReLU (112×112), after the stem's
# maxpool (the planner's cut 4), after layer1's first block, after layer1, layer2, layer3 and layer4;
# mobilenetv3_large after its first conv, its first hard-swish, block 1, the planner's cut 16 (inside block 2), after
# blocks 3, 4 (inside), 6, 10, 12, 15 and the last 1×1 conv.
CURVE_CUTS = {"resnet50": [3, 4, 16, 36, 78, 140, 172],
              "mobilenetv3_large": [1, 3, 9, 16, 26, 39, 70, 105, 134, 178, 181]}
CURVE_VARIANTS = [("QDQ U8S8 per-channel (export's)", "QDQ", True), ("QDQ U8S8 per-tensor", "QDQ", False),
                  ("QOperator U8S8 per-channel", "QOperator", True), ("QOperator U8S8 per-tensor", "QOperator", False)]
EXPORTS = CURVE_VARIANTS[0][0]


def _curve_prepare(work: Path, data: Path, models: list[str]) -> dict:
    """Each curve cut's float head exported as `edgesplit export` exports a head, and quantized in each variant
    (calibrated on the 12 Kodak images export calibrated the bundles on); cached under WORK/curve/."""
    import onnx
    import torch
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgesplit.plan.schema import load_plan
    from edgesplit.runtime.deployment import load_deployment
    from edgesplit.runtime.export import emit_quantized
    from edgesplit.runtime.onnx_head import export_head

    torch.set_num_threads(1)
    prepared = {}
    for key in models:
        folder = work / "curve" / key
        folder.mkdir(parents=True, exist_ok=True)
        calibration = _calibration(work, key, data)
        deployment = None
        for index in CURVE_CUTS[key]:
            files = {"fp32": folder / f"cut{index}.onnx"}
            files.update({name: folder / f"cut{index}.{fmt}.{'channel' if pc else 'tensor'}.onnx"
                          for name, fmt, pc in CURVE_VARIANTS})
            files["export's, quantized tensor out"] = folder / f"cut{index}.QDQ.channel.uint8-out.onnx"
            if not all(p.exists() for p in files.values()):
                if deployment is None:
                    deployment = load_deployment(load_plan(work / key / "plan.json"), plan_dir=work / key)
                split = deployment.traced.split(index)
                if not files["fp32"].exists():
                    export_head(split.head, (torch.from_numpy(calibration[:1]),), files["fp32"])
                scratch = Path(tempfile.mkdtemp())
                quant_pre_process(str(files["fp32"]), str(scratch / "prepared.onnx"), skip_symbolic_shape=False)
                for name, fmt, per_channel in CURVE_VARIANTS:
                    quantize_static(str(scratch / "prepared.onnx"), str(files[name]), _Reader(calibration),
                                    quant_format=getattr(QuantFormat, fmt), activation_type=QuantType.QUInt8,
                                    weight_type=QuantType.QInt8, per_channel=per_channel,
                                    calibrate_method=CalibrationMethod.MinMax)
                emit_quantized(files[EXPORTS], files["export's, quantized tensor out"])  # as export does
            prepared[(key, index)] = files
            node = onnx.load(str(files["fp32"])).graph.output[0]
            shape = [d.dim_value or d.dim_param for d in node.type.tensor_type.shape.dim]
            print(f"{key:<18} cut {index:<4} {str(shape):<22}" + " ".join(f"{p.stat().st_size / 1e3:8.1f} kB"
                                                                       for p in files.values()), flush=True)
    return prepared


def _dq_params(path: Path) -> tuple[float, int]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = next(n for n in graph.node if graph.output[0].name in n.output)
    return float(initializers[producer.input[1]].reshape(())), int(initializers[producer.input[2]].reshape(()))


def curve(work: Path, data: Path, rounds: int, models: list[str]) -> dict:
    """(1) every variant's head latency against ORT fp32 at each curve cut; (2) head + encode for an int8 codec
    route: fp32 head + the numpy int8 codec, export's int8 head + the codec, and export's int8 head emitting its
    quantized tensor framed directly (no DequantizeLinear, no re-quantization)."""
    import onnxruntime as ort

    from edgesplit.device.client import session_options
    from edgesplit.device.codecs import decode, parse_codec, quantized_frame
    from edgesplit.profile.timing import Sampler

    sys.path.insert(0, str(ROOT / "bench"))
    from device import sampled_medians

    prepared = _curve_prepare(work, data, models)
    options = session_options(1)  # the bundle client's own
    codec = parse_codec("int8")
    groups, rows = [], []
    for (key, index), files in prepared.items():
        x = _calibration(work, key, data)[:1].copy()
        feed = {"input_0": x}
        sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    for name, path in files.items()}
        runs = {name: (lambda s=s, f=feed: s.run(None, f)[0]) for name, s in sessions.items()}
        scale, zero = _dq_params(files[EXPORTS])
        fp32_out, int8_out, symbols = runs["fp32"](), runs[EXPORTS](), runs["export's, quantized tensor out"]()
        framed = quantized_frame(symbols, scale, zero)
        decoded = decode(framed)
        # what the server reads from the direct frame, against what the int8 head + codec route would send
        via_codec = decode(codec.encode(int8_out))
        head, int8_head, direct_head = runs["fp32"], runs[EXPORTS], runs["export's, quantized tensor out"]
        group = [Sampler(run, (), 3) for run in runs.values() if run is not direct_head]
        group += [Sampler(lambda h=head: codec.encode(h()), (), 3),
                  Sampler(lambda h=int8_head: codec.encode(h()), (), 3),
                  Sampler(lambda h=direct_head, s=scale, z=zero: quantized_frame(h(), s, z), (), 3),
                  Sampler(lambda y=fp32_out: codec.encode(y), (), 3)]
        groups.append(group)
        rows.append({"model": key, "cut_index": index, "shape": list(fp32_out.shape),
                     "fp32_bytes": files["fp32"].stat().st_size, "int8_bytes": files[EXPORTS].stat().st_size,
                     "direct_frame_bytes": len(framed), "codec_frame_bytes": len(codec.encode(fp32_out)),
                     "direct_vs_dequantized_max_abs": float(np.abs(decoded - int8_out).max()),
                     "direct_vs_int8_codec_max_abs": float(np.abs(decoded - via_codec).max()),
                     "direct_vs_fp32_max_abs": float(np.abs(decoded - fp32_out).max()),
                     "int8_codec_of_fp32_vs_fp32_max_abs": float(np.abs(decode(codec.encode(fp32_out)) - fp32_out)
                                                                 .max()),
                     "scale": scale, "zero_point": zero})
    print(f"timing {sum(len(g) for g in groups)} samplers in {rounds} interleaved rounds", flush=True)
    medians = sampled_medians(groups, rounds)
    names = [n for n in CURVE_VARIANTS]
    for row, ms in zip(rows, medians):
        fp32_ms, variants = ms[0], ms[1:1 + len(CURVE_VARIANTS)]
        enc_fp32, enc_int8, direct, encode_only = ms[1 + len(CURVE_VARIANTS):]
        row["heads_ms"] = {"fp32": fp32_ms, **{n[0]: v for n, v in zip(names, variants)}}
        row["speedup_vs_fp32"] = {n[0]: fp32_ms / v for n, v in zip(names, variants)}
        best = max(row["speedup_vs_fp32"], key=row["speedup_vs_fp32"].get)
        row["best_variant"], row["best_speedup"] = best, row["speedup_vs_fp32"][best]
        row["head_plus_encode_ms"] = {"fp32 head + numpy int8 codec": enc_fp32,
                                      "export's int8 head + numpy int8 codec": enc_int8,
                                      "export's int8 head, quantized tensor framed directly": direct}
        row["numpy_int8_encode_ms"] = encode_only
        row["direct_speedup_vs_fp32_head_plus_codec"] = enc_fp32 / direct
        print(f"{row['model']:<18} cut {row['cut_index']:<4} {str(row['shape']):<20} fp32 {fp32_ms:8.3f} ms  "
              f"export's {row['speedup_vs_fp32'][EXPORTS]:5.2f}×  best {row['best_speedup']:5.2f}× ({best})  "
              f"| +encode: fp32 {enc_fp32:8.3f}  int8 {enc_int8:8.3f}  direct {direct:8.3f} ms "
              f"({enc_fp32 / direct:5.2f}×; encode alone {encode_only:.3f} ms)", flush=True)
    return {"cuts": CURVE_CUTS, "variants": [n[0] for n in CURVE_VARIANTS], "rounds": rounds, "rows": rows}


MEMORY_CHILD = r'''
import json, sys, time
import numpy as np, onnxruntime as ort
def hwm():  # this process's peak RSS in MB (VmHWM starts afresh at exec; ru_maxrss would carry the parent's)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
path, shape, arena, pattern, extra = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1", json.loads(sys.argv[5])
imported = hwm()
o = ort.SessionOptions(); o.log_severity_level = 3; o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
o.enable_cpu_mem_arena, o.enable_mem_pattern = arena, pattern
for k, v in extra.items(): o.add_session_config_entry(k, v)
s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).random(shape, dtype=np.float32)
for _ in range(3): s.run(None, {"input_0": x})
times = []
for _ in range(11):
    t = time.perf_counter(); s.run(None, {"input_0": x}); times.append(time.perf_counter() - t)
print(json.dumps({"import_mb": imported, "peak_mb": hwm(), "median_ms": sorted(times)[5] * 1e3}))
'''


def memory(work: Path) -> list[dict]:
    settings = [("defaults (arena, memory pattern)", 1, 1, {}), ("no arena", 0, 1, {}), ("no memory pattern", 1, 0, {}),
                ("no arena, no memory pattern", 0, 0, {}),
                ("no arena, no memory pattern, no prepacking", 0, 0, {"session.disable_prepacking": "1"}),
                ("no arena, no memory pattern, initializers allocated alone", 0, 0,
                 {"session.use_device_allocator_for_initializers": "1"})]
    files = [(work / "resnet50" / "bundle" / "model.onnx", [1, 3, 224, 224])]
    resnet = json.loads((work / "resnet50" / "bundle" / "manifest.json").read_text())["routes"][0]
    if (resnet.get("int8") or {}).get("file"):
        files.append((work / "resnet50" / "bundle" / resnet["int8"]["file"]["name"], [1, 3, 224, 224]))
    files += [(work / "mobilenetv3_large" / "bundle" / "model.onnx", [1, 3, 224, 224]),
              (work / "small_cnn-mnist" / "bundle" / "model.onnx", [1, 1, 28, 28])]
    rows = []
    for path, shape in files:
        for name, arena, pattern, extra in settings:
            done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(path), json.dumps(shape), str(arena),
                                   str(pattern), json.dumps(extra)], capture_output=True, text=True, check=True)
            row = {"file": f"{path.parent.parent.name}/{path.name}", "bytes": path.stat().st_size, "options": name,
                   **json.loads(done.stdout)}
            rows.append(row)
            print(f"{row['file']:<44}{name:<58}peak {row['peak_mb']:7.1f} MB (import {row['import_mb']:.1f}) "
                  f"{row['median_ms']:8.3f} ms", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="+", choices=["speed", "profile", "accuracy", "memory", "curve-prepare",
                                                     "curve"])
    parser.add_argument("--curve-models", default=",".join(CURVE_CUTS), help="models of the curve parts")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgesplit-device-bench"))
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "device_int8.json")
    args = parser.parse_args()
    if not (args.work / "resnet50" / "bundle" / "manifest.json").exists():
        sys.exit(f"no bundles under {args.work}: run `python bench/device.py --prepare-only --work {args.work}` first")
    if set(args.parts) == {"curve-prepare"}:  # files only: nothing measured, the JSON stays as it is
        _curve_prepare(args.work, args.data_dir, args.curve_models.split(","))
        return
    import onnxruntime

    from edgesplit.profile import machine_info

    result = json.loads(args.json.read_text()) if args.json.exists() else {}
    result.update(machine=machine_info().model_dump(), onnxruntime_version=onnxruntime.__version__, threads=1)
    for part in args.parts:
        started = time.perf_counter()
        if part == "speed":
            result["speed"] = speed(args.work, args.data_dir, args.rounds)
        elif part == "profile":
            result["profile"] = profile(args.work)
        elif part == "accuracy":
            result["accuracy"] = accuracy(args.work, args.data_dir)
        elif part == "curve-prepare":  # files only (no timing): cached for `curve`, nothing written to the JSON
            _curve_prepare(args.work, args.data_dir, args.curve_models.split(","))
            continue
        elif part == "curve":
            result["curve"] = curve(args.work, args.data_dir, args.rounds, args.curve_models.split(","))
        else:
            result["memory"] = memory(args.work)
        result[f"{part}_seconds"] = time.perf_counter() - started
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
