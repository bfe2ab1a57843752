"""What crosses the wire: codecs that turn the tensors at a cut into self-describing bytes, and back.

``parse_codec("int4+zstd").calibrate(features).encode(tensor)`` writes a frame; ``decode(frame)`` needs nothing
but the bytes. See docs/codecs.md for the stages and the frame layout.

A new codec lives here and nowhere else: its stage in ``spec`` (the stage's dataclass, its parse and encode
branches) and its record in ``frame`` (header fields, decoder, and what ``decode_cost`` counts). Code outside the
package uses the names below and ``Codec``'s methods (``with_range``, ``sends_as_is``), never a stage's type.
"""

from edgesplit.codecs.frame import (CodecError, DecodeCost, DecodeLimits, PayloadError, decode, decode_cost, pack,
                                    pack_count, unpack, unpack_bytes, unpack_cost)
from edgesplit.codecs.spec import SPEC_HELP, Codec, codec_from_json, parse_codec

__all__ = ["SPEC_HELP", "Codec", "CodecError", "DecodeCost", "DecodeLimits", "PayloadError", "codec_from_json",
           "decode", "decode_cost", "pack", "pack_count", "parse_codec", "unpack", "unpack_bytes", "unpack_cost"]
