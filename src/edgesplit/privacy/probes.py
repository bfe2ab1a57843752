"""Semantic leakage: how well an honest-but-curious server predicts the private label from the features at a cut.

The server trains a probe on auxiliary features it labelled itself (features of inputs it owns, pushed
through the same head) and applies it to the victims' features. Accuracy well above chance means the
features carry the label; this is CapRecover's question reduced to class labels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from edgesplit.errors import EdgesplitError
from edgesplit.privacy.metrics import bootstrap_ci

ProbeKind = Literal["linear", "mlp"]
PROBE_KINDS: tuple[str, ...] = ("linear", "mlp")
MLP_HIDDEN = 256
MLP_BATCH_SIZE = 256
MLP_PATIENCE = 3  # epochs without progress on the held-out tenth (MLP_MIN_IMPROVEMENT) before the MLP stops
MLP_MIN_IMPROVEMENT = 0.02  # relative held-out loss gain over the best so far that counts as progress
HELD_OUT_FRACTION = 0.1
# LBFGS iterations for linear (50 and 100 gave the same victim accuracy at the MNIST audit's conv1_1, conv2_1 and
# pool2 cuts, in about half the time), most passes over the data for mlp.
DEFAULT_EPOCHS = {"linear": 50, "mlp": 100}

Features = torch.Tensor | np.ndarray | Sequence[torch.Tensor]


@dataclass(frozen=True)
class ProbeResult:
    """A probe's label accuracy on the victims' features, its 95% bootstrap interval and the chance level."""

    accuracy: float
    ci_low: float
    ci_high: float
    chance: float  # frequency of the most common victim label: what always guessing it scores
    kind: str
    samples: int  # victim samples the accuracy is measured on
    epochs: int = 0  # mlp: passes over the data run (early stopping); linear: the L-BFGS iteration cap


def _rows(values: torch.Tensor) -> torch.Tensor:
    """One flattened float32 row per sample; N×1 for a vector of N scalars."""
    return values.reshape(len(values), math.prod(values.shape[1:])).float()


def _feature_matrix(features: Features, name: str) -> torch.Tensor:
    """Features as float32 N×D; a tuple of tensors (what a split head returns) is flattened and joined per sample."""
    if isinstance(features, (tuple, list)):
        if not features:
            raise EdgesplitError(f"probe: {name} is an empty sequence; pass the tensors that cross the cut")
        parts = [torch.as_tensor(f).detach() for f in features]
        if any(p.ndim == 0 for p in parts):
            raise EdgesplitError(f"probe: {name} holds a scalar; pass one batch of features per crossing tensor")
        if len({len(p) for p in parts}) != 1:
            raise EdgesplitError(f"probe: the tensors in {name} hold different numbers of samples "
                                 f"{[len(p) for p in parts]}; pass one batch per crossing tensor")
        matrix = torch.cat([_rows(p) for p in parts], dim=1)
    else:
        values = torch.as_tensor(features).detach()
        if values.ndim == 0:
            raise EdgesplitError(f"probe: {name} is a scalar; pass one row of features per sample")
        matrix = _rows(values)
    if not torch.isfinite(matrix).all():
        raise EdgesplitError(f"probe: {name} contain NaN or infinite values; check the head that produced them")
    return matrix.cpu()


def _label_vector(labels: torch.Tensor | np.ndarray | Sequence[int], name: str) -> torch.Tensor:
    values = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).detach().cpu()
    if values.ndim != 1:
        raise EdgesplitError(f"probe: {name} must be one class index per sample, got shape {tuple(values.shape)}")
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise EdgesplitError(f"probe: {name} must be integer class indices, got {values.dtype}; convert them "
                             "with labels.long()")
    if len(values) and int(values.min()) < 0:
        raise EdgesplitError(f"probe: {name} hold the negative label {int(values.min())}; labels are class "
                             "indices 0, 1, ...")
    return values.long()


def _fit_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: int, iterations: int,
                l2: float) -> torch.nn.Module:
    """Multinomial logistic regression by full-batch L-BFGS."""
    model = torch.nn.Linear(features.shape[1], num_classes)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=iterations, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # The L2 term keeps the weights finite when the classes are separable, as they often are.
        loss = F.cross_entropy(model(features), labels) + l2 * model.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def mlp_progress(loss: float, best_loss: float) -> bool:
    """Whether an MLP epoch counts as progress for early stopping: a held-out loss below the best so far by at
    least ``MLP_MIN_IMPROVEMENT`` (relative)."""
    return loss < best_loss * (1 - MLP_MIN_IMPROVEMENT)


def _fit_mlp(features: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int,
             generator: torch.Generator) -> tuple[torch.nn.Module, int]:
    """One hidden ReLU layer trained with Adam, stopped early on a held-out tenth of the data.

    An epoch makes progress when its held-out loss beats the best by ``MLP_MIN_IMPROVEMENT`` (relative); training
    stops after ``MLP_PATIENCE`` epochs without progress and keeps the epoch with the lowest held-out loss.
    (Counting any lower loss as progress, with patience 5, ran all 100 epochs at the MNIST audit's conv1 cuts,
    where weight decay lowers the held-out loss by under 1% an epoch long after the accuracy has settled: 22 s a
    cut for 0.914 against 0.910 after 12 epochs. Counting a higher held-out accuracy as progress too ran longer
    at the conv2 cuts: 200 held-out images make it noisy.)
    """
    model = torch.nn.Sequential(torch.nn.Linear(features.shape[1], MLP_HIDDEN), torch.nn.ReLU(),
                                torch.nn.Linear(MLP_HIDDEN, num_classes))
    order = torch.randperm(len(labels), generator=generator)
    held_out_count = max(1, round(HELD_OUT_FRACTION * len(labels)))
    held_out, train = order[:held_out_count], order[held_out_count:]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    best_loss, best_state, stale = float("inf"), copy.deepcopy(model.state_dict()), 0
    ran = 0
    for ran in range(1, epochs + 1):
        model.train()
        shuffled = train[torch.randperm(len(train), generator=generator)]
        for start in range(0, len(shuffled), MLP_BATCH_SIZE):
            batch = shuffled[start:start + MLP_BATCH_SIZE]
            loss = F.cross_entropy(model(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            held_out_loss = float(F.cross_entropy(model(features[held_out]), labels[held_out]))
        progress = mlp_progress(held_out_loss, best_loss)
        if held_out_loss < best_loss:
            best_loss, best_state = held_out_loss, copy.deepcopy(model.state_dict())
        stale = 0 if progress else stale + 1
        if stale >= MLP_PATIENCE:
            break
    model.load_state_dict(best_state)
    return model, ran


def probe_accuracy(aux_features: Features, aux_labels: torch.Tensor | np.ndarray | Sequence[int],
                   victim_features: Features, victim_labels: torch.Tensor | np.ndarray | Sequence[int],
                   kind: ProbeKind = "linear", epochs: int | None = None, seed: int = 0,
                   l2: float = 1e-4) -> ProbeResult:
    """Train a probe on labelled auxiliary features and measure its label accuracy on the victims' features.

    Features are N×… tensors (or the tuple a split head returns), flattened per sample and standardised
    with the auxiliary set's mean and deviation only, so nothing about the victim set shapes the probe.
    ``kind`` "linear" is multinomial logistic regression (``epochs`` = L-BFGS iterations, default 50,
    ``l2`` its weight penalty); "mlp" has one hidden layer of 256 ReLUs (``epochs`` = most passes, default
    100, stopped early on a held-out 10% of the auxiliary set once its loss stops improving).
    ``result.epochs`` says how many passes the MLP ran. The interval is a seeded 95% bootstrap over victim
    samples. Deterministic for a given ``seed``; the global torch RNG is left untouched.
    """
    if kind not in PROBE_KINDS:
        raise EdgesplitError(f"probe: unknown kind {kind!r}; use one of {', '.join(PROBE_KINDS)}")
    epochs = DEFAULT_EPOCHS[kind] if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise EdgesplitError(f"probe: epochs must be a positive integer, got {epochs!r}; use e.g. {DEFAULT_EPOCHS[kind]}")
    if not l2 >= 0:
        raise EdgesplitError(f"probe: l2 must be zero or positive, got {l2!r}")
    aux_x, victim_x = _feature_matrix(aux_features, "aux_features"), _feature_matrix(victim_features, "victim_features")
    aux_y, victim_y = _label_vector(aux_labels, "aux_labels"), _label_vector(victim_labels, "victim_labels")
    for name, x, y in (("aux", aux_x, aux_y), ("victim", victim_x, victim_y)):
        if len(x) != len(y):
            raise EdgesplitError(f"probe: {name}_features hold {len(x)} samples but {name}_labels hold {len(y)}; "
                                 "pass one label per sample")
    if aux_x.shape[1] != victim_x.shape[1]:
        raise EdgesplitError(f"probe: aux features have {aux_x.shape[1]} values per sample but victim features have "
                             f"{victim_x.shape[1]}; extract both at the same cut of the same model")
    if len(victim_y) == 0:
        raise EdgesplitError("probe: no victim samples; pass at least one victim feature row and label")
    aux_classes = torch.unique(aux_y)
    if len(aux_classes) < 2:
        found = "no labels" if len(aux_classes) == 0 else f"only class {int(aux_classes[0])}"
        raise EdgesplitError(f"probe: aux labels hold {found}; a probe needs auxiliary samples of at least 2 classes")
    if kind == "mlp" and len(aux_y) < 10:
        raise EdgesplitError(f"probe: the mlp probe holds out 10% of the aux samples for early stopping and needs at "
                             f"least 10, got {len(aux_y)}; pass more or use kind='linear'")

    mean = aux_x.mean(0)
    std = aux_x.std(0, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant features carry nothing; avoid 0/0
    aux_x, victim_x = (aux_x - mean) / std, (victim_x - mean) / std
    num_classes = int(max(aux_y.max(), victim_y.max())) + 1

    generator = torch.Generator().manual_seed(seed)
    # enable_grad: callers often extract features under torch.no_grad() and probe inside the same block.
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)  # the probe's initial weights
        if kind == "linear":
            probe, ran = _fit_linear(aux_x, aux_y, num_classes, epochs, l2), epochs
        else:
            probe, ran = _fit_mlp(aux_x, aux_y, num_classes, epochs, generator)
    probe.eval()
    with torch.no_grad():
        correct = (probe(victim_x).argmax(1) == victim_y).double().numpy()
    accuracy, low, high = bootstrap_ci(correct, seed=seed)
    chance = float(torch.bincount(victim_y).max()) / len(victim_y)
    return ProbeResult(accuracy=accuracy, ci_low=low, ci_high=high, chance=chance, kind=kind, samples=len(victim_y),
                       epochs=ran)


__all__ = ["MLP_MIN_IMPROVEMENT", "MLP_PATIENCE", "PROBE_KINDS", "ProbeKind", "ProbeResult", "mlp_progress",
           "probe_accuracy"]
