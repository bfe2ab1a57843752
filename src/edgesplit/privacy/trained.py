"""Defenses trained with the model: head and tail fine-tuned under the defense they will be deployed with.

The defenses of :mod:`edgesplit.privacy.defenses` that act at inference (noise, dropout, quant) leave the tail
as it was trained on clean features, so their accuracy cost is that of a tail that never saw them. Here the
head and the tail are fine-tuned *through* the defense instead, so the head can learn to put what the task needs
where the defense does not reach, and the tail learns to read it. One spec names a defense or a combination::

    trained:noise=1                       Gaussian noise, std 1 × the features' std, injected while training
    trained:nopeek=2                      CE + 2 × distance correlation(inputs, what crosses) (NoPeek)
    trained:bottleneck=2+bits=2+stride=2  a learned 2-channel, 2-bit, stride-2 code crosses instead of features
    trained:bits=2                        the features quantized to 2 bits per example (straight-through)
    trained:noise=0.5+bottleneck=4        parts joined with ``+`` combine (dropout=P is accepted too)

What crosses, in order: the head's features → the bottleneck's code (``bottleneck``) or the features quantized
(``bits``) — the deterministic part the white-box attacker inverts — then noise and dropout drawn afresh for
every image, then (without a bottleneck or bits) the deployment codec. NoPeek's penalty is taken on the
deterministic part, before any noise, so it cannot be met by noise alone. Noise is scaled by the std of the
features the fine-tuned head sends (per batch while training, over training images when deployed), so the head
cannot win against it by growing its outputs.

:func:`build_trained` returns the fine-tuned copies as a :class:`~edgesplit.privacy.defended.DefendedCut`, which
the audit attacks like any other defense (`edgesplit audit MODEL --defense trained:noise=1+nopeek=2`). The model
and the split passed in are left as they were; training is seeded and leaves torch's global random state as is.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgesplit.compress.bottleneck import SlimmableBottleneck, bottleneck_config
from edgesplit.errors import EdgesplitError
from edgesplit.model.data import Dataset
from edgesplit.model.graph import Split
from edgesplit.privacy.defended import (NOISE_CALIBRATION_IMAGES, DefendedCut, DefenseSpec, GaussianNoise,
                                       RandomDropout, chain, distance_correlation_torch, feature_stds)
from edgesplit.privacy.query import Transform, as_tensors, codec_transform
from edgesplit.progress import progress_bar

TRAINED_PARTS = ("noise", "dropout", "nopeek", "bottleneck", "bits", "stride")  # canonical order in the text
TRAINED_FORMS = ("trained:PART=VALUE[+PART=VALUE...] with parts noise=SIGMA (> 0), dropout=P (0 < P < 1), "
                 "nopeek=ALPHA (> 0), bottleneck=CHANNELS (integer >= 1), bits=BITS (1 to 8), stride=S (integer "
                 ">= 1, with bottleneck)")
BOTTLENECK_BITS = 4  # code bits when a bottleneck names none


@dataclass(frozen=True)
class TrainedSpec(DefenseSpec):
    """A parsed ``trained:`` defense: kind ``trained``, strength None, and the strength of each part (0 or None:
    not used)."""

    noise: float = 0.0
    dropout: float = 0.0
    nopeek: float = 0.0
    channels: int | None = None  # bottleneck code channels
    bits: int | None = None  # code bits (with a bottleneck) or feature bits (without)
    stride: int = 1  # the bottleneck's spatial stride


_PART_RULES = {
    "noise": (False, lambda v: v > 0, "SIGMA > 0"),
    "dropout": (False, lambda v: 0 < v < 1, "P with 0 < P < 1"),
    "nopeek": (False, lambda v: v > 0, "ALPHA > 0"),
    "bottleneck": (True, lambda v: v >= 1, "CHANNELS, an integer >= 1"),
    "bits": (True, lambda v: 1 <= v <= 8, "BITS, an integer from 1 to 8"),
    "stride": (True, lambda v: v >= 1, "S, an integer >= 1"),
}


def _bad(text: object, reason: str) -> EdgesplitError:
    return EdgesplitError(f"bad defense {text!r}: {reason}; use {TRAINED_FORMS}, e.g. trained:noise=1+nopeek=2")


def parse_trained(text: str) -> TrainedSpec:
    """The trained defense a spec such as ``trained:noise=1+bottleneck=2+bits=2`` names; an EdgesplitError else."""
    kind, _, body = (part.strip() for part in str(text).strip().lower().partition(":"))
    if kind != "trained":
        raise _bad(text, f"not a trained defense (kind {kind!r})")
    values: dict[str, float | int] = {}
    for item in (p.strip() for p in body.split("+")):
        if not item:
            continue
        name, equals, value_text = (p.strip() for p in item.partition("="))
        rule = _PART_RULES.get(name)
        if rule is None:
            raise _bad(text, f"unknown part {name!r}")
        integer, allowed, meaning = rule
        if not equals or not value_text:
            raise _bad(text, f"{name} needs a value, {name}={meaning.split(',')[0].split(' ')[0]}")
        try:
            value = float(value_text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (integer and not value.is_integer()) or not allowed(value):
            raise _bad(text, f"{name} takes {meaning}, got {value_text!r}")
        if name in values:
            raise _bad(text, f"{name} is given twice")
        values[name] = int(value) if integer else value
    if not set(values) - {"stride"}:
        raise _bad(text, "name at least one of noise, dropout, nopeek, bottleneck, bits")
    if "stride" in values and "bottleneck" not in values:
        raise _bad(text, "stride applies to a bottleneck only; add bottleneck=CHANNELS or drop stride")
    if "bottleneck" in values:
        values.setdefault("bits", BOTTLENECK_BITS)
    canonical = "+".join(f"{name}={values[name]:.12g}" for name in TRAINED_PARTS if name in values)
    return TrainedSpec("trained", None, f"trained:{canonical}", noise=float(values.get("noise", 0.0)),
                       dropout=float(values.get("dropout", 0.0)), nopeek=float(values.get("nopeek", 0.0)),
                       channels=values.get("bottleneck"), bits=values.get("bits"), stride=int(values.get("stride", 1)))


# ------------------------------------------------------------------------------------------- the two halves


def quantize_per_example(features: torch.Tensor, bits: int) -> torch.Tensor:
    """Each example's values uniformly quantized to ``bits`` bits between its own min and max (dequantized);
    the rounding is straight-through, so gradients pass as if it were the identity."""
    features = features.float()
    with torch.no_grad():
        flat = features.flatten(1)
        low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
        span = (high - low).clamp_min(1e-12)
        levels = (1 << bits) - 1
        quantized = (torch.round((flat - low) / span * levels) / levels * span + low).reshape(features.shape)
    return features + (quantized - features).detach()


class TrainedHead(nn.Module):
    """Device side: the fine-tuned head, then the bottleneck's integer code (as float) or the quantized features."""

    def __init__(self, head: nn.Module, bottleneck: SlimmableBottleneck | None, bits: int | None) -> None:
        super().__init__()
        self.head = head
        self.bottleneck = bottleneck
        self.bits = bits

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = as_tensors(self.head(images))
        if self.bottleneck is not None:
            return (self.bottleneck.encode(features[0]),)
        if self.bits is not None:
            return tuple(quantize_per_example(f, self.bits) for f in features)
        return tuple(features)


