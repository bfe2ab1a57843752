"""Training loops: fit a classifier on a Dataset and measure its test accuracy.

``TrainSettings`` is how hard `edgesplit train` (and a run config's ``train`` section) trains; ``TrainRecord`` is
the file it writes (``train.json``), read back by the report with :func:`load_train`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from edgesplit.errors import DataError, EdgesplitError, InputShapeError
from edgesplit.model.data import Dataset
from edgesplit.progress import progress_bar
from edgesplit.versioned import read_versioned

__all__ = ["TRAIN_KIND", "TRAIN_VERSION", "TrainRecord", "TrainResult", "TrainSettings", "evaluate", "is_train_record",
           "load_train", "train_classifier"]

TRAIN_KIND, TRAIN_VERSION = "edgesplit.train", 1
# What a train.json from before it had a kind holds: recognised by these keys when read leniently.
_KINDLESS_KEYS = frozenset({"model", "dataset", "epochs", "test_accuracy"})


class TrainSettings(BaseModel):
    """How a model is trained (AdamW with a one-cycle schedule): `edgesplit train` and a run config's ``train``."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1, description="passes over the train split")
    batch_size: int = Field(64, ge=1, description="images per step")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")


class TrainRecord(BaseModel):
    """train.json, written by `edgesplit train --json` and by `edgesplit run` when it trains the model."""

    kind: Literal["edgesplit.train"] = TRAIN_KIND
    version: Literal[1] = TRAIN_VERSION
    model: dict[str, Any] | str  # the model reference ({"name", "kwargs"}) the weights rebuild with
    dataset: str
    epochs: int
    test_accuracy: float  # in [0, 1]
    train_loss: list[float] = []  # mean per epoch
    seconds: float | None = None
    weights: str | None = None  # the .safetensors written


def is_train_record(data: Any, *, lenient: bool = False) -> bool:
    """Whether parsed JSON ``data`` is a train.json; ``lenient``: also one written before it had a kind."""
    if not isinstance(data, dict):
        return False
    if data.get("kind") == TRAIN_KIND:
        return True
    return lenient and "kind" not in data and _KINDLESS_KEYS <= data.keys()


def load_train(path: str | Path, *, lenient: bool = False) -> TrainRecord:
    """Read a train.json; ``lenient`` also reads one written before it had a kind and version (as version 1)."""
    def unwrap(data: Any) -> Any:
        if lenient and is_train_record(data, lenient=True) and "kind" not in data:
            return {"kind": TRAIN_KIND, "version": TRAIN_VERSION, **data}
        return data

    return read_versioned(path, TrainRecord, kind=TRAIN_KIND, version=TRAIN_VERSION, what="training result",
                          make="`edgesplit train MODEL --out W --json FILE`", again="train again", unwrap=unwrap)


@dataclass
class TrainResult:
    """What a training run did: per-epoch mean loss, final test accuracy and wall time."""

    epochs: int
    train_loss: list[float]  # mean per epoch
    test_accuracy: float  # in [0, 1]
    seconds: float


def _device_of(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _check_output(model: torch.nn.Module, dataset: Dataset, device: torch.device) -> None:
    """Raise a one-line error unless the model maps one image of the data set to num_classes logits."""
    was_training = model.training
    model.eval()  # eval so BatchNorm accepts a batch of one and keeps its running statistics
    try:
        with torch.no_grad():
            out = model(dataset.train_images[:1].to(device))
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputShapeError(f"model cannot run on data set {dataset.name}'s input shape "
                              f"{dataset.input_shape} ({reason}); build the model for that input shape") from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DataError(f"model outputs {shape} but a classifier must output (batch, num_classes) logits; "
                        f"build a classifier with num_classes={dataset.num_classes}")
    if out.shape[1] != dataset.num_classes:
        raise DataError(f"model outputs {out.shape[1]} classes but data set {dataset.name} has "
                        f"{dataset.num_classes}; build the model with num_classes={dataset.num_classes}")


_DEFAULTS = TrainSettings()


def train_classifier(model: torch.nn.Module, dataset: Dataset, *, epochs: int,
                     batch_size: int = _DEFAULTS.batch_size, lr: float = _DEFAULTS.lr, seed: int = 0,
                     progress: bool = True) -> TrainResult:
    """Train ``model`` on the data set's train split with AdamW + OneCycle; returns losses and test accuracy."""
    if epochs < 1 or batch_size < 1:
        raise EdgesplitError(f"epochs and batch size must be at least 1, got epochs={epochs}, "
                             f"batch_size={batch_size}; pass positive values")
    if not lr > 0:
        raise EdgesplitError(f"learning rate must be positive, got {lr}; pass e.g. 1e-3")
    n = len(dataset.train_labels)
    if n == 0 or len(dataset.test_labels) == 0:
        raise DataError(f"data set {dataset.name} has {n} train and {len(dataset.test_labels)} test "
                        "examples; both splits need at least one")
    device = _device_of(model)
    _check_output(model, dataset, device)

    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(n / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)

    losses: list[float] = []
    with progress_bar(progress) as bar:
        task = bar.add_task(f"train {dataset.name}", total=epochs * steps_per_epoch, status=f"epoch 1/{epochs}")
        model.train()
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * batch_size:(step + 1) * batch_size]
                images = dataset.train_images[idx].to(device)
                labels = dataset.train_labels[idx].to(device)
                loss = F.cross_entropy(model(images), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                value = loss.item()
                if not math.isfinite(value):
                    raise EdgesplitError(f"training diverged: loss is {value} at epoch {epoch + 1}; "
                                         f"lower the learning rate (now {lr})")
                total += value * len(idx)
                bar.update(task, advance=1, status=f"epoch {epoch + 1}/{epochs} loss {value:.4f}")
            losses.append(total / n)

    model.eval()
    accuracy = evaluate(model, dataset.test_images, dataset.test_labels)
    return TrainResult(epochs=epochs, train_loss=losses, test_accuracy=accuracy,
                       seconds=time.perf_counter() - start)


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``images``/``labels``, in [0, 1]."""
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels; pass matching tensors")
    if len(labels) == 0:
        raise DataError("no examples to evaluate; pass at least one image")
    device = _device_of(model)
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for i in range(0, len(labels), batch_size):
                logits = model(images[i:i + batch_size].to(device))
                correct += int((logits.argmax(dim=1) == labels[i:i + batch_size].to(logits.device)).sum())
    finally:
        model.train(was_training)
    return correct / len(labels)
