"""The learned-inversion attack's decoders, and how a cut's shapes choose one (:func:`build_decoder`).

Image-like cuts (N×C×h×w) get :class:`ConvDecoder`, an upsampler with one stage per factor 2 of stride; flat
features get :class:`FCDecoder`; token features get :class:`TokenDecoder`.

A transformer cut sends token features, N×T×D (batch, tokens, channels). The patch tokens of a ViT or of a hybrid
conv-stem transformer are a row-major grid of image patches, sometimes led by class or register tokens.
:class:`TokenDecoder` drops the leading extra tokens, lays the rest back on their h×w grid (a D-channel map,
one pixel per patch) and decodes that map with the stride-sized upsampler of a convolutional cut
(:class:`ConvDecoder`: log2(stride) upsampling stages, channels halving per stage),
so every token is mapped back to its own patch of the image.

:func:`token_grid` finds the grid from the shapes alone: the number of tokens T = k + h·w with k ≤
``MAX_EXTRA_TOKENS`` leading extra tokens and h/w the image's aspect ratio, the fewest extra tokens first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgesplit.errors import EdgesplitError, InputShapeError

MIN_WIDTH = 16
BASE_WIDTH = 32
MAX_WIDTH = 128
FC_HIDDEN_MIN = 256
FC_HIDDEN_MAX = 1024
MAX_EXTRA_TOKENS = 8  # class + register tokens a token cut may lead with (DeiT: 2, ViT with 4 registers: 5)


def token_grid(tokens: int, image_hw: tuple[int, int]) -> tuple[int, int, int] | None:
    """(extra, h, w): ``tokens`` = extra + h·w leading extra tokens and an h×w patch grid (at least 2×2) with the
    image's aspect ratio and a whole patch size (H/h = W/w, an integer); None when no such split exists."""
    height, width = image_hw
    for extra in range(0, min(MAX_EXTRA_TOKENS, tokens - 1) + 1):
        patches = tokens - extra
        # h·w = patches and h/w = H/W: h = sqrt(patches·H/W).
        h = round(math.sqrt(patches * height / width))
        if h < 2 or patches % h or patches // h < 2:  # a 1-wide grid is a global feature: the FC decoder's
            continue
        w = patches // h
        if height % h or width % w or height // h != width // w:
            continue
        return extra, h, w
    return None


def is_token_cut(crossing_shapes: Sequence[tuple[int, ...]], input_shape: tuple[int, int, int]) -> bool:
    """Whether every crossing tensor is N×T×D token features with the same T laid out as a patch grid."""
    shapes = [tuple(s) for s in crossing_shapes]
    if not shapes or any(len(s) != 3 for s in shapes) or len({s[1] for s in shapes}) != 1:
        return False
    return token_grid(shapes[0][1], input_shape[1:]) is not None


class TokenDecoder(nn.Module):
    """Decodes token features (N×T×D, several concatenated by channel) to N×C×H×W images, token by patch.

    Leading class/register tokens are dropped; each patch token goes through a per-token linear layer (a 1×1
    conv on the grid) and the grid is upsampled by :class:`ConvDecoder` stages sized to the patch size.
    """

    def __init__(self, crossing_shapes: Sequence[tuple[int, ...]], input_shape: tuple[int, int, int]):
        super().__init__()
        shapes = [tuple(int(d) for d in s) for s in crossing_shapes]
        grid = token_grid(shapes[0][1], input_shape[1:])
        if grid is None or not is_token_cut(shapes, input_shape):
            raise ValueError(f"token features {shapes} do not lay out as a patch grid of a {input_shape} image")
        self.extra, self.h, self.w = grid
        channels = sum(s[2] for s in shapes)
        patch = input_shape[1] // self.h
        width = min(max(BASE_WIDTH * patch, BASE_WIDTH), MAX_WIDTH)
        # LayerNorm first: token features of deep blocks have a few huge channels (the residual stream).
        self.norm = nn.LayerNorm(channels)
        self.embed = nn.Linear(channels, width)
        self.body = ConvDecoder([(1, width, self.h, self.w)], input_shape)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([f.float() for f in features], dim=2)[:, self.extra:]
        grid = self.embed(self.norm(tokens)).transpose(1, 2).unflatten(2, (self.h, self.w))
        return self.body(grid)


