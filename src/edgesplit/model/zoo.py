"""Built-in models, our own definitions (no torchvision), and the registry that names them.

Every factory takes ``in_channels`` and ``num_classes`` so the same architecture fits any data set;
each entry records the input shape it documents. All models trace with ``torch.fx`` and every
intermediate value is a tensor, so every position in the graph is a candidate cut.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgesplit.errors import ModelNotFoundError

__all__ = ["ZOO", "ZooEntry", "get_entry", "hybrid_vit", "mobilenetv2", "register", "resnet8", "resnet18",
           "resnet20", "small_cnn"]


@dataclass(frozen=True)
class ZooEntry:
    """A named model factory with the input shape (batch included) it is documented for."""

    name: str
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    description: str


ZOO: dict[str, ZooEntry] = {}


def register(name: str, input_shape: tuple[int, ...], description: str):
    """Decorator: add a factory to the zoo under ``name``."""

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ZOO[name] = ZooEntry(name, factory, input_shape, description)
        return factory

    return add


def get_entry(name: str) -> ZooEntry:
    """The zoo entry called ``name``; a clear error listing the zoo otherwise."""
    if name not in ZOO:
        raise ModelNotFoundError(
            f"unknown model '{name}'; built-in models are {', '.join(sorted(ZOO))}, "
            "or give your own as package.module:factory"
        )
    return ZOO[name]


def conv_bn_act(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + optional activation, the building block of the conv models."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# --- small CNN -------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """Three conv layers and two linear layers; input N×C×28×28 (MNIST) or N×C×8×8 (digits)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv1 = conv_bn_act(in_channels, 16)
        self.conv2 = conv_bn_act(16, 32)
        self.pool1 = nn.MaxPool2d(2)
        self.conv3 = conv_bn_act(32, 64)
        self.pool2 = nn.MaxPool2d(2)
        # Adaptive pooling lets the same weights-shape serve 8×8 and 28×28 inputs.
        self.pool3 = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * 2 * 2, 128)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv2(self.conv1(x)))
        x = self.pool3(self.pool2(self.conv3(x)))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


@register("small_cnn", (1, 1, 28, 28), "3-conv CNN for handwritten digits; 1×1×28×28 (MNIST) or 1×1×8×8 (digits)")
def small_cnn(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    return SmallCNN(in_channels, num_classes)


# --- CIFAR-style ResNet ----------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3×3 convs with an identity (or 1×1 projection) shortcut: cuts inside cross 2 tensors."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn_act(c_in, c_out, stride=stride)
        self.conv2 = conv_bn_act(c_out, c_out, act=None)
        self.shortcut = (
            conv_bn_act(c_in, c_out, kernel=1, stride=stride, act=None)
            if stride != 1 or c_in != c_out else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """He et al.'s CIFAR ResNet (6n+2 layers): three stages of 16/32/64 channels."""

    def __init__(self, depth: int = 20, in_channels: int = 3, num_classes: int = 10, width: int = 16):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"ResNet depth must be 6n+2 (8, 14, 20, 32, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.stem = conv_bn_act(in_channels, width)
        stages: list[nn.Module] = []
        c_in = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                stages.append(BasicBlock(c_in, c_out, stride))
                c_in = c_out
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


@register("resnet8", (1, 3, 32, 32), "CIFAR ResNet-8 (one residual block per stage); 1×3×32×32")
def resnet8(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return ResNetCIFAR(8, in_channels, num_classes)


@register("resnet20", (1, 3, 32, 32), "CIFAR ResNet-20 (He et al. 2016), 0.27 M parameters; 1×3×32×32")
def resnet20(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return ResNetCIFAR(20, in_channels, num_classes)


# --- MobileNetV2-style -----------------------------------------------------------------------


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand, 3×3 depthwise, 1×1 linear project; residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_act(c_in, hidden, kernel=1, act=nn.ReLU6))
        layers += [
            conv_bn_act(hidden, hidden, stride=stride, groups=hidden, act=nn.ReLU6),
            conv_bn_act(hidden, c_out, kernel=1, act=None),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:  # a Python bool fixed at construction, so fx traces it
            return x + self.block(x)
        return self.block(x)


class MobileNetV2CIFAR(nn.Module):
    """A shortened MobileNetV2 for 32×32 inputs (stride-1 stem, stages up to 96 channels)."""

    # (expansion t, channels c, repeats n, first stride s), as in Sandler et al. 2018, Table 2.
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 2, 2), (6, 96, 2, 1))

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width_mult: float = 1.0):
        super().__init__()
        c_in = int(32 * width_mult)
        self.stem = conv_bn_act(in_channels, c_in, act=nn.ReLU6)
        blocks: list[nn.Module] = []
        for expand, channels, repeats, stride in self.SETTINGS:
            c_out = int(channels * width_mult)
            for i in range(repeats):
                blocks.append(InvertedResidual(c_in, c_out, stride if i == 0 else 1, expand))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn_act(c_in, 256, kernel=1, act=nn.ReLU6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.head(self.blocks(self.stem(x))))))


