"""`edgesplit export --format pte`: ExecuTorch programs of the heads (and encoders) beside the ONNX files, recorded in
the manifest with their SHA-256 and computing what PyTorch does; without ExecuTorch, a one-line user error."""

import hashlib
import importlib.util
import json
import subprocess
import sys

import onnxruntime as ort
import pytest
import torch

from edgesplit.device.bundle import load_bundle
from edgesplit.model.data import load_dataset
from edgesplit.plan.schema import load_plan
from edgesplit.runtime.deployment import load_deployment
from edgesplit.runtime.export import ExportSettings, export_bundle
from runtime_plans import make_plan, save_plan
from test_cli import assert_user_error, edgesplit_in_process

TOLERANCE = 1e-4
# resnet8: cut 10 (one tensor crosses) shared by two codecs, cut 6 inside a residual block (two tensors cross).
ROUTES = [(0.0, 2.0, {"kind": "all-server", "label": "all on server (uint8 input)", "codec": "uint8"}),
          (2.0, 20.0, {"cut_index": 10, "codec": "int8"}),
          (20.0, 200.0, {"cut_index": 6}),
          (200.0, 1e9, {"cut_index": 10, "codec": "fp16"})]

HAS_EXECUTORCH = importlib.util.find_spec("executorch") is not None
needs_executorch = pytest.mark.skipif(
    not HAS_EXECUTORCH, reason="executorch is not installed (optional: pip install 'edgesplit[pte]'); CI's venv "
                               "has no ExecuTorch, so this runs where it is installed (bench/README.md says how)")

BLOCK_EXECUTORCH = ("import importlib.abc, sys\n"
                    "class NoExecuTorch(importlib.abc.MetaPathFinder):\n"
                    "    def find_spec(self, name, path=None, target=None):\n"
                    "        if name == 'executorch' or name.startswith('executorch.'):\n"
                    "            raise ImportError('No module named executorch')\n"
                    "sys.meta_path.insert(0, NoExecuTorch())\n")


@pytest.fixture(scope="module")
def plan_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pte-plan")
    return save_plan(make_plan(folder, "resnet8", ROUTES), folder / "plan.json")


def test_format_pte_without_executorch_is_a_one_line_user_error(plan_path, tmp_path):
    """ExecuTorch made unimportable (as in a venv without it): exit 2, one line saying how to install it, and
    nothing written; the check runs before any export work."""
    script = BLOCK_EXECUTORCH + (f"sys.argv = ['edgesplit', 'export', {str(plan_path)!r}, '--out', 'bundle', "
                                 "'--format', 'pte']\n"
                                 "from edgesplit.cli import main\nmain()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False,
                          cwd=tmp_path)
    assert_user_error(done, "--format pte needs ExecuTorch", "pip install 'edgesplit[pte]'")
    assert not (tmp_path / "bundle").exists()
    if not HAS_EXECUTORCH:  # the same through the CLI in this process, where it is really missing
        result = edgesplit_in_process("export", str(plan_path), "--out", "bundle", "--format", "onnx,pte",
                                      cwd=tmp_path)
        assert_user_error(result, "executorch is not installed", "pip install 'edgesplit[pte]'")
        assert not (tmp_path / "bundle").exists()


def test_an_unknown_format_is_a_user_error(plan_path, tmp_path):
    result = edgesplit_in_process("export", str(plan_path), "--out", "bundle", "--format", "tflite", cwd=tmp_path)
    assert_user_error(result, "--format onnx,tflite", "give onnx, pte or onnx,pte")
    assert not (tmp_path / "bundle").exists()


