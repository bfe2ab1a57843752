"""`edgesplit export`: a device bundle holds a checked manifest and ONNX files that compute what PyTorch does, int8
heads measured against their float routes, and a manifest that names a file outside the bundle is refused."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgesplit.device import codec_from_json
from edgesplit.device.bundle import BundleError, Manifest, load_bundle
from edgesplit.codecs import DecodeLimits
from edgesplit.codecs.layout import pack as pack_frames
from edgesplit.device.codecs import CodecError, decode, quantized_frame
from edgesplit.model.data import load_dataset, write_idx
from edgesplit.model.intake import ModelRef, build_model, save_weights
from edgesplit.model.train import train_classifier
from edgesplit.plan.schema import load_plan
from edgesplit.runtime.deployment import load_deployment
from edgesplit.runtime.export import ExportSettings, export_bundle
from edgesplit.runtime.relay import CHAIN_KIND
from runtime_plans import make_plan, save_plan, with_routes
from test_cli import assert_user_error, edgesplit_both_ways, edgesplit_in_process

TOLERANCE = 1e-4
SHAPE = (1, 1, 8, 8)  # small_cnn on the bundled digits
# Two cuts (so two heads), two codecs at one of them (one head file for both), and the input sent whole.
ROUTES = [(0.0, 2.0, {"kind": "all-server", "label": "all on server (uint8 input)", "codec": "uint8"}),
          (2.0, 20.0, {"cut_index": 4, "codec": "int8"}),
          (20.0, 200.0, {"cut_index": 8, "codec": "int8"}),
          (200.0, 1e9, {"cut_index": 8, "codec": "fp16"})]


def _weights(folder, trained):
    torch.manual_seed(0)
    ref = ModelRef("small_cnn", {"in_channels": 1})
    model = build_model(ref)
    if trained:
        train_classifier(model, load_dataset("digits"), epochs=2, lr=3e-3, progress=False)
    path = folder / "small_cnn.safetensors"
    save_weights(model.eval(), path, ref, SHAPE)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A trained small_cnn's plan exported with int8 heads through the CLI: (plan path, bundle folder, CLI result)."""
    folder = tmp_path_factory.mktemp("export")
    plan = save_plan(make_plan(folder, "small_cnn", ROUTES, weights=_weights(folder, True), shape=SHAPE),
                     folder / "plan.json")
    result = edgesplit_in_process("export", str(plan), "--out", str(folder / "bundle"), "--quantize", "int8",
                                  "--data", "digits", "--json", str(folder / "export.json"))
    assert result.returncode == 0, result.stderr
    return plan, folder / "bundle", result


def test_the_bundle_holds_its_manifest_and_only_the_files_it_names(exported):
    _, folder, result = exported
    bundle = load_bundle(folder)
    manifest = bundle.manifest
    names = {f.name for f in manifest.files()}
    assert set(os.listdir(folder)) == names | {"manifest.json"}
    assert {"model.onnx", "route1-head.onnx", "route2-head.onnx"} <= names  # routes 2 and 3 share a head
    assert manifest.routes[3].head == manifest.routes[2].head
    for record in manifest.files():
        data = (folder / record.name).read_bytes()
        assert record.bytes == len(data) and record.sha256 == hashlib.sha256(data).hexdigest()
    for route in manifest.routes:
        assert route.bytes_on_disk == sum(f.bytes for f in route.files())
        assert route.device_bytes == (route.run_file.bytes if route.run_file else 0)
    assert json.loads((folder.parent / "export.json").read_text())["manifest"] == json.loads(
        (folder / "manifest.json").read_text())
    assert f"bundle in {folder}/: {len(names) + 1} files" in result.stdout and "route 1 split 4 [int8]" in result.stdout


