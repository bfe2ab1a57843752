"""Hugging Face models as ``hf:DIR``: tiny configs built offline (random weights), written with save_pretrained,
loaded, traced through torch.export with readable cut names, split exactly, refused where a file names them, and
run end to end through the CLI."""

import json
import logging
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")

from test_cli import assert_user_error, edgesplit, edgesplit_in_process

from edgesplit.errors import InputShapeError, ModelNotFoundError, WeightsError
from edgesplit.model.artifact import load_split, save_split
from edgesplit.model.graph import EXACT_TOLERANCE, max_abs_diff, trace
from edgesplit.model.intake import ModelRef, ModelRefError, build_model, load_model

# One tiny model of each family (random weights): name → (config, class, the first part of its cut names).
ARCHITECTURES = {
    "vit": (lambda: transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=64, num_labels=10),
            "ViTForImageClassification", "vit_"),
    "convnext": (lambda: transformers.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=32,
                                                     num_labels=10),
                 "ConvNextForImageClassification", "convnext_"),
    "swin": (lambda: transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                             window_size=4, num_labels=10),
             "SwinForImageClassification", "swin_"),
    "mobilevit": (lambda: transformers.MobileViTConfig(image_size=32, hidden_sizes=[16, 24, 32],
                                                       neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_labels=10),
                  "MobileViTForImageClassification", "mobilevit_"),
    "resnet": (lambda: transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10),
               "ResNetForImageClassification", "resnet_"),
    "gpt2": (lambda: transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                             bos_token_id=0, eos_token_id=0),
             "GPT2LMHeadModel", "transformer_"),
}
EXPECTED_SHAPES = {"vit": (1, 3, 32, 32), "convnext": (1, 3, 32, 32), "swin": (1, 3, 32, 32),
                   "mobilevit": (1, 3, 32, 32), "resnet": (1, 3, 224, 224), "gpt2": (1, 16)}
# What torch.export alone calls nodes: add_10, view, linear_2, ...
ATEN_NAME = re.compile(r"(add|mul|view|linear|conv2d|layer_norm|transpose|permute|reshape|embedding)(_\d+)?")


def save(name: str, folder: Path) -> str:
    config, class_name, _ = ARCHITECTURES[name]
    torch.manual_seed(0)
    getattr(transformers, class_name)(config()).save_pretrained(folder)
    return f"hf:{folder}"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hf")
    return {name: save(name, root / name) for name in ARCHITECTURES}


@pytest.fixture(scope="module")
def digits_vit(tmp_path_factory) -> str:
    """A ViT for the bundled digits (1×8×8, 10 classes), for the verbs that read a data set."""
    folder = tmp_path_factory.mktemp("hf") / "digits-vit"
    torch.manual_seed(0)
    transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=10)).save_pretrained(folder)
    return f"hf:{folder}"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "mobilevit" else n
                                  for n in ARCHITECTURES])
