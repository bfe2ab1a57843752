"""Defenses trained with the model: parsing, what fine-tuning under the defense buys, and the benchmark's JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import trained_small_cnn
from edgesplit.errors import EdgesplitError
from edgesplit.model.graph import trace
from edgesplit.privacy.audit import AuditSettings, defense_misfit, resolve_cuts, run_audit
from edgesplit.privacy.defenses import build_defense, parse_defense, parse_defenses
from edgesplit.privacy.metrics import distance_correlation
from edgesplit.privacy.trained import TrainedHead, TrainedSpec, parse_trained, quantize_per_example

CUT = "pool1"  # small_cnn on digits: one 32×4×4 tensor crosses
RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "audit_defenses_trained.json"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(small_cnn_on_digits_state):
    """small_cnn trained two epochs on digits (about 97% test accuracy; trained once per session, in conftest.py)."""
    return trained_small_cnn(small_cnn_on_digits_state)


@pytest.fixture(scope="module")
def traced(model, digits):
    return trace(model, digits.train_images[:1])


def accuracy(text: str, traced, model, digits, **options) -> float:
    defended = build_defense(parse_defense(text), traced.split(CUT), model, digits, **options)
    return defended.accuracy(digits.test_images, digits.test_labels)


# ------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, canonical, parts", [
    ("trained:noise=1", "trained:noise=1", {"noise": 1.0}),
    (" Trained: nopeek=2 + noise=0.50 ", "trained:noise=0.5+nopeek=2", {"noise": 0.5, "nopeek": 2.0}),
    ("trained:bottleneck=2", "trained:bottleneck=2+bits=4", {"channels": 2, "bits": 4, "stride": 1}),
    ("trained:stride=2+bits=1+bottleneck=1", "trained:bottleneck=1+bits=1+stride=2",
     {"channels": 1, "bits": 1, "stride": 2}),
    ("trained:bits=2+dropout=0.25", "trained:dropout=0.25+bits=2", {"bits": 2, "dropout": 0.25, "channels": None}),
])
def test_trained_specs_parse_to_one_canonical_text(text, canonical, parts):
    spec = parse_defense(text)
    assert isinstance(spec, TrainedSpec) and spec.kind == "trained" and spec.text == canonical
    assert {name: getattr(spec, name) for name in parts} == parts
    assert parse_trained(canonical) == spec  # the canonical text reads back as the same spec


@pytest.mark.parametrize("text, fragment", [
    ("trained:", "name at least one"),
    ("trained:stride=2", "name at least one"),
    ("trained:noise=1+stride=2", "stride applies to a bottleneck only"),
    ("trained:noise", "noise needs a value"),
    ("trained:noise=-1", "noise takes SIGMA > 0"),
    ("trained:bits=9", "bits takes BITS"),
    ("trained:bottleneck=1.5", "bottleneck takes CHANNELS"),
    ("trained:noise=1+noise=2", "noise is given twice"),
    ("trained:telepathy=1", "unknown part 'telepathy'"),
])
def test_bad_trained_specs_are_one_line_errors(text, fragment):
    with pytest.raises(EdgesplitError, match=fragment) as caught:
        parse_defenses([text])
    assert "\n" not in str(caught.value) and "trained:noise=1+nopeek=2" in str(caught.value)


def test_a_trained_bottleneck_does_not_fit_a_flat_cut(traced):
    flat = traced.cut("flatten")
    assert defense_misfit(parse_defense("trained:bottleneck=2"), flat) is not None
    assert defense_misfit(parse_defense("trained:noise=1"), flat) is None


def test_quantize_per_example_keeps_each_example_in_its_range_on_the_levels():
    features = torch.tensor([[0.0, 0.2, 0.9, 3.0], [-1.0, -0.4, 0.1, 1.0]], requires_grad=True)
    out = quantize_per_example(features, 1)
    assert torch.equal(out.detach(), torch.tensor([[0.0, 0.0, 0.0, 3.0], [-1.0, -1.0, 1.0, 1.0]]))
    out.sum().backward()  # straight-through: the gradient of the identity
    assert torch.equal(features.grad, torch.ones_like(features))


# ------------------------------------------------------------------------------------------- training under a defense


def test_trained_noise_keeps_accuracy_closer_to_undefended_than_the_same_noise_at_inference(traced, model, digits):
    undefended = accuracy("none", traced, model, digits)
    bolted_on = accuracy("noise:2", traced, model, digits)
    trained = accuracy("trained:noise=2", traced, model, digits, epochs=2)
    assert undefended - bolted_on > 0.05  # the noise does cost the unchanged tail something
    assert abs(undefended - trained) < abs(undefended - bolted_on)
    assert trained > bolted_on + 0.03


def test_nopeek_penalty_lowers_distance_correlation(traced, model, digits):
    images = digits.test_images[:200]
    plain = build_defense(parse_defense("trained:bits=8"), traced.split(CUT), model, digits, epochs=2)
    nopeek = build_defense(parse_defense("trained:bits=8+nopeek=5"), traced.split(CUT), model, digits, epochs=2)
    dcor_plain = distance_correlation(images, plain.send(images)[0].flatten(1))
    dcor_nopeek = distance_correlation(images, nopeek.send(images)[0].flatten(1))
    assert dcor_nopeek < dcor_plain - 0.05
    assert nopeek.train_log["dcor"][-1] < nopeek.train_log["dcor"][0]  # the penalty fell while training
    assert nopeek.accuracy(digits.test_images, digits.test_labels) > 0.5


def test_training_is_seeded_and_leaves_the_model_and_global_random_state_alone(traced, model, digits):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.random.get_rng_state()
    runs = [build_defense(parse_defense("trained:noise=0.5+bottleneck=2+bits=2"), traced.split(CUT), model, digits,
                          epochs=1, train_limit=256, seed=3) for _ in range(2)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    images = digits.test_images[:16]
    sent = [run.send(images)[0] for run in runs]  # each run's first draw of its seeded noise
    assert isinstance(runs[0].head, TrainedHead) and sent[0].shape == (16, 2, 4, 4)
    assert torch.equal(sent[0], sent[1])  # same seed: same weights, same noise
    assert not torch.equal(runs[0].send(images)[0], sent[0])  # the noise is drawn afresh for every image sent
    with torch.no_grad():
        code = runs[0].head(images)[0]
    assert torch.equal(code, code.round()) and code.min() >= 0 and code.max() <= 3  # 2-bit integers cross


# ------------------------------------------------------------------------------------------- the benchmark's JSON


@pytest.mark.slow
def test_benchmark_json_validates_from_a_real_tiny_audit(traced, model, digits, tmp_path):
    from audit_defenses_trained import TrainedDefensesResult, configurations, plot, target

    settings = AuditSettings(cuts=CUT, attacks=("inversion", "optimize"), victims=16, aux_limit=64,
                             inversion_epochs=1, optimize_steps=3, defense_epochs=1, defense_train_limit=256,
                             dfil_victims=2, dfil_samples=1)
    report = run_audit(traced, model, digits, digits, cuts=resolve_cuts(traced, CUT),
                       defenses=parse_defenses(["noise:1", "trained:noise=1"]), settings=settings, name="small_cnn",
                       model_ref={}, data_spec="digits", aux_spec="digits", progress=False)
    rows = configurations(report)
    assert [(r.defense, r.family) for r in rows] == [("none", "none"), ("noise:1", "inference"),
                                                     ("trained:noise=1", "trained")]
    assert rows[0].on_frontier and rows[0].accuracy_drop_points == 0
    for row in rows:
        assert row.ssim == max(a["ssim"] for a in row.attacks.values())
        assert row.meets_target == (row.accuracy_drop_points <= 2 and row.ssim <= 0.5)
    figure = plot(rows, report.mean_image.ssim.mean, "test", tmp_path / "frontier.png")
    assert figure.stat().st_size > 0
    result = TrainedDefensesResult(model="small_cnn", data="digits", cut=CUT, cut_position=report.rows[0].position,
                                   crossing=report.rows[0].crossing, model_accuracy=report.model_accuracy,
                                   mean_image_ssim=report.mean_image.ssim.mean, settings={}, configurations=rows,
                                   target=target(rows), plot=figure.name, command="test", seconds=1.0, machine={})
    again = TrainedDefensesResult.model_validate_json(result.model_dump_json())
    assert again == result and again.kind == "edgesplit.bench.audit-defenses-trained"
    with pytest.raises(ValueError):
        TrainedDefensesResult.model_validate({**json.loads(result.model_dump_json()), "version": 2})


@pytest.mark.skipif(not RESULTS.exists(), reason="the benchmark's results file has not been written")
def test_committed_benchmark_json_validates():
    from audit_defenses_trained import TrainedDefensesResult

    result = TrainedDefensesResult.model_validate_json(RESULTS.read_text())
    undefended = [c for c in result.configurations if c.family == "none"]
    assert len(undefended) == 1 and undefended[0].on_frontier
    assert {c.family for c in result.configurations} == {"none", "inference", "trained"}
    assert result.target.met == any(c.meets_target for c in result.configurations)
    assert (RESULTS.parent / result.plot).exists()