def test_the_manifest_numbers_routes_as_the_server_does_and_carries_what_the_device_needs(exported):
    plan_path, folder, _ = exported
    plan = load_plan(plan_path)
    manifest = load_bundle(folder).manifest
    served = load_deployment(plan, plan_dir=plan_path.parent).describe()  # what `edgesplit serve` lists
    assert manifest.model_id == served["model_id"] and manifest.fingerprint == plan.fingerprint
    assert [(r.route_id, r.label, r.kind) for r in manifest.routes] == \
        [(r["route_id"], r["label"], r["kind"]) for r in served["routes"]]
    assert [r.sends for r in manifest.routes] == [r["sends"] for r in served["routes"]]
    assert [[c["spec"] for c in r.codecs] for r in manifest.routes] == [r["codecs"] for r in served["routes"]]
    for row, entry in zip(manifest.switch_table, plan.switch_table):
        assert (row.low_mbps, row.high_mbps, row.label) == (entry.low_mbps, entry.high_mbps, entry.label)
        assert manifest.routes[row.route_id].label == row.label
    uint8 = codec_from_json(manifest.routes[0].codecs[0])  # the torch-free reader takes the records as written
    assert (uint8.spec, uint8.transform.low, uint8.transform.high) == ("uint8", (0.0,), (1.0,))
    assert manifest.input.shape == list(SHAPE) and manifest.input.dtype == "float32"
    assert (manifest.input.low, manifest.input.high, manifest.input.channels) == (0.0, 1.0, "gray")
    assert manifest.outputs == [[1, 10]] and manifest.routes[0].head is None


def test_every_onnx_file_computes_what_pytorch_does(exported):
    plan_path, folder, _ = exported
    bundle = load_bundle(folder)
    deployment = load_deployment(load_plan(plan_path), plan_dir=plan_path.parent)
    x = load_dataset("digits").test_images[:16]
    for route, entry in zip(deployment.routes, bundle.manifest.routes):
        if entry.head is None:
            continue
        session = ort.InferenceSession(str(bundle.path(entry.head)), providers=["CPUExecutionProvider"])
        actual = session.run(None, {"input_0": x.numpy()})
        with torch.no_grad():
            expected = [t.numpy() for t in route.split.head(x)]
        assert len(actual) == len(expected) == len(entry.sends)
        for a, e in zip(actual, expected):
            np.testing.assert_allclose(a, e, atol=TOLERANCE, rtol=TOLERANCE)
        assert entry.max_abs_diff is not None and entry.max_abs_diff <= TOLERANCE
    session = ort.InferenceSession(str(bundle.path(bundle.manifest.fallback)), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"input_0": x.numpy()})[0], deployment.model(x).numpy(),
                                   atol=TOLERANCE, rtol=TOLERANCE)


def test_int8_heads_are_measured_against_their_float_routes(exported):
    _, folder, _ = exported
    bundle = load_bundle(folder)
    quantization = bundle.manifest.quantization
    assert quantization.data == "digits" and quantization.max_accuracy_drop == 0.01
    x = load_dataset("digits").test_images[quantization.calibration_samples:]
    for entry in bundle.manifest.routes[1:]:
        q = entry.int8
        assert q is not None and q.metric == "accuracy" and q.float_score > 0.8  # a trained model: labels count
        assert q.samples == quantization.holdout_samples == len(x)
        assert q.drop == pytest.approx(max(0.0, q.float_score - q.int8_score))
        assert q.used == (q.drop <= 0.01) and entry.runs == ("int8" if q.used else "float32")
        if q.used:  # the file the device runs: smaller, quantized (not the float values), yet close to them
            assert q.file.bytes < entry.head.bytes and entry.device_bytes == entry.run_file.bytes
            int8 = ort.InferenceSession(str(bundle.path(q.file)), providers=["CPUExecutionProvider"])
            fp32 = ort.InferenceSession(str(bundle.path(entry.head)), providers=["CPUExecutionProvider"])
            a, b = (s.run(None, {"input_0": x.numpy()})[0] for s in (int8, fp32))
            assert 0 < np.abs(a - b).mean() < 0.25 * np.abs(b).mean()
    assert any(e.runs == "int8" for e in bundle.manifest.routes)