@needs_executorch
@pytest.mark.slow
def test_pte_programs_are_in_the_manifest_and_compute_what_pytorch_and_onnx_do(plan_path, tmp_path):
    from edgesplit.runtime.pte_head import BATCH, PteHead, executorch_version

    folder = tmp_path / "bundle"
    result = edgesplit_in_process("export", str(plan_path), "--out", str(folder), "--format", "pte", "--json",
                                  str(tmp_path / "export.json"))
    assert result.returncode == 0, result.stderr
    manifest = load_bundle(folder).manifest  # checks every named file's size and SHA-256, the .pte ones included
    assert manifest.executorch.version == executorch_version() and manifest.executorch.batch == BATCH == 1
    names = {f.name for f in manifest.files()}
    assert {"route1-head.pte", "route2-head.pte"} <= names and "route3-head.pte" not in names  # 1 and 3 share
    assert {p.name for p in folder.iterdir()} == names | {"manifest.json"}
    assert manifest.routes[0].pte is None  # all on server: no head
    assert manifest.routes[3].pte.head == manifest.routes[1].pte.head
    for route in manifest.routes[1:]:
        data = (folder / route.pte.head.name).read_bytes()
        assert route.pte.head.bytes == len(data) and route.pte.head.sha256 == hashlib.sha256(data).hexdigest()
        assert route.bytes_on_disk == sum(f.bytes for f in route.files()) and route.pte.head in route.files()
        assert route.pte.max_abs_diff <= TOLERANCE
    assert "ExecuTorch route1-head.pte" in result.stdout

    deployment = load_deployment(load_plan(plan_path), plan_dir=plan_path.parent)
    crossings = []
    for seed in range(100, 104):
        x = deployment.example(seed=seed)
        for route, entry in zip(deployment.routes[1:], manifest.routes[1:]):
            program = PteHead(folder / entry.pte.head.name)
            got = program(x)
            with torch.no_grad():
                expected = route.split.head(x)
            onnx = ort.InferenceSession(str(folder / entry.head.name), providers=["CPUExecutionProvider"])
            from_onnx = onnx.run(None, {"input_0": x.numpy()})
            assert len(got) == len(expected) == len(from_onnx)
            crossings.append(len(got))
            for g, e, o in zip(got, expected, from_onnx):
                assert g.shape == e.shape and g.dtype == e.dtype
                assert torch.allclose(g, e, atol=TOLERANCE, rtol=TOLERANCE)
                assert torch.allclose(g, torch.from_numpy(o), atol=TOLERANCE, rtol=TOLERANCE)
    assert 2 in crossings  # cut 6 sends two tensors: the program returns both, in the ONNX file's order
    with pytest.raises(RuntimeError):  # the programs take one input at a time (the planned batch)
        program(torch.cat([x, x]))
    saved = json.loads((tmp_path / "export.json").read_text())["manifest"]
    assert saved["routes"][1]["pte"]["head"]["name"] == "route1-head.pte"


@needs_executorch
@pytest.mark.slow
def test_a_bottleneck_routes_encoder_is_lowered_too(tmp_path):
    """A learned bottleneck's encoder gets its own program, which computes the code the ONNX encoder computes."""
    from edgesplit.model.intake import ModelRef, build_model, save_weights
    from edgesplit.runtime.pte_head import PteHead

    torch.manual_seed(0)
    shape = (1, 1, 8, 8)
    ref = ModelRef("small_cnn", {"in_channels": 1})
    weights = tmp_path / "small_cnn.safetensors"
    save_weights(build_model(ref).eval(), weights, ref, shape)
    compressed = edgesplit_in_process("compress", "small_cnn", "--weights", str(weights), "--cut", "4",
                                      "--bottleneck", "4", "--epochs", "1", "--eval-limit", "100", "--checkpoint",
                                      str(tmp_path / "bottleneck"), "--json", "compress.json", "-q", cwd=tmp_path)
    assert compressed.returncode == 0, compressed.stderr
    name = next(c["name"] for c in json.loads((tmp_path / "compress.json").read_text())["configurations"]
                if c["kind"] == "bottleneck")
    save_plan(make_plan(tmp_path, "small_cnn", [(0.0, 1e9, {"cut_index": 4, "codec": name})],
                        [str(tmp_path / "compress.json")], weights=weights, shape=shape), tmp_path / "plan.json")
    manifest = export_bundle(tmp_path / "plan.json", tmp_path / "bundle", ExportSettings(formats=("onnx", "pte")))
    entry = manifest.routes[0]
    assert entry.pte.encoder is not None and entry.pte.encoder.name == "route0-encoder.pte"
    assert entry.pte.encoder in manifest.files()
    head, encoder = (PteHead(tmp_path / "bundle" / f.name) for f in (entry.pte.head, entry.pte.encoder))
    x = load_dataset("digits").test_images[:16]
    features = torch.cat([head(image[None])[0] for image in x])
    code = torch.cat([encoder(f[None])[0] for f in features])
    onnx = ort.InferenceSession(str(tmp_path / "bundle" / entry.encoder.name), providers=["CPUExecutionProvider"])
    expected = torch.from_numpy(onnx.run(None, {"input_0": features.numpy()})[0])
    assert code.shape == expected.shape
    assert (code == expected).double().mean().item() > 0.999  # integer codes: a rounding edge may fall either way
