"""A defended cut and the pieces defenses are made of: what the device sends at a cut, and how the server uses it.

:class:`DefendedCut` is the device's deterministic head, the transform its output goes through on the way to the
server (defense, then deployment codec), and the server's tail; the audit attacks what :meth:`DefendedCut.send`
delivers. The transforms (:class:`GaussianNoise`, :class:`RandomDropout`) and the differentiable distance
correlation NoPeek trains with live here too, below both :mod:`edgesplit.privacy.defenses` (the specs and
:func:`~edgesplit.privacy.defenses.build_defense`) and :mod:`edgesplit.privacy.trained` (defenses trained with the
model), which build on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from edgesplit.errors import EdgesplitError
from edgesplit.privacy.query import QUERY_BATCH, Transform, eval_mode, query_head

NOISE_CALIBRATION_IMAGES = 1024  # training images whose clean features set the noise scale

@dataclass(frozen=True)
class DefenseSpec:
    """A parsed defense: kind, strength (sigma, p, bits, alpha or channels; None for none), canonical text."""

    kind: str
    strength: float | None
    text: str



@dataclass
class DefendedCut:
    """What the device sends at one cut under a defense (and the deployment codec), and how the server uses it."""

    spec: DefenseSpec
    head: nn.Module  # deterministic and differentiable: images -> crossing tensors (the white-box attack's target)
    transform: Transform | None  # the rest of the way to the server: defense noise/dropout/quant, then the codec
    tail: Callable[..., torch.Tensor]  # tail(*received tensors) -> logits
    input_shape: tuple[int, int, int]  # (C, H, W)
    train_seconds: float = 0.0
    train_log: dict = field(default_factory=dict)

    def send(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The crossing tensors the server receives for ``images`` (float32, batch first)."""
        return query_head(self.head, images, self.transform, "images")

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 accuracy of the tail on what the server receives for ``images``, in [0, 1]."""
        if len(images) != len(labels) or len(labels) == 0:
            raise EdgesplitError(f"accuracy needs as many labels as images, at least one, got {len(images)} images "
                                 f"and {len(labels)} labels; pass matching tensors")
        received = self.send(images)
        correct = 0
        with torch.no_grad(), eval_mode(self.tail):
            for start in range(0, len(labels), QUERY_BATCH):
                logits = self.tail(*[f[start:start + QUERY_BATCH] for f in received])
                batch_labels = labels[start:start + QUERY_BATCH].to(logits.device)
                correct += int((logits.argmax(dim=1) == batch_labels).sum())
        return correct / len(labels)


# ------------------------------------------------------------------------------------------- transforms


def _floating(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.is_floating_point() else tensor.float()


class GaussianNoise:
    """Adds zero-mean Gaussian noise of a fixed std to each crossing tensor, from its own seeded generator."""

    def __init__(self, stds: Sequence[float], seed: int) -> None:
        self.stds = [float(s) for s in stds]
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        _check_count(features, len(self.stds))
        noisy = []
        for tensor, std in zip(features, self.stds):
            tensor = _floating(tensor)
            noise = torch.randn(tensor.shape, generator=self.generator).to(tensor.device, tensor.dtype)
            noisy.append(tensor + std * noise)
        return noisy


class RandomDropout:
    """Zeroes each crossing value with probability ``p``, survivors scaled by 1/(1−p), from its own generator."""

    def __init__(self, p: float, seed: int) -> None:
        self.p = float(p)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        dropped = []
        for tensor in features:
            tensor = _floating(tensor)
            keep = (torch.rand(tensor.shape, generator=self.generator) >= self.p).to(tensor.device)
            dropped.append(torch.where(keep, tensor / (1 - self.p), torch.zeros_like(tensor)))
        return dropped


def _check_count(features: list[torch.Tensor], expected: int) -> None:
    if len(features) != expected:
        raise EdgesplitError(f"this defense was built for {expected} crossing tensors but got {len(features)}; "
                             "build the defense for the cut whose features you send")


def chain(*steps: Transform | None) -> Transform | None:
    """The given transforms (None entries skipped) applied in order, as one transform; None when there are none."""
    steps = tuple(step for step in steps if step is not None)
    if len(steps) <= 1:
        return steps[0] if steps else None

    def through(features: list[torch.Tensor]) -> list[torch.Tensor]:
        for step in steps:
            features = step(features)
        return features

    return through


def feature_stds(head: Callable[..., object], images: torch.Tensor) -> list[float]:
    """The std of all values of each crossing tensor over ``images`` (clean features, eval mode)."""
    return [float(f.std()) for f in query_head(head, images, None, "training images")]


# ------------------------------------------------------------------------------------------- distance correlation


def _distances(rows: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between rows, with finite gradients where two rows coincide."""
    norms = rows.square().sum(1)
    squared = (norms[:, None] + norms[None, :] - 2 * rows @ rows.T).clamp_min(0)
    positive = squared > 0
    # sqrt's gradient is infinite at 0: take it only where the distance is positive.
    return torch.where(positive, torch.where(positive, squared, 1.0).sqrt(), 0.0)


def _double_centred(distances: torch.Tensor) -> torch.Tensor:
    return distances - distances.mean(0, keepdim=True) - distances.mean(1, keepdim=True) + distances.mean()


def distance_correlation_torch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Differentiable distance correlation of paired samples (rows of x and y, flattened), as a scalar tensor.

    The same biased V-statistic as :func:`edgesplit.privacy.metrics.distance_correlation`, computed in float64
    on the whole batch and returned in the inputs' floating dtype.
    """
    if len(x) != len(y) or len(x) < 2:
        raise EdgesplitError(f"distance correlation needs paired batches of at least 2 samples, got {len(x)} and "
                             f"{len(y)}; pass batches of the same size >= 2")
    dtype = torch.promote_types(_floating(x).dtype, _floating(y).dtype)
    a = _double_centred(_distances(x.reshape(len(x), -1).double()))
    b = _double_centred(_distances(y.reshape(len(y), -1).double()))
    dcov2 = (a * b).mean().clamp_min(0)
    dvar = ((a * a).mean() * (b * b).mean()).sqrt()
    # A constant side has dvar 0, and then dCor is 0 by definition (Székely).
    ratio = dcov2 / torch.where(dvar > 0, dvar, 1.0)
    dcor = torch.where(ratio > 0, torch.where(ratio > 0, ratio, 1.0).sqrt(), 0.0)
    return dcor.clamp(max=1.0).to(dtype)


__all__ = ["NOISE_CALIBRATION_IMAGES", "DefendedCut", "DefenseSpec", "GaussianNoise", "RandomDropout",
           "chain", "distance_correlation_torch", "feature_stds"]