def test_an_int8_codec_route_runs_a_head_that_emits_its_quantized_tensor(exported):
    """Routes 1 and 2 send int8: the device runs their int8 head without its last DequantizeLinear, whose uint8
    tensor, framed as an int8 codec frame, decodes to what that DequantizeLinear gives and is as large as the codec's
    frame; route 3 (fp16, the head of route 2) runs the int8 head itself."""
    _, folder, _ = exported
    bundle = load_bundle(folder)
    x = load_dataset("digits").test_images[:8].numpy()
    routes = [e for e in bundle.manifest.routes[1:] if e.runs == "int8"]
    assert any(e.codecs[0]["spec"] == "int8" for e in routes)
    for entry in routes:
        q, direct = entry.int8, entry.int8.quantized_output
        if entry.codecs[0]["spec"] != "int8":
            assert direct is None and entry.run_file == q.file
            continue
        assert direct is not None and entry.run_file == direct.file and direct.file in entry.files()
        full = ort.InferenceSession(str(bundle.path(q.file)), providers=["CPUExecutionProvider"])
        emits = ort.InferenceSession(str(bundle.path(direct.file)), providers=["CPUExecutionProvider"])
        dequantized = full.run(None, {"input_0": x})[0]
        symbols = emits.run(None, {"input_0": x})[0]
        assert symbols.dtype == np.uint8 and symbols.shape == dequantized.shape
        frame = quantized_frame(symbols, direct.scales[0], direct.zero_points[0])
        decoded = decode(frame)
        assert np.abs(decoded - dequantized).max() <= 1e-6 * max(1.0, float(np.abs(dequantized).max()))
        codec = codec_from_json(entry.codecs[0])
        assert len(frame) == len(codec.encode(dequantized))
        step = float(dequantized.max() - dequantized.min()) / 255  # the codec's own step on this tensor
        assert np.abs(decoded - decode(codec.encode(dequantized))).max() <= step / 2 + 1e-6
    with pytest.raises(CodecError, match="uint8"):
        quantized_frame(x, 0.1, 0)


def test_a_route_that_frames_its_uint8_tensor_is_measured_as_it_runs(exported):
    """The accuracy recorded for a route whose device sends the int8 head's uint8 tensor is that path's, end to end
    on the server's tail: recomputed here from the frames the device sends, it is the manifest's int8 score."""
    plan_path, folder, _ = exported
    bundle = load_bundle(folder)
    quantization = bundle.manifest.quantization
    digits = load_dataset("digits")
    x = digits.test_images[quantization.calibration_samples:]
    labels = digits.test_labels[quantization.calibration_samples:]
    deployment = load_deployment(load_plan(plan_path))
    checked = 0
    for entry in bundle.manifest.routes:
        direct = entry.int8.quantized_output if entry.int8 is not None else None
        if direct is None:
            continue
        emits = ort.InferenceSession(str(bundle.path(direct.file)), providers=["CPUExecutionProvider"])
        route = deployment.routes[entry.route_id]
        predictions = []
        for batch in x.split(64):
            symbols = emits.run(None, {"input_0": batch.numpy()})
            payload = pack_frames([quantized_frame(t, s, z) for t, s, z in zip(symbols, direct.scales,
                                                                                 direct.zero_points)])
            with torch.no_grad():
                received = route.decode(payload, DecodeLimits(), len(batch))
                predictions.append(torch.utils._pytree.tree_leaves(route.server_side(received))[0].argmax(-1))
        accuracy = (torch.cat(predictions) == labels).double().mean().item()
        assert entry.int8.metric == "accuracy" and entry.int8.samples == len(x)
        assert accuracy == pytest.approx(entry.int8.int8_score, abs=1e-12)
        checked += 1
    assert checked >= 1


