"""The privacy audit end to end: real trained model, real attacks, per-cut and per-defense results, the CLI."""

import json
from types import SimpleNamespace

import pytest
import torch

from edgesplit.model.data import Dataset
from edgesplit.errors import CutError, EdgesplitError, InputShapeError
from edgesplit.model.graph import trace
from edgesplit.model.intake import ModelRef, save_weights
from edgesplit.privacy.audit import (AuditSettings, _image_scores, count_overlap, parse_attacks, resolve_cuts,
                                     run_audit)
from edgesplit.privacy.defenses import parse_defenses
from edgesplit.plan.leakage import load_leakage
from edgesplit.privacy.schema import load_audit
from edgesplit.model.train import train_classifier
from edgesplit.model.zoo import small_cnn
from test_cli import assert_user_error, edgesplit, edgesplit_both_ways, edgesplit_in_process

FAST = AuditSettings(victims=64, aux_limit=400, inversion_epochs=4, optimize_steps=60, defense_epochs=1,
                     defense_train_limit=400)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(one_thread, digits):
    torch.manual_seed(0)
    model = small_cnn()
    train_classifier(model, digits, epochs=4, batch_size=64, lr=3e-3, seed=0, progress=False)
    model.eval()
    return model, trace(model, digits.train_images[:1]), digits


@pytest.fixture(scope="module")
def audited(trained, tmp_path_factory):
    model, traced, digits = trained
    out = tmp_path_factory.mktemp("audit")
    report = run_audit(traced, model, digits, digits, cuts=resolve_cuts(traced, "conv1_2,flatten"),
                       defenses=parse_defenses(["noise:3"]), settings=FAST, name="small_cnn", model_ref={},
                       data_spec="digits", aux_spec="digits", out_dir=out, progress=False)
    return report, out


def test_audit_measures_every_cut_and_defense(audited):
    report, _ = audited
    assert [(r.position, r.defense) for r in report.rows] == [(3, "none"), (3, "noise:3"), (13, "none"),
                                                            (13, "noise:3")]
    assert report.overlap == 0 and not report.warnings
    assert report.victims == 64 and report.aux_images == 400
    for row in report.rows:
        assert {a.attack for a in row.attacks} == {"inversion", "optimize"}
        assert {p.kind for p in row.probes} == {"linear", "mlp"}
        for score in [*(a.ssim for a in row.attacks), *(p.accuracy for p in row.probes), row.distance_correlation]:
            assert score.low <= score.mean <= score.high
    early = report.row(3)
    # After the first conv block digits are recovered almost exactly, far above the mean-image baseline.
    assert early.best_attack().ssim.mean > 0.95 > report.mean_image.ssim.mean + 0.3
    assert early.best_attack().psnr.mean > report.mean_image.psnr.mean + 10
    # The flat cut needs the fully connected decoder; it still beats the baseline.
    late = report.row(13)
    assert late.crossing == [[256]]
    assert late.best_attack().ssim.mean > report.mean_image.ssim.mean
    for row in (early, late):
        assert row.best_probe().accuracy.mean > row.best_probe().chance + 0.5
        assert 0 < row.distance_correlation.mean <= 1
        assert row.task_accuracy == pytest.approx(report.model_accuracy)


def test_noise_defense_trades_accuracy_for_privacy(audited):
    report, _ = audited
    clean, noisy = report.row(3), report.row(3, "noise:3")
    assert noisy.task_accuracy < clean.task_accuracy
    assert noisy.best_attack().psnr.mean < clean.best_attack().psnr.mean - 3
    assert noisy.distance_correlation.mean < clean.distance_correlation.mean


def test_audit_writes_grids_plots_and_a_leakage_table_the_planner_reads(audited, trained, tmp_path):
    report, out = audited
    _, traced, _ = trained
    for name in [*report.grids.values(), *report.plots.values()]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(report.grids) == {"3", "13", "best"} and set(report.plots) == {"leakage", "privacy_utility"}
    path = tmp_path / "audit.json"
    path.write_text(report.model_dump_json())
    assert load_audit(path).rows == report.rows
    table = load_leakage(path, traced.fingerprint)
    assert [c.position for c in table.cuts] == [3, 13]
    assert table.at(3).ssim == pytest.approx(report.row(3).best_attack().ssim.mean)
    assert table.at(13).probe_accuracy == pytest.approx(report.row(13).best_probe().accuracy.mean)


