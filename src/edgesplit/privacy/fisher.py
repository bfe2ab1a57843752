"""A bound beside the attacks: the Fisher information the features at a cut carry about the input (dFIL).

Attacks give a lower bound on leakage: what one attacker recovered. This module gives the other side (Maeng et
al., "Bounding the Invertibility of Privacy-Preserving Instance Encoding Using Fisher Information", NeurIPS 2023).
If the device sends ``z = f(x) + n`` with the head ``f`` differentiable at the input ``x`` (d values) and Gaussian
noise ``n ~ N(0, σ_k² I)`` on each crossing tensor ``k``, the Fisher information matrix of ``z`` about ``x`` is
``I(x) = Σ_k J_kᵀ J_k / σ_k²`` (``J_k`` the Jacobian of tensor ``k``), and its diagonal mean is

    dFIL(x) = tr(I(x)) / d = Σ_k tr(J_kᵀ J_k) / (d σ_k²).

Cramér–Rao: any unbiased estimator ``x̂(z)`` has covariance ⪰ I(x)⁻¹, so its mean squared error per input value
is E‖x̂ − x‖² / d ≥ tr(I⁻¹) / d ≥ d / tr(I) = 1 / dFIL (the last step: the mean of the reciprocals of I's
eigenvalues is at least the reciprocal of their mean). For inputs in [0, 1] (PSNR peak 1) that caps the PSNR of
the expected error at 10·log10(1 / MSE) ≤ 10·log10(dFIL) dB. Over victims, the pooled MSE is at least the mean of
1/dFIL(x_i), which is at least 1 / mean dFIL(x_i): ``psnr_bound`` uses the mean, a valid and stable bound.

tr(JᵀJ) = ‖J‖²_F is computed on batches of victims: with the head in eval mode each victim's features depend on
that victim alone, so one Jacobian product over the batch gives one per victim. Inputs of at most ``exact_max``
values get the exact trace from forward mode (``torch.func.jvp``), one product per basis direction;
larger inputs use Hutchinson's estimator in reverse mode (``torch.func.vjp``): E‖Jᵀu‖² = tr(JJᵀ) = tr(JᵀJ) for
Rademacher u on the features, ``samples`` vectors per victim, one forward pass and one pullback per vector
(unbiased; its spread is part of the reported interval over victims).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from edgesplit.errors import EdgesplitError
from edgesplit.privacy.query import as_tensors, eval_mode, run_head

DFIL_SIGMA = 0.1  # default noise std per crossing tensor, in units of the clean features' std (as noise:SIGMA)
DFIL_SAMPLES = 32  # Hutchinson directions per victim
EXACT_MAX_INPUTS = 256  # inputs of at most this many values get the exact trace (one direction per value)
JVP_BATCH = 1024  # victim × direction rows pushed through the head at once (exact)
VJP_BATCH = 256  # victims pushed through the head at once (Hutchinson)

__all__ = ["DFIL_SAMPLES", "DFIL_SIGMA", "EXACT_MAX_INPUTS", "FisherResult", "dfil", "mse_bound", "psnr_bound"]


@dataclass(frozen=True)
class FisherResult:
    """dFIL of each victim, and how it was computed."""

    per_victim: torch.Tensor  # float64 (N,): Σ_k tr(J_kᵀJ_k) / (d σ_k²) at each victim
    sigmas: tuple[float, ...]  # the absolute noise std assumed on each crossing tensor
    estimator: str  # "exact" or "hutchinson"
    samples: int  # directions per victim: d when exact
    inputs: int  # d, values per input
    seconds: float

    @property
    def mean(self) -> float:
        return float(self.per_victim.mean())


def psnr_bound(dfil_value: float, data_range: float = 1.0) -> float | None:
    """The highest PSNR (dB) of the expected error an unbiased reconstruction can reach: 10·log10(R² · dFIL).

    None when dFIL is 0 (the features say nothing locally: no finite bound on the error, no PSNR above -inf).
    """
    if not (dfil_value > 0 and math.isfinite(dfil_value)):
        return None
    return 10.0 * math.log10(data_range**2 * dfil_value)


def mse_bound(dfil_value: float) -> float:
    """The lowest mean squared error per input value an unbiased reconstruction can reach: 1 / dFIL."""
    return math.inf if dfil_value <= 0 else 1.0 / dfil_value


def _exact_traces(features: Callable[[torch.Tensor], list[torch.Tensor]], images: torch.Tensor,
                  weights: list[float]) -> torch.Tensor:
    """Σ_k w_k ‖J_k‖²_F at each image, one forward-mode product per input value (basis direction).

    Each victim is repeated once per direction of a block, so one product serves a block of directions for every
    victim of the batch: rows are (direction, victim).
    """
    shape = tuple(images.shape[1:])
    inputs = math.prod(shape)
    total = torch.zeros(len(images), dtype=torch.float64)
    victims_at_once = min(len(images), JVP_BATCH)
    per_block = max(1, JVP_BATCH // victims_at_once)
    for start in range(0, len(images), victims_at_once):
        batch = images[start:start + victims_at_once]
        for first in range(0, inputs, per_block):
            block = torch.eye(inputs)[first:first + per_block]
            x = batch.repeat(len(block), *([1] * len(shape)))
            v = block.repeat_interleave(len(batch), dim=0).reshape(len(x), *shape)
            _, tangents = torch.func.jvp(features, (x,), (v,))
            squared = sum(w * t.detach().double().flatten(1).square().sum(1) for w, t in zip(weights, tangents))
            total[start:start + len(batch)] += squared.reshape(len(block), len(batch)).sum(0)
    return total


def _hutchinson_traces(features: Callable[[torch.Tensor], list[torch.Tensor]], images: torch.Tensor,
                       sigmas: Sequence[float], samples: int, generator: torch.Generator) -> torch.Tensor:
    """Hutchinson estimates of Σ_k ‖J_k‖²_F / σ_k² at each image: the mean over ``samples`` Rademacher vectors u
    on the features of ‖Σ_k J_kᵀ u_k / σ_k‖² (reverse mode: one forward pass, then one pullback per sample).

    E[u uᵀ] = I, so each term's expectation is Σ_k tr(J_k J_kᵀ) / σ_k²; every victim gets its own vectors.
    """
    total = torch.zeros(len(images), dtype=torch.float64)
    for start in range(0, len(images), VJP_BATCH):
        batch = images[start:start + VJP_BATCH]
        outputs, pullback = torch.func.vjp(lambda x: tuple(features(x)), batch)
        for _ in range(samples):
            cotangents = tuple((torch.randint(0, 2, o.shape, generator=generator) * 2 - 1).to(o.dtype) / sigma
                               for o, sigma in zip(outputs, sigmas))
            (pulled,) = pullback(cotangents)
            total[start:start + len(batch)] += pulled.detach().double().flatten(1).square().sum(1)
    return total / samples


def dfil(head: Callable[..., Any], images: torch.Tensor, sigmas: Sequence[float], *, samples: int = DFIL_SAMPLES,
         exact_max: int = EXACT_MAX_INPUTS, seed: int = 0) -> FisherResult:
    """dFIL of ``head``'s crossing tensors plus Gaussian noise of std ``sigmas[k]`` on tensor k, at each image.

    Exact (forward mode, one product per input value) for inputs of at most ``exact_max`` values, else
    Hutchinson's estimator with ``samples`` Rademacher vectors per image (reverse mode). ``head`` must be
    deterministic and differentiable in eval mode (a split's head), each victim's features depending on that
    victim alone (true in eval mode: BatchNorm uses running statistics).
    """
    if len(images) == 0:
        raise EdgesplitError("dFIL needs at least one image; pass the victims")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise EdgesplitError(f"dFIL: samples must be an integer >= 1, got {samples!r}; use e.g. {DFIL_SAMPLES}")
    if not sigmas or not all(s > 0 and math.isfinite(s) for s in sigmas):
        raise EdgesplitError(f"dFIL: every noise std must be a positive number, got {list(sigmas)}; a crossing "
                             "tensor that never varies has no std to scale the noise by")
    started = time.perf_counter()
    images = images.detach().float()
    inputs = math.prod(images.shape[1:])
    exact = inputs <= exact_max

    def features(x: torch.Tensor) -> list[torch.Tensor]:
        return as_tensors(head(x))

    with eval_mode(head):
        with torch.no_grad():
            crossing = run_head(head, images[:1], "the victims")  # a clear error for images the head cannot take
        if len(crossing) != len(sigmas):
            raise EdgesplitError(f"dFIL got {len(sigmas)} noise stds for {len(crossing)} crossing tensors; pass one "
                                 "per tensor")
        if exact:
            total = _exact_traces(features, images, [1.0 / float(s) ** 2 for s in sigmas])
        else:
            total = _hutchinson_traces(features, images, sigmas, samples, torch.Generator().manual_seed(seed))
    per_victim = total / inputs
    if not torch.isfinite(per_victim).all():
        raise EdgesplitError("dFIL is not finite: the head's Jacobian overflows at the victims; check the model")
    return FisherResult(per_victim=per_victim, sigmas=tuple(float(s) for s in sigmas),
                        estimator="exact" if exact else "hutchinson", samples=inputs if exact else samples,
                        inputs=inputs,
                        seconds=time.perf_counter() - started)
