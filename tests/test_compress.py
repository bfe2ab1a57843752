"""Learned bottlenecks and `edgesplit compress`: training, checkpoints, rate–accuracy, and the planner reading it."""

import json

import pytest
import torch

from edgesplit.compress.bottleneck import (BottleneckConfig, BottleneckError, SlimmableBottleneck, TrainingPlan,
                                  train_bottleneck)
from edgesplit.compress.rate import code_codec, compress, load_compress
from edgesplit.codecs import decode
from edgesplit.model.data import load_dataset
from edgesplit.model.graph import trace
from edgesplit.model.intake import ModelRef, save_weights
from edgesplit.plan import load_plan
from edgesplit.model.train import train_classifier
from edgesplit.model.zoo import small_cnn
from test_cli import assert_user_error, edgesplit, edgesplit_in_process

CUT = 7  # small_cnn on digits: after pool1, 32×4×4


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """small_cnn trained on the bundled digits (a few seconds), saved as a user would."""
    torch.manual_seed(0)
    dataset = load_dataset("digits")
    model = small_cnn()
    result = train_classifier(model, dataset, epochs=8, lr=3e-3, progress=False)
    assert result.test_accuracy > 0.9
    path = tmp_path_factory.mktemp("weights") / "small_cnn.safetensors"
    save_weights(model, path, ModelRef("small_cnn", {"in_channels": 1, "num_classes": 10}), (1, 1, 8, 8), {})
    return model.eval(), dataset, path


def test_bottleneck_code_is_integers_of_each_width_and_decodes_to_the_feature_shape():
    bottleneck = SlimmableBottleneck(BottleneckConfig(32, 8, stride=2, bits=3, widths=(0.25, 0.5, 1.0))).eval()
    features = torch.randn(5, 32, 8, 8).relu()
    for width, channels in ((0.25, 2), (0.5, 4), (1.0, 8)):
        code = bottleneck.encode(features, width)
        assert code.shape == (5, channels, 4, 4)
        assert torch.equal(code, code.round()) and code.min() >= 0 and code.max() <= 7
        assert bottleneck.decode(code, width).shape == features.shape
        encoder_macs, decoder_macs = bottleneck.macs((32, 8, 8), width)
        assert 0 < encoder_macs and 0 < decoder_macs
    with pytest.raises(BottleneckError, match="width 0.75 was not trained"):
        bottleneck.encode(features, 0.75)
    with pytest.raises(BottleneckError, match="code has 8 channels"):
        bottleneck.decode(torch.zeros(1, 8, 4, 4), 0.5)


def test_the_code_travels_exactly_in_its_codec():
    config = BottleneckConfig(16, 4, bits=4)
    code = torch.randint(0, 16, (1, 4, 3, 3)).float()
    assert torch.equal(decode(code_codec(config).encode(code)), code)


