"""The device side without PyTorch: what a device needs to take part in a split, in numpy.

This package imports numpy and the codec libraries (zstandard, constriction), never torch, nor any module of
edgesplit that does (a test imports it with ``import torch`` blocked): ``codecs`` encodes the tensors at a cut to
the same bytes as ``edgesplit.codecs`` and decodes any frame, under the same decode limits, from codec specs and
calibration records such as a plan or a bundle's manifest carries.
"""

from edgesplit.device.codecs import (SPEC_HELP, CodecError, DecodeCost, DecodeLimits, NumpyCodec, PayloadError,
                                     codec_from_json, decode, decode_cost, pack, parse_codec, unpack, unpack_cost)

__all__ = ["SPEC_HELP", "CodecError", "DecodeCost", "DecodeLimits", "NumpyCodec", "PayloadError", "codec_from_json",
           "decode", "decode_cost", "pack", "parse_codec", "unpack", "unpack_cost"]
