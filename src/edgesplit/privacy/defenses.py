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
  inputs and the crossing features (Vepakomma et al. 2020, "NoPeek"); the same training as ``trained:nopeek=ALPHA``.
- ``bottleneck:CHANNELS``: a learned bottleneck of CHANNELS 4-bit code channels; its code is what crosses.
- ``trained:PART=VALUE[+...]``: head and tail fine-tuned *under* noise, dropout, NoPeek, a narrow quantized
  bottleneck or quantized features, and their combinations (:mod:`edgesplit.privacy.trained`).

Noise, dropout and quant are applied at inference time to the original tail, without retraining: their
accuracy is the honest utility cost of adding them to a deployed split. Nopeek and bottleneck train copies;
the model and the split passed in are left as they were. :class:`DefendedCut` and the transforms live in
:mod:`edgesplit.privacy.defended`, below this module and :mod:`edgesplit.privacy.trained`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from edgesplit.compress.bottleneck import (BottleneckConfig, SlimmableBottleneck, TrainingPlan, feature_shape,
                                           train_bottleneck)
from edgesplit.errors import EdgesplitError, InputShapeError
from edgesplit.model.data import Dataset
from edgesplit.model.graph import Split
from edgesplit.privacy.defended import (NOISE_CALIBRATION_IMAGES, DefendedCut, DefenseSpec, GaussianNoise,
                                        RandomDropout, chain, distance_correlation_torch, feature_stds)
from edgesplit.privacy.query import as_tensors, codec_transform, head_input_shape
from edgesplit.privacy.trained import TrainedSpec, build_trained, parse_trained

DEFENSE_KINDS = ("none", "noise", "dropout", "quant", "nopeek", "bottleneck", "trained")
ACCEPTED_FORMS = ("none, noise:SIGMA (SIGMA > 0), dropout:P (0 < P < 1), quant:BITS (integer 1 to 8), "
                  "nopeek:ALPHA (ALPHA > 0), bottleneck:CHANNELS (integer >= 1), trained:PART=VALUE[+...] "
                  "(head and tail fine-tuned under noise=, dropout=, nopeek=, bottleneck=, bits=, stride=)")
BOTTLENECK_BITS = 4


# ------------------------------------------------------------------------------------------- specs


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
    if kind == "trained":
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
        defended.transform = chain(GaussianNoise([spec.strength * s for s in stds], seed), wire)
        defended.train_log = {"feature_std": stds, "noise_std": [spec.strength * s for s in stds]}
    elif spec.kind == "dropout":
        defended.transform = chain(RandomDropout(spec.strength, seed), wire)
    elif spec.kind == "quant":
        defended.transform = codec_transform(f"int{int(spec.strength)}")
    elif spec.kind == "nopeek":  # the trained defense with NoPeek alone, reported under its own name
        trained = build_trained(TrainedSpec("trained", None, f"trained:nopeek={spec.strength:.12g}",
                                            nopeek=spec.strength), split, dataset, input_shape, codec=codec,
                                epochs=epochs, batch_size=batch_size, lr=lr, train_limit=train_limit, seed=seed,
                                progress=progress)
        defended = DefendedCut(spec, trained.head, trained.transform, trained.tail, input_shape,
                               trained.train_seconds, trained.train_log)
    elif spec.kind == "trained":
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
           "GaussianNoise", "NOISE_CALIBRATION_IMAGES", "RandomDropout", "build_defense", "distance_correlation_torch",
           "feature_stds", "parse_defense", "parse_defenses"]
