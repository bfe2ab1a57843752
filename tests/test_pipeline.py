"""The whole job: `edgesplit demo` and `edgesplit run CONFIG.yaml`, end to end with a real server, and config errors."""

import json
from pathlib import Path

import pytest
import yaml

from edgesplit.model.artifact import load_split
from edgesplit.pipeline import DEMO_CONFIG, ConfigError, RunConfig, check_config, load_config
from test_cli import assert_user_error, edgesplit, edgesplit_in_process

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "run.yaml"


@pytest.mark.slow
def test_demo_runs_every_stage_and_reports_it(tmp_path):
    out = tmp_path / "demo"
    result = edgesplit("demo", "--out", str(out), "--json", str(tmp_path / "demo.json"), "-q")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary == json.loads((out / "run.json").read_text())
    stages = summary["stages"]
    mcu = json.loads((out / "plan_mcu-ethernet.json").read_text())
    pinned = next(r["label"] for r in mcu["switch_table"] if r["low_mbps"] <= 100 < r["high_mbps"])
    assert list(stages) == ["train", "profile small_cnn", "profile resnet8", "plan rpi4-lte", "plan mcu-ethernet",
                            "split", "compress", "plan mcu-ethernet with compress",
                            f"serve and infer, every image on {pinned}", "serve and infer, adaptive client", "audit"]
    assert stages["train"]["test_accuracy"] >= 0.97
    # On a Pi behind LTE one round trip costs more than the whole model: the planner keeps it on the device.
    assert stages["plan rpi4-lte"]["switch_table"] == ["all on device"]
    # On the MCU with Ethernet, with the raw input kept home, splitting wins at high bandwidth.
    assert mcu["chosen"]["kind"] == "split" and mcu["constraints"]["keep_input_on_device"]
    assert all(row["kind"] != "all-server" for row in mcu["switch_table"])
    assert mcu["constraints"]["compress_files"] == [str(out.resolve() / "compress.json")]
    # The halves saved at the chosen cut are exact on every held-out digit.
    split = stages["split"]
    assert split["cut"] == mcu["chosen"]["cut_index"] and split["agreement"] == 1.0 and split["max_abs_diff"] <= 1e-5
    _, record = load_split(out / "split")
    assert record.cut.index == split["cut"]
    # Codecs and a trained bottleneck were measured at that cut; the bottleneck sends far less than float32.
    compress = json.loads((out / "compress.json").read_text())
    by_name = {c["name"]: c for c in compress["configurations"]}
    assert {"fp32", "int8", "int2+ans", "bottleneck 8ch"} <= set(by_name)
    assert by_name["bottleneck 8ch"]["bytes_per_inference"] < by_name["fp32"]["bytes_per_inference"] / 10
    # Real split inference through a server subprocess on every image, checked against the whole model here.
    infer = json.loads((out / "infer_pinned.json").read_text())["summary"]
    assert infer["images"] == infer["server_results"] == 200 and infer["routes"] == {pinned: 200}
    assert infer["accuracy"] >= 0.95 and infer["agreement"] >= 0.97
    # Then the adaptive client, free to switch on what it measures.
    adaptive = json.loads((out / "infer_adaptive.json").read_text())["summary"]
    assert adaptive["images"] == 200 and adaptive["server_results"] >= 1 and adaptive["agreement"] >= 0.97
    # Every cut audited.
    audit = json.loads((out / "audit" / "audit.json").read_text())
    assert len(audit["rows"]) == 17 and (out / "audit" / "leakage-by-cut.png").stat().st_size > 0
    # One page shows it all, plots embedded.
    page = (out / "report.html").read_text()
    for title in ("Training", "Profile", "Plan", "Compression", "Privacy audit", "Split", "Split inference run"):
        assert f">{title}" in page
    assert page.count("data:image/png;base64,") >= 8 and "http://" not in page.replace(infer["server"], "")
    assert json.loads((out / "run.json").read_text())["report"] == str(out.resolve() / "report.html")
    assert (out / "token").stat().st_mode & 0o777 == 0o600  # created 0600 (pipeline.write_secret)


