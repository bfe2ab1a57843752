"""`edgesplit profile --runtime onnx|onnx-int8`: device profiles whose latencies ONNX Runtime measured."""

import json
import sys

import onnxruntime
import onnxruntime.quantization
import pytest
import torch

from edgesplit.profile import load_device_profile
from test_cli import assert_user_error, edgesplit, edgesplit_in_process

TINY = ("modelfactories:Tiny", "--input-shape", "1,1,8,8")


class _CountingSession(onnxruntime.InferenceSession):
    runs = 0

    def run(self, *args, **kwargs):
        type(self).runs += 1
        return super().run(*args, **kwargs)


@pytest.fixture
def counted_sessions(monkeypatch):
    _CountingSession.runs = 0
    monkeypatch.setattr(onnxruntime, "InferenceSession", _CountingSession)
    return _CountingSession


def _profile(tmp_path, runtime):
    result = edgesplit_in_process("profile", *TINY, "--runtime", runtime, "--runs", "3", "--warmup", "1",
                                  "--threads", "1", "-q", "--json", str(tmp_path / "p.json"),
                                  "--save-device", str(tmp_path / "dev.json"))
    assert result.returncode == 0, result.stderr
    assert f"measured under ONNX Runtime ({runtime})" in result.stdout
    return json.loads((tmp_path / "p.json").read_text())


@pytest.mark.slow
def test_an_onnx_profile_holds_latencies_onnxruntime_measured_and_plans_with_them(tmp_path, counted_sessions):
    report = _profile(tmp_path, "onnx")
    assert report["runtime"] == "onnx" and report["calibration"] is None
    # Every cut of a small graph ran as a whole in onnxruntime sessions, in every round.
    cuts = report["cuts"]
    assert all(c["measured"] for c in cuts)
    assert counted_sessions.runs >= 3 * len(cuts)
    heads = [c for c in cuts if c["position"] > 0]
    assert heads and all(c["head_ms"] > 0 and c["head_ms_torch"] > 0 for c in heads)
    assert any(c["head_ms"] != c["head_ms_torch"] for c in heads)  # PyTorch's are kept beside them, to compare
    assert report["model_ms"] > 0 and report["torch_model_ms"] > 0 and report["model_ms"] != report["torch_model_ms"]
    # Node latencies are derived from the measured heads: their sums never fall below a measured head before them.
    sums, total = [], 0.0
    for node in report["nodes"]:
        total += node["latency_ms"]
        sums.append(total)
    for cut in heads:
        assert sums[cut["position"] - 1] >= cut["head_ms"] * (1 - 1e-9)

    device = load_device_profile(tmp_path / "dev.json")
    assert device.runtime == "onnx" and device.version == 1
    assert [c.head_ms for c in device.cuts] == [c["head_ms"] for c in cuts]

    plan = edgesplit_in_process("plan", *TINY, "--device", str(tmp_path / "dev.json"), "--server", "edge-gpu", "-q",
                                "--json", str(tmp_path / "plan.json"))
    assert plan.returncode == 0, plan.stderr
    summary = json.loads((tmp_path / "plan.json").read_text())["device"]
    assert "under ONNX Runtime (onnx)" in summary["source"]
    assert summary["model_ms"] == pytest.approx(report["model_ms"])


@pytest.mark.slow
def test_an_int8_profile_times_the_statically_quantized_model(tmp_path, monkeypatch, counted_sessions):
    calls = []
    original = onnxruntime.quantization.quantize_static

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", spy)
    report = _profile(tmp_path, "onnx-int8")
    assert report["runtime"] == "onnx-int8"
    # Quantized once, as `edgesplit export --quantize int8` quantizes a head (QDQ, per channel).
    assert len(calls) == 1 and calls[0]["per_channel"] is True and str(calls[0]["quant_format"]).endswith("QDQ")
    assert counted_sessions.runs >= 3 * len(report["cuts"])
    assert all(c["head_ms"] > 0 for c in report["cuts"] if c["position"] > 0)
    assert load_device_profile(tmp_path / "dev.json").runtime == "onnx-int8"


