"""Defenses at a cut: parsing, what each one does to the crossing features, and what it costs in accuracy."""

from __future__ import annotations

import pytest
import torch

from conftest import trained_small_cnn
from edgesplit.compress.bottleneck import BottleneckError
from edgesplit.model.data import load_dataset
from edgesplit.errors import EdgesplitError, InputShapeError
from edgesplit.model.graph import trace
from edgesplit.privacy.defenses import (DEFENSE_KINDS, DefendedCut, DefenseSpec, GaussianNoise, build_defense,
                                        distance_correlation_torch, parse_defense, parse_defenses)
from edgesplit.privacy.metrics import distance_correlation
from edgesplit.model.train import evaluate
from edgesplit.model.zoo import ZOO

CUT = "pool1"  # small_cnn after conv2 and the first pooling: one 32×4×4 tensor crosses
FLAT_CUT = "flatten"  # one flat 256-vector crosses
CHANCE = 0.1  # ten digit classes


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(small_cnn_on_digits_state):
    """small_cnn trained two epochs on digits (about 97% test accuracy; trained once per session, in conftest.py)."""
    return trained_small_cnn(small_cnn_on_digits_state)


@pytest.fixture(scope="module")
def traced(model, digits):
    return trace(model, digits.train_images[:1])


@pytest.fixture(scope="module")
def split(traced):
    return traced.split(CUT)


def defend(text: str, split, model, digits, **options) -> DefendedCut:
    return build_defense(parse_defense(text), split, model, digits, **options)


def accuracy_on_test(defended: DefendedCut, digits) -> float:
    return defended.accuracy(digits.test_images, digits.test_labels)


# ------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, kind, strength, canonical", [
    ("none", "none", None, "none"),
    (" None ", "none", None, "none"),
    ("noise:0.5", "noise", 0.5, "noise:0.5"),
    ("NOISE: 0.50", "noise", 0.5, "noise:0.5"),
    ("noise:3", "noise", 3.0, "noise:3"),
    ("dropout:0.3", "dropout", 0.3, "dropout:0.3"),
    ("quant:2", "quant", 2, "quant:2"),
    ("quant:8.0", "quant", 8, "quant:8"),
    ("nopeek:1e-3", "nopeek", 0.001, "nopeek:0.001"),
    ("bottleneck:4", "bottleneck", 4, "bottleneck:4"),
])
def test_parse_defense_accepts_each_form(text, kind, strength, canonical):
    spec = parse_defense(text)
    assert spec == DefenseSpec(kind, strength, canonical)
    assert spec.kind in DEFENSE_KINDS
    assert parse_defense(spec.text) == spec  # the canonical text parses back to the same spec


@pytest.mark.parametrize("text", [
    "", "gauss:1", "none:1", "noise", "noise:", "noise:0", "noise:-1", "noise:nan", "noise:inf", "noise:abc",
    "noise:0.5:1", "dropout:0", "dropout:1", "dropout:1.5", "quant:0", "quant:9", "quant:2.5", "nopeek:0",
    "nopeek:-2", "bottleneck:0", "bottleneck:1.5", "bottleneck",
])
def test_parse_defense_rejects_bad_text_naming_the_accepted_forms(text):
    with pytest.raises(EdgesplitError) as error:
        parse_defense(text)
    message = str(error.value)
    assert repr(text) in message
    assert "noise:SIGMA" in message and "bottleneck:CHANNELS" in message and "\n" not in message


def test_parse_defense_rejects_non_text():
    with pytest.raises(EdgesplitError, match="expected text"):
        parse_defense(0.5)  # type: ignore[arg-type]


def test_parse_defenses_splits_commas_dedups_keeps_order_and_starts_with_none():
    specs = parse_defenses(["noise:0.1,noise:0.5", "dropout:0.3", "noise:0.10", "none", " quant:4 , "])
    assert [s.text for s in specs] == ["none", "noise:0.1", "noise:0.5", "dropout:0.3", "quant:4"]
    assert [s.text for s in parse_defenses([])] == ["none"]
    assert [s.text for s in parse_defenses("nopeek:1")] == ["none", "nopeek:1"]
    with pytest.raises(EdgesplitError, match="unknown defense"):
        parse_defenses(["noise:0.1,blur:2"])


# ------------------------------------------------------------------------------------------- none


def test_none_sends_the_heads_output_and_keeps_the_models_accuracy(split, model, digits):
    defended = defend("none", split, model, digits)
    images = digits.test_images[:300]  # more than one send batch of 256
    sent = defended.send(images)
    with torch.no_grad():
        clean = split.head(images)
    assert len(sent) == len(clean) == 1
    assert torch.equal(sent[0], clean[0])
    assert defended.transform is None and defended.train_seconds == 0.0
    assert defended.input_shape == (1, 8, 8)
    assert accuracy_on_test(defended, digits) == pytest.approx(evaluate(model, digits.test_images, digits.test_labels))