@pytest.mark.slow
def test_run_config_with_a_users_own_model(tmp_path):
    config = yaml.safe_load(EXAMPLE.read_text())
    # A model this small stays on the MCU preset; this machine slowed 50× (with the MCU's power) offloads.
    config["targets"][1]["device"] = "host/50@mcu"
    config.update(model="modelfactories:DigitNet", title="DigitNet", train={"epochs": 6},
                  compress={"codecs": ["int8"], "bottleneck": None}, serve={"images": 40},
                  audit={"cuts": "stem_1,add", "attacks": "probe", "victims": 32})
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config))
    result = edgesplit("run", str(path), "--out", str(tmp_path / "out"), "--json", str(tmp_path / "run.json"), "-q")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["stages"]["train"]["test_accuracy"] > 0.8
    assert set(summary["stages"]) >= {"plan rpi4-wifi", "plan mcu-ethernet", "compress", "audit"}
    infer = next(facts for stage, facts in summary["stages"].items() if stage.startswith("serve and infer, every"))
    assert infer["images"] == infer["server_results"] == 40 and infer["agreement"] >= 0.95
    audit = json.loads((tmp_path / "out" / "audit" / "audit.json").read_text())
    # The cut after the residual add crosses one tensor; the audit ran at both named cuts.
    assert [row["after"] for row in audit["rows"]] == ["stem_1", "add"]
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000
    assert "DigitNet" in result.stdout


def test_example_config_is_valid_and_its_specs_parse():
    config = load_config(EXAMPLE)
    check_config(config)
    assert [t.slug for t in config.targets] == ["rpi4-wifi", "mcu-ethernet"]
    assert config.keep_input and config.serve.target == "mcu-ethernet"
    check_config(DEMO_CONFIG)


