import inspect
import json

import pytest
import torch
from safetensors.torch import save_file

import modelfactories as mf
from edgesplit.model import zoo
from edgesplit.errors import InputShapeError, ModelNotFoundError, WeightsError
from edgesplit.model.intake import ModelRef, load_model, parse_input_shape, read_weights, resolve_factory, save_weights


def test_parse_input_shape():
    assert parse_input_shape("1,3,32,32") == (1, 3, 32, 32)
    assert parse_input_shape("1x1x8x8") == (1, 1, 8, 8)
    for bad in ("", "1,a,3", "1,0,3", "-1,3", "1,x,8", "1,,8", "1.5,2"):
        with pytest.raises(InputShapeError, match="write it like 1,3,32,32"):
            parse_input_shape(bad)
    # Bounded before anything is allocated: rank 1..8, at most 2**24 elements (huge digit strings never parsed).
    for bad, fragment in (("1,1,100000,100000", "10,000,000,000 elements"), (",".join(["1"] * 9), "rank 9"),
                          ("1," + "9" * 5000, "not a list of positive integers")):
        with pytest.raises(InputShapeError, match=fragment):
            parse_input_shape(bad)
    with pytest.raises(InputShapeError, match="EDGESPLIT_MAX_INPUT_ELEMENTS"):
        load_model("small_cnn", input_shape="1,1,5000,5000")


def test_zoo_models_build_with_their_documented_shape():
    for name, entry in zoo.ZOO.items():
        if name in zoo.LARGE_MODELS:  # tests/test_zoo_imagenet.py
            continue
        loaded = load_model(name)
        assert tuple(loaded.example_input.shape) == entry.input_shape
        classes = inspect.signature(entry.factory).parameters["num_classes"].default  # 10, or 1000 for ImageNet
        assert loaded.module(loaded.example_input).shape == (entry.input_shape[0], classes)


def test_zoo_model_adapts_to_the_given_channels():
    loaded = load_model("resnet8", input_shape="2,1,32,32")
    assert loaded.ref.kwargs == {"in_channels": 1}
    assert loaded.module(loaded.example_input).shape == (2, 10)


def test_import_path_factory():
    loaded = load_model("modelfactories:Tiny", input_shape="1,1,8,8")
    assert isinstance(loaded.module, mf.Tiny) and loaded.ref.name == "modelfactories:Tiny"


@pytest.mark.parametrize("name, message", [
    ("no_such_model", "unknown model 'no_such_model'; built-in models are"),
    ("no_such_package.mod:f", "cannot import 'no_such_package.mod'"),
    ("modelfactories:Missing", "has no attribute 'Missing'"),
    ("modelfactories:not_a_model", "returned a str, not a torch.nn.Module"),
])
def test_bad_model_names(name, message):
    with pytest.raises(ModelNotFoundError, match=message):
        load_model(name, input_shape="1,1,8,8")


def test_factory_model_needs_an_input_shape():
    with pytest.raises(InputShapeError, match="pass --input-shape"):
        load_model("modelfactories:Tiny")


def test_safetensors_weights_round_trip_with_metadata(tmp_path):
    model = zoo.small_cnn(num_classes=5)
    path = tmp_path / "w.safetensors"
    save_weights(model, path, ModelRef("small_cnn", {"in_channels": 1, "num_classes": 5}), (1, 1, 8, 8))
    loaded = load_model("small_cnn", weights=path)  # shape and classes come from the metadata
    assert tuple(loaded.example_input.shape) == (1, 1, 8, 8)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(loaded.module(x), model.eval()(x))


def test_torch_state_dict_is_read_with_weights_only(tmp_path):
    model = mf.Tiny()
    path = tmp_path / "w.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = load_model("modelfactories:Tiny", input_shape="1,1,8,8", weights=path)
    x = torch.rand(1, 1, 8, 8)
    assert torch.equal(loaded.module(x), model.eval()(x))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save(mf.Tiny(), path)  # a whole pickled module, not a state dict
    with pytest.raises(WeightsError, match="weights_only=True"):
        read_weights(path)


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "not found"),
    (lambda p: p.write_bytes(b"\x00" * 5), "not a valid safetensors file"),
    (lambda p: save_file({"conv.weight": torch.zeros(4, 1, 5, 5)}, str(p)), "do not match Tiny"),
])
def test_bad_weights_files(tmp_path, make, message):
    path = tmp_path / "w.safetensors"
    make(path)
    with pytest.raises(WeightsError, match=message) as error:
        load_model("modelfactories:Tiny", input_shape="1,1,8,8", weights=path)
    assert "\n" not in str(error.value)


def test_mismatch_names_missing_and_reshaped_tensors(tmp_path):
    state = mf.Tiny().state_dict()
    state["conv.weight"] = torch.zeros(4, 1, 5, 5)
    del state["fc.bias"]
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"1 missing \(e\.g\. fc\.bias\).*conv\.weight"):
        load_model("modelfactories:Tiny", input_shape="1,1,8,8", weights=path)


def test_weights_for_another_zoo_model_are_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(zoo.small_cnn(), path, ModelRef("small_cnn", {}), (1, 1, 28, 28))
    with pytest.raises(WeightsError, match="trained for model 'small_cnn', not 'resnet8'"):
        load_model("resnet8", weights=path)
    metadata = json.loads(read_weights(path)[1]["edgesplit"])
    assert metadata["input_shape"] == [1, 1, 28, 28]


def test_resolve_factory_returns_zoo_callables():
    assert resolve_factory("resnet20") is zoo.resnet20