def test_training_is_deterministic_resumable_and_refuses_other_settings(digits_model, tmp_path):
    model, dataset, _ = digits_model
    traced = trace(model, torch.zeros(1, 1, 8, 8))
    config = BottleneckConfig(32, 4, stride=2, bits=4, widths=(0.5, 1.0))
    plan = TrainingPlan(feature_epochs=1, task_epochs=1, batch_size=128, train_limit=512)
    first, tail, log = train_bottleneck(traced.split(CUT), model, dataset, config, plan,
                                        checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert len(log.feature_loss) == 1 and len(log.task_loss) == 1 and log.resumed_from_epoch == 0
    again, _, again_log = train_bottleneck(traced.split(CUT), model, dataset, config, plan, progress=False)
    assert again_log.feature_loss == log.feature_loss and again_log.task_loss == log.task_loss
    resumed, resumed_tail, resumed_log = train_bottleneck(traced.split(CUT), model, dataset, config, plan,
                                                          checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert resumed_log.resumed_from_epoch == 2 and resumed_log.task_loss == log.task_loss
    for a, b in zip(first.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(tail.state_dict().values(), resumed_tail.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(BottleneckError, match="other settings"):
        train_bottleneck(traced.split(CUT), model, dataset, BottleneckConfig(32, 8, stride=2), plan,
                         checkpoint_dir=tmp_path / "ckpt", progress=False)
    longer = TrainingPlan(feature_epochs=1, task_epochs=2, batch_size=128, train_limit=512)
    with pytest.raises(BottleneckError, match="other settings"):
        train_bottleneck(traced.split(CUT), model, dataset, config, longer, checkpoint_dir=tmp_path / "ckpt",
                         progress=False)


def test_training_fine_tunes_a_copy_of_the_tail_and_leaves_the_model_as_it_was(digits_model):
    model, dataset, _ = digits_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    traced = trace(model, torch.zeros(1, 1, 8, 8))
    split = traced.split(CUT)
    _, tail, log = train_bottleneck(split, model, dataset, BottleneckConfig(32, 4, stride=2),
                                    TrainingPlan(feature_epochs=0, task_epochs=1, train_limit=256), progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # running stats too
    assert all(p.requires_grad for p in model.parameters())
    tuned = dict(tail.state_dict())
    changed = [k for k, v in split.tail.state_dict().items() if not torch.equal(v, tuned[k])]
    assert any(k.endswith("weight") for k in changed)  # stage 2 trained the tail's parameters
    assert log.seconds > 0


def test_training_resumes_after_an_interrupted_run(digits_model, tmp_path, monkeypatch):
    import edgesplit.compress.bottleneck as bottleneck_module

    model, dataset, _ = digits_model
    traced = trace(model, torch.zeros(1, 1, 8, 8))
    config = BottleneckConfig(32, 4, stride=2)
    short = TrainingPlan(feature_epochs=1, task_epochs=1, batch_size=128, train_limit=256)
    _, _, full_log = train_bottleneck(traced.split(CUT), model, dataset, config, short, progress=False)
    real_loss, steps = bottleneck_module._loss, {"n": 0}

    def interrupted_in_the_second_epoch(*args, **kwargs):  # Ctrl-C during epoch 2 (two steps per epoch)
        steps["n"] += 1
        if steps["n"] > 2:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(bottleneck_module, "_loss", interrupted_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_bottleneck(traced.split(CUT), model, dataset, config, short, checkpoint_dir=tmp_path / "c",
                         progress=False)
    monkeypatch.setattr(bottleneck_module, "_loss", real_loss)
    assert json.loads((tmp_path / "c" / "bottleneck.json").read_text())["epochs_done"] == 1
    _, _, resumed_log = train_bottleneck(traced.split(CUT), model, dataset, config, short,
                                         checkpoint_dir=tmp_path / "c", progress=False)
    assert resumed_log.resumed_from_epoch == 1
    assert resumed_log.feature_loss == full_log.feature_loss and resumed_log.task_loss == full_log.task_loss


@pytest.mark.slow
def test_compress_measures_codecs_bottleneck_and_input_end_to_end(digits_model):
    model, dataset, _ = digits_model
    traced = trace(model, torch.zeros(1, 1, 8, 8))
    report = compress(traced, model, dataset, CUT, name="small_cnn", model_ref=None, codecs=["fp32", "int8", "int2+ans"],
                      bottleneck=BottleneckConfig(0, 4, stride=2, bits=4, widths=(0.5, 1.0)),
                      training=TrainingPlan(3, 3, batch_size=64), progress=False)
    by_name = {c.name: c for c in report.configurations}
    assert report.float32_bytes == 32 * 4 * 4 * 4 and report.eval_images == len(dataset.test_labels)
    fp32 = by_name["fp32"]
    assert fp32.accuracy == report.baseline_accuracy and fp32.accuracy_drop == 0  # lossless: the same answers
    assert fp32.bytes_per_inference > report.float32_bytes  # the frame header is counted
    assert by_name["int8"].bytes_per_inference < report.float32_bytes / 3
    assert by_name["int8"].accuracy_drop <= 0.01
    assert by_name["int2+ans"].bytes_per_inference < by_name["int8"].bytes_per_inference
    bottlenecks = [c for c in report.configurations if c.kind == "bottleneck"]
    assert [c.code_channels for c in bottlenecks] == [2, 4]
    assert bottlenecks[0].bytes_per_inference < bottlenecks[1].bytes_per_inference < 60
    assert all(c.accuracy > 0.5 and c.device_macs > 0 for c in bottlenecks)  # chance is 0.1
    assert {"input as png", "input as jpeg q90"} <= set(by_name)
    assert by_name["input as png"].accuracy == report.baseline_accuracy
    assert report.at_most(0.01)[0].bytes_per_inference == min(c.bytes_per_inference for c in report.at_most(0.01))


@pytest.mark.slow
def test_compress_cli_then_plan_reads_it(digits_model, tmp_path):
    _, _, weights = digits_model
    result = edgesplit("compress", "small_cnn", "--weights", str(weights), "--data", "digits", "--cut", str(CUT),
                       "--codec", "int8", "--codec", "int4+zstd", "--bottleneck", "4", "--slimmable", "--epochs", "1",
                       "--json", "c.json", "--plot", "c.png", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for fragment in ("bytes / inference", "int4+zstd", "bottleneck 1ch (25% width)", "bottleneck 4ch (100% width)",
                     "input as png", "plot written to"):
        assert fragment in result.stdout
    report = load_compress(tmp_path / "c.json")
    assert report.bottleneck.widths == [0.25, 0.5, 0.75, 1.0] and len(report.configurations) == 3 + 2 + 4
    # Checked by the files they write, these two run in this process (the first showed the entry point works).
    bare = edgesplit_in_process("compress", "small_cnn", "--weights", str(weights), "--cut", str(CUT), "--eval-limit",
                                "50", "--json", "d.json", "-q", cwd=tmp_path)
    assert bare.returncode == 0, bare.stderr
    defaults = [c.name for c in load_compress(tmp_path / "d.json").configurations if c.kind == "codec"]
    assert defaults == ["fp32", "fp16", "int8", "int4+zstd", "int2+ans"]
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    planned = edgesplit_in_process("plan", "small_cnn", "--weights", str(weights), "--compress", "c.json", "--link",
                                   "3g", "--max-accuracy-drop", "0", "--json", "plan.json", "-q", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    plan = load_plan(tmp_path / "plan.json")
    measured = [e for e in plan.ranked if e.label.endswith("measured]")]
    assert len(measured) == 2 + 4  # the codecs and the bottleneck widths, at cut 7
    assert all(e.cut_index == CUT and e.accuracy_drop is not None for e in measured)
    for entry in measured:
        assert entry.feasible == (entry.accuracy_drop <= 0)
        by_name = {c.name: c for c in report.configurations}
        assert entry.costs.uplink_bytes == round(by_name[entry.codec].bytes_per_inference)
    assert plan.constraints.max_accuracy_drop == 0 and plan.constraints.compress_files == ["c.json"]

    other = edgesplit("plan", "resnet8", "--compress", "c.json", "-q", cwd=tmp_path)
    assert_user_error(other, "another model", "run compress on this model")


@pytest.mark.parametrize("args, fragments", [
    (["--codec", "int4+ans:weird"], ["ans model 'weird'"]),
    (["--slimmable"], ["--slimmable needs --bottleneck"]),
    (["--cut", "13", "--bottleneck", "4"], ["N×C×H×W", "cut 13"]),
    (["--cut", "0"], ["cut 0 sends the input"]),
    (["--cut", "99"], ["cut"]),
    (["--data", "mnist:/nonexistent"], ["/nonexistent"]),
    (["--checkpoint", "/proc/forbidden", "--bottleneck", "2", "--epochs", "1"], ["checkpoint"]),
])
def test_compress_user_errors(digits_model, tmp_path, args, fragments):
    _, _, weights = digits_model
    command = ["compress", "small_cnn", "--weights", str(weights), "--data", "digits", "--cut", str(CUT), "-q"]
    if "--cut" in args:
        del command[command.index("--cut"):command.index("--cut") + 2]
    assert_user_error(edgesplit_in_process(*command, *args, cwd=tmp_path), *fragments)
