"""Decoders for token (transformer) cuts, and how a cut's shapes choose a decoder.

A transformer cut sends token features, N×T×D (batch, tokens, channels). The patch tokens of a ViT or of a hybrid
conv-stem transformer are a row-major grid of image patches, sometimes led by class or register tokens.
:class:`TokenDecoder` drops the leading extra tokens, lays the rest back on their h×w grid (a D-channel map,
one pixel per patch) and decodes that map with the stride-sized upsampler of a convolutional cut
(:class:`~edgesplit.privacy.inversion.ConvDecoder`: log2(stride) upsampling stages, channels halving per stage),
so every token is mapped back to its own patch of the image.

:func:`token_grid` finds the grid from the shapes alone: the number of tokens T = k + h·w with k ≤
``MAX_EXTRA_TOKENS`` leading extra tokens and h/w the image's aspect ratio, the fewest extra tokens first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

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
        from edgesplit.privacy.inversion import BASE_WIDTH, MAX_WIDTH, ConvDecoder  # inversion imports this module

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


__all__ = ["MAX_EXTRA_TOKENS", "TokenDecoder", "is_token_cut", "token_grid"]
