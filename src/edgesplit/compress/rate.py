"""Rate against accuracy at one cut: codecs and learned bottlenecks measured on real data.

Every configuration is run end to end on held-out images: head, encode (each image alone, as at run time),
decode, tail. Bytes are the frames' real sizes; accuracy is the tail's on what was decoded.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, field_serializer

from edgesplit.compress.bottleneck import (BottleneckConfig, SlimmableBottleneck, TrainingPlan, bottleneck_config,
                                           train_bottleneck)
from edgesplit.codecs import Codec, codec_from_json, decode, pack, parse_codec, unpack
from edgesplit.model.data import Dataset
from edgesplit.errors import EdgesplitError
from edgesplit.model.graph import Split, TensorSpec, TracedModel
from edgesplit.compress.pictures import round_trip_pictures
from edgesplit.progress import progress_bar
from edgesplit.versioned import read_versioned

COMPRESS_KIND, COMPRESS_VERSION = "edgesplit.compress", 1
DEFAULT_CODECS = ("fp32", "fp16", "int8", "int4+zstd", "int2+ans")
# At a token cut (every crossing tensor B×N×D) the default quantizers take one range per channel, along D, where a
# transformer's outlier channels sit: a per-tensor range there spends most levels on a few channels.
TOKEN_DEFAULT_CODECS = ("fp32", "fp16", "int8:channel", "int4:channel+zstd", "int2:channel+ans")


def default_codecs(crossing: Sequence[TensorSpec]) -> tuple[str, ...]:
    """The codecs `compress` measures when none are given: per-channel quantizers at a token cut."""
    tokens = bool(crossing) and all(len(t.shape) == 3 for t in crossing)
    return TOKEN_DEFAULT_CODECS if tokens else DEFAULT_CODECS
CALIBRATION_IMAGES = 256
SLIMMABLE_WIDTHS = (0.25, 0.5, 0.75, 1.0)


class Configuration(BaseModel):
    """One way to send the features (or the input), measured: bytes, accuracy, and encode/decode time."""

    name: str
    kind: Literal["codec", "bottleneck", "input"]
    codecs: list[dict]  # per crossing tensor: the codec with its calibration (codec_from_json reads it)
    width: float | None = None  # bottleneck width
    code_channels: int | None = None
    bytes_per_inference: float  # mean payload per image, frame headers included
    compression: float  # float32 features' bytes / bytes_per_inference
    accuracy: float
    accuracy_drop: float  # baseline accuracy − accuracy (percentage points / 100)
    encode_ms: float  # median per image on this host (for a bottleneck: encoder + codec)
    decode_ms: float
    device_macs: int = 0  # extra MACs the device runs (bottleneck encoder)
    server_macs: int = 0  # extra MACs the server runs (bottleneck decoder)


class BottleneckSummary(BaseModel):
    channels: int
    stride: int  # 1 for the token form, which sends every token
    bits: int
    widths: list[float]
    feature_epochs: int
    task_epochs: int
    train_images: int
    feature_loss: list[float]
    task_loss: list[float]
    seconds: float
    resumed_from_epoch: int
    checkpoint: str | None
    layout: Literal["image", "tokens"] = "image"  # tokens: the per-token linear form at a B×N×D cut


class CompressReport(BaseModel):
    """`edgesplit compress`: every configuration's bytes and accuracy at one cut of one model."""

    kind: Literal["edgesplit.compress"] = COMPRESS_KIND
    version: int = COMPRESS_VERSION
    model: str
    model_ref: dict | None
    fingerprint: str
    data: str
    cut_index: int
    cut_position: int
    after: str
    crossing: list[TensorSpec]  # shape and nbytes for one image (batch 1)
    float32_bytes: int  # the crossing tensors of one image as float32
    input_bytes: int  # the input of one image as float32
    eval_images: int
    baseline_accuracy: float  # the unsplit model on the eval images
    configurations: list[Configuration]
    bottleneck: BottleneckSummary | None = None
    seconds: float

    @field_serializer("crossing")
    def _crossing_as_written(self, crossing: list[TensorSpec]) -> list[dict]:
        # Compress files list name, shape and dtype only; TensorSpec works nbytes out from them on reading.
        return [t.model_dump(mode="json", exclude={"nbytes"}) for t in crossing]

    def at_most(self, max_drop: float) -> list[Configuration]:
        """Configurations whose accuracy is within ``max_drop`` of the baseline, fewest bytes first."""
        return sorted((c for c in self.configurations if c.accuracy_drop <= max_drop + 1e-12),
                      key=lambda c: c.bytes_per_inference)


def load_compress(path: str | Path) -> CompressReport:
    return read_versioned(path, CompressReport, kind=COMPRESS_KIND, version=COMPRESS_VERSION,
                          what="compress result", make="`edgesplit compress ... --json FILE`", again="run it again")


def _batches(images: torch.Tensor, size: int = 256):
    for start in range(0, len(images), size):
        yield images[start:start + size]


