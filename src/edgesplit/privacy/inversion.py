"""Model-inversion attacks on the features that cross a cut (He et al., ACSAC 2019).

Threat model: the server is honest but curious. It runs the tail as agreed, but it keeps every crossing tensor
it receives, exactly as the codec delivered it (quantized, cast, ...), and it knows the tail's weights. It
tries to reconstruct the private input image the device never sent.

- Black-box attacker (:func:`learned_inversion`): does not know the head's weights, but has auxiliary images
  from the same domain (disjoint from the victim's) and can query the head with them, e.g. as a customer of
  the same app. It trains a decoder from (features, image) pairs and applies it to the victim's features.
- White-box attacker (:func:`optimization_inversion`): knows the head's weights (they ship in the app) and
  searches for the image whose head features match the received ones (regularised maximum likelihood, rMLE).

Both attacks see the features after ``transform``, which stands for what the wire does to them: pass
``codec_transform("int4+zstd")`` (from `edgesplit.privacy.query`, also importable here) to attack what that
codec actually delivers.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgesplit.errors import EdgesplitError, InputShapeError
from edgesplit.model.graph import Split
from edgesplit.privacy.decoders import ConvDecoder, FCDecoder, build_decoder, image_chw
from edgesplit.privacy.query import (QUERY_BATCH, Transform, as_tensors, codec_transform, eval_mode, head_input_shape,
                                     query_head, run_head)
from edgesplit.progress import progress_bar



@dataclass
class InversionResult:
    """An attack's reconstructions of the victim's images and what producing them cost."""

    reconstructions: torch.Tensor  # float32, N×C×H×W in [0, 1], in the victim's order
    seconds: float
    epochs: int  # decoder training epochs run (learned) or the most optimization steps any victim ran
    train_loss: list[float]  # mean loss per epoch (learned) or per step over the victims still optimized
    held_out_loss: list[float] = field(default_factory=list)  # learned: pixel MSE per epoch on the held-out aux
    decoder: nn.Module | None = None  # learned: the trained decoder (its best held-out epoch), for a warm start
    warm_started: bool = False  # learned: started from another cut's decoder; optimization: from given images
    kept_start: int = 0  # optimization: victims whose starting image beat the optimized one by the objective


# ------------------------------------------------------------------------------------------- helpers


def mean_image_baseline(aux_images: torch.Tensor, count: int) -> torch.Tensor:
    """The no-information baseline: the mean auxiliary image, repeated ``count`` times."""
    return aux_images.float().mean(dim=0, keepdim=True).expand(count, *aux_images.shape[1:]).clone()


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per image: mean absolute difference of neighbouring pixels, shape N."""
    dh = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().flatten(1).mean(1) if images.shape[2] > 1 else 0
    dw = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().flatten(1).mean(1) if images.shape[3] > 1 else 0
    return images.new_zeros(images.shape[0]) + dh + dw


def _head_module(head: Any) -> Callable[..., Any]:
    # A Split is accepted for its head, so callers can pass traced.split(k) directly.
    module = head.head if isinstance(head, Split) else head
    if not callable(module):
        raise EdgesplitError(f"head must be a module or callable returning the crossing tensors, got "
                             f"{type(head).__name__}; pass traced.split(cut).head")
    return module


def _check_images(images: torch.Tensor, what: str, expected: tuple[int, ...] | None,
                  reference: str = "the model's input is") -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputShapeError(f"{what} must be an N×C×H×W image tensor, got {shape}; stack the images into one")
    if len(images) == 0:
        raise InputShapeError(f"{what} hold no images; pass at least one")
    if expected is not None and tuple(images.shape[1:]) != tuple(expected):
        raise InputShapeError(f"{what} are {tuple(images.shape[1:])} but {reference} {tuple(expected)}; resize "
                              "the images to the model's input shape or trace the model on that shape")
    if not torch.isfinite(images).all():
        raise InputShapeError(f"{what} hold NaN or infinite pixels; clean the images first")
    return images.float()


