"""Models for tests that exercise intake by import path (``modelfactories:NAME``) and awkward graphs."""

import torch
from torch import nn


class Tiny(nn.Module):
    """Conv → ReLU → pool → linear on 1×1×8×8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


class DataDependent(nn.Module):
    """Branches on a tensor's value: neither torch.fx nor torch.export can trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x - 1


class ShapeDependent(nn.Module):
    """Branches on a shape: torch.fx fails, torch.export specializes and succeeds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] > 4:
            x = self.conv(x).relu() * self.scale[:, None, None]
        pooled = x.mean((2, 3))
        return self.fc(pooled) + x.sum(), pooled


class SizeReader(nn.Module):
    """Reads ``x.size(0)``: the int it yields may not cross a cut, so positions around it are not cuts."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.size(0)
        y = self.conv(x).relu()
        return self.fc(y.view(batch, -1))


class DictOutput(nn.Module):
    """Returns a dict of tensors; the tail must return the same structure."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.conv(x)
        return {"features": y, "score": y.mean((1, 2, 3))}


class UnknownOp(nn.Module):
    """Uses an op with no MAC formula, which the profile must report instead of counting 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(x) + 1


def not_a_model() -> str:
    return "not a module"


class ParameterBranch(nn.Module):
    """A branch that reads only a parameter comes first in topological order, then a strided conv of the input.

    On a slow link the best head runs the conv on the device (it shrinks the input 48×) and leaves the parameter
    branch to the server: a predecessor-closed head that is not a topological prefix.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.linspace(-1.0, 1.0, 10))
        self.reduce = nn.Conv2d(3, 4, 4, stride=4)
        self.hidden = nn.Linear(4 * 16 * 16, 4096)
        self.fc = nn.Linear(4096, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = torch.tanh(self.bias * 2.0)
        features = torch.relu(self.reduce(x)).flatten(1)
        return self.fc(torch.relu(self.hidden(features))) + offset


class DigitNet(nn.Module):
    """A user's own classifier with a residual block: conv stem, conv + skip, linear head; any channels/classes."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveMaxPool2d(4)
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        return self.fc(self.pool(stem + self.branch(stem)).flatten(1))
