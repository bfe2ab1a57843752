"""Learned bottlenecks: a small encoder on the device and decoder on the server, inserted at a cut.

The encoder reduces the features' channels (and optionally their resolution) and outputs integers in
[0, 2**bits − 1]; a calibrated ``intB+ans`` codec then sends exactly those integers. Training follows
BottleFit's two stages: (1) the decoder learns to reproduce the original features from the encoder's
output with the head frozen; (2) bottleneck and tail are fine-tuned with the task loss plus knowledge
distillation from the original model. A *slimmable* bottleneck is trained at several widths at once
(the first k% of its code channels), so one set of weights trades bytes for accuracy at run time.

At a transformer cut the features are tokens, B×N×D: there the bottleneck takes its *token* form, a linear
projection of each token's D channels down to k code values on the device and back up to D on the server (no
spatial stride: every token is sent). ``bottleneck_config`` picks the form from the tensor crossing the cut.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgesplit.errors import EdgesplitError
from edgesplit.model.data import Dataset
from edgesplit.model.graph import Split
from edgesplit.progress import progress_bar

__all__ = ["LAYOUTS", "BottleneckConfig", "BottleneckError", "SlimmableBottleneck", "TrainingLog", "TrainingPlan",
           "bottleneck_config", "feature_shape", "load_checkpoint", "train_bottleneck"]

CHECKPOINT_VERSION = 1
LAYOUTS = ("image", "tokens")  # N×C×H×W features (convolutional form), B×N×D tokens (per-token linear form)


class BottleneckError(EdgesplitError):
    """A bottleneck that cannot be built at this cut, or a checkpoint that does not match it."""


@dataclass(frozen=True)
class BottleneckConfig:
    """The bottleneck's shape: code channels at full width, spatial stride, bits per code value, widths, and the
    features' layout (``in_channels`` is C of N×C×H×W features, D of B×N×D tokens)."""

    in_channels: int
    channels: int
    stride: int = 1
    bits: int = 4
    widths: tuple[float, ...] = (1.0,)
    layout: str = "image"

    def width_channels(self, width: float) -> int:
        return max(1, round(self.channels * width))