class TrainedTail(nn.Module):
    """Server side: decode the bottleneck's code to features (when there is one), then the fine-tuned tail."""

    def __init__(self, bottleneck: SlimmableBottleneck | None, tail: nn.Module) -> None:
        super().__init__()
        self.bottleneck = bottleneck
        self.tail = tail

    def forward(self, *received: torch.Tensor) -> torch.Tensor:
        if self.bottleneck is not None:
            return self.tail(self.bottleneck.decode(received[0]))
        return self.tail(*received)


def _perturbed(sent: list[torch.Tensor], spec: TrainedSpec) -> list[torch.Tensor]:
    """Training-time noise (σ × each tensor's batch std) and dropout on what crosses, from the global generator."""
    out = []
    for tensor in sent:
        tensor = tensor.float()
        if spec.noise:
            tensor = tensor + spec.noise * tensor.detach().std() * torch.randn_like(tensor)
        if spec.dropout:
            tensor = F.dropout(tensor, spec.dropout, training=True)
        out.append(tensor)
    return out


@dataclass
class TrainedLog:
    """Per-epoch means of the training losses, and the seconds it took."""

    loss: list[float]
    task_loss: list[float]
    dcor: list[float]
    seconds: float = 0.0


def train_under_defense(split: Split, dataset: Dataset, spec: TrainedSpec, *, epochs: int = 2,
                        batch_size: int = 64, lr: float = 1e-3, train_limit: int | None = None, seed: int = 0,
                        progress: bool = False) -> tuple[TrainedHead, TrainedTail, TrainedLog]:
    """Fine-tune copies of ``split``'s head and tail (and a new bottleneck, when ``spec`` names one) through the
    defense ``spec``: cross-entropy on the tail's output from the perturbed crossing tensors, plus
    ``spec.nopeek`` × dCor(inputs, crossing tensors before noise). Returns the eval-mode halves and the log."""
    images, labels = dataset.train_images, dataset.train_labels
    if train_limit is not None:
        images, labels = images[:train_limit], labels[:train_limit]
    n = len(labels)
    if n < 2:
        raise EdgesplitError(f"training a defense needs at least 2 training images, got {n}; raise train_limit "
                             "or use a larger data set")
    starts = [s for s in range(0, n, batch_size) if n - s >= 2]  # dCor and BatchNorm need 2 samples a batch
    log = TrainedLog([], [], [])
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]), progress_bar(progress) as bar:
        torch.manual_seed(seed)
        # Copied together so that a module both halves share stays shared in the copies.
        head, tail = copy.deepcopy((split.head, split.tail))
        bottleneck = (SlimmableBottleneck(bottleneck_config(split, spec.channels, spec.stride, spec.bits))
                      if spec.channels is not None else None)
        device_half = TrainedHead(head, bottleneck, None if bottleneck is not None else spec.bits)
        server_half = TrainedTail(bottleneck, tail)
        parameters = list(dict.fromkeys(p for m in (device_half, server_half) for p in m.parameters()))
        if not parameters:
            raise EdgesplitError("a trained defense fine-tunes the model's weights, but the model has none; pick "
                                 "an inference-time defense (noise:SIGMA, quant:BITS)")
        for p in parameters:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(parameters, lr=lr)
        generator = torch.Generator().manual_seed(seed)
        task = bar.add_task(spec.text, total=epochs * len(starts), status="")
        device_half.train()
        server_half.train()
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator)
            sums, seen = [0.0, 0.0, 0.0], 0
            for start in starts:
                index = order[start:start + batch_size]
                x, y = images[index], labels[index]
                sent = list(device_half(x))
                task_loss = F.cross_entropy(server_half(*_perturbed(sent, spec)), y)
                loss, dcor = task_loss, torch.zeros(())
                if spec.nopeek:
                    dcor = distance_correlation_torch(x, torch.cat([s.float().flatten(1) for s in sent], dim=1))
                    loss = task_loss + spec.nopeek * dcor
                if not math.isfinite(loss.item()):
                    raise EdgesplitError(f"training under {spec.text} diverged (loss {loss.item()}); lower the "
                                         f"learning rate (now {lr}) or the defense's strength")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                for i, value in enumerate((loss, task_loss, dcor)):
                    sums[i] += value.item() * len(index)
                seen += len(index)
                bar.update(task, advance=1, status=f"epoch {epoch + 1}/{epochs} loss {loss.item():.4f}"
                                                   + (f" dcor {dcor.item():.3f}" if spec.nopeek else ""))
            for series, total in zip((log.loss, log.task_loss, log.dcor), sums):
                series.append(total / seen)
    device_half.eval()
    server_half.eval()
    log.seconds = time.perf_counter() - started
    return device_half, server_half, log


