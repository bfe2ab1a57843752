import logging

import pytest
import torch

import modelfactories as mf
from edgesplit.model import zoo
from edgesplit.errors import CutError, InputShapeError, UntraceableModelError
from edgesplit.model.graph import max_abs_diff, trace


@pytest.mark.parametrize("name", sorted(set(zoo.ZOO) - zoo.LARGE_MODELS))  # those: tests/test_zoo_imagenet.py
def test_every_cut_of_every_zoo_model_splits_exactly(name):
    entry = zoo.ZOO[name]
    model = entry.factory()
    # Exactness does not depend on resolution: ImageNet-sized models (resnet18, 224×224) run at 64×64 here,
    # which keeps this test about a second per model; the example test splits resnet18 at 224×224.
    x = torch.randn(*entry.input_shape[:2], *(min(size, 64) for size in entry.input_shape[2:]))
    traced = trace(model, x)
    assert traced.tracer == "fx"
    expected = model(x)
    assert [c.position for c in traced.cuts] == list(range(len(traced.compute_nodes) + 1))
    for cut in traced.cuts:
        halves = traced.split(cut)
        crossing = halves.head(x)
        assert isinstance(crossing, tuple) and len(crossing) == len(cut.crossing)
        assert [tuple(t.shape) for t in crossing] == [spec.shape for spec in cut.crossing]
        assert max_abs_diff(halves.tail(*crossing), expected) <= 1e-5, f"cut {cut.index} after {cut.after}"


def test_cuts_inside_residual_blocks_cross_skip_and_branch():
    model = zoo.resnet8()
    traced = trace(model, torch.randn(1, 3, 32, 32))
    inside = traced.cut("layers_0_conv1_0")  # first conv of the first block: the block input is still needed
    assert [t.name for t in inside.crossing] == ["stem_2", "layers_0_conv1_0"]
    assert inside.crossing_bytes == 2 * 16 * 32 * 32 * 4
    boundary = traced.cut("layers_0_relu")
    assert len(boundary.crossing) == 1
    assert sum(len(c.crossing) >= 2 for c in traced.cuts) >= 10


def test_first_and_last_cuts_send_input_and_output():
    model = mf.Tiny()
    traced = trace(model, torch.randn(2, 1, 8, 8))
    first, last = traced.cuts[0], traced.cuts[-1]
    assert first.after == "input" and [t.shape for t in first.crossing] == [(2, 1, 8, 8)]
    assert [t.shape for t in last.crossing] == [(2, 3)]
    assert first.crossing[0].nbytes == 2 * 64 * 4


def test_halves_own_disjoint_parameters_that_add_up_to_the_model():
    model = zoo.small_cnn()
    traced = trace(model, torch.randn(1, 1, 28, 28))
    halves = traced.split(6)
    head_keys, tail_keys = set(halves.head.state_dict()), set(halves.tail.state_dict())
    assert head_keys and tail_keys and not head_keys & tail_keys
    assert head_keys | tail_keys == set(model.state_dict())
    # The halves keep working once the original model is gone.
    x = torch.randn(4, 1, 28, 28)
    expected = model(x)
    del model, traced
    assert max_abs_diff(halves.tail(*halves.head(x)), expected) <= 1e-5


def test_parameters_read_in_forward_are_copied_not_sent():
    traced = trace(zoo.hybrid_vit(), torch.randn(1, 3, 32, 32))
    names = {t.name for cut in traced.cuts for t in cut.crossing}
    assert not any("pos_embed" in name for name in names)


def test_cut_by_name_and_index_agree_and_bad_keys_say_what_to_do():
    traced = trace(mf.Tiny(), torch.randn(1, 1, 8, 8))
    assert traced.cut("relu") == traced.cut(traced.cut("relu").index) == traced.cut(str(traced.cut("relu").index))
    with pytest.raises(CutError, match=r"out of range; this model has cuts 0\.\.5"):
        traced.cut(99)
    with pytest.raises(CutError, match="out of range"):
        traced.cut(-1)
    with pytest.raises(CutError, match="no candidate cut after a node named 'nope'"):
        traced.cut("nope")


def test_fx_failure_falls_back_to_export_and_says_so(caplog):
    model = mf.ShapeDependent()
    x = torch.randn(2, 1, 8, 8)
    with caplog.at_level(logging.WARNING, logger="edgesplit"):
        traced = trace(model, x)
    assert traced.tracer == "export"
    assert "control flow" in traced.fallback_reason
    assert "traced with torch.export" in caplog.text
    expected = model(x)
    for cut in traced.cuts:
        assert max_abs_diff(traced.split(cut)(x), expected) <= 1e-5
    assert any(len(c.crossing) >= 2 for c in traced.cuts)


def test_untraceable_model_gets_one_line_error():
    with pytest.raises(UntraceableModelError) as error:
        trace(mf.DataDependent(), torch.randn(3))
    message = str(error.value)
    assert "\n" not in message
    assert "torch.fx failed" in message and "torch.export failed" in message and "torch.where" in message


def test_wrong_input_shape_is_reported_with_the_fix():
    with pytest.raises(InputShapeError, match=r"1×3×8×8.*--input-shape"):
        trace(mf.Tiny(), torch.randn(1, 3, 8, 8))


def test_positions_where_an_int_would_cross_are_not_cuts():
    model = mf.SizeReader()
    x = torch.randn(2, 1, 8, 8)
    traced = trace(model, x)
    assert len(traced.cuts) < len(traced.compute_nodes) + 1
    for cut in traced.cuts:
        assert all(spec.dtype == "float32" for spec in cut.crossing)
        assert max_abs_diff(traced.split(cut)(x), model(x)) <= 1e-5


def test_structured_outputs_keep_their_structure():
    model = mf.DictOutput()
    x = torch.randn(1, 1, 8, 8)
    traced = trace(model, x)
    for cut in traced.cuts:
        result = traced.split(cut)(x)
        assert set(result) == {"features", "score"}
        assert max_abs_diff(result, model(x)) <= 1e-5


def test_max_abs_diff_flags_structure_and_shape_mismatches():
    a = torch.zeros(2, 3)
    assert max_abs_diff(a, a + 0.5) == 0.5
    assert max_abs_diff(a, torch.zeros(3, 2)) == float("inf")
    assert max_abs_diff((a, a), a) == float("inf")


def test_fingerprint_is_stable_and_structure_sensitive():
    x = torch.randn(1, 3, 32, 32)
    assert trace(zoo.resnet8(), x).fingerprint == trace(zoo.resnet8(), x).fingerprint
    assert trace(zoo.resnet8(), x).fingerprint != trace(zoo.resnet20(), x).fingerprint