@torch.no_grad()
def _features(split: Split, images: torch.Tensor) -> list[torch.Tensor]:
    """The crossing tensors for all ``images``, one tensor per crossing value (batch along dim 0)."""
    parts = [split.head(batch) for batch in _batches(images)]
    return [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]


@torch.no_grad()
def _accuracy(logits_of, inputs: list[torch.Tensor], labels: torch.Tensor) -> float:
    correct = 0
    for start in range(0, len(labels), 256):
        logits = logits_of(*[t[start:start + 256] for t in inputs])
        correct += int((logits.argmax(dim=1) == labels[start:start + 256]).sum())
    return correct / len(labels)


def _round_trip(codecs: list[Codec], tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], float, float, float]:
    """Encode every image's tensors alone, decode them; (decoded batches, mean bytes, median ms enc, dec)."""
    sizes, encode_s, decode_s, decoded = [], [], [], []
    for i in range(len(tensors[0])):
        start = time.perf_counter()
        frames = [codec.encode(t[i:i + 1]) for codec, t in zip(codecs, tensors)]
        payload = frames[0] if len(frames) == 1 else pack(frames)
        encode_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        restored = [decode(payload)] if len(frames) == 1 else unpack(payload)
        decode_s.append(time.perf_counter() - start)
        sizes.append(len(payload))
        decoded.append(restored)
    batches = [torch.cat([d[j] for d in decoded]) for j in range(len(tensors))]
    return batches, float(np.mean(sizes)), statistics.median(encode_s) * 1e3, statistics.median(decode_s) * 1e3


def evaluate_codecs(split: Split, specs: list[str], calibration: torch.Tensor, images: torch.Tensor,
                    labels: torch.Tensor, baseline: float, float32_bytes: int,
                    progress: bool = True) -> list[Configuration]:
    """Each codec at ``split``'s cut: calibrated on ``calibration`` images, measured on ``images``."""
    parsed = [parse_codec(s) for s in specs]  # bad specs fail before any work
    calibration_features = _features(split, calibration)
    features = _features(split, images)
    found = []
    with progress_bar(progress) as bar:
        task = bar.add_task("codecs", total=len(parsed), status="")
        for codec in parsed:
            bar.update(task, status=codec.spec)
            codecs = [codec.calibrate(f) for f in calibration_features]
            decoded, nbytes, encode_ms, decode_ms = _round_trip(codecs, features)
            accuracy = _accuracy(split.tail, decoded, labels)
            found.append(Configuration(
                name=codec.spec, kind="codec", codecs=[c.to_json() for c in codecs], bytes_per_inference=nbytes,
                compression=float32_bytes / nbytes, accuracy=accuracy, accuracy_drop=baseline - accuracy,
                encode_ms=encode_ms, decode_ms=decode_ms))
            bar.advance(task)
    return found


def code_codec(config: BottleneckConfig) -> Codec:
    """The codec a bottleneck's integer code travels in: ``intB+ans`` over exactly [0, 2**B − 1], so lossless."""
    levels = float((1 << config.bits) - 1)
    return parse_codec(f"int{config.bits}+ans").with_range(0.0, levels)


@torch.no_grad()
def evaluate_bottleneck(split: Split, bottleneck: SlimmableBottleneck, tail: torch.nn.Module, images: torch.Tensor,
                        labels: torch.Tensor, baseline: float, float32_bytes: int) -> list[Configuration]:
    """Each trained width end to end: encoder, the code's frame, decoder, fine-tuned tail."""
    bottleneck.eval()
    tail.eval()
    codec = code_codec(bottleneck.config)
    (features,) = _features(split, images)
    found = []
    for width in bottleneck.config.widths:
        start = time.perf_counter()
        code = torch.cat([bottleneck.encode(batch, width) for batch in _batches(features)])
        encoder_ms = (time.perf_counter() - start) * 1e3 / len(labels)
        decoded, nbytes, encode_ms, decode_ms = _round_trip([codec], [code])
        if not torch.equal(decoded[0], code):
            raise EdgesplitError("the bottleneck code did not survive its codec exactly; report this as a bug")
        start = time.perf_counter()
        accuracy = _accuracy(lambda c: tail(bottleneck.decode(c, width)), decoded, labels)
        decoder_ms = (time.perf_counter() - start) * 1e3 / len(labels)
        device_macs, server_macs = bottleneck.macs(tuple(features.shape[1:]), width)
        channels = bottleneck.config.width_channels(width)
        found.append(Configuration(
            name=f"bottleneck {channels}ch" + (f" ({width:.0%} width)" if len(bottleneck.config.widths) > 1 else ""),
            kind="bottleneck", codecs=[codec.to_json()], width=width, code_channels=channels,
            bytes_per_inference=nbytes, compression=float32_bytes / nbytes, accuracy=accuracy,
            accuracy_drop=baseline - accuracy, encode_ms=encoder_ms + encode_ms, decode_ms=decoder_ms + decode_ms,
            device_macs=device_macs, server_macs=server_macs))
    return found


