"""Model-inversion attacks: a curious server reconstructs digits from the features at a cut of a small CNN."""

from __future__ import annotations

import math

import pytest
import torch

from edgesplit.errors import EdgesplitError, InputShapeError
from edgesplit.model.graph import trace
from edgesplit.privacy.inversion import (OPTIMIZE_WINDOW, ConvDecoder, FCDecoder, InversionResult, build_decoder,
                                         codec_transform,
                                         learned_inversion, mean_image_baseline, optimization_inversion,
                                         total_variation)
from edgesplit.model.train import train_classifier
from edgesplit.model.zoo import ZOO

EARLY = "conv1_2"  # the first cut after conv1 (conv, BN, ReLU): 16×8×8 crosses
LOGITS = "fc2"  # the last cut: the 10 logits cross
LEARNED = dict(epochs=10, batch_size=64, lr=3e-3, seed=0)
OPTIMIZATION = dict(steps=150, lr=0.05, tv_weight=0.01, seed=0)


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1 / mse(a, b))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def traced(digits):
    """small_cnn trained one epoch on digits (the victim's model), traced on one 1×8×8 digit."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ZOO["small_cnn"].factory(in_channels=1, num_classes=10)
        result = train_classifier(model, digits, epochs=1, batch_size=64, lr=3e-3, seed=0, progress=False)
    assert result.test_accuracy > 0.8
    return trace(model, digits.train_images[:1])


@pytest.fixture(scope="module")
def aux(digits):
    """The attacker's auxiliary digits: train split, disjoint from the victim's."""
    return digits.train_images[:600]


@pytest.fixture(scope="module")
def victims(digits):
    return digits.test_images


@pytest.fixture(scope="module")
def baseline(aux, victims):
    return mse(mean_image_baseline(aux, len(victims)), victims)


@pytest.fixture(scope="module")
def learned_early(traced, aux, victims):
    return learned_inversion(traced.split(EARLY), aux, victims, **LEARNED, progress=False)


def test_learned_inversion_reconstructs_early_cut_and_leaks_less_at_logits(traced, aux, victims, baseline,
                                                                          learned_early):
    late = learned_inversion(traced.split(LOGITS), aux, victims, **LEARNED, progress=False)
    early_mse, late_mse = mse(learned_early.reconstructions, victims), mse(late.reconstructions, victims)
    print(f"\nbaseline MSE {baseline:.4f}; learned {EARLY} MSE {early_mse:.4f} "
          f"PSNR {psnr(learned_early.reconstructions, victims):.1f} dB; {LOGITS} MSE {late_mse:.4f}")
    assert isinstance(learned_early, InversionResult)
    assert learned_early.reconstructions.shape == victims.shape
    assert 0 <= learned_early.reconstructions.min() and learned_early.reconstructions.max() <= 1
    assert learned_early.epochs == LEARNED["epochs"] and len(learned_early.train_loss) == LEARNED["epochs"]
    assert learned_early.train_loss[-1] < learned_early.train_loss[0]
    assert early_mse * 3 < baseline
    assert early_mse * 2 < late_mse


def test_optimization_inversion_reconstructs_early_cut(traced, victims, baseline):
    head = traced.split(EARLY).head
    params = {name: (p.detach().clone(), None if p.grad is None else p.grad.clone())
              for name, p in head.named_parameters()}
    result = optimization_inversion(head, victim_images=victims, **OPTIMIZATION, progress=False)
    error = mse(result.reconstructions, victims)
    print(f"\nbaseline MSE {baseline:.4f}; optimization {EARLY} MSE {error:.4f} "
          f"PSNR {psnr(result.reconstructions, victims):.1f} dB")
    assert result.reconstructions.shape == victims.shape
    assert result.epochs == OPTIMIZATION["steps"] and result.train_loss[-1] < result.train_loss[0]
    assert error * 3 < baseline
    # The white-box attacker only reads the head: its weights, gradients and modes are as they were.
    for name, p in head.named_parameters():
        value, grad = params[name]
        assert torch.equal(p, value) and (p.grad is None if grad is None else torch.equal(p.grad, grad))
    assert all(not m.training for m in head.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_optimization_inversion_from_received_features_matches_from_images(traced, victims):
    split = traced.split(EARLY)
    few = victims[:8]
    features = list(split.head(few))
    from_features = optimization_inversion(split, victim_features=features, steps=20, seed=0)
    from_images = optimization_inversion(split, victim_images=few, steps=20, seed=0)
    assert torch.allclose(from_features.reconstructions, from_images.reconstructions, atol=1e-6)
    # Batching over victims does not change any victim's reconstruction.
    batched = optimization_inversion(split, victim_images=few, steps=20, seed=0, batch_size=3)
    assert torch.allclose(batched.reconstructions, from_images.reconstructions, atol=1e-5)


def test_int2_codec_on_the_wire_makes_reconstruction_worse(traced, aux, victims, learned_early):
    quantized = learned_inversion(traced.split(EARLY), aux, victims, transform=codec_transform("int2"),
                                  **LEARNED, progress=False)
    clean, lossy = mse(learned_early.reconstructions, victims), mse(quantized.reconstructions, victims)
    print(f"\nlearned {EARLY} MSE {clean:.4f} raw, {lossy:.4f} through int2")
    assert lossy > clean


def test_codec_transform_returns_what_the_codec_decodes(traced, victims):
    features = list(traced.split(EARLY).head(victims[:4]))
    (through,) = codec_transform("int2")(features)
    assert through.shape == features[0].shape and through.dtype == torch.float32
    assert len(torch.unique(through[0])) <= 4  # each example is its own frame: at most 2**2 levels
    assert not torch.equal(through, features[0])
    (raw,) = codec_transform("fp32+zstd")(features)
    assert torch.equal(raw, features[0])


def test_learned_inversion_is_deterministic(traced, aux, victims):
    split = traced.split(EARLY)
    runs = [learned_inversion(split, aux[:200], victims[:16], epochs=2, seed=3) for _ in range(2)]
    assert torch.equal(runs[0].reconstructions, runs[1].reconstructions)
    assert runs[0].train_loss == runs[1].train_loss
    other = learned_inversion(split, aux[:200], victims[:16], epochs=2, seed=4)
    assert not torch.equal(other.reconstructions, runs[0].reconstructions)


def test_progress_bar_runs(traced, aux, victims):
    split = traced.split(EARLY)
    learned_inversion(split, aux[:64], victims[:4], epochs=1, progress=True)
    optimization_inversion(split, victim_images=victims[:4], steps=2, progress=True)


def test_decoder_for_resnet8_residual_cut_with_two_crossing_tensors():
    torch.manual_seed(0)
    model = ZOO["resnet8"].factory(in_channels=3, num_classes=10)
    traced = trace(model, torch.rand(1, 3, 32, 32))
    cut = next(c for c in traced.cuts if len(c.crossing) == 2)
    decoder = build_decoder([t.shape for t in cut.crossing], (3, 32, 32))
    assert isinstance(decoder, ConvDecoder)
    head = traced.split(cut).head
    with torch.no_grad():
        out = decoder.eval()(*head(torch.rand(1, 3, 32, 32)))
    assert out.shape == (1, 3, 32, 32)
    # Smooth random images, so that a few decoder steps have something learnable to fit.
    images = torch.nn.functional.interpolate(torch.rand(48, 3, 4, 4), size=(32, 32), mode="bilinear")
    result = learned_inversion(head, images[:32], images[32:], epochs=6, batch_size=16, lr=3e-3)
    assert result.reconstructions.shape == (16, 3, 32, 32)
    assert result.train_loss[-1] < result.train_loss[0]


def test_decoder_for_flat_cut_is_fully_connected(traced, aux, victims):
    cut = traced.cut("flatten")
    assert [t.shape for t in cut.crossing] == [(1, 256)]
    decoder = build_decoder([t.shape for t in cut.crossing], (1, 1, 8, 8))
    assert isinstance(decoder, FCDecoder)
    assert decoder.eval()(torch.rand(2, 256)).shape == (2, 1, 8, 8)
    result = learned_inversion(traced.split(cut), aux[:300], victims[:8], epochs=3)
    assert result.reconstructions.shape == (8, 1, 8, 8) and result.train_loss[-1] < result.train_loss[0]


def test_decoder_mixed_and_odd_shapes_never_fail():
    cases = [([(1, 64, 3, 3)], (1, 28, 28)), ([(1, 8, 40, 40)], (1, 28, 28)), ([(1, 65, 16)], (3, 32, 32)),
             ([(1, 32, 16, 16), (1, 16, 32, 32)], (3, 32, 32)), ([(1, 4, 4, 4), (1, 10)], (1, 8, 8))]
    for shapes, image in cases:
        out = build_decoder(shapes, image).eval()(*(torch.rand(2, *s[1:]) for s in shapes))
        assert out.shape == (2, *image)


def test_input_shape_mismatch_raises_clear_error(traced, digits):
    split = traced.split(EARLY)
    mnist_sized = torch.rand(4, 1, 28, 28)
    with pytest.raises(InputShapeError, match=r"auxiliary images are \(1, 28, 28\) but the model's input is "
                                              r"\(1, 8, 8\); resize"):
        learned_inversion(split, mnist_sized, digits.test_images[:4], epochs=1)
    with pytest.raises(InputShapeError, match=r"victim images are \(1, 28, 28\)"):
        learned_inversion(split, digits.train_images[:4], mnist_sized, epochs=1)
    with pytest.raises(InputShapeError, match=r"victim images are \(1, 28, 28\)"):
        optimization_inversion(split, victim_images=mnist_sized, steps=1)
    with pytest.raises(InputShapeError, match="N×C×H×W"):
        learned_inversion(split, digits.train_images[0], digits.test_images[:4], epochs=1)
    # An untraced head: the shapes are checked against each other, and running it fails clearly.
    plain = torch.nn.Conv2d(3, 4, 3)
    with pytest.raises(InputShapeError, match=r"victim images are \(1, 8, 8\) but the auxiliary images are \(3, 8"):
        learned_inversion(plain, torch.rand(4, 3, 8, 8), torch.rand(2, 1, 8, 8), epochs=1)
    with pytest.raises(InputShapeError, match="the head cannot run on auxiliary images"):
        learned_inversion(plain, torch.rand(4, 1, 8, 8), torch.rand(2, 1, 8, 8), epochs=1)
    with pytest.raises(InputShapeError, match="pass input_shape"):
        optimization_inversion(plain, victim_features=[torch.rand(2, 4, 6, 6)], steps=1)


def test_bad_arguments_raise_one_line_errors(traced, digits):
    split = traced.split(EARLY)
    images = digits.train_images[:4]
    calls = [
        lambda: learned_inversion(split, images, images, epochs=0),
        lambda: learned_inversion(split, images, images, epochs=1, lr=-1.0),
        lambda: learned_inversion(split, images[:1], images, epochs=1),
        lambda: learned_inversion(split, images, images, epochs=1, batch_size=1),
        lambda: learned_inversion(split, images, images, epochs=2.5),
        lambda: optimization_inversion(split, victim_images=images, steps=1, tv_weight=-1.0),
        lambda: optimization_inversion(split, steps=1),
        lambda: optimization_inversion(split, victim_images=images, victim_features=[images], steps=1),
        lambda: optimization_inversion(split, victim_features=[torch.rand(2, 10)], steps=1),
        lambda: build_decoder([], (1, 8, 8)),
        lambda: build_decoder([(1, 16, 8, 8)], (8, 8)),
    ]
    for call in calls:
        with pytest.raises(EdgesplitError) as info:
            call()
        assert "\n" not in str(info.value)


def test_total_variation_and_baseline():
    flat, edge = torch.full((1, 1, 4, 4), 0.5), torch.zeros(1, 1, 4, 4)
    edge[..., 2:] = 1.0
    assert total_variation(flat).item() == 0 and total_variation(edge).item() == pytest.approx(4 / 12)
    images = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    assert torch.equal(mean_image_baseline(images, 3), torch.full((3, 1, 2, 2), 0.5))


def test_learned_inversion_holds_out_stops_early_and_warm_starts(traced, aux, victims):
    split = traced.split(EARLY)
    # An improvement of 99% per epoch is never reached: the second epoch is the first without progress.
    stopped = learned_inversion(split, aux[:300], victims[:8], epochs=6, held_out=0.2, patience=1,
                                min_improvement=0.99, seed=0)
    assert stopped.epochs == 2 and len(stopped.held_out_loss) == 2 == len(stopped.train_loss)
    assert not stopped.warm_started and stopped.decoder is not None
    # The cut after the BatchNorm (conv1_1) sends the same 16×8×8 as EARLY: its decoder starts from EARLY's.
    same_shape = traced.split("conv1_1")
    warm = learned_inversion(same_shape, aux[:300], victims[:8], epochs=1, init=stopped.decoder)
    cold = learned_inversion(same_shape, aux[:300], victims[:8], epochs=1)
    assert warm.warm_started and not cold.warm_started
    assert warm.train_loss[0] < cold.train_loss[0]  # it starts from a decoder that already works
    # A cut of other shapes (the logits) cannot start from it and trains from scratch.
    assert not learned_inversion(traced.split(LOGITS), aux[:300], victims[:8], epochs=1,
                                 init=stopped.decoder).warm_started
    with pytest.raises(EdgesplitError, match="held_out"):
        learned_inversion(split, aux[:300], victims[:8], epochs=1, held_out=1.5)


def test_warm_started_decoders_stop_on_their_own_patience_cold_ones_run_on(traced, aux, victims):
    first = learned_inversion(traced.split(EARLY), aux[:300], victims[:8], epochs=1, seed=0)
    same_shape = traced.split("conv1_1")
    # With a 99% gain required, every epoch after the first is one without progress.
    rule = dict(epochs=5, held_out=0.2, min_improvement=0.99, warm_patience=1, seed=0)
    warm = learned_inversion(same_shape, aux[:300], victims[:8], init=first.decoder, **rule)
    assert warm.warm_started and warm.epochs == 2 and len(warm.held_out_loss) == 2
    # A cold decoder (no init, or one of other shapes) is not held to warm_patience: patience None runs all epochs.
    cold = learned_inversion(same_shape, aux[:300], victims[:8], **rule)
    assert not cold.warm_started and cold.epochs == 5
    assert learned_inversion(traced.split(LOGITS), aux[:300], victims[:8], init=first.decoder, **rule).epochs == 5
    # Without warm_patience a warm decoder falls back on patience (here None: every epoch).
    assert learned_inversion(same_shape, aux[:300], victims[:8], init=first.decoder,
                             **{**rule, "warm_patience": None}).epochs == 5
    with pytest.raises(EdgesplitError, match="warm_patience"):
        learned_inversion(same_shape, aux[:300], victims[:8], epochs=1, warm_patience=0)


def test_decoders_train_in_bf16_where_native_and_still_reconstruct(traced, aux, victims, baseline, monkeypatch):
    from edgesplit.privacy import inversion
    calls = []
    real = torch.autocast

    def spy(*args, **kwargs):
        calls.append(kwargs.get("enabled", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(inversion.torch, "autocast", spy)
    monkeypatch.setattr(inversion, "_NATIVE_BF16", True)
    fast = learned_inversion(traced.split(EARLY), aux, victims, **LEARNED, bf16=True)
    assert calls and all(calls)  # every training step under bf16 autocast
    assert fast.reconstructions.dtype == torch.float32
    assert mse(fast.reconstructions, victims) < 0.5 * baseline
    calls.clear()
    monkeypatch.setattr(inversion, "_NATIVE_BF16", False)  # emulated bf16 is slower than float32: not used
    learned_inversion(traced.split(EARLY), aux[:100], victims[:4], epochs=1, bf16=True)
    assert calls and not any(calls)


def test_optimization_from_a_prior_keeps_it_where_optimizing_only_makes_things_worse(traced, victims):
    split = traced.split(LOGITS)
    few = victims[:6]
    # Started at the true images (objective 0 without TV), no step can do better: every start is kept.
    exact = optimization_inversion(split, victim_images=few, init=few, tv_weight=0.0, steps=10, seed=0)
    assert exact.kept_start == len(few) and exact.warm_started
    assert torch.equal(exact.reconstructions, few)
    # A victim stops once its objective no longer improves by the tolerance over OPTIMIZE_WINDOW steps.
    stopped = optimization_inversion(split, victim_images=few, steps=200, tolerance=0.99, seed=0)
    assert stopped.epochs == OPTIMIZE_WINDOW and len(stopped.train_loss) == OPTIMIZE_WINDOW + 1
    full = optimization_inversion(split, victim_images=few, steps=40, seed=0)
    assert full.epochs == 40 and full.kept_start == 0
    with pytest.raises(EdgesplitError, match="init holds"):
        optimization_inversion(split, victim_images=few, init=few[:2], steps=2)
