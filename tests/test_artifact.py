import json

import pytest
import torch

from edgesplit.model.artifact import load_split, save_split, verify_split
from edgesplit.errors import SplitArtifactError
from edgesplit.model.graph import max_abs_diff, trace
from edgesplit.model.intake import load_model


@pytest.fixture
def saved(tmp_path):
    loaded = load_model("resnet8")
    traced = trace(loaded.module, loaded.example_input)
    halves = traced.split("layers_1_conv1_2")  # inside a block: two tensors cross
    save_split(halves, traced, loaded.ref, tmp_path, max_abs_diff(halves(loaded.example_input),
                                                                   loaded.module(loaded.example_input)))
    return loaded, tmp_path


def test_split_reloads_exactly_on_new_inputs(saved):
    loaded, folder = saved
    reloaded, record = load_split(folder)
    assert len(record.crossing) == 2 and record.crossing_bytes == sum(t.nbytes for t in record.crossing)
    x = torch.rand(5, 3, 32, 32)
    assert verify_split(reloaded, loaded.module, x) <= 1e-5
    assert sorted(p.name for p in folder.iterdir()) == ["head.safetensors", "split.json", "tail.safetensors"]


def test_a_device_needs_only_the_head(saved):
    loaded, folder = saved
    (folder / "tail.safetensors").unlink()
    reloaded, _ = load_split(folder, parts=("head",))
    x = torch.rand(1, 3, 32, 32)
    original = trace(loaded.module, x).split("layers_1_conv1_2")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.head(x), original.head(x)))
    with pytest.raises(SplitArtifactError, match="tail.safetensors not found"):
        load_split(folder)


def edit_json(folder, change):
    data = json.loads((folder / "split.json").read_text())
    change(data)
    (folder / "split.json").write_text(json.dumps(data))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(version=7), "version 7"),
    (lambda d: d.update(kind="something"), "not an edgesplit split"),
    (lambda d: d.update(fingerprint="0" * 16), "fingerprint differs"),
    (lambda d: d["cut"].update(after="elsewhere"), "does not have"),
    (lambda d: d.pop("crossing"), "malformed"),
])
def test_tampered_descriptions_are_refused(saved, change, message):
    _, folder = saved
    edit_json(folder, change)
    with pytest.raises(SplitArtifactError, match=message):
        load_split(folder)


def test_corrupt_or_swapped_weights_are_refused(saved):
    _, folder = saved
    head = folder / "head.safetensors"
    head.write_bytes(head.read_bytes()[:100])
    with pytest.raises(SplitArtifactError, match="corrupt"):
        load_split(folder)
    (folder / "tail.safetensors").rename(head)  # the tail's tensors do not fit the head
    with pytest.raises(SplitArtifactError, match="does not fit the head"):
        load_split(folder, parts=("head",))


def test_missing_or_invalid_split_json(tmp_path):
    with pytest.raises(SplitArtifactError, match="make a split folder with `edgesplit split"):
        load_split(tmp_path)
    (tmp_path / "split.json").write_text("{")
    with pytest.raises(SplitArtifactError, match="not valid JSON"):
        load_split(tmp_path)


def test_verify_split_catches_wrong_weights(saved):
    loaded, folder = saved
    reloaded, _ = load_split(folder)
    with torch.no_grad():
        next(reloaded.tail.parameters()).add_(1.0)
    with pytest.raises(SplitArtifactError, match="differ from the model"):
        verify_split(reloaded, loaded.module, torch.rand(1, 3, 32, 32))
