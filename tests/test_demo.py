import json

import pytest
from rich.console import Console

from edgesplit.artifact import load_split
from edgesplit.demo import run_demo


@pytest.mark.slow
def test_demo_trains_profiles_splits_and_verifies(tmp_path):
    summary = run_demo(tmp_path, Console(file=open(tmp_path / "log.txt", "w"), width=160), progress=False)
    assert summary["train"]["test_accuracy"] >= 0.97
    split = summary["split"]
    assert split["max_abs_diff"] <= 1e-5 and split["agreement"] == 1.0
    assert split["test_images"] == 359
    assert split["split_accuracy"] == pytest.approx(summary["train"]["test_accuracy"], abs=1e-6)
    # The chosen cut is the interior one with the fewest crossing bytes.
    profile = json.loads((tmp_path / "profile_small_cnn.json").read_text())
    interior = [c["crossing_bytes"] for c in profile["cuts"][1:-1]]
    assert split["crossing_bytes"] == min(interior)
    for name in ("profile_small_cnn.png", "profile_resnet8.png", "profile_resnet8.json", "device_this_machine.json",
                 "demo.json", "small_cnn_digits.safetensors"):
        assert (tmp_path / name).stat().st_size > 0
    halves, record = load_split(split["dir"])
    assert record.cut.index == split["cut"]["index"]
