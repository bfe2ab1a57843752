import json

import pytest
import torch
from torch import nn

import modelfactories as mf
from edgesplit.model import zoo
from edgesplit.errors import EdgesplitError
from edgesplit.model.graph import trace
from edgesplit.profile import (count_macs, device_profile, in_context_node_ms, load_device_profile, median_ms,
                               peak_memory_bytes, profile_model)


def macs_of(module: nn.Module, *inputs: torch.Tensor) -> int:
    traced = trace(module, inputs)
    macs, uncounted = count_macs(traced.graph_module, *inputs)
    assert not uncounted
    return sum(macs.values())


def test_conv_macs_match_a_hand_count():
    # out channels × out pixels × in channels × kernel area
    assert macs_of(nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.randn(1, 3, 32, 32)) == 8 * 32 * 32 * 3 * 9
    # stride 2, no padding: (15×15 output), depthwise: each output sees one input channel
    assert macs_of(nn.Conv2d(4, 4, 3, stride=2, groups=4, bias=False), torch.randn(1, 4, 32, 32)) == 4 * 15 * 15 * 9


def test_linear_macs_match_a_hand_count():
    assert macs_of(nn.Linear(100, 10), torch.randn(1, 100)) == 100 * 10
    assert macs_of(nn.Linear(64, 32), torch.randn(5, 7, 64)) == 5 * 7 * 64 * 32


@pytest.mark.parametrize("module, shape, expected", [
    (nn.ReLU(), (1, 8, 16, 16), 8 * 16 * 16),
    (nn.MaxPool2d(2), (1, 8, 16, 16), 8 * 8 * 8 * 4),
    (nn.AdaptiveAvgPool2d(1), (1, 8, 16, 16), 8 * 16 * 16),
    (nn.BatchNorm2d(8), (1, 8, 16, 16), 8 * 16 * 16),
    (nn.LayerNorm(16), (1, 8, 16), 2 * 8 * 16),
    (nn.GELU(), (1, 8, 16), 8 * 16),
    (nn.Softmax(dim=-1), (2, 10), 3 * 20),
])
def test_elementwise_pooling_and_norms_do_not_count_zero(module, shape, expected):
    assert macs_of(module.eval(), torch.randn(shape)) == expected


def test_cpu_attention_is_counted():
    attention = zoo.SelfAttention(dim=16, heads=2)
    tokens = 10
    projections = tokens * 16 * 48 + tokens * 16 * 16
    attention_matmuls = 2 * 2 * tokens * tokens * 8  # QKᵀ and AV per head
    assert macs_of(attention, torch.randn(1, tokens, 16)) >= projections + attention_matmuls


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_models_have_no_uncounted_ops(name):
    entry = zoo.ZOO[name]
    traced = trace(entry.factory(), torch.randn(entry.input_shape))
    macs, uncounted = count_macs(traced.graph_module, *traced.example_inputs)
    assert uncounted == {}
    assert all(count > 0 for node, count in macs.items() if "conv" in node or "fc" in node)


def test_ops_without_formula_are_reported_not_silently_zero():
    traced = trace(mf.UnknownOp(), torch.randn(4))
    _, uncounted = count_macs(traced.graph_module, torch.randn(4))
    assert any("bessel_j0" in op for ops in uncounted.values() for op in ops)


@pytest.fixture(scope="module")
def tiny_report():
    traced = trace(zoo.small_cnn(), torch.randn(1, 1, 8, 8))
    return traced, profile_model(traced, name="small_cnn", runs=3, warmup=1, progress=False)


def test_profile_cut_totals_are_consistent(tiny_report):
    traced, report = tiny_report
    model = report.model
    assert model.macs == sum(n.macs for n in report.nodes) > 0
    assert len(report.cuts) == len(traced.cuts) == model.cuts
    for cut in report.cuts:
        assert cut.head_macs + cut.tail_macs == model.macs
        assert cut.head_params + cut.tail_params == model.params
        assert cut.crossing_bytes == sum(t.nbytes for t in cut.crossing)
        assert cut.head_ms > 0 and cut.tail_ms > 0
    assert report.cuts[0].head_macs == 0 and report.cuts[0].head_peak_bytes == 0
    assert report.cuts[-1].tail_macs == 0
    assert report.cuts[0].crossing_bytes == 8 * 8 * 4
    # Head latency, summed over nodes and measured, grows along the graph.
    assert report.cuts[-1].head_ms_summed > report.cuts[1].head_ms_summed
    assert report.cuts[-1].head_peak_bytes >= report.cuts[1].head_peak_bytes > 0


def test_profile_round_trips_through_json(tiny_report):
    _, report = tiny_report
    again = type(report).model_validate_json(report.model_dump_json())
    assert again == report
    data = json.loads(report.model_dump_json())
    assert data["version"] == 1 and data["kind"] == "edgesplit.profile"
    assert {"cpu_model", "cores", "threads", "torch_version"} <= set(data["machine"])


def test_device_profile_saves_loads_and_refuses_other_files(tiny_report, tmp_path):
    _, report = tiny_report
    path = tmp_path / "pi4.json"
    path.write_text(device_profile(report, "pi4").model_dump_json())
    loaded = load_device_profile(path)
    assert loaded.name == "pi4" and loaded.model.fingerprint == report.model.fingerprint
    assert [c.head_ms for c in loaded.cuts] == [c.head_ms for c in report.cuts]

    data = json.loads(path.read_text())
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(EdgesplitError, match="version 99.*measure it again"):
        load_device_profile(path)
    path.write_text(report.model_dump_json())
    with pytest.raises(EdgesplitError, match="not an edgesplit device profile"):
        load_device_profile(path)
    path.write_text("{truncated")
    with pytest.raises(EdgesplitError, match="not readable JSON"):
        load_device_profile(path)
    with pytest.raises(EdgesplitError, match="not found"):
        load_device_profile(tmp_path / "missing.json")


def test_peak_memory_sees_what_the_call_allocates():
    megabytes = 4

    def allocate(x: torch.Tensor) -> torch.Tensor:
        return x.expand(megabytes * 1024 * 256).clone() * 2  # two live float32 buffers of 4 MB

    peak = peak_memory_bytes(allocate, (torch.ones(1),))
    assert 2 * megabytes * 2**20 <= peak < 3 * megabytes * 2**20


def test_timings_are_positive_and_ordered():
    # 4,000× the MACs: a median of 7 cannot invert that even when a shared machine stalls a few samples
    small, large = torch.randn(64, 64), torch.randn(1024, 1024)
    assert 0 < median_ms(torch.mm, (small, small), runs=7) < median_ms(torch.mm, (large, large), runs=7)
    traced = trace(zoo.small_cnn(), torch.randn(1, 1, 28, 28))
    node_ms = in_context_node_ms(traced.graph_module, traced.example_inputs, runs=3)
    assert len(node_ms) == len(traced.compute_nodes) and all(t > 0 for t in node_ms)
