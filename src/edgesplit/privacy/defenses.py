"""Defenses at a cut: what the device does to the features before they cross, so that a curious server learns less.

A defense is named by a short spec (see :func:`parse_defense`) and built by :func:`build_defense` into a
:class:`DefendedCut`: the device's deterministic head, the transform its output goes through on the way to the
server (defense, then deployment codec), and the server's tail. The audit attacks what :meth:`DefendedCut.send`
delivers and measures what accuracy the tail still reaches on it.

- ``none``: the features as the deployment codec delivers them.
- ``noise:SIGMA``: Gaussian noise of std SIGMA × the clean feature's std (per crossing tensor).
- ``dropout:P``: each crossing value zeroed with probability P, the survivors scaled by 1/(1−P).
- ``quant:BITS``: each example's features uniformly quantized to BITS bits; replaces the deployment codec.
- ``nopeek:ALPHA``: head and tail fine-tuned with cross-entropy + ALPHA × distance correlation between the
  inputs and the crossing features (Vepakomma et al. 2020, "NoPeek").
- ``bottleneck:CHANNELS``: a learned bottleneck of CHANNELS 4-bit code channels; its code is what crosses.
- ``trained:PART=VALUE[+...]``: head and tail fine-tuned *under* noise, dropout, NoPeek, a narrow quantized
  bottleneck or quantized features, and their combinations (:mod:`edgesplit.privacy.trained`).

Noise, dropout and quant are applied at inference time to the original tail, without retraining: their
accuracy is the honest utility cost of adding them to a deployed split. Nopeek and bottleneck train copies;
the model and the split passed in are left as they were.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from edgesplit.compress.bottleneck import (BottleneckConfig, SlimmableBottleneck, TrainingPlan, feature_shape,
                                           train_bottleneck)
from edgesplit.errors import EdgesplitError, InputShapeError
from edgesplit.model.data import Dataset
from edgesplit.model.graph import Split
from edgesplit.privacy.query import (QUERY_BATCH, Transform, as_tensors, codec_transform, eval_mode, head_input_shape,
                                     query_head)
from edgesplit.progress import progress_bar

DEFENSE_KINDS = ("none", "noise", "dropout", "quant", "nopeek", "bottleneck", "trained")
ACCEPTED_FORMS = ("none, noise:SIGMA (SIGMA > 0), dropout:P (0 < P < 1), quant:BITS (integer 1 to 8), "
                  "nopeek:ALPHA (ALPHA > 0), bottleneck:CHANNELS (integer >= 1), trained:PART=VALUE[+...] "
                  "(head and tail fine-tuned under noise=, dropout=, nopeek=, bottleneck=, bits=, stride=)")
NOISE_CALIBRATION_IMAGES = 1024  # training images whose clean features set the noise scale
BOTTLENECK_BITS = 4


# ------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class DefenseSpec:
    """A parsed defense: kind, strength (sigma, p, bits, alpha or channels; None for none), canonical text."""

    kind: str
    strength: float | None
    text: str


@dataclass(frozen=True)
class _Rule:
    integer: bool
    allowed: Callable[[float], bool]
    meaning: str


_RULES = {
    "noise": _Rule(False, lambda v: v > 0, "SIGMA > 0, in units of the clean feature's std"),
    "dropout": _Rule(False, lambda v: 0 < v < 1, "a drop probability P with 0 < P < 1"),
    "quant": _Rule(True, lambda v: 1 <= v <= 8, "BITS, an integer from 1 to 8"),
    "nopeek": _Rule(False, lambda v: v > 0, "ALPHA > 0, the weight of the distance-correlation loss"),
    "bottleneck": _Rule(True, lambda v: v >= 1, "CHANNELS, an integer >= 1"),
}


def _bad_defense(text: object, reason: str) -> EdgesplitError:
    return EdgesplitError(f"bad defense {text!r}: {reason}; use one of {ACCEPTED_FORMS}, e.g. noise:0.5")


def _number(text: str, integer: bool) -> float | int | None:
    """``text`` as a finite number (an int when ``integer``), or None when it is not one."""
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if integer:
        return int(value) if value.is_integer() else None
    return value


def parse_defense(text: str) -> DefenseSpec:
    """The defense a spec such as ``none``, ``noise:0.5`` or ``bottleneck:4`` names; an EdgesplitError otherwise."""
    if not isinstance(text, str):
        raise _bad_defense(text, f"expected text, got {type(text).__name__}")
    kind, separator, value_text = (part.strip() for part in text.strip().lower().partition(":"))
    if kind == "trained":  # defenses trained with the model build on this module: imported here, not above
        from edgesplit.privacy.trained import parse_trained
        return parse_trained(text)
    if kind == "none":
        if separator:
            raise _bad_defense(text, "none takes no value")
        return DefenseSpec("none", None, "none")
    rule = _RULES.get(kind)
    if rule is None:
        raise _bad_defense(text, f"unknown defense {kind!r}")
    if not value_text:
        raise _bad_defense(text, f"{kind} needs a value, {rule.meaning}")
    value = _number(value_text, rule.integer)
    if value is None or not rule.allowed(value):
        raise _bad_defense(text, f"{kind} takes {rule.meaning}, got {value_text!r}")
    return DefenseSpec(kind, value, f"{kind}:{value:.12g}")


def parse_defenses(texts: Sequence[str]) -> list[DefenseSpec]:
    """Parse specs (each may hold several, comma-separated): duplicates dropped, order kept, ``none`` first."""
    if isinstance(texts, str):
        texts = [texts]
    specs = {"none": parse_defense("none")}
    for text in texts:
        if not isinstance(text, str):
            raise _bad_defense(text, f"expected text, got {type(text).__name__}")
        for item in text.split(","):
            if item.strip():
                spec = parse_defense(item)
                specs.setdefault(spec.text, spec)
    return list(specs.values())


# ------------------------------------------------------------------------------------------- defended cut


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


def _chain(first: Transform, then: Transform | None) -> Transform:
    """``first`` and then ``then`` (when given), as one transform."""
    if then is None:
        return first

    def both(features: list[torch.Tensor]) -> list[torch.Tensor]:
        return then(first(features))

    return both


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


# ------------------------------------------------------------------------------------------- training defenses


def _training_set(dataset: Dataset, train_limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = dataset.train_images, dataset.train_labels
    if train_limit is not None:
        images, labels = images[:train_limit], labels[:train_limit]
    if len(labels) < 2:
        raise EdgesplitError(f"training a defense needs at least 2 training images, got {len(labels)}; "
                             "raise train_limit or use a larger data set")
    return images, labels


def _unique_parameters(*modules: nn.Module) -> list[nn.Parameter]:
    # A module both halves read (shared weights) is one module after the joint deep copy: optimise it once.
    return list(dict.fromkeys(p for m in modules for p in m.parameters()))


def train_nopeek(split: Split, dataset: Dataset, alpha: float, *, epochs: int, batch_size: int, lr: float,
                 train_limit: int | None, seed: int, progress: bool) -> tuple[nn.Module, nn.Module, dict]:
    """Fine-tune copies of ``split``'s head and tail with CE + alpha × dCor(inputs, crossing features).

    Returns the eval-mode copies and per-epoch mean losses; the split and the model are left unchanged.
    """
    # Copied together so that a module both halves share stays shared in the copies.
    head, tail = copy.deepcopy((split.head, split.tail))
    parameters = _unique_parameters(head, tail)
    if not parameters:
        raise EdgesplitError("nopeek fine-tunes the model's weights, but the model has none; pick another defense")
    images, labels = _training_set(dataset, train_limit)
    n = len(labels)
    starts = [s for s in range(0, n, batch_size) if n - s >= 2]  # dCor and BatchNorm need 2 samples a batch
    log: dict[str, list[float]] = {"loss": [], "task_loss": [], "dcor": []}
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=lr)
    with torch.random.fork_rng(devices=[]), progress_bar(progress) as bar:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        task = bar.add_task(f"nopeek:{alpha:g}", total=epochs * len(starts), status="")
        head.train()
        tail.train()
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator)
            sums, seen = [0.0, 0.0, 0.0], 0
            for start in starts:
                index = order[start:start + batch_size]
                x, y = images[index], labels[index]
                features = as_tensors(head(x))
                task_loss = F.cross_entropy(tail(*features), y)
                flat = torch.cat([_floating(f).reshape(len(x), -1) for f in features], dim=1)
                dcor = distance_correlation_torch(x, flat)
                loss = task_loss + alpha * dcor
                if not math.isfinite(loss.item()):
                    raise EdgesplitError(f"nopeek training diverged (loss {loss.item()}); lower the learning rate "
                                         f"(now {lr}) or alpha (now {alpha:g})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                for i, value in enumerate((loss, task_loss, dcor)):
                    sums[i] += value.item() * len(index)
                seen += len(index)
                bar.update(task, advance=1, status=f"epoch {epoch + 1}/{epochs} loss {loss.item():.4f} "
                                                   f"dcor {dcor.item():.3f}")
            for key, total in zip(("loss", "task_loss", "dcor"), sums):
                log[key].append(total / seen)
    head.eval()
    tail.eval()
    return head, tail, log


class BottleneckHead(nn.Module):
    """Device side of a bottleneck defense: the split's head, then the bottleneck's integer code (as float)."""

    def __init__(self, head: nn.Module, bottleneck: SlimmableBottleneck) -> None:
        super().__init__()
        self.head = head
        self.bottleneck = bottleneck

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.bottleneck.encode(as_tensors(self.head(images))[0]),)


class BottleneckTail(nn.Module):
    """Server side of a bottleneck defense: decode the code to features, then the fine-tuned tail."""

    def __init__(self, bottleneck: SlimmableBottleneck, tail: nn.Module) -> None:
        super().__init__()
        self.bottleneck = bottleneck
        self.tail = tail

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.tail(self.bottleneck.decode(code))


# ------------------------------------------------------------------------------------------- build


def _check_settings(epochs: int, batch_size: int, lr: float, train_limit: int | None, seed: int) -> None:
    for name, value, least in (("epochs", epochs, 1), ("batch_size", batch_size, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise EdgesplitError(f"{name} must be an integer >= {least}, got {value!r}; pass e.g. {max(least, 2)}")
    if train_limit is not None and (isinstance(train_limit, bool) or not isinstance(train_limit, int)
                                    or train_limit < 2):
        raise EdgesplitError(f"train_limit must be None or an integer >= 2, got {train_limit!r}; pass e.g. 1000")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise EdgesplitError(f"lr must be a positive number, got {lr!r}; pass e.g. 1e-3")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise EdgesplitError(f"seed must be an integer, got {seed!r}; pass e.g. 0")


def _input_shape(split: Split, dataset: Dataset) -> tuple[int, int, int]:
    traced = head_input_shape(split.head)
    if traced is not None and tuple(traced) != dataset.input_shape:
        raise InputShapeError(f"data set {dataset.name} has images of shape {dataset.input_shape} but the model was "
                              f"traced on {tuple(traced)}; trace the model on an image of the data set")
    return dataset.input_shape


def build_defense(spec: DefenseSpec | str, split: Split, model: nn.Module, dataset: Dataset, *,
                  codec: str | None = None, epochs: int = 2, batch_size: int = 64, lr: float = 1e-3,
                  train_limit: int | None = None, seed: int = 0, progress: bool = False) -> DefendedCut:
    """The defended cut ``spec`` makes of ``split``: trains nopeek or a bottleneck on ``dataset`` when asked.

    ``codec`` is the deployment codec (a spec string such as ``int8+zstd``) applied after the defense. ``quant``
    replaces it with its own coarser quantizer, and ``bottleneck`` ignores it: its code is already quantized.
    ``model`` is the whole model, the bottleneck's distillation teacher. Training is seeded with ``seed`` and
    leaves torch's global random state as it was.
    """
    if isinstance(spec, str):
        spec = parse_defense(spec)
    if not isinstance(spec, DefenseSpec) or spec.kind not in DEFENSE_KINDS:
        raise EdgesplitError(f"unknown defense {spec!r}; pass parse_defense(text) with one of {ACCEPTED_FORMS}")
    _check_settings(epochs, batch_size, lr, train_limit, seed)
    input_shape = _input_shape(split, dataset)
    wire = codec_transform(codec) if codec else None
    defended = DefendedCut(spec, split.head, wire, split.tail, input_shape)

    if spec.kind == "noise":
        stds = feature_stds(split.head, dataset.train_images[:NOISE_CALIBRATION_IMAGES])
        defended.transform = _chain(GaussianNoise([spec.strength * s for s in stds], seed), wire)
        defended.train_log = {"feature_std": stds, "noise_std": [spec.strength * s for s in stds]}
    elif spec.kind == "dropout":
        defended.transform = _chain(RandomDropout(spec.strength, seed), wire)
    elif spec.kind == "quant":
        defended.transform = codec_transform(f"int{int(spec.strength)}")
    elif spec.kind == "nopeek":
        started = time.perf_counter()
        defended.head, defended.tail, defended.train_log = train_nopeek(
            split, dataset, spec.strength, epochs=epochs, batch_size=batch_size, lr=lr, train_limit=train_limit,
            seed=seed, progress=progress)
        defended.train_seconds = time.perf_counter() - started
    elif spec.kind == "trained":
        from edgesplit.privacy.trained import build_trained  # see parse_defense
        defended = build_trained(spec, split, dataset, input_shape, codec=codec, epochs=epochs,
                                 batch_size=batch_size, lr=lr, train_limit=train_limit, seed=seed, progress=progress)
    elif spec.kind == "bottleneck":
        channels = feature_shape(split)[0]  # raises BottleneckError unless one N×C×H×W tensor crosses
        config = BottleneckConfig(in_channels=channels, channels=int(spec.strength), stride=1, bits=BOTTLENECK_BITS)
        plan = TrainingPlan(feature_epochs=epochs, task_epochs=epochs, batch_size=batch_size, lr=lr,
                            train_limit=train_limit, seed=seed)
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # train_bottleneck seeds the global generator
            bottleneck, tail, log = train_bottleneck(split, model, dataset, config, plan, progress=progress)
        defended.train_seconds = time.perf_counter() - started
        defended.head = BottleneckHead(split.head, bottleneck).eval()
        defended.tail = BottleneckTail(bottleneck, tail).eval()
        defended.transform = None
        defended.train_log = {"feature_loss": list(log.feature_loss), "task_loss": list(log.task_loss)}
    return defended


__all__ = ["ACCEPTED_FORMS", "DEFENSE_KINDS", "BottleneckHead", "BottleneckTail", "DefendedCut", "DefenseSpec",
           "GaussianNoise", "RandomDropout", "build_defense", "distance_correlation_torch", "feature_stds",
           "parse_defense", "parse_defenses", "train_nopeek"]