def test_a_device_profile_without_a_runtime_reads_as_torch(tmp_path):
    result = edgesplit_in_process("profile", *TINY, "--runs", "1", "--warmup", "0", "-q",
                                  "--save-device", str(tmp_path / "dev.json"))
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "dev.json").read_text())
    assert data["runtime"] == "torch"
    del data["runtime"]  # a file written before the field existed
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert load_device_profile(tmp_path / "old.json").runtime == "torch"


@pytest.mark.parametrize("args, fragments", [
    (("--runtime", "tflite"), ("--runtime tflite", "choose torch, onnx, onnx-int8")),
    (("--runtime", "onnx", "--data", "digits"), ("--data is read by --runtime onnx-int8 only",)),
])
def test_bad_runtime_options_are_one_line_errors(args, fragments):
    assert_user_error(edgesplit_in_process("profile", *TINY, *args), *fragments)


def test_a_missing_onnxruntime_is_a_one_line_error_before_any_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    assert_user_error(edgesplit_in_process("profile", "no_such_model", "--runtime", "onnx-int8"),
                      "--runtime onnx-int8 needs the package onnxruntime", "pip install 'edgesplit[onnx]'")


def test_the_entry_point_refuses_a_bad_runtime_the_same_way():
    assert_user_error(edgesplit("profile", *TINY, "--runtime", "tflite"), "choose torch, onnx, onnx-int8")


def test_large_graphs_time_a_bounded_sample_and_derive_node_latencies_from_it():
    from edgesplit.model import zoo
    from edgesplit.model.graph import trace
    from edgesplit.profile import profile_model
    from edgesplit.profile.onnx_timing import SAMPLED_CUTS, _cuts_to_time, _with_latencies

    entry = zoo.ZOO["resnet8"]
    traced = trace(entry.factory().eval(), torch.randn(entry.input_shape))
    report = profile_model(traced, runs=1, warmup=0, progress=False)
    chosen = _cuts_to_time(report)
    assert len(report.cuts) > 24 and len(chosen) <= SAMPLED_CUTS
    assert {c.index for c in report.cuts if c.measured} <= set(chosen)  # the cuts a planner could choose
    positions = sorted({report.cuts[i].position for i in chosen})
    assert positions[-1] - positions[0] > len(report.nodes) // 2  # spread along the graph

    # Heads of 1 ms per node up to each timed cut: node latencies then sum to the timed heads exactly.
    head_ms = {i: float(report.cuts[i].position) for i in chosen}
    tail_ms = {i: 1.0 for i in chosen}
    derived = _with_latencies(report, "onnx", float(len(report.nodes)), float(len(report.nodes)), head_ms, tail_ms)
    assert derived.runtime == "onnx" and derived.torch_model_ms == report.model_ms
    sums = [0.0]
    for node in derived.nodes:
        sums.append(sums[-1] + node.latency_ms)
    for cut in derived.cuts:
        assert cut.head_ms_torch == report.cuts[cut.index].head_ms
        assert cut.head_ms_summed == pytest.approx(sums[cut.position])
        if cut.index in head_ms:
            assert cut.measured and cut.head_ms == pytest.approx(sums[cut.position]) and cut.tail_ms == 1.0
        else:
            assert not cut.measured and cut.head_ms == pytest.approx(sums[cut.position])


@pytest.mark.slow
def test_a_model_output_that_also_crosses_a_cut_is_timed_from_its_own_value():
    # DictOutput returns its conv output, which also crosses cuts 1 and 2: the exporter writes that value once.
    import modelfactories as mf
    from edgesplit.model.graph import trace
    from edgesplit.profile import onnx_profile, profile_model

    traced = trace(mf.DictOutput().eval(), torch.randn(1, 1, 8, 8))
    report = onnx_profile(traced, profile_model(traced, runs=1, warmup=0, progress=False), "onnx", runs=2,
                          warmup=0, threads=1, progress=False)
    assert all(c.measured for c in report.cuts)
    assert report.cuts[1].head_ms > 0 and report.cuts[0].tail_ms > 0
    assert report.cuts[-1].tail_ms == 0.0  # every output already crossed: nothing left for the server