def test_none_applies_the_deployment_codec(split, model, digits):
    defended = defend("none", split, model, digits, codec="int8")
    images = digits.test_images[:20]
    sent = defended.send(images)[0]
    with torch.no_grad():
        clean = split.head(images)[0]
    assert not torch.equal(sent, clean)
    assert (sent - clean).abs().max() <= clean.abs().max() / 100
    assert all(len(sent[i].unique()) <= 256 for i in range(len(images)))


def test_accuracy_rejects_mismatched_labels(split, model, digits):
    defended = defend("none", split, model, digits)
    with pytest.raises(EdgesplitError, match="as many labels"):
        defended.accuracy(digits.test_images[:10], digits.test_labels[:9])


# ------------------------------------------------------------------------------------------- noise, dropout, quant


def test_noise_costs_accuracy_as_sigma_grows(split, model, digits):
    clean = evaluate(model, digits.test_images, digits.test_labels)
    weak = accuracy_on_test(defend("noise:0.1", split, model, digits), digits)
    strong = accuracy_on_test(defend("noise:3", split, model, digits), digits)
    assert weak >= strong
    assert weak > clean - 0.03
    assert strong < clean - 0.15


def test_noise_std_is_sigma_times_the_clean_feature_std(split, model, digits):
    defended = defend("noise:0.5", split, model, digits)
    with torch.no_grad():
        train_std = float(split.head(digits.train_images[:1024])[0].std())
        clean = split.head(digits.test_images)[0]
    noisy = defended.send(digits.test_images)[0]
    assert not torch.allclose(noisy, clean)
    assert float((noisy - clean).std()) == pytest.approx(0.5 * train_std, rel=0.1)
    assert defended.train_log["feature_std"] == [pytest.approx(train_std, rel=1e-4)]
    assert defended.train_seconds == 0.0


def test_noise_is_reproducible_fresh_per_call_and_leaves_the_global_generator_alone(split, model, digits):
    images = digits.test_images[:50]
    state = torch.get_rng_state()
    first = defend("noise:1", split, model, digits, seed=3)
    second = defend("noise:1", split, model, digits, seed=3)
    other = defend("noise:1", split, model, digits, seed=4)
    a1, a2 = first.send(images)[0], first.send(images)[0]
    b1, b2 = second.send(images)[0], second.send(images)[0]
    assert torch.equal(a1, b1) and torch.equal(a2, b2)  # same seed, same calls: same noise
    assert not torch.equal(a1, a2)  # each send draws fresh noise
    assert not torch.equal(a1, other.send(images)[0])
    assert torch.equal(torch.get_rng_state(), state)


def test_noise_scales_each_crossing_tensor_by_its_own_std():
    noise = GaussianNoise([0.1, 2.0], seed=0)
    features = [torch.zeros(200, 16, 4, 4), torch.ones(200, 8)]
    small, large = noise(features)
    assert float(small.std()) == pytest.approx(0.1, rel=0.05)
    assert float((large - 1).std()) == pytest.approx(2.0, rel=0.05)
    with pytest.raises(EdgesplitError, match="2 crossing tensors"):
        noise(features[:1])


def test_noise_after_the_codec_path_keeps_the_codec_last(split, model, digits):
    defended = defend("noise:0.5", split, model, digits, codec="int2")
    sent = defended.send(digits.test_images[:20])[0]
    assert all(len(sent[i].unique()) <= 4 for i in range(len(sent)))


def test_dropout_zeroes_a_fraction_p_and_keeps_the_mean(split, model, digits):
    defended = defend("dropout:0.3", split, model, digits)
    with torch.no_grad():
        clean = split.head(digits.test_images)[0]
    sent = defended.send(digits.test_images)[0]
    nonzero = clean != 0
    dropped = float((sent[nonzero] == 0).float().mean())
    assert dropped == pytest.approx(0.3, abs=0.02)
    assert float(sent.mean()) == pytest.approx(float(clean.mean()), rel=0.05)
    kept = sent != 0
    assert torch.allclose(sent[kept], clean[kept] / 0.7, rtol=1e-5, atol=1e-6)
    assert accuracy_on_test(defended, digits) > CHANCE


def test_quant_2_sends_at_most_four_values_per_example(split, model, digits):
    defended = defend("quant:2", split, model, digits, codec="int8+zstd")  # quant replaces the codec
    sent = defended.send(digits.test_images[:40])[0]
    counts = [len(sent[i].unique()) for i in range(len(sent))]
    assert max(counts) <= 4 and min(counts) >= 2
    assert accuracy_on_test(defended, digits) > CHANCE


# ------------------------------------------------------------------------------------------- nopeek


