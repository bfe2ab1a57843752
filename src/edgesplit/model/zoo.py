"""Built-in models, our own definitions (no torchvision), and the registry that names them.

The ImageNet models (``resnet18``, ``resnet50``, ``mobilenetv3_small``/``_large``, ``vit_b16``, and ``vit_ti16``/
``vit_s16`` built the same way at DeiT's Tiny/Small sizes) use torchvision's module and parameter names, so
torchvision's published state dicts load into them with ``strict=True``.

Every factory takes ``in_channels`` and ``num_classes`` so the same architecture fits any data set;
each entry records the input shape it documents. All models trace with ``torch.fx`` and every
intermediate value is a tensor, so every position in the graph is a candidate cut (but in the ViTs, the
position between an ``nn.MultiheadAttention`` and the ``[0]`` that takes its output from the pair it returns).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgesplit.errors import ModelNotFoundError

__all__ = ["LARGE_MODELS", "ZOO", "ZooEntry", "get_entry", "hybrid_vit", "mobilenetv2", "mobilenetv3_large",
           "mobilenetv3_small", "register", "resnet8", "resnet18", "resnet20", "resnet50", "small_cnn", "vit_b16",
           "vit_s16", "vit_ti16"]


@dataclass(frozen=True)
class ZooEntry:
    """A named model factory with the input shape (batch included) it is documented for."""

    name: str
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    description: str


ZOO: dict[str, ZooEntry] = {}

# The zoo models whose 224×224 forward pass costs 0.2–17 GMACs (a tenth of a second to seconds on a CPU core):
# sweeps that run every zoo model many times (the fast tests) leave them to tests of their own.
LARGE_MODELS = frozenset({"mobilenetv3_small", "mobilenetv3_large", "resnet50", "vit_ti16", "vit_s16", "vit_b16"})


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


class ImageNetResNet(nn.Module):
    """What torchvision's ImageNet ResNets share: the 7×7 stem and max-pool, and the forward pass (stem, four stages
    ``layer1``…``layer4`` that a subclass builds, average pool, ``fc``)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet18(ImageNetResNet):
    """He et al. 2016's 18-layer ImageNet ResNet: 7×7 stem, four stages of two basic blocks (64–512 channels).

    Module and parameter names are torchvision's (`conv1`, `bn1`, `layer1`…`layer4`, `fc`), so a
    `torchvision.models.resnet18` state dict loads with ``strict=True``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1000):
        super().__init__(in_channels)
        self.layer1 = nn.Sequential(ImageNetBasicBlock(64, 64), ImageNetBasicBlock(64, 64))
        self.layer2 = nn.Sequential(ImageNetBasicBlock(64, 128, 2), ImageNetBasicBlock(128, 128))
        self.layer3 = nn.Sequential(ImageNetBasicBlock(128, 256, 2), ImageNetBasicBlock(256, 256))
        self.layer4 = nn.Sequential(ImageNetBasicBlock(256, 512, 2), ImageNetBasicBlock(512, 512))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)


@register("resnet18", (1, 3, 224, 224),
          "ImageNet ResNet-18 (He et al. 2016), 11.7 M parameters, torchvision's layout and names; 1×3×224×224")
def resnet18(in_channels: int = 3, num_classes: int = 1000) -> nn.Module:
    return ResNet18(in_channels, num_classes)


# --- ImageNet ResNet-50, laid out like torchvision's -----------------------------------------


class ImageNetBottleneck(nn.Module):
    """ResNet bottleneck (1×1 reduce, 3×3, 1×1 expand ×4) with torchvision's names; the stride is on the 3×3
    conv, as in torchvision's "ResNet v1.5"."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet50(ImageNetResNet):
    """He et al. 2016's 50-layer ImageNet ResNet: 7×7 stem, stages of 3/4/6/3 bottlenecks (256–2048 channels).

    Module and parameter names are torchvision's, so a `torchvision.models.resnet50` state dict loads with
    ``strict=True``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1000):
        super().__init__(in_channels)
        c_in = 64
        for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
            layers = []
            for i in range(blocks):
                layers.append(ImageNetBottleneck(c_in, width, 2 if stage > 1 and i == 0 else 1))
                c_in = width * ImageNetBottleneck.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)


@register("resnet50", (1, 3, 224, 224),
          "ImageNet ResNet-50 (He et al. 2016), 25.6 M parameters, torchvision's layout and names; 1×3×224×224")
def resnet50(in_channels: int = 3, num_classes: int = 1000) -> nn.Module:
    return ResNet50(in_channels, num_classes)


# --- MobileNetV3, laid out like torchvision's ------------------------------------------------


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to a multiple of ``divisor``, never more than 10% below it (MobileNet's channel rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_norm_act(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                  act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation``: conv (no bias) ``0``, BatchNorm ``1`` (MobileNetV3's eps and
    momentum), activation ``2`` unless ``act`` is None."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=0.001, momentum=0.01),
    ]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) as torchvision writes it: pool, 1×1 ``fc1``, ReLU, 1×1 ``fc2``,
    hard sigmoid, and the input scaled channel by channel."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x))))) * x


class MobileNetV3Block(nn.Module):
    """MobileNetV3 bottleneck: optional 1×1 expand, k×k depthwise, optional squeeze-excite, 1×1 linear project;
    residual when the shape is kept. ``block.N`` numbering is torchvision's."""

    def __init__(self, c_in: int, kernel: int, expanded: int, c_out: int, se: bool, hard_swish: bool, stride: int):
        super().__init__()
        act = nn.Hardswish if hard_swish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(conv_norm_act(c_in, expanded, 1, act=act))
        layers.append(conv_norm_act(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4)))
        layers.append(conv_norm_act(expanded, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:  # fixed at construction, so fx traces it
            return self.block(x) + x
        return self.block(x)


class MobileNetV3(nn.Module):
    """Howard et al. 2019's MobileNetV3 (width 1.0): Hardswish stem, bottlenecks, a 1×1 conv to 6× channels,
    pooling and a two-layer classifier. Names are torchvision's (``features.N``, ``classifier.0``/``.3``), so a
    `torchvision.models.mobilenet_v3_small`/`_large` state dict loads with ``strict=True``."""

    # (in, kernel, expanded, out, squeeze-excite, hard-swish, stride), Tables 1 and 2 of the paper.
    LARGE = ((16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2), (24, 3, 72, 24, False, False, 1),
             (24, 5, 72, 40, True, False, 2), (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
             (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
             (80, 3, 184, 80, False, True, 1), (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
             (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1), (160, 5, 960, 160, True, True, 1))
    SMALL = ((16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2), (24, 3, 88, 24, False, False, 1),
             (24, 5, 96, 40, True, True, 2), (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
             (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1), (48, 5, 288, 96, True, True, 2),
             (96, 5, 576, 96, True, True, 1), (96, 5, 576, 96, True, True, 1))

    def __init__(self, settings: tuple[tuple, ...], last_channel: int, in_channels: int = 3,
                 num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [conv_norm_act(in_channels, settings[0][0], 3, 2, act=nn.Hardswish)]
        layers += [MobileNetV3Block(*setting) for setting in settings]
        last_in = settings[-1][3]
        layers.append(conv_norm_act(last_in, 6 * last_in, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(6 * last_in, last_channel), nn.Hardswish(inplace=True),
                                        nn.Dropout(p=0.2, inplace=True), nn.Linear(last_channel, num_classes))
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register("mobilenetv3_small", (1, 3, 224, 224),
          "ImageNet MobileNetV3-Small (Howard et al. 2019), 2.5 M parameters, torchvision's names; 1×3×224×224")
def mobilenetv3_small(in_channels: int = 3, num_classes: int = 1000) -> nn.Module:
    return MobileNetV3(MobileNetV3.SMALL, 1024, in_channels, num_classes)


@register("mobilenetv3_large", (1, 3, 224, 224),
          "ImageNet MobileNetV3-Large (Howard et al. 2019), 5.5 M parameters, torchvision's names; 1×3×224×224")
def mobilenetv3_large(in_channels: int = 3, num_classes: int = 1000) -> nn.Module:
    return MobileNetV3(MobileNetV3.LARGE, 1280, in_channels, num_classes)


# --- Vision Transformer, laid out like torchvision's -----------------------------------------


class EncoderBlock(nn.Module):
    """Pre-norm ViT block with torchvision's names: ``ln_1``, ``self_attention`` (an nn.MultiheadAttention,
    a single graph node), ``ln_2``, ``mlp`` (Linear ``0``, GELU, Dropout, Linear ``3``, Dropout)."""

    def __init__(self, heads: int, dim: int, mlp_dim: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp_dim, dim),
                                 nn.Dropout(0.0))
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.normal_(module.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y = self.dropout(self.self_attention(y, y, y, need_weights=False)[0])
        x = x + y
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """Learned position embedding, ``layers.encoder_layer_N`` blocks and a final LayerNorm ``ln``."""

    def __init__(self, tokens: int, depth: int, heads: int, dim: int, mlp_dim: int):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, tokens, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(heads, dim, mlp_dim)) for i in range(depth)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    """Dosovitskiy et al. 2021's ViT: p×p patches projected by ``conv_proj``, a ``class_token``, the encoder,
    and ``heads.head`` on the class token. Names are torchvision's, so a `torchvision.models.vit_b_16` state dict
    loads into ``vit_b16`` with ``strict=True``. The input must be ``image_size`` square (the position embedding
    has one entry per patch). ``forward`` reads no shapes, so every value in the graph is a tensor."""

    def __init__(self, depth: int, heads: int, dim: int, mlp_dim: int, patch: int = 16, image_size: int = 224,
                 in_channels: int = 3, num_classes: int = 1000):
        super().__init__()
        self.conv_proj = nn.Conv2d(in_channels, dim, patch, patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = Encoder((image_size // patch) ** 2 + 1, depth, heads, dim, mlp_dim)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(dim, num_classes)))
        fan_in = in_channels * patch * patch  # torchvision's initialisation, but for the classifier:
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        # torchvision zeroes it, so an untrained ViT's output would be all zeros and agreement with it meaningless;
        # DeiT's truncated normal instead.
        nn.init.trunc_normal_(self.heads.head.weight, std=0.02)
        nn.init.zeros_(self.heads.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.conv_proj(x).flatten(2).transpose(1, 2)  # N×D×h×w -> N×(h·w)×D
        tokens = torch.cat([self.class_token.expand_as(patches[:, :1]), patches], dim=1)
        return self.heads(self.encoder(tokens)[:, 0])


@register("vit_ti16", (1, 3, 224, 224),
          "ViT-Ti/16 (DeiT-Tiny shape: 12 layers, 192-dim, 3 heads), 5.7 M parameters, torchvision's names; "
          "1×3×224×224")
def vit_ti16(in_channels: int = 3, num_classes: int = 1000) -> nn.Module:
    return VisionTransformer(12, 3, 192, 768, in_channels=in_channels, num_classes=num_classes)


@register("vit_s16", (1, 3, 224, 224),
          "ViT-S/16 (DeiT-Small shape: 12 layers, 384-dim, 6 heads), 22.1 M parameters, torchvision's names; "
          "1×3×224×224")
def vit_s16(in_channels: int = 3, num_classes: int = 1000) -> nn.Module:
    return VisionTransformer(12, 6, 384, 1536, in_channels=in_channels, num_classes=num_classes)


@register("vit_b16", (1, 3, 224, 224),
          "ViT-B/16 (Dosovitskiy et al. 2021), 86.6 M parameters, torchvision's vit_b_16 layout and names; "
          "1×3×224×224")
def vit_b16(in_channels: int = 3, num_classes: int = 1000) -> nn.Module:
    return VisionTransformer(12, 12, 768, 3072, in_channels=in_channels, num_classes=num_classes)