def _deployed_transform(spec: TrainedSpec, head: TrainedHead, dataset: Dataset, codec: str | None,
                        seed: int) -> tuple[Transform | None, list[float]]:
    """The way to the server at deployment: noise (calibrated on the fine-tuned head), dropout, then the codec
    (dropped where a bottleneck or ``bits`` already quantizes); and the noise std per crossing tensor."""
    steps: list[Transform] = []
    noise_std: list[float] = []
    if spec.noise:
        noise_std = [spec.noise * s for s in feature_stds(head, dataset.train_images[:NOISE_CALIBRATION_IMAGES])]
        steps.append(GaussianNoise(noise_std, seed))
    if spec.dropout:
        steps.append(RandomDropout(spec.dropout, seed + 1))
    if codec and spec.channels is None and spec.bits is None:
        steps.append(codec_transform(codec))
    return chain(*steps), noise_std


def build_trained(spec: TrainedSpec, split: Split, dataset: Dataset, input_shape: tuple[int, int, int], *,
                  codec: str | None = None, epochs: int = 2, batch_size: int = 64, lr: float = 1e-3,
                  train_limit: int | None = None, seed: int = 0, progress: bool = False) -> DefendedCut:
    """``split`` fine-tuned under ``spec`` on ``dataset``'s train split, as the defended cut the audit attacks:
    the fine-tuned device half, the deployed noise / dropout / codec, the fine-tuned server half."""
    if not isinstance(spec, TrainedSpec):
        raise EdgesplitError(f"build_trained needs a TrainedSpec, got {spec!r}; pass parse_trained(text)")
    head, tail, log = train_under_defense(split, dataset, spec, epochs=epochs, batch_size=batch_size, lr=lr,
                                          train_limit=train_limit, seed=seed, progress=progress)
    transform, noise_std = _deployed_transform(spec, head, dataset, codec, seed)
    train_log = {"loss": log.loss, "task_loss": log.task_loss, "dcor": log.dcor}
    if noise_std:
        train_log["noise_std"] = noise_std
    return DefendedCut(spec, head, transform, tail, input_shape, train_seconds=log.seconds, train_log=train_log)


__all__ = ["BOTTLENECK_BITS", "TRAINED_FORMS", "TRAINED_PARTS", "TrainedHead", "TrainedLog", "TrainedSpec",
           "TrainedTail", "build_trained", "parse_trained", "quantize_per_example", "train_under_defense"]
