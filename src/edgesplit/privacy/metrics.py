"""Leakage metrics: how close a reconstruction is to the private input (PSNR, SSIM), how dependent the
features at a cut are on it (distance correlation), and confidence intervals for any of them.

Image metrics take batches N×C×H×W (or N×H×W) and return one value per image as float64, so that an
audit can report a mean with an interval rather than a single number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgesplit.errors import EdgesplitError

PSNR_CAP_DB = 100.0  # reported for identical images, whose PSNR is infinite
DCOR_MAX_SAMPLES = 2048  # distance matrices are N×N float64: 2048 samples take 32 MiB each
SSIM_CHUNK = 1024  # images filtered at once


# ------------------------------------------------------------------------------------------ images


def _image_pair(reconstructed: torch.Tensor, original: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Both batches as float64 N×C×H×W after checking they match and hold only finite values."""
    reconstructed, original = torch.as_tensor(reconstructed), torch.as_tensor(original)
    if reconstructed.shape != original.shape:
        raise EdgesplitError(f"{what}: reconstruction has shape {tuple(reconstructed.shape)} but the original has "
                             f"{tuple(original.shape)}; compare images of the same shape")
    if original.ndim not in (3, 4):
        raise EdgesplitError(f"{what}: images must be a batch N×C×H×W or N×H×W, got shape {tuple(original.shape)}; "
                             "add a batch dimension with x[None]")
    if original.ndim == 3:
        reconstructed, original = reconstructed[:, None], original[:, None]
    reconstructed, original = reconstructed.detach().double(), original.detach().double()
    if not (torch.isfinite(reconstructed).all() and torch.isfinite(original).all()):
        raise EdgesplitError(f"{what}: images contain NaN or infinite values; check the attack that produced them")
    return reconstructed, original


def _check_data_range(data_range: float, what: str) -> None:
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise EdgesplitError(f"{what}: data_range must be a positive number (1.0 for images in [0, 1], 255 for "
                             f"uint8), got {data_range!r}")


