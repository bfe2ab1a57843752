"""Images as the bytes a device would send instead of features: PNG, JPEG or WebP through Pillow, timed."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np
import torch

from edgesplit.compress import fastpng

__all__ = ["PICTURE_BYTES_PER_PIXEL", "PictureRoundTrip", "decode_picture", "encode_picture", "round_trip_pictures"]


@dataclass
class PictureRoundTrip:
    """Each image encoded alone and decoded back: payload sizes, seconds per image, and what was decoded."""

    sizes: list[int]
    encode_s: list[float]
    decode_s: list[float]
    decoded: torch.Tensor  # N×C×H×W float32 in [0, 1]


def round_trip_pictures(images: torch.Tensor, options: dict) -> PictureRoundTrip:
    """Save every image (C = 1 or 3) with Pillow ``options`` (e.g. ``{"format": "JPEG", "quality": 90}``) and
    open it again, timing both."""
    from PIL import Image

    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # N×H×W×C
    sizes, encode_s, decode_s, restored = [], [], [], []
    for p in pixels:
        picture = Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p)
        buffer = io.BytesIO()
        start = time.perf_counter()
        picture.save(buffer, **options)
        encode_s.append(time.perf_counter() - start)
        sizes.append(buffer.tell())
        start = time.perf_counter()
        with Image.open(io.BytesIO(buffer.getvalue())) as opened:
            array = np.asarray(opened.convert(picture.mode))  # WebP reads gray images back as RGB
        decode_s.append(time.perf_counter() - start)
        restored.append(array.reshape(p.shape))
    decoded = torch.from_numpy(np.stack(restored).astype(np.float32) / 255).permute(0, 3, 1, 2).contiguous()
    return PictureRoundTrip(sizes, encode_s, decode_s, decoded)


def encode_picture(image: torch.Tensor, options: dict) -> bytes:
    """One C×H×W image in [0, 1] (C = 1 or 3) as the bytes Pillow writes with ``options``; plain PNG
    (``{"format": "PNG"}``) as ``fastpng.encode`` writes it, a standard PNG that Pillow and every reader open."""
    # numpy, not torch, for a picture this small: the same float32 clamp, product and round half to even
    pixels = np.rint(np.clip(image.detach().cpu().float().numpy(), 0, 1) * np.float32(255)).astype(np.uint8)
    pixels = pixels.transpose(1, 2, 0)
    if options == {"format": "PNG"}:  # a standard PNG that fastpng also reads: ~2x faster both ways
        return fastpng.encode(pixels)
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, **options)
    return buffer.getvalue()


# What Pillow holds while it decodes one picture, per pixel, at most: the decoded image (up to 4 bytes a pixel in
# Pillow's memory, whatever the file's mode), its conversion to L or RGB (again up to 4), the array read from it (1 or
# 3) and a progressive JPEG's coefficients (2 per channel); rounded up. Measured in tests/test_decode_limits.py.
PICTURE_BYTES_PER_PIXEL = 24

# PNG chunks Pillow inflates as it reads them (text and ICC profiles), up to 64 MB for a picture of a few kB; a
# picture for a model carries pixels only.
_INFLATED_PNG_CHUNKS = frozenset({b"zTXt", b"iTXt", b"iCCP"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_picture(data: bytes, shape: tuple[int, int, int], out: torch.Tensor | None = None) -> torch.Tensor:
    """The C×H×W float32 image in ``data``; ValueError unless it is a PNG/JPEG of exactly ``shape``.

    The size is read from the header before any pixel is decoded, so a small file that declares a huge image
    (a decompression bomb) is refused without allocating it; so is a PNG with compressed metadata (text or ICC
    chunks, which Pillow would inflate). With ``out`` (a float32 C×H×W tensor), the pixels are written there and
    nothing of the image's size is held but Pillow's own (``PICTURE_BYTES_PER_PIXEL``).
    """
    channels, height, width = shape
    _check_png_chunks(data)
    array = fastpng.read_pixels(data, shape)  # a PNG as encode_picture writes it: without Pillow
    if array is not None:
        return _to_float(array, shape, out)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as opened:
            if opened.size != (width, height):
                raise ValueError(f"picture is {opened.size[0]}×{opened.size[1]}, the model takes {width}×{height}")
            mode = "L" if channels == 1 else "RGB"
            opened.load()
            array = np.asarray(opened if opened.mode == mode else opened.convert(mode))
    except UnidentifiedImageError as error:
        raise ValueError("not a PNG or JPEG image") from error
    except Image.DecompressionBombError as error:
        raise ValueError(f"picture declares a huge image, the model takes {width}×{height}") from error
    except (OSError, SyntaxError) as error:
        raise ValueError(f"not a readable PNG or JPEG ({error})") from error
    return _to_float(array, shape, out)


def _to_float(array: np.ndarray, shape: tuple[int, int, int], out: torch.Tensor | None) -> torch.Tensor:
    channels, height, width = shape
    if out is None:
        out = torch.empty(shape, dtype=torch.float32)
    # the same float32 division as array.astype(float32) / 255, written straight into the C×H×W tensor
    np.divide(array.reshape(height, width, channels), np.float32(255), out=out.permute(1, 2, 0).numpy(),
              dtype=np.float32)
    return out


def _check_png_chunks(data: bytes) -> None:
    """Refuse a PNG whose chunks Pillow would inflate (ValueError); anything else is left to Pillow."""
    view = memoryview(data)
    if bytes(view[:8]) != _PNG_SIGNATURE:
        return
    position = 8
    while position + 8 <= len(view):
        kind = bytes(view[position + 4:position + 8])
        if kind in _INFLATED_PNG_CHUNKS:
            raise ValueError(f"the PNG carries a compressed {kind.decode('ascii')} chunk (text or a colour "
                             "profile), which may expand to far more than the picture; send the pixels only")
        if kind == b"IEND":
            return
        position += 12 + int.from_bytes(view[position:position + 4], "big")