class SlimmableBottleneck(nn.Module):
    """Encoder C → k code channels (stride s), quantized to ``bits``; decoder k → C at the original resolution.

    At width w only the first ``round(k·w)`` code channels are computed and sent; the decoder reads them with
    the matching slice of its first convolution and a batch norm of its own (switchable batch norm).

    The token form (``layout="tokens"``) maps each token's D channels to k code values with one linear layer and
    back with another, whose slice for width w is followed by a bias of that width's own.
    """

    def __init__(self, config: BottleneckConfig) -> None:
        super().__init__()
        self.config = config
        c, k, s = config.in_channels, config.channels, config.stride
        if config.layout not in LAYOUTS:
            raise BottleneckError(f"bottleneck layout '{config.layout}' does not exist; use {' or '.join(LAYOUTS)}")
        if self.tokens:
            if s != 1:
                raise BottleneckError(f"a token bottleneck sends every token: stride 1, not {s}")
            self.encode_code = nn.Linear(c, k)
            self.decode_in = nn.Linear(k, c, bias=False)
            self.decode_bias = nn.Parameter(torch.zeros(len(config.widths), c))  # one per width, as switchable BN
            return
        hidden = max(k, c // 2)
        self.encode_body = nn.Sequential(nn.Conv2d(c, hidden, 3, stride=s, padding=1, bias=False),
                                         nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.encode_code = nn.Conv2d(hidden, k, 1)
        self.decode_in = nn.Conv2d(k, c, 3, padding=1, bias=False)
        self.decode_norms = nn.ModuleList(nn.BatchNorm2d(c) for _ in config.widths)
        upsample: list[nn.Module] = [nn.ConvTranspose2d(c, c, s, stride=s)] if s > 1 else []
        self.decode_out = nn.Sequential(nn.ReLU(inplace=True), *upsample, nn.Conv2d(c, c, 3, padding=1))

    @property
    def tokens(self) -> bool:
        """Whether this is the token form (B×N×D features)."""
        return self.config.layout == "tokens"

    @property
    def levels(self) -> int:
        return (1 << self.config.bits) - 1

    def _width_index(self, width: float) -> int:
        for index, known in enumerate(self.config.widths):
            if math.isclose(known, width):
                return index
        raise BottleneckError(f"width {width:g} was not trained; choose one of "
                              f"{', '.join(f'{w:g}' for w in self.config.widths)}")

    def encode(self, features: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        """Device side: the integer code (as float) of ``features`` at ``width``; rounding is straight-through."""
        self._width_index(width)
        k = self.config.width_channels(width)
        if self.tokens:
            code = F.linear(features, self.encode_code.weight[:k], self.encode_code.bias[:k])
        else:
            code = F.conv2d(self.encode_body(features), self.encode_code.weight[:k], self.encode_code.bias[:k])
        scaled = torch.sigmoid(code) * self.levels
        return scaled + (torch.round(scaled) - scaled).detach()

    def decode(self, code: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        """Server side: features of the original shape from a code of ``width``'s channels."""
        index = self._width_index(width)
        k = code.shape[-1] if self.tokens else code.shape[1]
        if k != self.config.width_channels(width):
            raise BottleneckError(f"code has {k} channels; width {width:g} sends "
                                  f"{self.config.width_channels(width)}")
        if self.tokens:
            return F.linear(code / self.levels, self.decode_in.weight[:, :k], self.decode_bias[index])
        restored = F.conv2d(code / self.levels, self.decode_in.weight[:, :k], padding=1)
        return self.decode_out(self.decode_norms[index](restored))

    def forward(self, features: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        return self.decode(self.encode(features, width), width)

    def code_shape(self, feature_shape: tuple[int, ...], width: float = 1.0) -> tuple[int, ...]:
        """The code's shape for one input of ``feature_shape`` ((C, H, W), or (N, D) for tokens): what is sent."""
        k = self.config.width_channels(width)
        if self.tokens:
            return (feature_shape[0], k)
        s = self.config.stride
        return (k, math.ceil(feature_shape[1] / s), math.ceil(feature_shape[2] / s))

    def macs(self, feature_shape: tuple[int, ...], width: float = 1.0) -> tuple[int, int]:
        """(encoder MACs on the device, decoder MACs on the server) for one input of ``feature_shape`` (C, H, W),
        or (N, D) for the token form."""
        if self.tokens:
            (n, d), k = feature_shape, self.config.width_channels(width)
            return n * d * k, n * k * d
        c, h, w = feature_shape
        s, k = self.config.stride, self.config.width_channels(width)
        hidden = self.encode_code.in_channels
        ho, wo = math.ceil(h / s), math.ceil(w / s)
        encoder = ho * wo * (hidden * c * 9 + k * hidden)
        decoder = ho * wo * c * k * 9 + (ho * wo * c * c * s * s if s > 1 else 0) + h * w * c * c * 9
        return encoder, decoder


def feature_shape(split: Split) -> tuple[int, int, int]:
    """The (C, H, W) of the one 4-D tensor crossing ``split``'s cut, or a clear error."""
    crossing = split.cut.crossing
    if len(crossing) != 1 or len(crossing[0].shape) != 4:
        raise BottleneckError(_one_tensor_message(split, "one N×C×H×W tensor"))
    _, c, h, w = crossing[0].shape
    return (c, h, w)


def bottleneck_config(split: Split, channels: int, stride: int = 1, bits: int = 4,
                      widths: tuple[float, ...] = (1.0,)) -> BottleneckConfig:
    """The bottleneck for ``split``'s cut: the convolutional form where one N×C×H×W tensor crosses it, the token
    form (every token sent: ``stride`` does not apply) where one floating-point B×N×D tensor does."""
    crossing = split.cut.crossing
    if len(crossing) == 1 and len(crossing[0].shape) == 3 and crossing[0].dtype.startswith(("float", "bfloat")):
        return BottleneckConfig(crossing[0].shape[2], channels, 1, bits, tuple(widths), layout="tokens")
    if len(crossing) != 1 or len(crossing[0].shape) != 4:
        raise BottleneckError(_one_tensor_message(split, "one N×C×H×W or B×N×D (tokens) tensor"))
    return BottleneckConfig(crossing[0].shape[1], channels, stride, bits, tuple(widths))


def _one_tensor_message(split: Split, needs: str) -> str:
    shapes = ", ".join(f"{t.name} {list(t.shape)}" for t in split.cut.crossing)
    return (f"a bottleneck needs {needs} crossing the cut; cut {split.cut.index} sends {shapes}; pick a cut "
            "between blocks (see `edgesplit profile`)")


@dataclass
class TrainingLog:
    """What training did: per-epoch losses of each stage, seconds, and whether it resumed."""

    feature_loss: list[float] = field(default_factory=list)  # stage 1: MSE to the original features
    task_loss: list[float] = field(default_factory=list)  # stage 2: CE + distillation
    seconds: float = 0.0
    resumed_from_epoch: int = 0


@dataclass(frozen=True)
class TrainingPlan:
    """Epochs of each stage and the optimisation settings; part of a checkpoint's identity."""

    feature_epochs: int = 2
    task_epochs: int = 2
    batch_size: int = 64
    lr: float = 2e-3
    distill_weight: float = 0.5
    temperature: float = 4.0
    train_limit: int | None = None  # train on at most this many images
    seed: int = 0


def train_bottleneck(split: Split, teacher: nn.Module, dataset: Dataset, config: BottleneckConfig,
                     plan: TrainingPlan, *, checkpoint_dir: Path | None = None,
                     progress: bool = True) -> tuple[SlimmableBottleneck, nn.Module, TrainingLog]:
    """Train a bottleneck at ``split``'s cut in two stages; returns it, the fine-tuned tail, and the log.

    With ``checkpoint_dir`` every finished epoch is saved (safetensors + JSON) and a rerun with the same
    configuration resumes after the last one. Seeds make runs deterministic on one machine.
    """
    torch.manual_seed(plan.seed)
    bottleneck = SlimmableBottleneck(config)
    # The halves share parameters and batch norms with the traced model: train copies, leave the model as it was.
    head = copy.deepcopy(split.head).eval().requires_grad_(False)
    tail = copy.deepcopy(split.tail).requires_grad_(True)
    teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
    total_epochs = plan.feature_epochs + plan.task_epochs
    log = TrainingLog()
    done = _resume(checkpoint_dir, config, plan, bottleneck, tail, log) if checkpoint_dir else 0
    log.resumed_from_epoch = done
    images, labels = dataset.train_images, dataset.train_labels
    if plan.train_limit is not None:
        images, labels = images[:plan.train_limit], labels[:plan.train_limit]
    steps = math.ceil(len(labels) / plan.batch_size)
    started = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("bottleneck", total=total_epochs * steps, completed=done * steps, status="")
        for epoch in range(done, total_epochs):
            feature_stage = epoch < plan.feature_epochs
            parameters = list(bottleneck.parameters()) + ([] if feature_stage else list(tail.parameters()))
            optimizer = torch.optim.AdamW(parameters, lr=plan.lr if feature_stage else plan.lr / 4)
            generator = torch.Generator().manual_seed(plan.seed * 1000 + epoch)
            order = torch.randperm(len(labels), generator=generator)
            bottleneck.train()
            tail.train(not feature_stage)
            total = 0.0
            name = "stage 1 (features)" if feature_stage else "stage 2 (task + distillation)"
            for step in range(steps):
                index = order[step * plan.batch_size:(step + 1) * plan.batch_size]
                x, y = images[index], labels[index]
                with torch.no_grad():
                    features = head(x)[0]
                    target = teacher(x) if not feature_stage else None
                loss = sum(_loss(bottleneck, tail, features, y, target, width, feature_stage, plan)
                           for width in config.widths) / len(config.widths)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value = loss.item()
                if not math.isfinite(value):
                    raise BottleneckError(f"bottleneck training diverged (loss {value}); lower --lr (now {plan.lr})")
                total += value * len(index)
                bar.update(task, advance=1, status=f"{name} epoch {epoch + 1}/{total_epochs} loss {value:.4f}")
            (log.feature_loss if feature_stage else log.task_loss).append(total / len(labels))
            now = time.perf_counter()
            log.seconds, started = log.seconds + now - started, now
            if checkpoint_dir:
                _save(checkpoint_dir, config, plan, bottleneck, tail, log, epoch + 1)
    bottleneck.eval()
    tail.eval()
    return bottleneck, tail, log


def _loss(bottleneck: SlimmableBottleneck, tail: nn.Module, features: torch.Tensor, labels: torch.Tensor,
          teacher_logits: torch.Tensor | None, width: float, feature_stage: bool, plan: TrainingPlan) -> torch.Tensor:
    restored = bottleneck(features, width)
    if feature_stage:
        return F.mse_loss(restored, features)
    logits = tail(restored)
    task = F.cross_entropy(logits, labels)
    t = plan.temperature
    distill = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                       reduction="batchmean", log_target=True) * t * t
    return (1 - plan.distill_weight) * task + plan.distill_weight * distill


# ---- checkpoints ----------------------------------------------------------------------------------------------

def _identity(config: BottleneckConfig, plan: TrainingPlan) -> dict:
    identity = {"config": {**asdict(config), "widths": list(config.widths)}, "plan": asdict(plan)}
    if config.layout == "image":  # checkpoints from before the token form name no layout: theirs is "image"
        del identity["config"]["layout"]
    return identity


def _save(directory: Path, config: BottleneckConfig, plan: TrainingPlan, bottleneck: SlimmableBottleneck,
          tail: nn.Module, log: TrainingLog, epochs_done: int) -> None:
    from safetensors.torch import save_file

    try:
        directory.mkdir(parents=True, exist_ok=True)
        weights = {f"bottleneck.{k}": v.detach().contiguous() for k, v in bottleneck.state_dict().items()}
        weights.update({f"tail.{k}": v.detach().contiguous() for k, v in tail.state_dict().items()})
        partial = directory / "bottleneck.safetensors.partial"
        save_file(weights, str(partial))
        partial.replace(directory / "bottleneck.safetensors")  # the weights and the record change together
        record = {"kind": "edgesplit.bottleneck-checkpoint", "version": CHECKPOINT_VERSION, **_identity(config, plan),
                  "epochs_done": epochs_done, "log": asdict(log)}
        (directory / "bottleneck.json").write_text(json.dumps(record, indent=2))
    except OSError as error:
        raise BottleneckError(f"cannot write the checkpoint to {directory} ({error.strerror}); "
                              "choose a writable --checkpoint folder") from error


def _resume(directory: Path, config: BottleneckConfig, plan: TrainingPlan, bottleneck: SlimmableBottleneck,
            tail: nn.Module, log: TrainingLog) -> int:
    """Load the checkpoint in ``directory`` when it is for this configuration; the epochs it already did."""
    record_path, weights_path = directory / "bottleneck.json", directory / "bottleneck.safetensors"
    if not record_path.exists() or not weights_path.exists():
        return 0
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as error:
        raise BottleneckError(f"checkpoint {record_path} is unreadable ({error}); delete the folder to start over") \
            from error
    if record.get("kind") != "edgesplit.bottleneck-checkpoint" or record.get("version") != CHECKPOINT_VERSION:
        raise BottleneckError(f"{record_path} is not a version-{CHECKPOINT_VERSION} bottleneck checkpoint; "
                              "delete it or choose another --checkpoint folder")
    if {k: record.get(k) for k in ("config", "plan")} != _identity(config, plan):
        raise BottleneckError(f"checkpoint in {directory} was trained with other settings; use the same options "
                              "to resume, or another --checkpoint folder to start over")
    load_checkpoint(directory, bottleneck, tail)
    saved = record.get("log", {})
    log.feature_loss, log.task_loss = list(saved.get("feature_loss", [])), list(saved.get("task_loss", []))
    log.seconds = float(saved.get("seconds", 0.0))
    return int(record.get("epochs_done", 0))


def load_checkpoint(directory: Path, bottleneck: SlimmableBottleneck, tail: nn.Module) -> None:
    """Load bottleneck and tail weights saved by training (safetensors only; nothing is unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(str(directory / "bottleneck.safetensors"))
    except (OSError, SafetensorError) as error:
        raise BottleneckError(f"cannot read {directory / 'bottleneck.safetensors'} ({error}); "
                              "delete the folder to start over") from error
    for prefix, module in (("bottleneck.", bottleneck), ("tail.", tail)):
        state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state)
        except RuntimeError as error:
            raise BottleneckError(f"checkpoint in {directory} does not match this model and bottleneck "
                                  f"({str(error).splitlines()[0]}); use another --checkpoint folder") from error