def evaluate_input_offloading(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, baseline: float,
                              float32_bytes: int, jpeg_qualities: tuple[int, ...] = (90, 50)) -> list[Configuration]:
    """The input sent instead of features: PNG (lossless) and JPEG, classified by the full model."""
    if images.shape[1] not in (1, 3):
        return []
    found = []
    for name, options in [("png", {"format": "PNG", "optimize": True})] + [
            (f"jpeg q{q}", {"format": "JPEG", "quality": q}) for q in jpeg_qualities]:
        trip = round_trip_pictures(images, options)
        accuracy = _accuracy(model, [trip.decoded], labels)
        mean_bytes = float(np.mean(trip.sizes))
        found.append(Configuration(
            name=f"input as {name}", kind="input", codecs=[], bytes_per_inference=mean_bytes,
            compression=float32_bytes / mean_bytes, accuracy=accuracy, accuracy_drop=baseline - accuracy,
            encode_ms=statistics.median(trip.encode_s) * 1e3, decode_ms=statistics.median(trip.decode_s) * 1e3))
    return found


def compress(traced: TracedModel, model: torch.nn.Module, dataset: Dataset, cut: int | str, *, name: str,
             model_ref: dict | None, codecs: list[str], bottleneck: BottleneckConfig | None = None,
             training: TrainingPlan = TrainingPlan(), checkpoint_dir: Path | None = None, eval_limit: int = 2000,
             progress: bool = True) -> CompressReport:
    """Measure ``codecs`` and, if given, train and measure a bottleneck at ``cut`` on ``dataset``. The default list
    (``DEFAULT_CODECS``) becomes the per-channel one at a token cut (``default_codecs``)."""
    started = time.perf_counter()
    split = traced.split(cut)
    if tuple(codecs) == DEFAULT_CODECS:
        codecs = list(default_codecs(split.cut.crossing))
    if split.cut.position == 0:
        raise EdgesplitError("cut 0 sends the input itself; compress features at a later cut "
                             "(input offloading is measured alongside every cut)")
    images, labels = dataset.test_images[:eval_limit], dataset.test_labels[:eval_limit]
    if tuple(images.shape[1:]) != tuple(traced.example_inputs[0].shape[1:]):
        raise EdgesplitError(f"data set {dataset.name} has images of shape {list(images.shape[1:])}, the model takes "
                             f"{list(traced.example_inputs[0].shape[1:])}; pass --input-shape or data of that shape")
    if bottleneck is not None:  # fails early for cuts a bottleneck cannot sit at; the token form at B×N×D ones
        bottleneck = bottleneck_config(split, bottleneck.channels, bottleneck.stride, bottleneck.bits,
                                       bottleneck.widths)
    float32_bytes = sum(int(np.prod(t.shape[1:])) * 4 for t in split.cut.crossing)
    baseline = _accuracy(model.eval(), [images], labels)
    calibration = dataset.train_images[:CALIBRATION_IMAGES]
    configurations = evaluate_input_offloading(model, images, labels, baseline, float32_bytes)
    configurations += evaluate_codecs(split, codecs, calibration, images, labels, baseline, float32_bytes, progress)
    summary = None
    if bottleneck is not None:
        trained, tail, log = train_bottleneck(split, model, dataset, bottleneck, training,
                                              checkpoint_dir=checkpoint_dir, progress=progress)
        configurations += evaluate_bottleneck(split, trained, tail, images, labels, baseline, float32_bytes)
        summary = BottleneckSummary(
            channels=bottleneck.channels, stride=bottleneck.stride, bits=bottleneck.bits,
            widths=list(bottleneck.widths), feature_epochs=training.feature_epochs, task_epochs=training.task_epochs,
            train_images=min(len(dataset.train_labels), training.train_limit or len(dataset.train_labels)),
            feature_loss=log.feature_loss, task_loss=log.task_loss, seconds=log.seconds,
            resumed_from_epoch=log.resumed_from_epoch, checkpoint=str(checkpoint_dir) if checkpoint_dir else None,
            layout=bottleneck.layout)
    return CompressReport(
        model=name, model_ref=model_ref, fingerprint=traced.fingerprint, data=dataset.name,
        cut_index=split.cut.index, cut_position=split.cut.position, after=split.cut.after,
        crossing=[t.at_batch(1) for t in split.cut.crossing],
        float32_bytes=float32_bytes, input_bytes=int(np.prod(images.shape[1:])) * 4, eval_images=len(labels),
        baseline_accuracy=baseline, configurations=configurations, bottleneck=summary,
        seconds=time.perf_counter() - started)


__all__ = ["CompressReport", "Configuration", "DEFAULT_CODECS", "SLIMMABLE_WIDTHS", "TOKEN_DEFAULT_CODECS", "code_codec",
           "codec_from_json", "compress", "default_codecs", "load_compress"]
