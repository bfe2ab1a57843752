"""examples/split_torchvision.py as a user runs it, and the zoo's resnet18 as torchvision's twin.

torchvision is not installed here (nor a dependency), so the example runs with edgesplit.model.zoo.resnet18; the
state-dict test pins the layout torchvision's resnet18 has, from the architecture (He et al. 2016).
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgesplit.model import zoo
from edgesplit.model.artifact import load_split
from edgesplit.model.graph import max_abs_diff

EXAMPLE = Path(__file__).parents[1] / "examples" / "split_torchvision.py"
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


@pytest.mark.slow
def test_the_example_plans_splits_and_saves_a_split_that_reloads(tmp_path):
    out = tmp_path / "resnet18-split"
    result = subprocess.run([sys.executable, str(EXAMPLE), "--out", str(out)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    if HAS_TORCHVISION:
        assert "model: torchvision.models.resnet18(weights=None)" in result.stdout
    else:
        assert "torchvision is not installed; using edgesplit.model.zoo.resnet18" in result.stdout
    for line in ("traced with fx: 69 compute nodes, 70 cuts", "plan for rpi4 -> edge-gpu over lte:",
                 "switch table", "best real split: cut ", "reloaded max abs diff"):
        assert line in result.stdout, result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["head.safetensors", "split.json", "tail.safetensors"]

    split, record = load_split(out)
    assert 0 < record.cut.position < 69 and record.model["name"] in ("resnet18", "torchvision.models:resnet18")
    # The two halves hold every weight of the model under torchvision's names: together they load strictly.
    model = zoo.resnet18().eval()
    model.load_state_dict({**split.head.state_dict(), **split.tail.state_dict()}, strict=True)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert max_abs_diff(split.tail(*split.head(x)), model(x)) <= 1e-5


def torchvision_resnet18_layout() -> list[tuple[str, tuple[int, ...]]]:
    """torchvision's resnet18 state dict, in order, written from the architecture."""
    def bn(name, c):
        return [(f"{name}.{k}", (c,)) for k in ("weight", "bias", "running_mean", "running_var")] + \
               [(f"{name}.num_batches_tracked", ())]

    keys = [("conv1.weight", (64, 3, 7, 7)), *bn("bn1", 64)]
    c_in = 64
    for stage, c in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{stage}.{block}"
            keys += [(f"{p}.conv1.weight", (c, c_in, 3, 3)), *bn(f"{p}.bn1", c),
                     (f"{p}.conv2.weight", (c, c, 3, 3)), *bn(f"{p}.bn2", c)]
            if block == 0 and stage > 1:
                keys += [(f"{p}.downsample.0.weight", (c, c_in, 1, 1)), *bn(f"{p}.downsample.1", c)]
            c_in = c
    return keys + [("fc.weight", (1000, 512)), ("fc.bias", (1000,))]


def test_zoo_resnet18_has_torchvisions_state_dict():
    model = zoo.resnet18()
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(state.items()) == torchvision_resnet18_layout()
    assert len(state) == 122 and len(list(model.parameters())) == 62
    assert state["conv1.weight"] == (64, 3, 7, 7)
    assert state["bn1.running_mean"] == (64,)
    assert state["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert state["layer4.1.conv2.weight"] == (512, 512, 3, 3)
    assert state["fc.weight"] == (1000, 512)
    assert "layer1.0.downsample.0.weight" not in state
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    assert zoo.get_entry("resnet18").input_shape == (1, 3, 224, 224)


def test_zoo_resnet18_takes_other_channels_classes_and_sizes():
    model = zoo.resnet18(in_channels=1, num_classes=10).eval()
    assert model.conv1.weight.shape == (64, 1, 7, 7) and model.fc.weight.shape == (10, 512)
    with torch.no_grad():  # the adaptive pool lets any input of 32×32 or more through
        assert model(torch.rand(2, 1, 64, 96)).shape == (2, 10)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed (and not a dependency)")
def test_torchvision_resnet18_weights_load_into_the_zoo_twin():
    import torchvision

    reference = torchvision.models.resnet18(weights=None).eval()
    twin = zoo.resnet18().eval()
    twin.load_state_dict(reference.state_dict(), strict=True)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert max_abs_diff(twin(x), reference(x)) <= 1e-5