def _parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_nopeek_lowers_distance_correlation_and_leaves_the_split_unchanged(split, model, digits):
    before_head, before_tail = _parameters(split.head), _parameters(split.tail)
    state = torch.get_rng_state()
    defended = defend("nopeek:5", split, model, digits, epochs=2, train_limit=1024)
    assert torch.equal(torch.get_rng_state(), state)
    images = digits.test_images[:300]
    with torch.no_grad():
        clean = split.head(images)[0]
    dcor_before = distance_correlation(images, clean)
    dcor_after = distance_correlation(images, defended.send(images)[0])
    assert dcor_after < dcor_before - 0.05
    assert accuracy_on_test(defended, digits) > 0.5
    for before, after in ((before_head, split.head), (before_tail, split.tail)):
        assert all(torch.equal(v, after.state_dict()[k]) for k, v in before.items())
    assert not defended.head.training and not defended.tail.training
    assert defended.head is not split.head
    assert len(defended.train_log["loss"]) == len(defended.train_log["dcor"]) == 2
    assert defended.train_seconds > 0


def test_nopeek_trains_at_a_cut_that_sends_two_tensors(digits):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = ZOO["resnet8"].factory(in_channels=1, num_classes=10)
    traced = trace(net, digits.train_images[:1])
    inside = traced.split("layers_0_conv1_2")
    assert len(inside.cut.crossing) == 2
    defended = defend("nopeek:1", inside, net, digits, epochs=1, train_limit=130)  # last batch of 2
    assert len(defended.send(digits.test_images[:5])) == 2
    assert len(defended.train_log["loss"]) == 1
    noisy = defend("noise:1", inside, net, digits)
    assert len(noisy.train_log["noise_std"]) == 2
    with pytest.raises(BottleneckError, match="one N×C×H×W tensor"):
        defend("bottleneck:2", inside, net, digits)


# ------------------------------------------------------------------------------------------- bottleneck


def test_bottleneck_sends_an_integer_code_of_the_asked_channels(split, model, digits):
    state = torch.get_rng_state()
    defended = defend("bottleneck:4", split, model, digits, codec="int8", epochs=2, train_limit=1024)
    assert torch.equal(torch.get_rng_state(), state)
    code = defended.send(digits.test_images[:100])
    assert len(code) == 1 and code[0].shape == (100, 4, 4, 4)
    assert torch.equal(code[0], code[0].round()) and 0 <= code[0].min() and code[0].max() <= 15
    assert defended.transform is None  # the code is already quantized: the deployment codec is not applied
    assert accuracy_on_test(defended, digits) > 3 * CHANCE
    assert defended.train_seconds > 0
    assert len(defended.train_log["feature_loss"]) == len(defended.train_log["task_loss"]) == 2


def test_bottleneck_refuses_a_cut_that_sends_a_flat_tensor(traced, model, digits):
    with pytest.raises(EdgesplitError, match="pick a cut between blocks"):
        defend("bottleneck:2", traced.split(FLAT_CUT), model, digits)


# ------------------------------------------------------------------------------------------- build_defense


@pytest.mark.parametrize("options, message", [
    ({"epochs": 0}, "epochs"), ({"batch_size": 1}, "batch_size"), ({"lr": 0.0}, "lr"),
    ({"train_limit": 1}, "train_limit"),
])
def test_build_defense_rejects_bad_settings(split, model, digits, options, message):
    with pytest.raises(EdgesplitError, match=message):
        defend("none", split, model, digits, **options)


def test_build_defense_rejects_images_of_another_shape(split, model, digits):
    other = load_dataset("digits", image_size=12)
    with pytest.raises(InputShapeError, match="traced on"):
        defend("noise:1", split, model, other)


def test_build_defense_accepts_spec_text(split, model, digits):
    assert build_defense("dropout:0.5", split, model, digits).spec == parse_defense("dropout:0.5")


# ------------------------------------------------------------------------------------------- distance correlation


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_distance_correlation_torch_matches_the_metric(dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 8, 8, generator=generator, dtype=dtype)
    related = torch.tanh(x.flatten(1)[:, :20] * 2) + 0.3 * torch.randn(64, 20, generator=generator, dtype=dtype)
    independent = torch.randn(64, 30, generator=generator, dtype=dtype)
    for y in (related, independent, x):
        value = distance_correlation_torch(x, y)
        assert value.dtype == dtype
        assert float(value) == pytest.approx(distance_correlation(x, y), abs=1e-5)


def test_distance_correlation_torch_has_finite_gradients():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 10, generator=generator)
    x = torch.cat([x, x[:2]])  # repeated rows: distance 0, where sqrt's gradient is infinite
    weights = torch.randn(10, 5, generator=generator, requires_grad=True)
    value = distance_correlation_torch(x, x @ weights)
    value.backward()
    assert weights.grad is not None and torch.isfinite(weights.grad).all() and weights.grad.abs().sum() > 0
    constant = torch.zeros(17, 5, requires_grad=True)
    zero = distance_correlation_torch(x[:17], constant * 1.0)
    zero.backward()
    assert float(zero.detach()) == 0.0 and torch.isfinite(constant.grad).all()
    with pytest.raises(EdgesplitError, match="at least 2"):
        distance_correlation_torch(x[:1], x[:1])
