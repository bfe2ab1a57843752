"""Loading a model and counting its MACs import no torch._dynamo (a second or more per command), and give the same
numbers as with the real torch._dynamo imported; code that wants more of dynamo than torch's disable wrappers gets it."""

import subprocess
import sys

SCRIPT = r"""
import sys, torch
from edgesplit.model import intake
from edgesplit.model.graph import trace
from edgesplit.model.intake import ModelRef, build_model
from edgesplit.model.zoo import ZOO
from edgesplit.profile import macs

names = ["small_cnn", "resnet8", "hybrid_vit", "mobilenetv3_small"]
forward, counted = {}, {}
for name in names:
    shape = tuple(ZOO[name].input_shape)
    build_model(ModelRef(name), input_shapes=[shape])  # the meta build and forward pass the CLI's loading runs
    meta = intake.without_dynamo(intake._build_on_meta, ZOO[name].factory, {})
    forward[name] = intake._forward_bytes(meta, [shape])
for name in ["small_cnn", "resnet8", "hybrid_vit"]:  # graphs small enough to count for real
    torch.manual_seed(0)
    traced = trace(ZOO[name].factory().eval(), torch.randn(ZOO[name].input_shape))
    counted[name] = (traced, macs.count_macs(traced.graph_module, *traced.example_inputs))
assert "torch._dynamo" not in sys.modules, "torch._dynamo was imported"
assert "_dynamo" not in vars(torch)
print("dynamo-free")

import torch._dynamo  # the real one: the same kernels, so the same figures
for name in names:
    with torch.device("meta"):
        meta = ZOO[name].factory()
    assert intake._forward_bytes(meta, [tuple(ZOO[name].input_shape)]) == forward[name], name
for name, (traced, result) in counted.items():
    assert macs._count_macs(traced.graph_module, traced.example_inputs) == result, name
assert forward["small_cnn"] == 855208 and forward["resnet8"] == 1103528, forward  # the figures before this change
print("same figures")

# the functions the stand-in saw are unmarked again: torch.export (dynamo tracing) of a BatchNorm model still works
model, example = ZOO["resnet8"].factory().eval(), torch.randn(ZOO["resnet8"].input_shape)
exported = torch.export.export(model, (example,))
assert torch.allclose(exported.module()(example), model(example), atol=1e-5)
print("export works")
"""


def test_loading_and_counting_import_no_dynamo_and_agree_with_it():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dynamo-free" in result.stdout and "same figures" in result.stdout and "export works" in result.stdout


def test_code_that_wants_dynamo_runs_again_with_it():
    script = r"""
import sys
from edgesplit.model.nodynamo import without_dynamo
calls = []
def wants_dynamo():
    import torch._dynamo
    calls.append(type(torch._dynamo).__name__)
    return torch._dynamo.is_compiling()
assert without_dynamo(wants_dynamo) is False
assert calls == ["_StandIn", "module"], calls
assert type(sys.modules["torch._dynamo"]).__name__ == "module"
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