def test_white_box_after_pooling_starts_from_the_decoder_and_is_never_weaker_than_it(audited):
    report, _ = audited
    late = report.row(13)  # flatten: after the pooling, 256 values cross
    scores = {a.attack: a for a in late.attacks}
    learned, white = scores["inversion"], scores["optimize"]
    # Started at the decoder's reconstructions and keeping, per victim, the image with the lower objective, the
    # white-box attack does not fall behind the decoder it started from (it fell below the mean image before).
    assert white.psnr.mean >= learned.psnr.mean - 0.5
    assert white.psnr.mean > report.mean_image.psnr.mean
    for row in report.rows:
        for score in row.attacks:
            assert score.psnr.median is not None and score.ssim.median is not None


def test_median_psnr_beside_the_mean_differs_when_values_are_capped():
    originals = torch.rand(6, 1, 8, 8)
    # Four exact reconstructions (PSNR capped at 100 dB) and two noisy ones: the cap pulls the mean, not the median.
    noisy = (originals + 0.1 * torch.randn_like(originals)).clamp(0, 1)
    reconstructions = torch.cat([originals[:4], noisy[4:]])
    score = _image_scores("optimize", reconstructions, originals, 0.0)
    assert score.psnr.median == pytest.approx(100.0)
    assert score.psnr.mean < score.psnr.median - 10
    reconstructions = torch.cat([originals[:2], noisy[2:]])  # now most are noisy: the median is a noisy one's
    score = _image_scores("optimize", reconstructions, originals, 0.0)
    assert score.psnr.median < 40 < score.psnr.mean


def test_overlapping_aux_and_victims_are_counted_and_warned(trained):
    model, traced, digits = trained
    leaky = Dataset("leaky", torch.cat([digits.test_images[:10], digits.train_images]),
                    torch.cat([digits.test_labels[:10], digits.train_labels]), digits.test_images, digits.test_labels,
                    digits.classes)
    heard = []
    settings = AuditSettings(attacks=("probe",), victims=32, aux_limit=200)
    report = run_audit(traced, model, digits, leaky, cuts=resolve_cuts(traced, "pool1"), defenses=parse_defenses([]),
                       settings=settings, name="small_cnn", model_ref={}, data_spec="digits", aux_spec="leaky",
                       progress=False, on_warning=heard.append)
    assert report.overlap == count_overlap(leaky.train_images[:200], digits.test_images[:32]) == 10
    assert len(heard) == 1 and "10 of 32 victim images are also in the auxiliary set" in heard[0]
    assert report.warnings == heard
    assert report.rows[0].attacks == [] and len(report.rows[0].probes) == 2


def test_images_of_another_shape_are_refused_before_any_work(trained):
    model, traced, digits = trained
    big = Dataset("big", torch.rand(8, 1, 28, 28), torch.arange(8) % 10, torch.rand(8, 1, 28, 28),
                  torch.arange(8) % 10, digits.classes)
    with pytest.raises(InputShapeError, match="1×28×28 but the model takes 1×8×8"):
        run_audit(traced, model, digits, big, cuts=traced.cuts[:1], defenses=parse_defenses([]), settings=FAST,
                  name="m", model_ref={}, data_spec="digits", aux_spec="big", progress=False)


