"""`edgesplit plan` as users run it: tables, JSON, plot, and one-line errors with exit code 2."""

import json

import pytest
from PIL import Image

from edgesplit.plan import load_plan
from test_cli import assert_user_error, edgesplit, edgesplit_both_ways, edgesplit_in_process


def test_plan_prints_ranked_plans_switch_table_and_writes_json_and_plot(tmp_path):
    result = edgesplit("plan", "resnet8", "--device", "rpi4", "--server", "edge-gpu", "--link", "lte:rtt=5",
                       "--pareto", "--json", "plan.json", "--plot", "plan.png", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for fragment in ("resnet8 on rpi4", "chosen:", "switch table", "Pareto front", "all on server (jpeg input)"):
        assert fragment in result.stdout
    report = load_plan(tmp_path / "plan.json")
    assert report.model == "resnet8" and report.min_cut_agrees
    assert report.chosen.label in result.stdout
    assert {"all-device", "all-server", "split"} <= {e.kind for e in report.ranked}
    with Image.open(tmp_path / "plan.png") as image:
        assert image.size[0] >= 800


def test_plan_with_a_measured_host_profile(tmp_path):
    # Checked by the files they write: in this process (the test above runs `edgesplit plan` in a new interpreter).
    profiled = edgesplit_in_process("profile", "small_cnn", "--runs", "3", "--save-device", "host.json", "-q",
                                    cwd=tmp_path)
    assert profiled.returncode == 0, profiled.stderr
    result = edgesplit_in_process("plan", "small_cnn", "--device", "host.json/10@rpi4", "--link", "3g", "--objective",
                                  "energy", "--json", "plan.json", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = load_plan(tmp_path / "plan.json")
    assert report.device.kind == "profile" and "scaled ×0.1" in report.device.source


@pytest.mark.parametrize("args, fragments", [
    (["--device", "rpi9"], ["unknown machine 'rpi9'"]),
    (["--link", "lte:up=0"], ["uplink bandwidth must be positive"]),
    (["--link", "custom:up=-2"], ["must be positive"]),
    (["--codec", "int9"], ["codec", "int9"]),
    (["--codec", "fp16+ans"], ["ans", "intB"]),
    (["--compress", "missing.json"], ["compress result", "not found"]),
    (["--objective", "fastest"], ["unknown objective 'fastest'"]),
    (["--device-memory", "1KB"], ["no plan satisfies the device memory constraint", "relax it"]),
    (["--device-memory", "lots"], ["cannot read size 'lots'"]),
    (["--max-ssim", "0.3"], ["need the audit's leakage table"]),
    (["--device", "missing.json"], ["device profile missing.json not found"]),
])
def test_plan_user_errors(tmp_path, args, fragments):
    assert_user_error(edgesplit_in_process("plan", "small_cnn", "-q", *args, cwd=tmp_path), *fragments)


def test_a_plan_user_error_from_the_installed_entry_point(tmp_path):
    assert_user_error(edgesplit_both_ways("plan", "small_cnn", "-q", "--device", "rpi9", cwd=tmp_path),
                      "unknown machine 'rpi9'")


def test_plan_refuses_bad_profiles_and_leakage_tables(tmp_path):
    # in-process (the CLI prints these same EdgesplitError messages, as test_plan_user_errors shows)
    import torch

    from edgesplit.model import zoo
    from edgesplit.errors import EdgesplitError
    from edgesplit.model.graph import trace
    from edgesplit.plan import plan_model
    from edgesplit.privacy.leakage import load_leakage

    entry = zoo.get_entry("small_cnn")
    traced = trace(entry.factory(), torch.rand(*entry.input_shape))
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "old.json").write_text(json.dumps({"kind": "edgesplit.device-profile", "version": 0}))
    (tmp_path / "plan.json").write_text(json.dumps({"kind": "edgesplit.plan", "version": 1}))
    for name, fragment in (("junk.json", "not readable JSON"), ("old.json", "has version 0"),
                           ("plan.json", "is not an edgesplit device profile")):
        with pytest.raises(EdgesplitError, match=fragment):
            plan_model(traced, device=str(tmp_path / name), server="edge-gpu", link="lte", progress=False)
    (tmp_path / "leak.json").write_text(json.dumps({"kind": "edgesplit.leakage", "version": 1, "model": "x",
                                                    "fingerprint": "0000", "cuts": []}))
    with pytest.raises(EdgesplitError, match="leak.json"):
        load_leakage(tmp_path / "leak.json", traced.fingerprint)