def test_an_int8_head_that_loses_too_much_keeps_the_float_head(exported, tmp_path):
    """Labels the model has not learnt (the digits, labels shuffled) leave top-1 agreement with the float route as
    the measure; allowing no loss at all, an int8 route that disagrees on any image keeps its float head. The 4
    calibration images are dimmed to half their brightness, so the int8 ranges clip the held-out images: without
    that, whether int8 disagrees on any of them depends on the CPU (none did on one with AVX-512 VNNI)."""
    plan_path, _, _ = exported
    digits = load_dataset("digits")
    shuffled = np.random.default_rng(0).permutation(digits.test_labels.numpy()).astype(np.uint8)
    images = (digits.test_images[:, 0].numpy() * 255).round().astype(np.uint8)
    images[:4] //= 2  # the calibration images (the first 4)
    for split in ("train", "t10k"):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", images)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", shuffled)
    plan = save_plan(make_plan(tmp_path, "small_cnn", ROUTES[2:3], weights=plan_path.parent / "small_cnn.safetensors",
                               shape=SHAPE), tmp_path / "plan.json")
    manifest = export_bundle(plan, tmp_path / "bundle", ExportSettings(
        quantize="int8", data=f"idx:{tmp_path}", max_accuracy_drop=0.0, calibration=4))
    q = manifest.routes[0].int8
    assert q.metric == "agreement" and q.float_score == 1.0 and q.int8_score == q.agreement
    assert q.agreement < 1.0 and q.drop == pytest.approx(1.0 - q.agreement)
    assert not q.used and q.file is None and manifest.routes[0].runs == "float32"
    assert "keeps its float head" in q.note and manifest.routes[0].device_bytes == manifest.routes[0].head.bytes
    assert not (tmp_path / "bundle" / "route0-head.int8.onnx").exists()  # not shipped
    assert load_bundle(tmp_path / "bundle").manifest.routes[0].run_file.name == "route0-head.onnx"


@pytest.mark.parametrize("attack", ["../secret.onnx", "/tmp/secret.onnx", "sub/route1-head.onnx", "..", "link"])
def test_a_manifest_naming_a_file_outside_the_bundle_is_refused(exported, tmp_path, attack):
    _, folder, _ = exported
    copy = tmp_path / "bundle"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    head = manifest["routes"][1]["head"]
    secret = tmp_path / "secret.onnx"  # same bytes as the head: only where it lies gives it away
    shutil.copy(copy / head["name"], secret)
    if attack == "link":
        (copy / head["name"]).unlink()
        (copy / head["name"]).symlink_to(secret)
    else:
        head["name"] = attack
        (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as caught:
        load_bundle(copy)
    assert ("link" if attack == "link" else "'routes', 1, 'head', 'name'") in str(caught.value)
    load_bundle(folder)  # the original is fine


@pytest.mark.parametrize("attack", ["swapped", "overlapping", "route on all-device"])
def test_a_manifest_whose_switch_table_a_device_would_misread_is_refused(exported, tmp_path, attack):
    """A device looks its rate up row by row (label_at): rows out of order or overlapping would pick a wrong route
    silently, and an all-device row that names a route (or a split row that names none) would run the wrong part."""
    _, folder, _ = exported
    copy = tmp_path / "bundle"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    rows = manifest["routes"] and manifest["switch_table"]
    assert len(rows) >= 3
    if attack == "swapped":
        rows[0], rows[1] = rows[1], rows[0]
    elif attack == "overlapping":
        rows[0]["high_mbps"] = rows[1]["low_mbps"] * 2
    else:
        rows[0]["kind"] = "all-device"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="switch-table"):
        load_bundle(copy)
    manifest_ok = load_bundle(folder).manifest
    assert [r.kind for r in manifest_ok.switch_table][0] == "all-server"
    assert manifest_ok.quantization.calibration_method == "minmax" and manifest_ok.quantization.per_channel


