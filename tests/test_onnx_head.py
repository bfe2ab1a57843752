"""The ONNX device runtime: an exported head computes the fx head's crossing tensors, and misuse gets a clear error."""

import copy
import sys
from pathlib import Path

import onnx
import pytest
import torch

from edgesplit.errors import EdgesplitError, InputShapeError
from edgesplit.model.graph import trace
from edgesplit.runtime.onnx_head import (OnnxExportError, OnnxHead, OnnxHeadError, OnnxInputError, export_head,
                                         verify_head)
from edgesplit.model.zoo import ZOO

TOLERANCE = 1e-4

# resnet8 with the whole first block on the device, plus the second block's projection shortcut but not its
# conv branch: predecessor-closed, but not a topological prefix, so the min-cut path (Cut.head) builds it.
RESNET8_NON_PREFIX_HEAD = [
    "stem_0", "stem_1", "stem_2",
    "layers_0_conv1_0", "layers_0_conv1_1", "layers_0_conv1_2", "layers_0_conv2_0", "layers_0_conv2_1",
    "layers_0_shortcut", "add", "layers_0_relu",
    "layers_1_shortcut_0", "layers_1_shortcut_1",
]


def _zoo_name(case):
    return case.split("-")[0]


def _traced(name):
    torch.manual_seed(0)
    model = ZOO[name].factory().eval()
    return model, trace(model, torch.randn(*ZOO[name].input_shape))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Three heads, each exported once: (model, split, onnx path) by case name."""
    folder = tmp_path_factory.mktemp("onnx")
    small, small_traced = _traced("small_cnn")
    resnet, resnet_traced = _traced("resnet8")
    inside_block = next(c for c in resnet_traced.cuts if c.after == "layers_0_conv1_2")
    cases = {
        "small_cnn-middle": (small, small_traced.split(len(small_traced.cuts) // 2)),
        "resnet8-inside-block": (resnet, resnet_traced.split(inside_block)),
        "resnet8-non-prefix": (resnet, resnet_traced.split(resnet_traced.head_cut(RESNET8_NON_PREFIX_HEAD))),
    }
    result = {}
    for case, (model, split) in cases.items():
        example = (torch.randn(*ZOO[_zoo_name(case)].input_shape),)
        result[case] = (model, split, export_head(split.head, example, folder / f"{case}.onnx"))
    return result


def test_the_cases_cover_a_chain_a_residual_block_and_a_non_prefix_head(exported):
    assert len(exported["small_cnn-middle"][1].cut.crossing) == 1
    inside = exported["resnet8-inside-block"][1].cut
    assert [t.name for t in inside.crossing] == ["stem_2", "layers_0_conv1_2"]
    non_prefix = exported["resnet8-non-prefix"][1].cut
    assert non_prefix.index == -1 and non_prefix.head == tuple(RESNET8_NON_PREFIX_HEAD)
    assert [t.name for t in non_prefix.crossing] == ["layers_0_relu", "layers_1_shortcut_1"]


@pytest.mark.parametrize("case", ["small_cnn-middle", "resnet8-inside-block", "resnet8-non-prefix"])
@pytest.mark.parametrize("batch", [1, 5])
def test_the_onnx_head_matches_the_pytorch_head_on_any_batch(exported, case, batch):
    model, split, path = exported[case]
    onnx_head = OnnxHead(path, threads=1)
    x = torch.randn(batch, *ZOO[_zoo_name(case)].input_shape[1:])
    with torch.no_grad():
        expected = split.head(x)
        actual = onnx_head(x)
        assert isinstance(actual, tuple) and len(actual) == len(expected) == len(split.cut.crossing)
        for a, e in zip(actual, expected):
            assert a.shape == e.shape and a.shape[0] == batch and a.dtype == e.dtype
            torch.testing.assert_close(a, e, atol=TOLERANCE, rtol=TOLERANCE)
        assert 0.0 <= verify_head(split.head, onnx_head, x) <= TOLERANCE
        # It stands in for split.head: the server's tail finishes the model's computation.
        torch.testing.assert_close(split.tail(*actual), model(x), atol=TOLERANCE, rtol=TOLERANCE)


def test_the_file_has_named_inputs_crossing_outputs_and_a_symbolic_batch(exported):
    _, split, path = exported["resnet8-inside-block"]
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input_0"]
    assert [o.name for o in graph.output] == ["crossing_0", "crossing_1"]
    for value in [*graph.input, *graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    onnx_head = OnnxHead(path)
    assert onnx_head.input_names == ("input_0",) and onnx_head.output_names == ("crossing_0", "crossing_1")
    assert onnx_head.input_shapes == (("batch", 3, 32, 32),) and onnx_head.input_dtypes == (torch.float32,)


def test_a_wrong_input_gets_a_clear_error(exported):
    _, _, path = exported["resnet8-inside-block"]
    onnx_head = OnnxHead(path)
    with pytest.raises(OnnxInputError, match=r"input 0 .* has shape 1×3×28×28, but it was exported for "
                                             r"batch×3×32×32; pass inputs of that shape") as raised:
        onnx_head(torch.randn(1, 3, 28, 28))
    assert isinstance(raised.value, InputShapeError) and isinstance(raised.value, EdgesplitError)
    assert "\n" not in str(raised.value)
    with pytest.raises(OnnxInputError, match=r"has shape 3×32×32"):
        onnx_head(torch.randn(3, 32, 32))
    with pytest.raises(OnnxInputError, match=r"takes 1 input tensor\(s\), got 2"):
        onnx_head(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32))
    with pytest.raises(OnnxInputError, match=r"is torch.float64, but it was exported for torch.float32; "
                                             r"convert it with .to\(torch.float32\)"):
        onnx_head(torch.randn(1, 3, 32, 32, dtype=torch.float64))


def test_verify_head_reports_the_difference_and_rejects_a_different_head(exported):
    _, split, path = exported["resnet8-inside-block"]
    onnx_head = OnnxHead(path)
    x = torch.randn(2, 3, 32, 32)
    assert verify_head(split.head, onnx_head, x) < TOLERANCE
    other = copy.deepcopy(split.head)
    with torch.no_grad():
        other.get_submodule("stem.0").weight.add_(0.05)
    with pytest.raises(OnnxHeadError, match=r"differs from the PyTorch head on crossing_0: max abs diff .* exceeds "
                                            r"atol=0.0001, rtol=0.0001"):
        verify_head(other, onnx_head, x)
    with pytest.raises(OnnxHeadError, match=r"returns 2 tensor\(s\) but the PyTorch head returns 1"):
        verify_head(lambda t: (t,), onnx_head, x)


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, a, b):
        return self.linear(a) + b  # one tensor, not a tuple


def test_several_inputs_and_a_single_output_tensor(tmp_path):
    head = TwoInputs().train()
    path = export_head(head, (torch.randn(1, 4), torch.randn(1, 3)), tmp_path / "deep" / "two.onnx")
    assert path == tmp_path / "deep" / "two.onnx" and path.is_file()
    assert head.training  # export puts it in eval mode only for the export
    onnx_head = OnnxHead(path)
    assert onnx_head.input_names == ("input_0", "input_1") and onnx_head.output_names == ("crossing_0",)
    a, b = torch.randn(7, 4), torch.randn(7, 3)
    (out,) = onnx_head(a, b)
    torch.testing.assert_close(out, head(a, b).detach(), atol=TOLERANCE, rtol=TOLERANCE)
    with pytest.raises(OnnxInputError, match=r"input 1 .* has shape 6×3, but it was exported for batch×3"):
        onnx_head(a, torch.randn(6, 3))  # the batch must agree across inputs


def test_a_fixed_batch_export_rejects_another_batch_and_says_how_to_fix_it(tmp_path):
    head = TwoInputs()
    path = export_head(head, (torch.randn(2, 4), torch.randn(2, 3)), tmp_path / "fixed.onnx", dynamic_batch=False)
    onnx_head = OnnxHead(path)
    assert onnx_head.input_shapes == ((2, 4), (2, 3))
    a, b = torch.randn(2, 4), torch.randn(2, 3)
    assert verify_head(head, onnx_head, (a, b)) < TOLERANCE
    with pytest.raises(OnnxInputError, match=r"has shape 5×4, but it was exported for 2×4; .*dynamic_batch=True"):
        onnx_head(torch.randn(5, 4), torch.randn(5, 3))


def test_an_unwritable_path_gets_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    head = TwoInputs()
    example = (torch.randn(1, 4), torch.randn(1, 3))
    with pytest.raises(OnnxExportError, match=r"cannot create the folder .*a_file.* choose a writable file path"):
        export_head(head, example, blocker / "head.onnx")
    with pytest.raises(OnnxExportError, match=r"is a directory; give export_head a file path"):
        export_head(head, example, tmp_path)
    if Path("/sys/kernel").is_dir():  # Linux: sysfs takes no new files, not even from root
        with pytest.raises(OnnxExportError, match=r"cannot write the ONNX head to /sys/head.onnx \(.*\); choose a "
                                                  r"writable file path"):
            export_head(head, example, "/sys/head.onnx")


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def test_a_head_the_exporter_cannot_handle_gets_a_one_line_error(tmp_path):
    with pytest.raises(OnnxExportError, match=r"cannot export DataDependent to ONNX: .*data-dependent.*; make the "
                                              r"head exportable") as raised:
        export_head(DataDependent(), (torch.randn(1, 3),), tmp_path / "bad.onnx")
    assert "\n" not in str(raised.value) and "\x1b" not in str(raised.value)
    assert not (tmp_path / "bad.onnx").exists()


def test_missing_packages_say_which_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` raise ImportError
    with pytest.raises(OnnxExportError, match=r"needs the package onnxscript.*pip install 'edgesplit\[onnx\]'"):
        export_head(TwoInputs(), (torch.randn(1, 4), torch.randn(1, 3)), tmp_path / "h.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(OnnxHeadError, match=r"needs the package onnxruntime.*pip install 'edgesplit\[onnx\]'"):
        OnnxHead(tmp_path / "h.onnx")


def test_a_missing_or_corrupt_file_gets_a_clear_error(tmp_path):
    with pytest.raises(OnnxHeadError, match=r"no ONNX head at .*missing.onnx; export one with export_head"):
        OnnxHead(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf")
    with pytest.raises(OnnxHeadError, match=r"cannot load the ONNX head .*corrupt.onnx .*re-export it") as raised:
        OnnxHead(corrupt)
    assert "\n" not in str(raised.value)


def test_a_client_runs_its_heads_with_onnxruntime_against_a_real_server(tmp_path):
    from edgesplit.runtime.client import Client
    from edgesplit.runtime.deployment import load_deployment
    from edgesplit.runtime.engine import Engine
    from edgesplit.runtime.onnx_head import OnnxHead
    from edgesplit.runtime.server import ServerThread
    from runtime_plans import make_plan

    plan = make_plan(tmp_path, "resnet8", [(0.1, 10, {"cut_index": 10}), (10, 1000, {"cut_index": 6})])
    served = load_deployment(plan)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with ServerThread(Engine([served])) as server:
        for route in served.routes:
            with Client(plan, server.url, fallback=False, route=route.label, onnx_dir=tmp_path / "onnx") as client:
                assert all(isinstance(r.split.head, OnnxHead) for r in client.deployment.routes)
                result = client.infer(images)
                assert result.where == "server" and result.label == route.label
                torch.testing.assert_close(result.logits, served.model(images), atol=1e-4, rtol=1e-4)
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["resnet8-route0.onnx", "resnet8-route1.onnx"]