def test_a_defense_that_fits_no_audited_cut_is_an_error_and_otherwise_skipped(trained):
    model, traced, digits = trained
    flat_only = resolve_cuts(traced, "flatten,fc1")
    with pytest.raises(EdgesplitError, match="bottleneck:2 fits none of the cuts"):
        run_audit(traced, model, digits, digits, cuts=flat_only, defenses=parse_defenses(["bottleneck:2"]),
                  settings=FAST, name="m", model_ref={}, data_spec="digits", aux_spec="digits", progress=False)
    settings = AuditSettings(attacks=("probe",), probe_kinds=("linear",), victims=32, aux_limit=200,
                             defense_epochs=1, defense_train_limit=200)
    report = run_audit(traced, model, digits, digits, cuts=resolve_cuts(traced, "pool1,flatten"),
                       defenses=parse_defenses(["bottleneck:2"]), settings=settings, name="m", model_ref={},
                       data_spec="digits", aux_spec="digits", progress=False)
    assert [(r.position, r.defense) for r in report.rows] == [(7, "none"), (7, "bottleneck:2"), (13, "none")]
    assert report.rows[1].crossing == [[2, 4, 4]] and report.rows[1].defense_seconds > 0
    assert any("bottleneck:2 skipped at cut 13" in w for w in report.warnings)


def test_attack_and_cut_specs(trained):
    _, traced, _ = trained
    assert parse_attacks("probe, inversion") == ("inversion", "probe")
    assert parse_attacks(["optimize", "probe,optimize"]) == ("optimize", "probe")
    with pytest.raises(EdgesplitError, match="unknown attack 'gan'; choose from inversion, optimize, probe"):
        parse_attacks("inversion,gan")
    assert [c.position for c in resolve_cuts(traced, "all")] == list(range(len(traced.cuts)))
    assert [c.position for c in resolve_cuts(traced, "pool1, 3,conv1_2")] == [3, 7]
    with pytest.raises(CutError):
        resolve_cuts(traced, "no_such_node")


@pytest.mark.slow
def test_cli_audit_then_plan_under_a_leakage_bound(trained, tmp_path):
    model, _, digits = trained
    weights = tmp_path / "digits.safetensors"
    save_weights(model, weights, ModelRef("small_cnn"), (1, 1, 8, 8), {})
    result = edgesplit("audit", "small_cnn", "--weights", str(weights), "--data", "digits", "--cut",
                       "0,conv2_2,flatten", "--defense", "quant:1", "--victims", "48", "--aux-limit", "300",
                       "--epochs", "3", "--steps", "40", "--threads", "1", "-q", "--json", str(tmp_path / "audit.json"),
                       "--out", str(tmp_path / "figures"))
    assert result.returncode == 0, result.stderr
    assert "learned PSNR / SSIM" in result.stdout and "quant:1" in result.stdout and "most leaky: cut" in result.stdout
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["kind"] == "edgesplit.audit" and len(report["rows"]) == 6
    assert (tmp_path / "figures" / "reconstructions.png").exists()
    leak = {c["position"]: c["ssim"] for c in report["leakage"]["cuts"]}
    assert leak[13] < min(leak[0], leak[6])  # the flat features after pooling leak least
    bound = (leak[13] + min(leak[0], leak[6])) / 2
    # Checked by the file it writes: in this process (the audit above ran in a new interpreter).
    plan = edgesplit_in_process("plan", "small_cnn", "--weights", str(weights), "--input-shape", "1,1,8,8",
                                "--leakage", str(tmp_path / "audit.json"), "--max-ssim", f"{bound:.4f}", "--runs", "2",
                                "-q", "--json", str(tmp_path / "plan.json"))
    assert plan.returncode == 0, plan.stderr
    plans = json.loads((tmp_path / "plan.json").read_text())
    chosen = plans["chosen"]
    assert chosen["kind"] == "all-device" or chosen["position"] == 13, chosen["label"]
    refused = [p for p in plans["ranked"] if p["position"] in (0, 6) and p["kind"] != "all-device"]
    assert refused and all(not p["feasible"] for p in refused)


@pytest.mark.parametrize("args, fragments", [
    (["--attack", "inversion,gan"], ["unknown attack 'gan'"]),
    (["--defense", "noise:-1"], ["noise"]),
    (["--cut", "no_such_node"], ["no_such_node"]),
    (["--codec", "int99"], ["int99"]),
    (["--cut", "flatten", "--defense", "bottleneck:2"], ["fits none of the cuts"]),
])
def test_cli_audit_user_errors_exit_2_in_one_line(args, fragments):
    assert_user_error(edgesplit_in_process("audit", "small_cnn", "--data", "digits", "-q", *args), *fragments)