class ConvDecoder(nn.Module):
    """Decodes image-like crossing tensors (N×C×h×w, several concatenated by channel) to N×C×H×W images."""

    def __init__(self, crossing_shapes: list[tuple[int, ...]], input_shape: tuple[int, int, int]):
        super().__init__()
        channels = sum(s[1] for s in crossing_shapes)
        self.feature_size = (max(s[2] for s in crossing_shapes), max(s[3] for s in crossing_shapes))
        out_c, out_h, out_w = input_shape
        h, w = self.feature_size
        steps = max(0, math.ceil(math.log2(max(out_h / h, out_w / w))))
        # Wider at the cut's resolution, halving per upsampling step, as in a mirrored encoder.
        width = min(max(channels, 2 ** steps * BASE_WIDTH, BASE_WIDTH), MAX_WIDTH)
        layers: list[nn.Module] = [_conv_bn_relu(channels, width)]
        for step in range(1, steps + 1):
            # Intermediate sizes ceil(H / 2^k) end exactly at the input size, whatever H is.
            size = (math.ceil(out_h / 2 ** (steps - step)), math.ceil(out_w / 2 ** (steps - step)))
            narrower = max(width // 2, MIN_WIDTH)
            layers += [nn.Upsample(size=size, mode="bilinear", align_corners=False), _conv_bn_relu(width, narrower)]
            width = narrower
        if steps == 0 and (h, w) != (out_h, out_w):
            layers.append(nn.Upsample(size=(out_h, out_w), mode="bilinear", align_corners=False))
        layers += [_conv_bn_relu(width, width), nn.Conv2d(width, out_c, 3, padding=1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        maps = [f.float() if f.shape[2:] == self.feature_size
                else F.interpolate(f.float(), size=self.feature_size, mode="bilinear", align_corners=False)
                for f in features]
        return self.body(torch.cat(maps, dim=1))


class FCDecoder(nn.Module):
    """Decodes flat (or otherwise non-image) crossing tensors, flattened and concatenated, to N×C×H×W images."""

    def __init__(self, crossing_shapes: list[tuple[int, ...]], input_shape: tuple[int, int, int]):
        super().__init__()
        features = sum(math.prod(s[1:]) for s in crossing_shapes)
        pixels = math.prod(input_shape)
        hidden = min(max(2 * pixels, FC_HIDDEN_MIN), FC_HIDDEN_MAX)
        self.body = nn.Sequential(
            nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, pixels), nn.Sigmoid(), nn.Unflatten(1, input_shape))

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([f.float().reshape(f.shape[0], -1) for f in features], dim=1))


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def build_decoder(crossing_shapes: Sequence[tuple[int, ...]], input_shape: tuple[int, ...]) -> nn.Module:
    """A decoder sized to the cut: ``decoder(*crossing_tensors)`` returns images of ``input_shape`` in [0, 1].

    ``crossing_shapes`` are the crossing tensors' shapes batch first (as ``Cut.crossing`` lists them);
    ``input_shape`` is one image's (C, H, W), or (1, C, H, W). All 4-D tensors: an upsampling conv decoder on
    their channel concatenation at the largest spatial size (one upsampling stage per factor 2 of stride); N×T×D
    token features whose tokens lay out as the image's patch grid (after up to 8 leading class/register tokens):
    a :class:`TokenDecoder` that maps each token back to its patch; anything else: a
    fully connected decoder.
    """
    shapes = [tuple(int(d) for d in s) for s in crossing_shapes]
    image = image_chw(input_shape)
    if not shapes:
        raise EdgesplitError("a decoder needs at least one crossing tensor; pick a cut that sends something")
    if any(len(s) < 1 or any(d < 1 for d in s) for s in shapes):
        raise EdgesplitError(f"crossing shapes must be batch-first with positive sizes, got {shapes}; pass the "
                             "shapes Cut.crossing lists")
    if all(len(s) == 4 for s in shapes):
        return ConvDecoder(shapes, image)
    if is_token_cut(shapes, image):
        return TokenDecoder(shapes, image)
    return FCDecoder(shapes, image)


def image_chw(shape: Sequence[int]) -> tuple[int, int, int]:
    """One image's (C, H, W) from (C, H, W) or (1, C, H, W); an InputShapeError otherwise."""
    dims = tuple(int(d) for d in shape)
    if len(dims) == 4 and dims[0] == 1:
        dims = dims[1:]
    if len(dims) != 3 or any(d < 1 for d in dims):
        raise InputShapeError(f"input shape must be an image's (C, H, W), got {tuple(shape)}; pass e.g. (1, 8, 8)")
    return dims  # type: ignore[return-value]


__all__ = ["MAX_EXTRA_TOKENS", "ConvDecoder", "FCDecoder", "TokenDecoder", "build_decoder", "image_chw", "is_token_cut",
           "token_grid"]