def test_each_architecture_loads_traces_and_splits_exactly(folders, name, caplog):
    with caplog.at_level(logging.WARNING, logger="edgesplit"):
        loaded = load_model(folders[name])
    assert "'logits'" in caplog.text and ARCHITECTURES[name][1] in caplog.text  # says what it split
    example = loaded.example_input
    assert tuple(example.shape) == EXPECTED_SHAPES[name]
    if name == "gpt2":
        assert example.dtype == torch.int64 and 0 <= example.min() and example.max() < 64
    traced = trace(loaded.module, example)
    assert traced.tracer == "export"
    names = [cut.after for cut in traced.cuts[1:]]
    assert len(set(names)) == len(names)
    prefix = ARCHITECTURES[name][2]
    # Named after modules, not ATen ops: most cuts start with the model's module path.
    assert sum(n.startswith(prefix) for n in names) >= 0.8 * len(names), names[:20]
    assert not [n for n in names if ATEN_NAME.fullmatch(n)]
    middle = traced.cuts[len(traced.cuts) // 2]
    split = traced.split(middle)
    with torch.no_grad():
        assert torch.allclose(split(example), loaded.module(example), atol=EXACT_TOLERANCE, rtol=0)
        # Exported with a dynamic batch: the halves run on a batch of 3 as the whole model does.
        batch = torch.randint(0, 64, (3, *example.shape[1:])) if name == "gpt2" else torch.rand(3, *example.shape[1:])
        assert max_abs_diff(split(batch), loaded.module(batch)) <= EXACT_TOLERANCE


def test_cut_names_are_stable_and_take_dotted_module_paths(folders):
    first = trace(load_model(folders["vit"]).module, torch.zeros(1, 3, 32, 32))
    again = trace(load_model(folders["vit"]).module, torch.zeros(1, 3, 32, 32))
    assert first.fingerprint == again.fingerprint
    assert [c.after for c in first.cuts] == [c.after for c in again.cuts]
    # A linear alone in its module takes the module's name; ops sharing a module add the op.
    cut = first.cut("vit.layers.1.attention.o_proj")
    assert cut.after == "vit_layers_1_attention_o_proj"
    assert first.cut("vit_layers_0_attention_view").position < first.cut("vit_layers_0_attention_view_1").position


def test_zoo_models_keep_their_fx_names():
    loaded = load_model("small_cnn")
    traced = trace(loaded.module, loaded.example_input)
    assert traced.tracer == "fx" and "conv1_2" in [c.after for c in traced.cuts]


def test_a_pickle_only_folder_is_refused(tmp_path, folders):
    folder = tmp_path / "pickled"
    folder.mkdir()
    source = Path(folders["vit"][3:])
    (folder / "config.json").write_text((source / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not read")
    with pytest.raises(WeightsError, match=r"pytorch_model.bin.*pickle"):
        load_model(f"hf:{folder}")
    assert_user_error(edgesplit_in_process("profile", f"hf:{folder}"), "pickle", "safe_serialization=True")


def test_missing_folder_is_a_one_line_error(tmp_path):
    assert_user_error(edgesplit("profile", f"hf:{tmp_path / 'nowhere'}"), "no folder", "save_pretrained")
    (tmp_path / "empty").mkdir()
    assert_user_error(edgesplit_in_process("split", f"hf:{tmp_path / 'empty'}", "--cut", "1", "--out",
                                           str(tmp_path / "out")), "config.json not found")


def test_without_transformers_the_error_says_what_to_install(folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(ModelNotFoundError, match=re.escape("pip install 'edgesplit[hf]'")):
        load_model(folders["vit"])


def test_token_ids_where_images_are_expected_are_refused_in_one_line(folders):
    with pytest.raises(InputShapeError, match="takes token ids"):
        load_model(folders["gpt2"], input_shape=(1, 1, 8, 8))


def test_a_file_only_confirms_the_hf_model_the_user_named(tmp_path, folders):
    name = folders["resnet"]
    loaded = load_model(name, input_shape=(1, 3, 32, 32))
    traced = trace(loaded.module, loaded.example_input)
    cut = traced.cuts[len(traced.cuts) // 2]
    save_split(traced.split(cut), traced, loaded.ref, tmp_path / "split", 0.0)
    with pytest.raises(ModelRefError, match="only you may choose to load"):
        load_split(tmp_path / "split")
    with pytest.raises(ModelRefError, match="not the 'hf:elsewhere' you gave"):
        load_split(tmp_path / "split", model="hf:elsewhere")
    with pytest.raises(ModelRefError, match="Hugging Face model"):
        build_model(ModelRef(name), input_shapes=[(1, 3, 32, 32)], source="the plan")
    with pytest.raises(ModelRefError, match="takes none"):
        build_model(ModelRef(name, {"num_labels": 3}), trusted_factory=name)
    split, record = load_split(tmp_path / "split", model=name)
    assert record.model["name"] == name and split.cut.after == cut.after
    with torch.no_grad():
        assert max_abs_diff(split(loaded.example_input), loaded.module(loaded.example_input)) <= EXACT_TOLERANCE


def test_size_limits_apply_from_the_config(folders, monkeypatch):
    monkeypatch.setenv("EDGESPLIT_MAX_MODEL_BYTES", "1000")
    with pytest.raises(Exception, match="EDGESPLIT_MAX_MODEL_BYTES"):
        load_model(folders["vit"])


@pytest.mark.slow
def test_every_verb_on_an_hf_folder(tmp_path, digits_vit):
    """profile, plan, split (saved, reloaded), compress, audit, serve + infer on loopback and `run`, as a user
    types them, on a ViT folder."""
    model = digits_vit
    result = edgesplit("profile", model, "--runs", "2", "--json", str(tmp_path / "profile.json"), "-q")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "edgesplit uses its 'logits'" in result.stderr
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert any(c["after"].startswith("vit_layers_1") for c in profile["cuts"])

    plan_path = tmp_path / "plan.json"
    result = edgesplit_in_process("plan", model, "--device", "rpi4", "--server", "edge-gpu", "--link", "wifi",
                                  "--json", str(plan_path), "-q")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(plan_path.read_text())["model"] == model

    result = edgesplit_in_process("split", model, "--cut", "vit.layers.0.mlp.fc2", "--out", str(tmp_path / "split"))
    assert result.returncode == 0, result.stderr[-2000:]
    _, record = load_split(tmp_path / "split", model=model)
    assert record.cut.after == "vit_layers_0_mlp_fc2" and record.max_abs_diff <= EXACT_TOLERANCE
    assert_user_error(edgesplit_in_process("serve", str(plan_path)), "only you may choose to load")

    result = edgesplit_in_process("compress", model, "--cut", "vit_layers_1_mlp_fc2", "--codec", "int8",
                                  "--eval-limit", "64", "--json", str(tmp_path / "compress.json"), "-q")
    assert result.returncode == 0, result.stderr[-2000:]
    assert {c["name"] for c in json.loads((tmp_path / "compress.json").read_text())["configurations"]} >= {"int8"}

    result = edgesplit_in_process("audit", model, "--cut", "vit_layers_0_mlp_fc2", "--attack", "probe",
                                  "--victims", "16", "--aux-limit", "64", "--json", str(tmp_path / "audit.json"), "-q")
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r["after"] for r in json.loads((tmp_path / "audit.json").read_text())["rows"]] == ["vit_layers_0_mlp_fc2"]

    config = {"title": "a Hugging Face ViT", "model": model, "data": "digits", "train": {"epochs": 1},
              "targets": [{"name": "slow-device", "device": "host/50@mcu", "server": "edge-gpu", "link": "wifi"}],
              "codecs": ["fp32", "int8"], "profile_runs": 2,
              "compress": {"codecs": ["int8"], "bottleneck": None, "eval_limit": 64},
              "serve": {"images": 16}, "audit": {"cuts": "vit_layers_0_mlp_fc2", "attacks": "probe", "victims": 16}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    result = edgesplit_in_process("run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out"), "--json",
                                  str(tmp_path / "run.json"), "-q", timeout_s=600)
    assert result.returncode == 0, result.stderr[-3000:]
    stages = json.loads((tmp_path / "run.json").read_text())["stages"]
    infer = next(facts for stage, facts in stages.items() if stage.startswith("serve and infer"))
    assert infer["images"] == 16 and infer["agreement"] >= 0.9
