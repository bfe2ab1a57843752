"""The ImageNet-size zoo models: torchvision's parameter counts and state-dict names, and exact splits.

The expected names are written out here from torchvision's source (resnet.py, mobilenetv3.py with
ops/misc.py's Conv2dNormActivation and SqueezeExcitation, vision_transformer.py), independently of zoo.py, so
a torchvision state dict would load with ``strict=True``. Counts and names are checked on the meta device (no
memory, no arithmetic); traces run the CNNs at 32×32 or 64×64 (exactness does not depend on resolution) and the ViTs at
the 224×224 their position embedding fixes. Last, examples/imagenet.yaml and the untrained runs it makes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from edgesplit.errors import DataError
from edgesplit.model import zoo
from edgesplit.model.graph import trace
from edgesplit.model.intake import load_model
from edgesplit.model.train import TrainSettings
from edgesplit.pipeline import ConfigError, RunConfig, check_config, load_config
from edgesplit.pipeline.run import run_pipeline
from edgesplit.profile.macs import count_macs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# torchvision's published `num_params` (its weights' meta); ViT-Ti/S are DeiT-Tiny/Small (Touvron et al. 2021).
PARAMS = {"resnet50": 25_557_032, "mobilenetv3_small": 2_542_856, "mobilenetv3_large": 5_483_032,
          "vit_b16": 86_567_656, "vit_ti16": 5_717_416, "vit_s16": 22_050_664}
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _on_meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return zoo.ZOO[name].factory()


def _resnet50_keys() -> set[str]:
    keys = {"conv1.weight", "fc.weight", "fc.bias", *(f"bn1.{k}" for k in BN)}
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        for i in range(blocks):
            block = f"layer{stage}.{i}"
            keys |= {f"{block}.conv{j}.weight" for j in (1, 2, 3)}
            keys |= {f"{block}.bn{j}.{k}" for j in (1, 2, 3) for k in BN}
            if i == 0:  # every stage's first block projects (channels ×4, or stride 2)
                keys |= {f"{block}.downsample.0.weight", *(f"{block}.downsample.1.{k}" for k in BN)}
    return keys


def _vit_keys(depth: int = 12) -> set[str]:
    keys = {"class_token", "conv_proj.weight", "conv_proj.bias", "encoder.pos_embedding", "encoder.ln.weight",
            "encoder.ln.bias", "heads.head.weight", "heads.head.bias"}
    for i in range(depth):
        layer = f"encoder.layers.encoder_layer_{i}"
        keys |= {f"{layer}.{part}" for part in (
            "ln_1.weight", "ln_1.bias", "self_attention.in_proj_weight", "self_attention.in_proj_bias",
            "self_attention.out_proj.weight", "self_attention.out_proj.bias", "ln_2.weight", "ln_2.bias",
            "mlp.0.weight", "mlp.0.bias", "mlp.3.weight", "mlp.3.bias")}
    return keys


# MobileNetV3: features.0 stem, one entry per bottleneck, then the last 1×1 conv; a Conv2dNormActivation has 6
# keys (conv weight and BatchNorm's 5), a SqueezeExcitation 4 (fc1, fc2). Small: block 1 has no expand conv and
# has SE, blocks 2-3 expand without SE, blocks 4-11 expand with SE: 16 + 2·18 + 8·22 = 228, + 6 + 6 + 4 = 244.
# Large: 12 + 18 + 18 + 3·22 + 4·18 + 5·22 = 296, + 6 + 6 + 4 = 312.
MOBILENET_KEYS = {"mobilenetv3_small": 244, "mobilenetv3_large": 312}
MOBILENET_SHAPES = {
    "mobilenetv3_small": {"features.0.0.weight": (16, 3, 3, 3), "features.1.block.0.0.weight": (16, 1, 3, 3),
                          "features.1.block.1.fc1.weight": (8, 16, 1, 1), "features.1.block.2.1.running_var": (16,),
                          "features.4.block.2.fc2.bias": (96,), "features.12.0.weight": (576, 96, 1, 1),
                          "classifier.0.weight": (1024, 576), "classifier.3.weight": (1000, 1024)},
    "mobilenetv3_large": {"features.1.block.0.0.weight": (16, 1, 3, 3), "features.2.block.0.0.weight": (64, 16, 1, 1),
                          "features.4.block.2.fc1.weight": (24, 72, 1, 1), "features.16.0.weight": (960, 160, 1, 1),
                          "classifier.0.weight": (1280, 960), "classifier.3.bias": (1000,)},
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_are_torchvisions(name):
    model = _on_meta(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert zoo.ZOO[name].input_shape == (1, 3, 224, 224) and name in zoo.LARGE_MODELS


def test_state_dict_names_are_torchvisions():
    assert set(_on_meta("resnet50").state_dict()) == _resnet50_keys()
    for name, dim in (("vit_ti16", 192), ("vit_s16", 384), ("vit_b16", 768)):
        state = _on_meta(name).state_dict()
        assert set(state) == _vit_keys(), name
        assert state["encoder.pos_embedding"].shape == (1, 197, dim)
        assert state["encoder.layers.encoder_layer_11.self_attention.in_proj_weight"].shape == (3 * dim, dim)
        assert state["conv_proj.weight"].shape == (dim, 3, 16, 16)
    for name, count in MOBILENET_KEYS.items():
        state = _on_meta(name).state_dict()
        assert len(state) == count, name
        for key, shape in MOBILENET_SHAPES[name].items():
            assert state[key].shape == shape, (name, key)


def test_a_torchvision_style_state_dict_loads_strictly_and_runs():
    # A state dict built from the expected names alone (as torchvision would save it) fills every weight.
    model, expected = zoo.resnet50(), _resnet50_keys()
    state = {key: torch.randn(value.shape) if value.is_floating_point() else value
             for key, value in model.state_dict().items() if key in expected}
    state = {k: v.abs() + 0.5 if k.endswith("running_var") else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)  # raises on a missing or unexpected name
    with torch.no_grad():
        assert torch.equal(model.eval().fc.weight, state["fc.weight"])
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def _varied_output(model: torch.nn.Module) -> torch.nn.Module:
    # A model whose output did not depend on its input would make every exactness check pass.
    with torch.no_grad():
        first, second = model.eval()(torch.randn(2, 3, 224, 224)).unbind(0)
    assert first.std() > 0 and not torch.allclose(first, second)
    return model


def _check_exact(traced, x, expected, cut) -> None:
    with torch.no_grad():
        torch.testing.assert_close(traced.split(cut)(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("name", "side"), [
    ("mobilenetv3_small", 64), ("resnet50", 32), pytest.param("mobilenetv3_large", 64, marks=pytest.mark.slow)])
def test_cnns_trace_with_fx_and_split_exactly(name, side):
    torch.manual_seed(0)
    model = zoo.ZOO[name].factory().eval()
    x = torch.randn(1, 3, side, side)
    traced = trace(model, x)
    assert traced.tracer == "fx" and len(traced.cuts) > 100
    with torch.no_grad():
        expected = model(x)
    assert expected.shape == (1, 1000) and expected.abs().max() > 0
    middle = traced.cuts[len(traced.cuts) // 2]
    inside_residual = next(c for c in traced.cuts[len(traced.cuts) // 3:] if len(c.crossing) == 2)
    for cut in (middle, inside_residual):
        _check_exact(traced, x, expected, cut)
    _, uncounted = count_macs(traced.graph_module, x)
    assert uncounted == {}


@pytest.fixture(scope="module")
def vit_ti16():
    torch.manual_seed(0)
    model = _varied_output(zoo.vit_ti16())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
    return model, x, expected, trace(model, x)


def test_vit_traces_with_fx_with_a_cut_after_every_encoder_layer(vit_ti16):
    _, x, expected, traced = vit_ti16
    assert traced.tracer == "fx"
    # A block ends with its second residual add; its output (1 × 197 tokens × 192) is all that crosses there.
    next_nodes = [f"encoder_layers_encoder_layer_{i}_ln_1" for i in range(1, 12)] + ["encoder_ln"]
    block_ends = [c for c in traced.cuts[:-1] if traced.compute_nodes[c.position].name in next_nodes]
    assert len(block_ends) == 12
    assert all([t.shape for t in c.crossing] == [(1, 197, 192)] for c in block_ends)
    # Inside a block, after ln_1, the residual and the normalised tokens both cross.
    after_ln_1 = traced.cut("encoder_layers_encoder_layer_5_ln_1")
    assert [t.shape for t in after_ln_1.crossing] == [(1, 197, 192)] * 2
    for cut in (block_ends[5], after_ln_1, traced.cut("encoder_layers_encoder_layer_8_mlp_1")):
        _check_exact(traced, x, expected, cut)


def test_vit_macs_are_counted(vit_ti16):
    _, x, _, traced = vit_ti16
    macs, uncounted = count_macs(traced.graph_module, x)
    assert uncounted == {}
    # DeiT-Ti: 1.3 G multiply-accumulates at 224×224 (Touvron et al. 2021, Table 1).
    assert 1.2e9 < sum(macs.values()) < 1.35e9


@pytest.mark.slow
def test_vit_b16_loads_within_the_default_limits_and_splits_exactly():
    loaded = load_model("vit_b16")  # 346 MB of float32 weights, below $EDGESPLIT_MAX_MODEL_BYTES's 4 GiB
    model = _varied_output(loaded.module)
    x = loaded.example_input
    with torch.no_grad():
        expected = model(x)
    traced = trace(model, x)
    _check_exact(traced, x, expected, traced.cut("encoder_layers_encoder_layer_6_ln_1"))


# --- the ImageNet-size example: a run config with an untrained model ---------------------------------------------


def test_the_imagenet_example_config_checks_and_a_missing_photo_folder_stops_it_at_once(tmp_path):
    config = load_config(EXAMPLES / "imagenet.yaml")
    check_config(config)
    assert config.untrained and config.model in zoo.LARGE_MODELS and config.image_size == 224
    missing = config.model_copy(update={"data": f"patches:{tmp_path / 'no-photos'}"})
    with pytest.raises(DataError, match="no-photos does not exist"):
        run_pipeline(missing, tmp_path / "out", Console(quiet=True), progress=False)
    assert not (tmp_path / "out" / "profile_mobilenetv3_small.json").exists()
    with pytest.raises(ConfigError, match="untrained: true"):
        check_config(config.model_copy(update={"train": TrainSettings()}))


@pytest.mark.slow
def test_an_untrained_run_measures_agreement_not_accuracy(tmp_path):
    config = RunConfig.model_validate({
        "model": "small_cnn", "untrained": True, "data": "digits", "profile_runs": 1,
        "targets": [{"name": "mcu", "device": "mcu", "link": "ethernet:up=100,down=100"}],
        "compress": {"codecs": ["int8"], "eval_limit": 50}, "serve": {"images": 8}, "audit": None})
    summary = run_pipeline(config, tmp_path, Console(quiet=True), progress=False)
    assert "train" not in summary["stages"]
    compress = json.loads((tmp_path / "compress.json").read_text())
    assert compress["baseline_accuracy"] == 1.0  # the labels are the unsplit model's own predictions
    # Server and client rebuild the run's random weights (saved beside it), so the halves agree with the whole.
    infer = json.loads((tmp_path / "infer_pinned.json").read_text())["summary"]
    assert infer["accuracy"] is None and infer["agreement"] == 1.0
    assert "untrained (random weights)" in (tmp_path / "report.html").read_text()