@pytest.mark.parametrize("text, fragments", [
    ("model: [unclosed", ["not valid YAML"]),
    ("- just a list", ["holds no mapping"]),
    ("model: small_cnn\n", ["targets", "Field required"]),
    ("model: small_cnn\ntargets: []\n", ["targets"]),
    ("model: small_cnn\nmodle: x\ntargets: [{device: rpi4, link: lte}]\n", ["modle", "Extra inputs"]),
    ("model: small_cnn\ntargets: [{device: rpi4, link: lte}, {device: rpi4, link: lte}]\n", ["distinct `name`"]),
])
def test_bad_configs_are_refused_in_one_line(tmp_path, text, fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("changes, fragment", [
    ({"weights": None, "train": None}, "neither `weights` nor a `train` section"),
    ({"untrained": True}, "`untrained: true` but also gives `weights` or a `train` section"),
    ({"targets": [{"device": "toaster", "link": "lte"}]}, "toaster"),
    ({"targets": [{"device": "rpi4", "link": "carrier-pigeon"}]}, "carrier-pigeon"),
    ({"codecs": ["int9"]}, "int9"),
    ({"audit": {"attacks": "telepathy"}}, "telepathy"),
    ({"serve": {"target": "nowhere"}}, "nowhere"),
])
def test_bad_specs_are_refused_before_any_work(changes, fragment):
    config = RunConfig.model_validate({"model": "small_cnn", "train": {}, "targets": [{"device": "rpi4", "link": "lte"}],
                                       **changes})
    from edgesplit.errors import EdgesplitError

    with pytest.raises(EdgesplitError) as caught:
        check_config(config)
    assert fragment in str(caught.value)


def test_run_cli_errors_exit_2_in_one_line(tmp_path):
    assert_user_error(edgesplit("run", str(tmp_path / "missing.yaml")), "not found", "examples/run.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: small_cnn\ntargets: [{device: rpi4, link: lte}]\ncodecs: [int9]\n")
    assert_user_error(edgesplit_in_process("run", str(bad), "--out", str(tmp_path / "out")), "int9")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_run_whose_plans_never_send_skips_compress_and_serve_and_says_so(tmp_path):
    import io

    from rich.console import Console

    from edgesplit.pipeline.run import run_pipeline

    config = RunConfig.model_validate({"model": "small_cnn", "train": {"epochs": 1}, "profile_runs": 2,
                                       "targets": [{"name": "pi", "device": "rpi4", "link": "lte"}], "audit": None})
    log = io.StringIO()
    summary = run_pipeline(config, tmp_path / "out", Console(file=log, width=200), progress=False)
    assert list(summary["stages"]) == ["train", "profile small_cnn", "plan pi"]
    assert "runs the whole model on the device at every bandwidth, so nothing is compressed or served" in log.getvalue()
    assert not (tmp_path / "out" / "compress.json").exists() and (tmp_path / "out" / "report.html").exists()


@pytest.mark.parametrize("name", ["x/../../ESCAPED", "..", ".", "a b", "a" * 65, "../ESCAPED", "/tmp/ESCAPED"])
def test_a_target_name_that_is_not_a_file_name_is_refused(tmp_path, name):
    """The attack: a target named x/../../ESCAPED made `edgesplit run` write plan_x/../../ESCAPED.json outside --out."""
    work = tmp_path / "work"
    work.mkdir()
    config = tmp_path / "work" / "evil.yaml"
    config.write_text(yaml.safe_dump({"model": "small_cnn", "train": {"epochs": 1},
                                      "targets": [{"name": name, "device": "rpi4", "link": "lte"}]}))
    with pytest.raises(ConfigError, match="targets.0.name: Value error, a target's name .* names files"):
        load_config(config)
    assert not (tmp_path / "ESCAPED").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_run_refuses_a_traversing_target_name_and_writes_nothing(tmp_path):
    config = tmp_path / "a" / "b" / "evil.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(yaml.safe_dump({"model": "small_cnn", "train": {"epochs": 1},
                                      "targets": [{"name": "x/../../ESCAPED", "device": "rpi4", "link": "lte"}]}))
    out = tmp_path / "a" / "b" / "out"
    assert_user_error(edgesplit_in_process("run", str(config), "--out", str(out)), "targets.0.name", "x/../../ESCAPED")
    assert not out.exists() and not list(tmp_path.rglob("*ESCAPED*"))


def test_the_run_writer_refuses_paths_outside_its_folder(tmp_path):
    from rich.console import Console

    from edgesplit.pipeline.run import Run

    run = Run(DEMO_CONFIG, tmp_path / "out", Console(), progress=False)
    assert run.write("plan_ok.json", {"a": 1}) == (tmp_path / "out" / "plan_ok.json").resolve()
    for name in ("../ESCAPED.json", "plan_x/../../ESCAPED.json", str(tmp_path / "ESCAPED.json")):
        with pytest.raises(ConfigError, match="leads outside the run folder"):
            run.write(name, {"a": 1})
    assert not list(tmp_path.rglob("ESCAPED*"))


def test_the_token_file_is_0600_from_its_creation(tmp_path):
    import os
    import stat

    from edgesplit.pipeline import write_secret

    old = tmp_path / "token"
    old.write_text("old token\n")
    old.chmod(0o644)
    observed = []
    real_open = os.open

    def watching_open(path, flags, mode=0o777, *args, **kwargs):  # noqa: ANN001, ANN202
        observed.append((flags & os.O_CREAT and flags & os.O_EXCL, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    os.open = watching_open
    try:
        path = write_secret(old, "s3cret\n")
    finally:
        os.open = real_open
    assert observed == [(os.O_EXCL, 0o600)]  # created exclusively with 0600: never readable by others
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "s3cret\n"
    # A link planted where the token goes is replaced, never followed.
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    path.unlink()
    path.symlink_to(target)
    write_secret(path, "s3cret\n")
    assert not path.is_symlink() and target.read_text() == "untouched"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
