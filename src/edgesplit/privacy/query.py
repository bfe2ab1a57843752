"""What the server receives when the device's head is queried: the head's crossing tensors, through the wire.

Attacks (`inversion`, `probes` via the audit) and defenses (`defenses`) all see the features the same way: the
head run in eval mode on batches of images, its output passed through a :data:`Transform` that stands for what
the wire does to it (a defense's noise, the deployment codec's quantization), as float32. This module is that
one shared view, so that neither side reaches into the other's internals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import fx, nn

from edgesplit.codecs import Codec, decode, parse_codec
from edgesplit.errors import EdgesplitError, InputShapeError

Transform = Callable[[list[torch.Tensor]], list[torch.Tensor]]

QUERY_BATCH = 256  # images per head query; only memory depends on it, results do not


def codec_transform(codec: Codec | str, *, per_example: bool = True) -> Transform:
    """A transform that sends features through a codec (a ``Codec`` or a spec string) and back, as the wire does.

    ``per_example`` encodes each example as its own frame, as one request per image would; an uncalibrated
    quantizer then takes its range from that example alone, as it does in deployment.
    """
    if isinstance(codec, str):
        codec = parse_codec(codec)

    def through_codec(features: list[torch.Tensor]) -> list[torch.Tensor]:
        if not per_example:
            return [decode(codec.encode(f)) for f in features]
        return [torch.cat([decode(codec.encode(f[i:i + 1])) for i in range(f.shape[0])]) for f in features]

    return through_codec


def head_input_shape(head: Callable[..., Any]) -> tuple[int, ...] | None:
    """One input's (C, H, W) as traced, when the head is a traced GraphModule with shape metadata."""
    if not isinstance(head, fx.GraphModule):
        return None
    placeholders = [n for n in head.graph.nodes if n.op == "placeholder"]
    meta = placeholders[0].meta.get("tensor_meta") if len(placeholders) == 1 else None
    shape = getattr(meta, "shape", None)
    return tuple(int(d) for d in shape[1:]) if shape is not None else None


@contextlib.contextmanager
def eval_mode(module: Any) -> Iterator[None]:
    """Eval mode for the duration (BatchNorm running statistics, no dropout), the caller's modes restored after."""
    if not isinstance(module, nn.Module):
        yield
        return
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def as_tensors(output: Any) -> list[torch.Tensor]:
    """A head's output (a tensor, or a tuple or list of tensors) as a list of tensors."""
    tensors = list(output) if isinstance(output, (tuple, list)) else [output]
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise EdgesplitError("the head must return a tensor or a tuple of tensors; pass traced.split(cut).head")
    return tensors


def run_head(head: Callable[..., Any], images: torch.Tensor, what: str) -> list[torch.Tensor]:
    """``head(images)`` as a list of tensors; an error the head raises on them becomes an InputShapeError."""
    try:
        return as_tensors(head(images))
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputShapeError(f"the head cannot run on {what} of shape {tuple(images.shape[1:])} ({reason}); "
                              "pass images of the model's input shape") from exc


def query_head(head: Callable[..., Any], images: torch.Tensor, transform: Transform | None,
               what: str) -> list[torch.Tensor]:
    """The crossing tensors the server receives for ``images``: head output, then ``transform``, as float32."""
    chunks: list[list[torch.Tensor]] = []
    with torch.no_grad(), eval_mode(head):
        for start in range(0, len(images), QUERY_BATCH):
            features = run_head(head, images[start:start + QUERY_BATCH], what)
            if transform is not None:
                features = as_tensors(transform([f.detach() for f in features]))
            chunks.append([f.detach().float() for f in features])
    return [torch.cat(parts) for parts in zip(*chunks)]


__all__ = ["QUERY_BATCH", "Transform", "as_tensors", "codec_transform", "eval_mode", "head_input_shape",
           "query_head", "run_head"]
