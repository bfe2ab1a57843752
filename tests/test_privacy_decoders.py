"""Decoders that scale with the cut: stride-sized upsamplers for conv cuts, token-to-patch decoders for ViT cuts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgesplit.model.graph import trace
from edgesplit.privacy.decoders import TokenDecoder, is_token_cut, token_grid
from edgesplit.privacy.inversion import ConvDecoder, FCDecoder, build_decoder, learned_inversion, mean_image_baseline
from edgesplit.privacy.metrics import psnr

pytestmark = pytest.mark.usefixtures("one_thread")


def _upsampling_stages(decoder: nn.Module) -> int:
    return sum(isinstance(m, nn.Upsample) for m in decoder.modules())


@pytest.mark.parametrize("stride", [1, 2, 4, 8, 16, 32])
def test_conv_decoder_restores_the_input_size_with_one_stage_per_halving(stride):
    image = (3, 64, 64)
    shape = (2, 48, 64 // stride, 64 // stride)
    decoder = build_decoder([shape], image)
    assert isinstance(decoder, ConvDecoder)
    assert _upsampling_stages(decoder) == stride.bit_length() - 1  # log2(stride)
    with torch.no_grad():
        out = decoder(torch.randn(shape))
    assert out.shape == (2, *image)
    assert 0 <= float(out.min()) and float(out.max()) <= 1


@pytest.mark.parametrize("extra", [0, 1, 2])
@pytest.mark.parametrize(("image", "patch"), [((3, 64, 64), 16), ((3, 64, 64), 4), ((3, 32, 48), 8), ((1, 28, 28), 7)])
def test_token_decoder_drops_leading_tokens_and_restores_the_input(extra, image, patch):
    h, w = image[1] // patch, image[2] // patch
    shape = (3, extra + h * w, 24)
    assert token_grid(shape[1], image[1:]) == (extra, h, w)
    decoder = build_decoder([shape], image)
    assert isinstance(decoder, TokenDecoder)
    assert (decoder.extra, decoder.h, decoder.w) == (extra, h, w)
    assert _upsampling_stages(decoder) == max(0, (patch - 1).bit_length())  # ceil(log2(patch))
    assert decoder(torch.randn(shape)).shape == (3, *image)


def test_token_decoder_maps_each_token_to_its_own_patch():
    # Changing one patch token changes the reconstruction around that patch (row-major grid order; the 3×3 convs
    # spread it to the neighbouring patches), and the class token (dropped) changes nothing.
    torch.manual_seed(0)
    decoder = build_decoder([(1, 1 + 16, 8)], (3, 64, 64)).eval()
    tokens = torch.randn(1, 17, 8)
    base = decoder(tokens)
    moved = tokens.clone()
    moved[0, 0] = torch.randn(8) * 5  # the class token
    assert torch.equal(decoder(moved), base)
    moved = tokens.clone()
    moved[0, 1 + 6] = torch.randn(8) * 5  # patch (row 1, column 2) of the 4×4 grid (not a shift: LayerNorm drops it)
    change = (decoder(moved) - base).abs().sum(1)[0]
    per_patch = change.unflatten(0, (4, 16)).unflatten(2, (4, 16)).sum((1, 3))  # 4×4 patches of 16×16 px
    near = torch.zeros(4, 4, dtype=torch.bool)
    near[0:3, 1:4] = True  # the patch and its 8 neighbours
    assert per_patch.sum() > 0
    assert per_patch[near].mean() > 2 * per_patch[~near].mean()


def test_shapes_that_are_not_a_patch_grid_get_the_fully_connected_decoder():
    image = (3, 32, 32)
    assert not is_token_cut([(2, 10)], image)
    assert not is_token_cut([(2, 15, 8)], image)  # 15 = 15×1 or 3×5: no square 2-D grid of whole patches
    assert not is_token_cut([(2, 1, 64)], image)  # one token: a global feature
    assert not is_token_cut([(2, 16, 8), (2, 4, 8)], image)  # token counts disagree
    assert isinstance(build_decoder([(2, 15, 8)], image), FCDecoder)
    assert isinstance(build_decoder([(2, 16, 8), (2, 16, 4)], image), TokenDecoder)  # concatenated by channel


class TinyViT(nn.Module):
    """Patch embedding (4×4 patches), a class token, position embeddings and one transformer layer."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.block = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True)
        self.fc = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand_as(patches[:, :1]), patches], dim=1) + self.pos
        return self.fc(self.block(tokens)[:, 0])


def _smooth_images(count: int, seed: int) -> torch.Tensor:
    """Colour images with structure a decoder can learn: upsampled 4×4 noise, 16×16."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=generator)
    return nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)


def test_learned_inversion_of_a_token_cut_beats_the_mean_image():
    torch.manual_seed(0)
    model = TinyViT().eval()
    traced = trace(model, torch.rand(1, 3, 16, 16))
    cut = next(c for c in traced.cuts if c.after.startswith("block"))  # the transformer layer's output tokens
    assert [tuple(t.shape[1:]) for t in cut.crossing] == [(17, 32)]
    aux, victims = _smooth_images(384, 1), _smooth_images(32, 2)
    result = learned_inversion(traced.split(cut), aux, victims, epochs=12, batch_size=32, lr=3e-3, seed=0)
    assert isinstance(result.decoder, TokenDecoder)
    attack = float(psnr(result.reconstructions, victims).mean())
    baseline = float(psnr(mean_image_baseline(aux, len(victims)), victims).mean())
    assert attack > baseline + 3, (attack, baseline)