def test_a_bundle_with_a_changed_file_is_refused(exported, tmp_path):
    _, folder, _ = exported
    copy = tmp_path / "bundle"
    shutil.copytree(folder, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx differs"):
        load_bundle(copy)
    (copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx .* is missing"):
        load_bundle(copy)


def test_the_manifest_is_read_without_torch(exported):
    _, folder, _ = exported
    script = ("import importlib.abc, sys\n"
              "class NoTorch(importlib.abc.MetaPathFinder):\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name == 'torch' or name.startswith('torch.'):\n"
              "            raise ImportError('torch is blocked')\n"
              "sys.meta_path.insert(0, NoTorch())\n"
              "import edgesplit.device as device\n"
              f"bundle = device.load_bundle({str(folder)!r})\n"
              "print(len(bundle.manifest.routes), bundle.manifest.routes[2].run_file.name)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    count, name = done.stdout.split()
    assert int(count) == 4 and name.startswith("route2-head")
    assert isinstance(Manifest.model_validate_json((folder / "manifest.json").read_text()), Manifest)


def test_export_user_errors(exported, tmp_path):
    plan_path, _, _ = exported
    chain = tmp_path / "chain.json"
    chain.write_text(json.dumps({"kind": CHAIN_KIND, "version": 1}))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "other.txt").write_text("x")
    (tmp_path / "a-file").write_text("x")
    cases = [
        ([str(tmp_path / "nope.json"), "--out", "b"], ["no plan at", "nope.json"]),
        ([str(chain), "--out", "b"], ["chain plan", "two-tier plans only"]),
        ([str(plan_path), "--out", "b", "--quantize", "int8"], ["--quantize int8 needs --data"]),
        ([str(plan_path), "--out", "b", "--quantize", "int4", "--data", "digits"], ["int8 only"]),
        ([str(plan_path), "--out", str(tmp_path / "a-file" / "bundle")], ["cannot write the bundle"]),
        ([str(plan_path), "--out", str(tmp_path / "full")], ["is not empty"]),
        # Fails once the folder is made: the half-made bundle is removed with it.
        ([str(plan_path), "--out", "b", "--weights", "missing.safetensors"], ["missing.safetensors"]),
    ]
    for args, fragments in cases:
        assert_user_error(edgesplit_in_process("export", *args, cwd=tmp_path), *fragments)
    assert not (tmp_path / "b").exists()
    # The installed entry point says the same.
    assert_user_error(edgesplit_both_ways("export", str(chain), "--out", "b", cwd=tmp_path), "chain plan")


@pytest.mark.slow
def test_a_bottleneck_route_ships_its_encoder(exported, tmp_path):
    """A learned bottleneck's encoder is exported beside the head, at the route's width, and computes its code."""
    plan_path, _, _ = exported
    weights = plan_path.parent / "small_cnn.safetensors"
    compressed = edgesplit_in_process("compress", "small_cnn", "--weights", str(weights), "--cut", "4",
                                      "--bottleneck", "4", "--slimmable", "--epochs", "1", "--eval-limit", "100",
                                      "--checkpoint", str(tmp_path / "bottleneck"), "--json", "compress.json", "-q",
                                      cwd=tmp_path)
    assert compressed.returncode == 0, compressed.stderr
    names = [c["name"] for c in json.loads((tmp_path / "compress.json").read_text())["configurations"]
             if c["kind"] == "bottleneck"]
    routes = [(0.0, 10.0, {"cut_index": 4, "codec": names[0]}), (10.0, 1e9, {"cut_index": 4, "codec": names[-1]})]
    plan = with_routes(load_plan(plan_path), routes, [str(tmp_path / "compress.json")])
    save_plan(plan, tmp_path / "plan.json")
    manifest = export_bundle(tmp_path / "plan.json", tmp_path / "bundle",
                             ExportSettings(quantize="int8", data="digits"))
    deployment = load_deployment(plan)
    x = load_dataset("digits").test_images[:32]
    for route, entry in zip(deployment.routes, manifest.routes):
        assert entry.encoder is not None and entry.encoder.name == f"route{route.route_id}-encoder.onnx"
        assert entry.width == route.width and entry.sends == [list(s) for s in route.sent_shapes]
        assert entry.head.name == "route0-head.onnx" and entry.int8 is not None and entry.int8.samples > 0
        head = ort.InferenceSession(str(tmp_path / "bundle" / entry.head.name), providers=["CPUExecutionProvider"])
        encoder = ort.InferenceSession(str(tmp_path / "bundle" / entry.encoder.name),
                                       providers=["CPUExecutionProvider"])
        code = encoder.run(None, {"input_0": head.run(None, {"input_0": x.numpy()})[0]})[0]
        expected = route.device_side(x)[0].numpy()
        assert code.shape == expected.shape
        assert np.mean(code == expected) > 0.999  # integer codes: a value at a rounding edge may fall either way
    assert manifest.routes[0].sends != manifest.routes[1].sends  # two widths, two code sizes