def psnr(reconstructed: torch.Tensor, original: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image (N,); identical images get PSNR_CAP_DB (100 dB), not +inf.

    The cap keeps means and intervals finite; any PSNR above it is reported as the cap.
    """
    _check_data_range(data_range, "psnr")
    reconstructed, original = _image_pair(reconstructed, original, "psnr")
    mse = (reconstructed - original).square().flatten(1).mean(1)
    db = 10.0 * torch.log10(data_range**2 / mse)  # mse 0 gives +inf, which the cap replaces
    return db.clamp(max=PSNR_CAP_DB)


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian of odd length ``size`` (float64)."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-offsets.square() / (2 * sigma**2))
    return weights / weights.sum()


def ssim_window_size(height: int, width: int, window: int = 11) -> int:
    """The window SSIM uses on H×W images: ``window``, or the largest odd size ≤ min(H, W) when that is smaller."""
    smallest = min(height, width)
    return window if window <= smallest else smallest - (1 - smallest % 2)


def ssim(reconstructed: torch.Tensor, original: torch.Tensor, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity of each image (N,), in [-1, 1] with 1 for identical images.

    Matches scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=...)``: local statistics under a Gaussian window, averaged over
    the positions where the window fits inside the image (no padding), then over channels.

    Images smaller than the window (8×8 digits) get the window shrunk to the largest odd size ≤ min(H, W)
    (7 for 8×8), same sigma; scikit-image refuses such images. Values on such images are comparable with
    each other but not with 11×11-window values on larger images.
    """
    _check_data_range(data_range, "ssim")
    if not (isinstance(window, int) and window >= 1 and window % 2 == 1):
        raise EdgesplitError(f"ssim: window must be a positive odd integer, got {window!r}; use e.g. 11")
    if not (sigma > 0 and k1 > 0 and k2 > 0):
        raise EdgesplitError(f"ssim: sigma, k1 and k2 must be positive, got sigma={sigma}, k1={k1}, k2={k2}")
    reconstructed, original = _image_pair(reconstructed, original, "ssim")
    n, channels, height, width = original.shape
    if height == 0 or width == 0:
        raise EdgesplitError(f"ssim: images are {height}×{width}; pass non-empty images")
    if n == 0:
        return torch.zeros(0, dtype=torch.float64)
    size = ssim_window_size(height, width, window)
    taps = gaussian_window(size, sigma)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    # In chunks: the five filtered maps of a whole MNIST test set would take 300 MB.
    return torch.cat([_ssim_chunk(reconstructed[i:i + SSIM_CHUNK], original[i:i + SSIM_CHUNK], taps, c1, c2)
                      for i in range(0, n, SSIM_CHUNK)])


def _ssim_chunk(reconstructed: torch.Tensor, original: torch.Tensor, taps: torch.Tensor, c1: float,
                c2: float) -> torch.Tensor:
    """SSIM of each image of one chunk (N,), for the window whose 1-D taps are ``taps``."""
    n, channels, height, width = original.shape
    size = len(taps)
    x = reconstructed.reshape(n * channels, 1, height, width)
    y = original.reshape(n * channels, 1, height, width)
    # Five maps filtered at once, each channel of each image separately; the 2-D Gaussian is separable.
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    maps = F.conv2d(maps, taps.view(1, 1, size, 1).expand(5, 1, size, 1), groups=5)
    maps = F.conv2d(maps, taps.view(1, 1, 1, size).expand(5, 1, 1, size), groups=5)
    mu_x, mu_y, mean_xx, mean_yy, mean_xy = maps.unbind(1)
    var_x = mean_xx - mu_x.square()
    var_y = mean_yy - mu_y.square()
    cov_xy = mean_xy - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return index.reshape(n, channels, -1).mean(2).mean(1)


# --------------------------------------------------------------------------------- dependence


def _samples(values: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """``values`` as float64 N×D, one flattened row per sample."""
    values = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    if values.ndim == 0:
        raise EdgesplitError(f"distance_correlation: {name} is a scalar; pass one row per sample (N×D)")
    values = values.detach().double().reshape(len(values), math.prod(values.shape[1:]))
    if not torch.isfinite(values).all():
        raise EdgesplitError(f"distance_correlation: {name} contains NaN or infinite values; check the features")
    return values


def distance_correlation(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray,
                         max_samples: int = DCOR_MAX_SAMPLES, seed: int = 0) -> float:
    """Székely's distance correlation between paired samples (biased V-statistic), in [0, 1]; 0 iff independent.

    Each sample is flattened, so x and y may be N×… of any shape with the same N. Above ``max_samples`` a
    subset of that many pairs, drawn with a generator seeded by ``seed``, is used: the distance matrices
    are O(N²) memory. The V-statistic is biased upwards, strongly when D is comparable to N or larger;
    compare values measured at the same N.
    """
    xs, ys = _samples(x, "x"), _samples(y, "y")
    if len(xs) != len(ys):
        raise EdgesplitError(f"distance_correlation: x has {len(xs)} samples but y has {len(ys)}; pass paired samples")
    if len(xs) < 2:
        raise EdgesplitError(f"distance_correlation needs at least 2 samples, got {len(xs)}")
    if not (isinstance(max_samples, int) and max_samples >= 2):
        raise EdgesplitError(f"distance_correlation: max_samples must be an integer ≥ 2, got {max_samples!r}")
    if len(xs) > max_samples:
        keep = torch.randperm(len(xs), generator=torch.Generator().manual_seed(seed))[:max_samples]
        xs, ys = xs[keep], ys[keep]
    return _dcor_from_distances(torch.cdist(xs, xs), torch.cdist(ys, ys))


def _dcor_from_distances(dx: torch.Tensor, dy: torch.Tensor) -> float:
    a, b = _centred(dx), _centred(dy)
    dcov2 = (a * b).mean()
    dvar2 = (a * a).mean() * (b * b).mean()
    if dvar2 <= 0:  # one side is constant: Székely defines dCor = 0
        return 0.0
    return float((dcov2.clamp(min=0) / dvar2.sqrt()).sqrt().clamp(max=1.0))


def _centred(distances: torch.Tensor) -> torch.Tensor:
    distances = distances.clamp(min=0)
    return distances - distances.mean(0, keepdim=True) - distances.mean(1, keepdim=True) + distances.mean()


def distance_correlation_ci(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, max_samples: int = 512,
                            seed: int = 0, confidence: float = 0.95) -> tuple[float, float, float]:
    """Distance correlation with a jackknife confidence interval over the samples: (value, low, high).

    Jackknife, not bootstrap: a bootstrap resample holds duplicates at distance 0, which biases the V-statistic
    upwards so far that the whole bootstrap distribution can lie above the estimate. The distance matrices are
    computed once and each leave-one-out estimate drops a row and column; above ``max_samples`` samples a seeded
    subset is used. The interval is the normal one, clipped to [0, 1].
    """
    _check_confidence(confidence, "distance_correlation_ci")
    xs, ys = _samples(x, "x"), _samples(y, "y")
    if len(xs) != len(ys) or len(xs) < 3:
        raise EdgesplitError(f"distance_correlation_ci needs paired samples, at least 3 (got {len(xs)} and {len(ys)})")
    if len(xs) > max_samples:
        keep = torch.randperm(len(xs), generator=torch.Generator().manual_seed(seed))[:max_samples]
        xs, ys = xs[keep], ys[keep]
    dx, dy = torch.cdist(xs, xs), torch.cdist(ys, ys)
    value, n = _dcor_from_distances(dx, dy), len(xs)
    leave_one_out = np.empty(n)
    for i in range(n):
        keep = torch.cat([torch.arange(i), torch.arange(i + 1, n)])
        leave_one_out[i] = _dcor_from_distances(dx[keep][:, keep], dy[keep][:, keep])
    spread = math.sqrt((n - 1) / n * float(((leave_one_out - leave_one_out.mean()) ** 2).sum()))
    from scipy.stats import norm  # imported here as scipy takes a while to load (as in mean_ci)

    half = float(norm.ppf((1 + confidence) / 2)) * spread
    return value, max(0.0, value - half), min(1.0, value + half)


# ---------------------------------------------------------------------------------- intervals


def _finite_values(values: Sequence[float] | np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(array).all():
        raise EdgesplitError(f"{what}: values contain NaN or infinite entries; drop or cap them first "
                             f"(psnr caps identical images at {PSNR_CAP_DB:g} dB)")
    return array


def _check_confidence(confidence: float, what: str) -> None:
    if not 0 < confidence < 1:
        raise EdgesplitError(f"{what}: confidence must lie strictly between 0 and 1, got {confidence!r}; use e.g. 0.95")


def mean_ci(values: Sequence[float] | np.ndarray | torch.Tensor,
            confidence: float = 0.95) -> tuple[float, float, float]:
    """The mean of ``values`` and its two-sided Student-t confidence interval: (mean, low, high)."""
    _check_confidence(confidence, "mean_ci")
    array = _finite_values(values, "mean_ci")
    if len(array) < 2:
        raise EdgesplitError(f"mean_ci needs at least 2 values for an interval, got {len(array)}; measure more samples")
    from scipy.stats import t  # scikit-learn depends on scipy; imported here as it takes a while

    mean = float(array.mean())
    half = float(t.ppf((1 + confidence) / 2, df=len(array) - 1)) * float(array.std(ddof=1)) / math.sqrt(len(array))
    return mean, mean - half, mean + half


def bootstrap_ci(values: Sequence[float] | np.ndarray | torch.Tensor,
                 statistic: Callable[[np.ndarray], float] = np.mean, n: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float, float]:
    """``statistic`` of ``values`` and its percentile-bootstrap interval from ``n`` seeded resamples: (value, low, high).

    Suits bounded metrics such as accuracy (values = 1 per correct sample, 0 per wrong one), whose t
    interval can leave [0, 1]. All-equal values give a zero-width interval.
    """
    _check_confidence(confidence, "bootstrap_ci")
    if not (isinstance(n, int) and n >= 1):
        raise EdgesplitError(f"bootstrap_ci: n must be a positive integer number of resamples, got {n!r}; use e.g. 1000")
    array = _finite_values(values, "bootstrap_ci")
    if len(array) == 0:
        raise EdgesplitError("bootstrap_ci needs at least 1 value, got none")
    rng = np.random.default_rng(seed)
    resamples = array[rng.integers(0, len(array), size=(n, len(array)))]
    if statistic is np.mean:
        estimates = resamples.mean(axis=1)
    else:
        estimates = np.array([float(statistic(row)) for row in resamples])
    tail = (1 - confidence) / 2
    low, high = np.quantile(estimates, [tail, 1 - tail])
    return float(statistic(array)), float(low), float(high)


__all__ = ["PSNR_CAP_DB", "SSIM_CHUNK", "bootstrap_ci", "distance_correlation", "distance_correlation_ci",
           "gaussian_window", "mean_ci", "psnr", "ssim", "ssim_window_size"]