def test_an_audit_user_error_from_the_installed_entry_point():
    assert_user_error(edgesplit_both_ways("audit", "small_cnn", "--data", "digits", "-q", "--attack", "inversion,gan"),
                      "unknown attack 'gan'")


def test_attacks_see_what_the_codec_delivers(trained):
    model, traced, digits = trained
    settings = AuditSettings(attacks=("optimize",), victims=32, optimize_steps=60)
    rows = {}
    for codec in (None, "int1"):
        report = run_audit(traced, model, digits, digits, cuts=resolve_cuts(traced, "conv1_2"),
                           defenses=parse_defenses([]), settings=AuditSettings(**{**settings.__dict__, "codec": codec}),
                           name="m", model_ref={}, data_spec="digits", aux_spec="digits", progress=False)
        rows[codec] = report.rows[0]
        assert report.codec == codec and report.leakage.codec == codec
    assert rows["int1"].best_attack().psnr.mean < rows[None].best_attack().psnr.mean - 5
    assert rows["int1"].task_accuracy < rows[None].task_accuracy


def test_a_cut_inside_a_residual_block_sends_two_tensors_and_is_attacked(one_thread):
    from edgesplit.model.zoo import resnet8

    torch.manual_seed(0)
    photos = Dataset("noise", torch.rand(64, 3, 16, 16), torch.arange(64) % 4, torch.rand(16, 3, 16, 16),
                     torch.arange(16) % 4, ["a", "b", "c", "d"])
    model = resnet8(num_classes=4).eval()
    traced = trace(model, photos.train_images[:1])
    inside = next(c for c in traced.cuts if len(c.crossing) == 2)
    settings = AuditSettings(victims=16, aux_limit=64, inversion_epochs=2, optimize_steps=20,
                             probe_kinds=("linear",))
    report = run_audit(traced, model, photos, photos, cuts=[inside], defenses=parse_defenses(["noise:0.5"]),
                       settings=settings, name="resnet8", model_ref={}, data_spec="noise", aux_spec="noise",
                       progress=False)
    assert [len(r.crossing) for r in report.rows] == [2, 2]
    assert all(len(r.attacks) == 2 and len(r.probes) == 1 for r in report.rows)


@pytest.mark.parametrize("crossing, factor, expected", [
    ([(8, 10)], 3, 12),  # fully connected features: the cheap decoder trains 3x the epochs
    ([(8, 10), (8, 4)], 2, 8),  # several flat tensors: still flat
    ([(8, 4, 2, 2)], 3, 4),  # an image-like cut keeps the epochs asked for
    ([(8, 10), (8, 4, 2, 2)], 3, 4),  # one image-like tensor among them: not flat
    ([(8, 5, 16)], 3, 4),  # token features keep them too (a token decoder is not cheap)
])
def test_flat_cuts_train_their_decoder_longer(monkeypatch, crossing, factor, expected):
    from edgesplit.privacy import attacks

    asked = {}

    def learned_inversion(*args, epochs, **kwargs):
        asked["epochs"] = epochs
        return SimpleNamespace(decoder=None)

    monkeypatch.setattr(attacks, "learned_inversion", learned_inversion)
    target = attacks.AttackTarget(defended=SimpleNamespace(head=None, transform=None),
                                  sent=[torch.zeros(shape) for shape in crossing], victims=torch.zeros(8, 1, 8, 8),
                                  victim_labels=torch.zeros(8), aux=torch.zeros(8, 1, 8, 8),
                                  aux_labels=torch.zeros(8), effort=attacks.Effort(flat_epoch_factor=factor))
    attacks._learned(target, 4, seed=0)
    assert asked["epochs"] == expected
    assert AuditSettings(flat_epoch_factor=factor).effort().flat_epoch_factor == factor