def _check_counts(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EdgesplitError(f"{name} must be a positive integer, got {value!r}; pass e.g. 10")


def _check_rates(lr: float, tv_weight: float) -> None:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise EdgesplitError(f"lr must be a positive number, got {lr!r}; pass e.g. 1e-3")
    if isinstance(tv_weight, bool) or not isinstance(tv_weight, (int, float)) or not 0 <= tv_weight < math.inf:
        raise EdgesplitError(f"tv_weight must be 0 or a positive number, got {tv_weight!r}; pass e.g. 0.05")


# ------------------------------------------------------------------------------------------- attacks


def warm_start(decoder: nn.Module, previous: nn.Module | None) -> bool:
    """Copy ``previous``'s weights into ``decoder`` when every parameter and buffer has the same name and shape
    (a neighbouring cut that sends tensors of the same shapes); whether it did."""
    if previous is None or type(previous) is not type(decoder):
        return False
    mine, theirs = decoder.state_dict(), previous.state_dict()
    if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
        return False
    decoder.load_state_dict(copy.deepcopy(theirs))
    return True


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX512-BF16), where bf16 autocast pays (2-3x on the
    decoders' convolutions); elsewhere it is emulated and slower than float32."""
    global _NATIVE_BF16
    if _NATIVE_BF16 is None:
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            flags = []
        _NATIVE_BF16 = "amx_bf16" in flags or "avx512_bf16" in flags
    return _NATIVE_BF16


_NATIVE_BF16: bool | None = None


def _channels_last(features: list[torch.Tensor]) -> list[torch.Tensor]:
    return [f.contiguous(memory_format=torch.channels_last) if f.ndim == 4 else f for f in features]


def learned_inversion(head: Any, aux_images: torch.Tensor, victim_images: torch.Tensor, *,
                      transform: Transform | None = None, epochs: int = 30, batch_size: int = 64,
                      lr: float = 3e-3, tv_weight: float = 0.0, seed: int = 0, held_out: float = 0.0,
                      patience: int | None = None, min_improvement: float = 0.0, init: nn.Module | None = None,
                      warm_patience: int | None = None, bf16: bool = False,
                      progress: bool = False) -> InversionResult:
    """Black-box attack: train a decoder on the head's features of ``aux_images``, apply it to the victim's.

    The victim's images only go through the head (and ``transform``): the attacker sees their features, never
    them. Loss is pixel MSE plus ``tv_weight`` times total variation.

    ``held_out`` (a fraction of the auxiliary images, e.g. 0.1) is kept out of training: the decoder of the
    epoch with the lowest held-out MSE is the one applied, and with ``patience`` training stops after that many
    epochs whose held-out MSE improved on the best by less than ``min_improvement`` (relative). ``init`` is a
    decoder to start from (another cut's, ``result.decoder``): its weights are copied when this cut's decoder
    has the same shapes (``result.warm_started``), else training starts from scratch. ``warm_patience``, with
    ``held_out``, is the patience of a warm-started decoder (which starts near its optimum), in place of
    ``patience`` (which then applies to cold-started ones only).

    With ``bf16`` the decoder trains under bfloat16 autocast (its weights and the applied decoder stay float32)
    where the CPU computes bf16 natively (:func:`native_bf16`; elsewhere the flag is ignored); conv decoders
    always train in channels-last layout (1.4-1.7x faster on CPU; equal results up to float rounding).
    """
    module = _head_module(head)
    expected = head_input_shape(module)
    aux = _check_images(aux_images, "auxiliary images", expected)
    victims = _check_images(victim_images, "victim images", expected or tuple(aux.shape[1:]),
                            "the model's input is" if expected else "the auxiliary images are")
    _check_counts(epochs=epochs, batch_size=batch_size)
    for name, value in (("patience", patience), ("warm_patience", warm_patience)):
        if value is not None:
            _check_counts(**{name: value})
    _check_rates(lr, tv_weight)
    if not 0 <= held_out < 1 or not 0 <= min_improvement < 1:
        raise EdgesplitError(f"held_out and min_improvement are fractions in [0, 1), got {held_out!r} and "
                             f"{min_improvement!r}; pass e.g. held_out=0.1")
    validation = round(held_out * len(aux)) if held_out else 0
    if held_out and validation < 1:
        raise EdgesplitError(f"held_out={held_out} of {len(aux)} auxiliary images holds out none; pass more images")
    if len(aux) - validation < 2 or batch_size < 2:
        raise EdgesplitError(f"learned inversion trains on batches of at least 2 images (got {len(aux) - validation} "
                             f"auxiliary images to train on, batch_size={batch_size}); pass more images and "
                             "batch_size >= 2")

    start = time.perf_counter()
    aux_features = _channels_last(query_head(module, aux, transform, "auxiliary images"))
    victim_features = _channels_last(query_head(module, victims, transform, "victim images"))
    autocast = bf16 and native_bf16()
    losses: list[float] = []
    held_out_losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        decoder = build_decoder([tuple(f.shape) for f in aux_features], tuple(aux.shape[1:]))
        warm = warm_start(decoder, init)
        decoder = decoder.to(memory_format=torch.channels_last)
        stop_after = warm_patience if warm and warm_patience is not None else patience
        optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
        # The held-out images: a seeded draw (none drawn without held_out, so results match earlier ones).
        split = torch.randperm(len(aux), generator=generator) if validation else torch.arange(len(aux))
        check, train = split[:validation], split[validation:]
        n = len(train)
        # BatchNorm cannot train on a batch of one: a last batch of one image is skipped.
        steps_per_epoch = max(1, n // batch_size + (1 if n % batch_size > 1 else 0))
        best_state, best_loss, stale = None, math.inf, 0
        with progress_bar(progress) as bar:
            task = bar.add_task("learned inversion", total=epochs * steps_per_epoch, status=f"epoch 1/{epochs}")
            for epoch in range(epochs):
                decoder.train()
                order = train[torch.randperm(n, generator=generator)]
                total, seen = 0.0, 0
                for step in range(steps_per_epoch):
                    idx = order[step * batch_size:(step + 1) * batch_size]
                    target = aux[idx]
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                        output = decoder(*(f[idx] for f in aux_features))
                    loss = F.mse_loss(output.float(), target)
                    if tv_weight:
                        loss = loss + tv_weight * total_variation(output).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    value = loss.item()
                    if not math.isfinite(value):
                        raise EdgesplitError(f"decoder training diverged (loss {value} at epoch {epoch + 1}); "
                                             "lower lr")
                    total, seen = total + value * len(idx), seen + len(idx)
                    bar.advance(task)
                losses.append(total / seen)
                status = f"epoch {epoch + 1}/{epochs} loss {losses[-1]:.4f}"
                if validation:
                    held_out_losses.append(_decoder_mse(decoder, [f[check] for f in aux_features], aux[check]))
                    status += f" held-out {held_out_losses[-1]:.4f}"
                    if held_out_losses[-1] < best_loss:
                        improved = held_out_losses[-1] < best_loss * (1 - min_improvement)
                        best_state, best_loss = copy.deepcopy(decoder.state_dict()), held_out_losses[-1]
                        stale = 0 if improved else stale + 1
                    else:
                        stale += 1
                bar.update(task, status=status)
                if stop_after is not None and validation and stale >= stop_after:
                    break
        if best_state is not None:
            decoder.load_state_dict(best_state)
        decoder.eval()
        with torch.inference_mode():
            reconstructions = torch.cat([
                decoder(*(f[i:i + QUERY_BATCH] for f in victim_features))
                for i in range(0, len(victims), QUERY_BATCH)])
    return InversionResult(reconstructions.clamp(0, 1), time.perf_counter() - start, len(losses), losses,
                           held_out_losses, decoder, warm)


def _decoder_mse(decoder: nn.Module, features: list[torch.Tensor], images: torch.Tensor) -> float:
    """The decoder's mean pixel MSE on ``images`` from their ``features`` (eval mode, no gradients)."""
    decoder.eval()
    with torch.inference_mode():
        total = sum(F.mse_loss(decoder(*(f[i:i + QUERY_BATCH] for f in features)), images[i:i + QUERY_BATCH],
                               reduction="sum").item() for i in range(0, len(images), QUERY_BATCH))
    return total / images.numel()


def optimization_inversion(head: Any, *, victim_images: torch.Tensor | None = None,
                           victim_features: Sequence[torch.Tensor] | torch.Tensor | None = None,
                           input_shape: tuple[int, ...] | None = None, transform: Transform | None = None,
                           steps: int = 300, lr: float = 0.05, tv_weight: float = 0.01, batch_size: int = 256,
                           init: torch.Tensor | None = None, prior_weight: float = 0.0,
                           tolerance: float | None = None, seed: int = 0, progress: bool = False) -> InversionResult:
    """White-box attack (rMLE): optimize images so the head's features match the received ones, plus TV prior.

    Give either ``victim_images`` (the features are computed from them, through ``transform``) or
    ``victim_features`` (the crossing tensors as received, batch first). Images start uniform gray, or at
    ``init`` (N×C×H×W in [0, 1], e.g. the learned decoder's reconstructions: a decoder prior), and are projected
    back into [0, 1] after every Adam step (a box constraint: a sigmoid parametrisation instead stalls near black
    and white, 37.7 dB against 100 dB on MNIST after conv1). The feature term is each victim's squared error
    relative to its features' mean square, so ``tv_weight`` means the same at every cut; with ``init``,
    ``prior_weight`` adds that times the mean squared distance to it.

    Each victim's result is its iterate with the lowest objective, its starting image included: the start is
    kept (``result.kept_start`` counts them) where the optimization only made the objective worse. With
    ``tolerance`` a victim stops once its best objective improved by less than that fraction over the last
    ``OPTIMIZE_WINDOW`` steps; the others go on, as one batch, up to ``steps``.
    """
    module = _head_module(head)
    traced_shape = head_input_shape(module)
    if (victim_images is None) == (victim_features is None):
        raise EdgesplitError("give exactly one of victim_images and victim_features")
    _check_counts(steps=steps, batch_size=batch_size)
    _check_rates(lr, tv_weight)
    if not (isinstance(prior_weight, (int, float)) and 0 <= prior_weight < math.inf):
        raise EdgesplitError(f"prior_weight must be 0 or a positive number, got {prior_weight!r}; pass e.g. 0.1")
    if tolerance is not None and not 0 <= tolerance < 1:
        raise EdgesplitError(f"tolerance is a fraction in [0, 1), got {tolerance!r}; pass e.g. 1e-3 or None")
    if victim_images is not None:
        given = traced_shape or (image_chw(input_shape) if input_shape is not None else None)
        images = _check_images(victim_images, "victim images", given)
        shape = tuple(images.shape[1:])
        targets = query_head(module, images, transform, "victim images")
    else:
        given = traced_shape or input_shape
        if given is None:
            raise InputShapeError("optimization inversion from features needs the model's input shape; pass "
                                  "input_shape=(C, H, W) or a traced head")
        shape = image_chw(given)
        if traced_shape is not None and input_shape is not None and image_chw(input_shape) != shape:
            raise InputShapeError(f"input_shape {tuple(input_shape)} differs from the head's traced input {shape}; "
                                  "drop input_shape or trace the model on that shape")
        targets = [f.detach().float() for f in as_tensors(victim_features)]
        if len({len(f) for f in targets}) != 1:
            raise EdgesplitError(f"victim features disagree on the batch size ({[len(f) for f in targets]}); pass "
                                 "the crossing tensors of the same victims, batch first")
    with torch.no_grad(), eval_mode(module):
        expected = run_head(module, torch.full((1, *shape), 0.5), "an image")
    if [tuple(e.shape[1:]) for e in expected] != [tuple(t.shape[1:]) for t in targets]:
        raise EdgesplitError(f"victim features have shapes {[tuple(t.shape[1:]) for t in targets]} but the head "
                             f"sends {[tuple(e.shape[1:]) for e in expected]}; pass features from this cut")
    count = len(targets[0])
    if init is not None:
        init = _check_images(init, "starting images (init)", shape).detach().clamp(0, 1)
        if len(init) != count:
            raise EdgesplitError(f"init holds {len(init)} images for {count} victims; pass one starting image each")

    start = time.perf_counter()
    chunks = range(0, count, batch_size)
    totals = torch.zeros(steps + 1, dtype=torch.float64)  # the objective summed over victims, per step
    ran, kept = 0, 0
    results: list[torch.Tensor] = []
    with torch.random.fork_rng(devices=[]), eval_mode(module), progress_bar(progress) as bar:
        torch.manual_seed(seed)
        task = bar.add_task("optimization inversion", total=steps * len(chunks), status="")
        for first in chunks:
            target = [t[first:first + batch_size] for t in targets]
            start_images = (init[first:first + batch_size] if init is not None
                            else torch.full((len(target[0]), *shape), 0.5))
            found, chunk_totals, chunk_steps, chunk_kept = _optimize_chunk(
                module, target, start_images, steps=steps, lr=lr, tv_weight=tv_weight,
                prior_weight=prior_weight if init is not None else 0.0, tolerance=tolerance,
                advance=lambda: bar.advance(task),
                status=lambda text: bar.update(task, status=text))
            results.append(found)
            totals += chunk_totals
            ran, kept = max(ran, chunk_steps), kept + chunk_kept
    losses = (totals[:ran + 1] / count).tolist()
    return InversionResult(torch.cat(results), time.perf_counter() - start, ran, losses,
                           warm_started=init is not None, kept_start=kept)


OPTIMIZE_WINDOW = 20  # steps over which a victim's best objective must improve by ``tolerance`` to go on


def _optimize_chunk(module: Callable[..., Any], target: list[torch.Tensor], start_images: torch.Tensor, *,
                    steps: int, lr: float, tv_weight: float, prior_weight: float, tolerance: float | None,
                    advance: Callable[[], None], status: Callable[[str], None]
                    ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """One batch of victims: (best images, the objective summed over them per step, steps run, starts kept).

    Adam, written out so that victims that have stopped (``tolerance``) leave the batch with their moments.
    """
    beta1, beta2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults
    n = len(start_images)
    # The victims still going on: their indices, images, Adam moments, targets, scales and priors, kept together
    # (indexed only when some leave, not at every step).
    active = torch.arange(n)
    x = start_images.clone()
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    goal = list(target)
    scale = [t.flatten(1).pow(2).mean(1).clamp_min(1e-8) for t in target]
    prior = start_images.clone()
    best_x, best = x.clone(), torch.full((n,), math.inf, dtype=torch.float64)
    best_step = torch.zeros(n, dtype=torch.long)
    totals = torch.zeros(steps + 1, dtype=torch.float64)
    ran = 0
    for step in range(steps + 1):
        x.requires_grad_(step < steps)
        with torch.set_grad_enabled(step < steps):
            features = as_tensors(module(x))
            objective = sum((f.float() - t).flatten(1).pow(2).mean(1) / s for f, t, s in zip(features, goal, scale))
            objective = objective + tv_weight * total_variation(x)
            if prior_weight:
                objective = objective + prior_weight * (x - prior).flatten(1).pow(2).mean(1)
        values = objective.detach().double()
        better = values < best[active]
        best[active] = torch.where(better, values, best[active])
        best_x[active[better]] = x.detach()[better]
        best_step[active[better]] = step
        totals[step] = best.sum()  # stopped victims count with their best
        if step == 0:
            checkpoint = best.clone()  # the first window is measured from the start
        ran = step
        if step == steps:
            break
        (grad,) = torch.autograd.grad(objective.sum(), x)
        x = x.detach()
        if tolerance is not None and step % OPTIMIZE_WINDOW == 0 and step:
            going = checkpoint[active] - best[active] >= tolerance * checkpoint[active]
            checkpoint = best.clone()
            if not going.all():
                if not going.any():
                    break
                active, x, m, v, grad, prior = active[going], x[going], m[going], v[going], grad[going], prior[going]
                goal, scale = [t[going] for t in goal], [s[going] for s in scale]
        t = step + 1
        with torch.no_grad():
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            update = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + eps)
            x = (x - lr * update).clamp_(0, 1)
        advance()
        if step % 20 == 0:
            status(f"step {step + 1}/{steps} objective {float(best.mean()):.4f}, {len(active)} victims going on")
    if ran < steps:
        totals[ran + 1:] = totals[ran]
    kept = int((best_step == 0).sum())
    return best_x, totals, ran, kept


# codec_transform is defined in edgesplit.privacy.query and re-exported: attackers build their transform here.
__all__ = ["OPTIMIZE_WINDOW", "ConvDecoder", "FCDecoder", "InversionResult", "build_decoder", "codec_transform",
           "learned_inversion", "mean_image_baseline", "native_bf16", "optimization_inversion", "total_variation",
           "warm_start"]