@register("mobilenetv2", (1, 3, 32, 32), "MobileNetV2-style net (inverted residuals, depthwise convs); 1×3×32×32")
def mobilenetv2(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return MobileNetV2CIFAR(in_channels, num_classes)


# --- hybrid conv + self-attention ------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention written with tensor ops only, so every value in the graph is a tensor."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, N, 3·D) -> (3, B, heads, N, head_dim) without reading x.shape (keeps the graph tensor-only).
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).flatten(2))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: attention and a GELU MLP, each with a residual connection."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class HybridViT(nn.Module):
    """Conv stem (32×32 → 8×8 tokens) followed by transformer blocks, mean-pooled into a linear head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, dim: int = 64, depth: int = 3,
                 heads: int = 4, image_size: int = 32):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_act(in_channels, dim // 2, stride=2), conv_bn_act(dim // 2, dim, stride=2))
        tokens = (image_size // 4) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2) + self.pos_embed
        return self.fc(self.norm(self.blocks(tokens)).mean(dim=1))


@register("hybrid_vit", (1, 3, 32, 32), "conv stem + 3 transformer blocks (64-dim, 4 heads, 64 tokens); 1×3×32×32")
def hybrid_vit(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return HybridViT(in_channels, num_classes)


# --- ImageNet ResNet-18, laid out like torchvision's -----------------------------------------


class ImageNetBasicBlock(nn.Module):
    """ResNet basic block with torchvision's attribute names, so its state dicts load unchanged."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:  # 1×1 projection shortcut (option B of He et al.)
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)  # after the branch, as torchvision orders it
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """He et al. 2016's 18-layer ImageNet ResNet: 7×7 stem, four stages of two basic blocks (64–512 channels).

    Module and parameter names are torchvision's (`conv1`, `bn1`, `layer1`…`layer4`, `fc`), so a
    `torchvision.models.resnet18` state dict loads with ``strict=True``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(ImageNetBasicBlock(64, 64), ImageNetBasicBlock(64, 64))
        self.layer2 = nn.Sequential(ImageNetBasicBlock(64, 128, 2), ImageNetBasicBlock(128, 128))
        self.layer3 = nn.Sequential(ImageNetBasicBlock(128, 256, 2), ImageNetBasicBlock(256, 256))
        self.layer4 = nn.Sequential(ImageNetBasicBlock(256, 512, 2), ImageNetBasicBlock(512, 512))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register("resnet18", (1, 3, 224, 224),
          "ImageNet ResNet-18 (He et al. 2016), 11.7 M parameters, torchvision's layout and names; 1×3×224×224")
def resnet18(in_channels: int = 3, num_classes: int = 1000) -> nn.Module:
    return ResNet18(in_channels, num_classes)
