"""What crosses the wire: codecs that turn the tensors at a cut into self-describing bytes, and back.

``parse_codec("int4+zstd").calibrate(features).encode(tensor)`` writes a frame; ``decode(frame)`` needs nothing
but the bytes. See docs/codecs.md for the stages and the frame layout.
"""

from edgesplit.codecs.frame import CodecError, DecodeCost, DecodeLimits, PayloadError, decode, decode_cost, pack, unpack, unpack_cost
from edgesplit.codecs.spec import SPEC_HELP, Codec, codec_from_json, parse_codec

__all__ = ["Codec", "CodecError", "DecodeCost", "DecodeLimits", "PayloadError", "SPEC_HELP", "codec_from_json",
           "decode", "decode_cost", "pack", "parse_codec", "unpack", "unpack_cost"]
