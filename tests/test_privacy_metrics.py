"""Tests for edgesplit.privacy.metrics and .probes: image metrics against references, dependence and interval
properties, and label probes on a trained digits model's features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter

from edgesplit.model.data import load_dataset
from edgesplit.errors import EdgesplitError
from edgesplit.model.graph import trace
from edgesplit.privacy.metrics import (PSNR_CAP_DB, SSIM_CHUNK, bootstrap_ci, distance_correlation, gaussian_window,
                                       mean_ci, psnr, ssim, ssim_window_size)
from edgesplit.privacy.probes import (DEFAULT_EPOCHS, MLP_MIN_IMPROVEMENT, MLP_PATIENCE, ProbeResult, mlp_progress,
                                      probe_accuracy)
from edgesplit.model.train import train_classifier
from edgesplit.model.zoo import ZOO

EARLY_CUT = 3  # after conv1's ReLU: 16×8×8 values per digit
LOGITS_CUT = 16  # after fc2: the 10 logits


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def noisy(images: torch.Tensor, level: float, seed: int = 1) -> torch.Tensor:
    return (images + level * randn(*images.shape, seed=seed)).clamp(0, 1)


def reference_ssim(x: np.ndarray, y: np.ndarray, radius: int, sigma: float = 1.5) -> float:
    """scikit-image's algorithm for one 2-D channel: scipy's Gaussian filter, then the mean away from the border."""
    def blur(z: np.ndarray) -> np.ndarray:
        return gaussian_filter(z, sigma=sigma, radius=radius)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(index[radius:-radius, radius:-radius].mean()) if radius else float(index.mean())


# ------------------------------------------------------------------------------------------- psnr


def test_psnr_hand_computed() -> None:
    original = torch.zeros(2, 1, 4, 4)
    reconstructed = torch.stack([torch.full((1, 4, 4), 0.1), torch.full((1, 4, 4), 0.01)])
    # MSE 0.01 and 0.0001 with peak 1: 20 dB and 40 dB.
    assert psnr(reconstructed, original).tolist() == pytest.approx([20.0, 40.0])
    assert psnr(reconstructed * 255, original, data_range=255).tolist() == pytest.approx([20.0, 40.0])


def test_psnr_identical_images_report_the_finite_cap() -> None:
    images = rand(3, 1, 8, 8)
    values = psnr(images, images.clone())
    assert values.shape == (3,)
    assert torch.isfinite(values).all()
    assert values.tolist() == [PSNR_CAP_DB] * 3


def test_psnr_accepts_unchannelled_batches_and_falls_with_noise() -> None:
    images = rand(4, 16, 16)
    assert torch.equal(psnr(noisy(images, 0.1), images), psnr(noisy(images, 0.1)[:, None], images[:, None]))
    assert (psnr(noisy(images, 0.05), images) > psnr(noisy(images, 0.2), images)).all()


@pytest.mark.parametrize("call, message", [
    (lambda: psnr(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5)), "same shape"),
    (lambda: psnr(torch.zeros(4, 4), torch.zeros(4, 4)), "batch"),
    (lambda: psnr(torch.full((1, 1, 2, 2), math.nan), torch.zeros(1, 1, 2, 2)), "NaN"),
    (lambda: psnr(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), data_range=0), "data_range"),
])
def test_psnr_errors(call, message: str) -> None:
    with pytest.raises(EdgesplitError, match=message):
        call()


# ------------------------------------------------------------------------------------------- ssim


def test_ssim_matches_scikit_image_algorithm_on_32x32() -> None:
    original = rand(3, 2, 32, 32)
    reconstructed = noisy(original, 0.1)
    expected = [np.mean([reference_ssim(reconstructed[i, c].numpy(), original[i, c].numpy(), radius=5)
                         for c in range(2)]) for i in range(3)]
    assert ssim(reconstructed, original).tolist() == pytest.approx(expected, abs=1e-10)


def test_ssim_shrinks_the_window_on_8x8_digits() -> None:
    original = load_dataset("digits", limit=6).test_images.double()
    reconstructed = noisy(original, 0.15)
    assert ssim_window_size(8, 8) == 7
    # A 7-tap window of the same sigma: scipy's filter with radius 3, border of 3 dropped.
    expected = [reference_ssim(reconstructed[i, 0].numpy(), original[i, 0].numpy(), radius=3) for i in range(6)]
    values = ssim(reconstructed, original)
    assert values.tolist() == pytest.approx(expected, abs=1e-10)
    assert ((values > 0) & (values < 1)).all()


def test_ssim_hand_computed_single_window() -> None:
    # A 7×7 image under a 7×7 window has one position: the SSIM formula on Gaussian-weighted moments.
    x, y = rand(1, 1, 7, 7, seed=2), rand(1, 1, 7, 7, seed=3)
    offsets = np.arange(7) - 3.0
    weights = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    weights /= weights.sum()
    a, b = x[0, 0].numpy(), y[0, 0].numpy()
    mu_a, mu_b = (weights * a).sum(), (weights * b).sum()
    var_a, var_b = (weights * (a - mu_a) ** 2).sum(), (weights * (b - mu_b) ** 2).sum()
    cov = (weights * (a - mu_a) * (b - mu_b)).sum()
    c1, c2 = 1e-4, 9e-4
    expected = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    assert ssim(x, y, window=7).item() == pytest.approx(expected, abs=1e-12)
    assert ssim(x, y).item() == pytest.approx(expected, abs=1e-12)  # 11 shrinks to 7


def test_ssim_constant_images() -> None:
    # No variance anywhere: only the luminance term is left, (2ab + C1) / (a² + b² + C1).
    a, b = torch.full((1, 1, 12, 12), 0.2), torch.full((1, 1, 12, 12), 0.6)
    assert ssim(a, b).item() == pytest.approx((2 * 0.2 * 0.6 + 1e-4) / (0.2**2 + 0.6**2 + 1e-4))
    assert ssim(a, a).item() == pytest.approx(1.0)


def test_ssim_identical_is_one_symmetric_and_falls_with_noise() -> None:
    original = rand(4, 3, 24, 24)
    assert ssim(original, original.clone()).tolist() == pytest.approx([1.0] * 4)
    reconstructed = noisy(original, 0.1)
    assert torch.allclose(ssim(reconstructed, original), ssim(original, reconstructed), atol=1e-12)
    means = [float(ssim(noisy(original, level), original).mean()) for level in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert means == sorted(means, reverse=True)
    assert means[0] > 0.99 and means[-1] < 0.7


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 16), st.integers(1, 16), st.integers(0, 2**31 - 1))
def test_ssim_is_bounded_and_symmetric_for_any_size(height: int, width: int, seed: int) -> None:
    x, y = rand(2, 1, height, width, seed=seed), rand(2, 1, height, width, seed=seed + 1)
    values = ssim(x, y)
    assert values.shape == (2,)
    assert (values.abs() <= 1 + 1e-12).all()
    assert torch.allclose(values, ssim(y, x), atol=1e-12)
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0])


def test_ssim_of_a_large_batch_equals_ssim_image_by_image() -> None:
    original = rand(SSIM_CHUNK + 5, 1, 8, 8)
    reconstructed = noisy(original, 0.1)
    whole = ssim(reconstructed, original)
    assert whole.shape == (SSIM_CHUNK + 5,)
    for i in (0, SSIM_CHUNK - 1, SSIM_CHUNK, SSIM_CHUNK + 4):
        assert whole[i].item() == pytest.approx(ssim(reconstructed[i:i + 1], original[i:i + 1]).item(), abs=1e-12)


def test_ssim_window_size() -> None:
    assert ssim_window_size(28, 28) == 11
    assert ssim_window_size(8, 8) == 7
    assert ssim_window_size(7, 9) == 7
    assert ssim_window_size(1, 5) == 1
    assert ssim_window_size(28, 28, window=3) == 3
    assert gaussian_window(11, 1.5).sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("call, message", [
    (lambda: ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), window=4), "odd"),
    (lambda: ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 8, 8)), "same shape"),
    (lambda: ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), sigma=0), "positive"),
    (lambda: ssim(torch.zeros(1, 1, 0, 8), torch.zeros(1, 1, 0, 8)), "non-empty"),
])
def test_ssim_errors(call, message: str) -> None:
    with pytest.raises(EdgesplitError, match=message):
        call()


# -------------------------------------------------------------------------- distance correlation


def reference_dcor(x: np.ndarray, y: np.ndarray) -> float:
    """Székely, Rizzo & Bakirov (2007), equations 2.8–2.10, written out with loops."""
    n = len(x)
    a = np.array([[np.linalg.norm(x[k] - x[l]) for l in range(n)] for k in range(n)])
    b = np.array([[np.linalg.norm(y[k] - y[l]) for l in range(n)] for k in range(n)])
    big_a = np.empty_like(a)
    big_b = np.empty_like(b)
    for k in range(n):
        for l in range(n):
            big_a[k, l] = a[k, l] - a[k].mean() - a[:, l].mean() + a.mean()
            big_b[k, l] = b[k, l] - b[k].mean() - b[:, l].mean() + b.mean()
    dcov2 = (big_a * big_b).sum() / n**2
    return math.sqrt(dcov2 / math.sqrt((big_a**2).sum() / n**2 * (big_b**2).sum() / n**2))


def test_dcor_matches_the_definition() -> None:
    x, y = randn(12, 3, seed=4).numpy(), randn(12, 2, seed=5).numpy()
    y[:, 0] += x[:, 0] ** 2
    assert distance_correlation(x, y) == pytest.approx(reference_dcor(x, y), abs=1e-12)


def test_dcor_of_a_variable_with_itself_is_one() -> None:
    x = randn(200, 2, 4, 4)
    assert distance_correlation(x, x) == pytest.approx(1.0)
    assert distance_correlation(x, x.flatten(1)) == pytest.approx(1.0)  # samples are flattened


def test_dcor_of_independent_samples_is_near_zero() -> None:
    value = distance_correlation(randn(2000, 2, seed=6), randn(2000, 2, seed=7))
    assert value < 0.1


def test_dcor_is_invariant_to_scale_shift_and_rotation() -> None:
    x = randn(300, 4, seed=8)
    y = torch.tanh(x[:, :2] @ randn(2, 3, seed=9)) + 0.3 * randn(300, 3, seed=10)
    rotation, _ = torch.linalg.qr(randn(4, 4, seed=11))
    base = distance_correlation(x, y)
    assert 0.2 < base < 0.95
    # Not to 1e-12: above 25 samples torch.cdist computes distances through a matrix product.
    assert distance_correlation(3.5 * x, y) == pytest.approx(base, abs=1e-6)
    assert distance_correlation(x, 0.01 * y + 7) == pytest.approx(base, abs=1e-6)
    assert distance_correlation(x @ rotation, y) == pytest.approx(base, abs=1e-6)
    assert distance_correlation(y, x) == pytest.approx(base, abs=1e-6)


def test_dcor_sees_nonlinear_dependence_that_correlation_misses() -> None:
    x = rand(1000, 1, seed=12) * 2 - 1
    square = x**2
    assert abs(float(np.corrcoef(x[:, 0], square[:, 0])[0, 1])) < 0.1
    assert distance_correlation(x, square) > 0.4
    assert distance_correlation(x, torch.tanh(3 * x)) > 0.9


def test_dcor_subsamples_above_the_limit_with_a_seed() -> None:
    x = randn(600, 3, seed=13)
    y = x**2 + 0.5 * randn(600, 3, seed=14)
    first = distance_correlation(x, y, max_samples=200, seed=1)
    assert first == distance_correlation(x, y, max_samples=200, seed=1)
    assert first != distance_correlation(x, y, max_samples=200, seed=2)
    assert first == pytest.approx(distance_correlation(x, y), abs=0.1)


def test_dcor_of_a_constant_is_zero_and_errors() -> None:
    assert distance_correlation(torch.ones(10, 3), randn(10, 3)) == 0.0
    with pytest.raises(EdgesplitError, match="paired samples"):
        distance_correlation(randn(10, 3), randn(11, 3))
    with pytest.raises(EdgesplitError, match="at least 2 samples"):
        distance_correlation(randn(1, 3), randn(1, 3))
    with pytest.raises(EdgesplitError, match="NaN"):
        distance_correlation(torch.full((4, 2), math.nan), randn(4, 2))
    with pytest.raises(EdgesplitError, match="max_samples"):
        distance_correlation(randn(4, 2), randn(4, 2), max_samples=1)


# ------------------------------------------------------------------------------------ intervals


def test_mean_ci_hand_computed() -> None:
    # mean 2.5, s = sqrt(5/3), t(0.975, 3) = 3.182446305284263.
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert mean_ci([1, 2, 3, 4]) == pytest.approx((2.5, 2.5 - half, 2.5 + half))
    mean, low, high = mean_ci(torch.tensor([1.0, 2.0, 3.0, 4.0]), confidence=0.99)
    assert low < 2.5 - half and high > 2.5 + half
    assert mean_ci([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.7, 0.7))


def test_mean_ci_covers_the_true_mean_about_as_often_as_promised() -> None:
    rng = np.random.default_rng(0)
    hits = sum(low <= 0 <= high for _, low, high in (mean_ci(rng.normal(size=10)) for _ in range(400)))
    assert 0.91 <= hits / 400 <= 0.99


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate() -> None:
    correct = np.r_[np.ones(85), np.zeros(15)]
    estimate, low, high = bootstrap_ci(correct)
    assert estimate == pytest.approx(0.85)
    assert 0.75 < low < estimate < high < 0.93
    assert bootstrap_ci(correct) == (estimate, low, high)
    assert bootstrap_ci(correct, seed=1) != (estimate, low, high)
    assert bootstrap_ci(np.ones(20)) == (1.0, 1.0, 1.0)
    median, low, high = bootstrap_ci(np.arange(101.0), statistic=np.median, n=200)
    assert median == 50.0 and low < 50 < high


@pytest.mark.parametrize("call, message", [
    (lambda: mean_ci([1.0]), "at least 2 values"),
    (lambda: mean_ci([1.0, math.inf]), "NaN or infinite"),
    (lambda: mean_ci([1.0, 2.0], confidence=1.0), "between 0 and 1"),
    (lambda: bootstrap_ci([]), "at least 1 value"),
    (lambda: bootstrap_ci([1.0], n=0), "positive integer"),
])
def test_interval_errors(call, message: str) -> None:
    with pytest.raises(EdgesplitError, match=message):
        call()


# ------------------------------------------------------------------------------------------ probes


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def cut_features(digits) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """(aux = train split, victim = test split) features of a trained small_cnn at the early and logits cuts."""
    torch.manual_seed(0)
    model = ZOO["small_cnn"].factory(in_channels=1, num_classes=10)
    result = train_classifier(model, digits, epochs=2, batch_size=128, lr=1e-2, progress=False)
    assert result.test_accuracy > 0.9
    traced = trace(model, digits.train_images[:1])
    features = {}
    with torch.no_grad():
        for cut in (EARLY_CUT, LOGITS_CUT):
            head = traced.split(cut).head
            features[cut] = (head(digits.train_images), head(digits.test_images))
    return features


@pytest.mark.parametrize("cut", [EARLY_CUT, LOGITS_CUT])
def test_linear_probe_reads_labels_from_trained_features(digits, cut_features, cut: int) -> None:
    aux, victim = cut_features[cut]
    result = probe_accuracy(aux, digits.train_labels, victim, digits.test_labels, kind="linear")
    assert isinstance(result, ProbeResult) and result.kind == "linear"
    assert result.samples == len(digits.test_labels)
    assert result.chance == pytest.approx(float(torch.bincount(digits.test_labels).max()) / len(digits.test_labels))
    assert result.chance < 0.15
    assert result.accuracy > 0.8
    assert result.ci_low <= result.accuracy <= result.ci_high
    assert result.ci_high - result.ci_low < 0.1


def test_mlp_probe_reads_labels_from_early_features(digits, cut_features) -> None:
    aux, victim = cut_features[EARLY_CUT]
    result = probe_accuracy(aux, digits.train_labels, victim, digits.test_labels, kind="mlp")
    assert result.kind == "mlp"
    assert result.accuracy > 0.8
    assert result.ci_low <= result.accuracy <= result.ci_high
    # Early stopping ends it once the held-out accuracy and loss have settled, well before the cap.
    assert MLP_PATIENCE < result.epochs < DEFAULT_EPOCHS["mlp"]


def test_mlp_early_stopping_counts_real_loss_gains_only() -> None:
    assert mlp_progress(0.5, best_loss=float("inf"))  # the first epoch
    assert mlp_progress(1.0 * (1 - 2 * MLP_MIN_IMPROVEMENT), best_loss=1.0)
    # The held-out loss creeping down under weight decay while the accuracy stands still is no progress.
    assert not mlp_progress(1.0 * (1 - MLP_MIN_IMPROVEMENT / 2), best_loss=1.0)
    assert not mlp_progress(1.1, best_loss=1.0)


def test_mlp_probe_stops_when_only_the_loss_creeps_down(digits) -> None:
    # Raw pixels of the digits: the held-out accuracy settles within a few passes while weight decay keeps shaving
    # the held-out loss; counting every lower loss as progress (patience 5) ran 43 passes, this stops after 14.
    aux, victim = digits.train_images, digits.test_images
    result = probe_accuracy(aux, digits.train_labels, victim, digits.test_labels, kind="mlp", epochs=60)
    assert result.accuracy > 0.9
    assert result.epochs <= 25


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_probe_on_noise_features_is_near_chance(digits, kind: str) -> None:
    aux = randn(len(digits.train_labels), 64, seed=20)
    victim = randn(len(digits.test_labels), 64, seed=21)
    result = probe_accuracy(aux, digits.train_labels, victim, digits.test_labels, kind=kind)
    assert result.accuracy < result.chance + 0.08
    assert result.ci_low <= result.chance + 0.02


def test_probe_is_deterministic_and_leaves_the_global_rng_alone(digits) -> None:
    aux, victim = digits.train_images[:400], digits.test_images[:200]
    state = torch.random.get_rng_state()
    first = probe_accuracy(aux, digits.train_labels[:400], victim, digits.test_labels[:200], kind="mlp", epochs=20)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = probe_accuracy(aux, digits.train_labels[:400], victim, digits.test_labels[:200], kind="mlp", epochs=20)
    assert first == again


def test_probe_standardises_with_aux_statistics_only(digits) -> None:
    aux, victim = digits.train_images[:600], digits.test_images[:300]
    aux_labels, victim_labels = digits.train_labels[:600], digits.test_labels[:300]
    clean = probe_accuracy(aux, aux_labels, victim, victim_labels)
    assert clean.accuracy > 0.85
    # Were the victim standardised with its own statistics, a constant shift would change nothing.
    shifted = probe_accuracy(aux, aux_labels, victim + 5.0, victim_labels)
    assert shifted.accuracy < clean.accuracy - 0.2


def test_probe_takes_the_tuple_a_split_head_returns(digits) -> None:
    aux, victim = digits.train_images[:300], digits.test_images[:100]
    labels = digits.train_labels[:300], digits.test_labels[:100]
    joined = probe_accuracy(aux, labels[0], victim, labels[1], epochs=30)
    assert probe_accuracy((aux,), labels[0], (victim,), labels[1], epochs=30) == joined
    halves = probe_accuracy((aux[:, :, :4], aux[:, :, 4:]), labels[0], (victim[:, :, :4], victim[:, :, 4:]),
                            labels[1], epochs=30)
    assert halves.accuracy > 0.7


@pytest.mark.parametrize("arguments, message", [
    ((torch.zeros(10, 4), torch.arange(10) % 2, torch.zeros(5, 3), torch.zeros(5, dtype=torch.long)),
     "aux features have 4 values per sample but victim features have 3"),
    ((torch.zeros(10, 4), torch.zeros(10, dtype=torch.long), torch.zeros(5, 4), torch.zeros(5, dtype=torch.long)),
     "at least 2 classes"),
    ((torch.zeros(10, 4), torch.arange(9) % 2, torch.zeros(5, 4), torch.zeros(5, dtype=torch.long)),
     "aux_features hold 10 samples but aux_labels hold 9"),
    ((torch.zeros(10, 4), torch.arange(10) % 2, torch.zeros(5, 4), torch.zeros(6, dtype=torch.long)),
     "victim_features hold 5 samples but victim_labels hold 6"),
    ((torch.zeros(10, 4), torch.zeros(10), torch.zeros(5, 4), torch.zeros(5, dtype=torch.long)),
     "integer class indices"),
    ((torch.zeros(10, 4), torch.arange(10) % 2, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)),
     "no victim samples"),
    ((torch.full((10, 4), math.nan), torch.arange(10) % 2, torch.zeros(5, 4), torch.zeros(5, dtype=torch.long)),
     "NaN"),
])
def test_probe_errors(arguments: tuple, message: str) -> None:
    with pytest.raises(EdgesplitError, match=message):
        probe_accuracy(*arguments)


def test_probe_rejects_bad_options() -> None:
    features, labels = torch.zeros(10, 4), torch.arange(10) % 2
    with pytest.raises(EdgesplitError, match="unknown kind 'svm'"):
        probe_accuracy(features, labels, features, labels, kind="svm")  # type: ignore[arg-type]
    with pytest.raises(EdgesplitError, match="epochs must be a positive integer"):
        probe_accuracy(features, labels, features, labels, epochs=0)
    with pytest.raises(EdgesplitError, match="at least 10"):
        probe_accuracy(features[:5], labels[:5], features, labels, kind="mlp")


def test_distance_correlation_interval_holds_the_estimate_and_separates_dependence():
    from edgesplit.privacy.metrics import distance_correlation, distance_correlation_ci

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=generator)
    dependent = torch.tanh(x @ torch.randn(16, 8, generator=generator)) + 0.05 * torch.randn(200, 8, generator=generator)
    independent = torch.randn(200, 8, generator=generator)
    high = distance_correlation_ci(x, dependent)
    low = distance_correlation_ci(x, independent)
    for value, lower, upper in (high, low):
        assert 0 <= lower <= value <= upper <= 1
    assert high[0] == pytest.approx(distance_correlation(x, dependent))
    assert low[2] < high[1]  # the intervals do not overlap
    fewer = distance_correlation_ci(x, dependent, max_samples=50)
    assert fewer[2] - fewer[1] > high[2] - high[1]  # fewer samples, wider interval
