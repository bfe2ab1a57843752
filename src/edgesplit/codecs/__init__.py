"""What crosses the wire: codecs that turn the tensors at a cut into self-describing bytes, and back.

``parse_codec("int4+zstd").calibrate(features).encode(tensor)`` writes a frame; ``decode(frame)`` needs nothing
but the bytes. See docs/codecs.md for the stages and the frame layout.

A new codec lives here and nowhere else: its stage in ``grammar`` (the stage's dataclass and its parse branch),
its encode branch in ``spec``, and its record in ``layout`` and ``frame`` (header fields, decoder, and what
``decode_cost`` counts); ``edgesplit.device.codecs`` encodes and decodes it with numpy, to the same bytes. Code
outside the package uses the names below and ``Codec``'s methods (``with_range``, ``sends_as_is``), never a stage's
type.

The names below are imported on first use: ``layout``, ``grammar``, ``quantize`` and ``entropy`` need no torch,
so the device client (``edgesplit.device``) imports them without ``frame`` and ``spec``, which do.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgesplit.codecs.frame import (CodecError, DecodeCost, DecodeLimits, PayloadError, decode, decode_cost,
                                        pack, pack_count, unpack, unpack_bytes, unpack_cost, unpacking)
    from edgesplit.codecs.spec import SPEC_HELP, Codec, codec_from_json, parse_codec

__all__ = ["SPEC_HELP", "Codec", "CodecError", "DecodeCost", "DecodeLimits", "PayloadError", "codec_from_json",
           "decode", "decode_cost", "pack", "pack_count", "parse_codec", "unpack", "unpack_bytes", "unpack_cost",
           "unpacking"]

_HOMES = {name: "edgesplit.codecs.spec" if name in ("SPEC_HELP", "Codec", "codec_from_json", "parse_codec")
          else "edgesplit.codecs.frame" for name in __all__}


def __getattr__(name: str) -> object:
    """The public names, from ``frame`` and ``spec`` (which import torch) when first asked for."""
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgesplit.codecs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
