"""The device side without PyTorch: what a device needs to take part in a split, in numpy.

This package imports numpy and the codec libraries (zstandard, constriction), never torch, nor any module of
edgesplit that does (a test imports it with ``import torch`` blocked): ``codecs`` encodes the tensors at a cut to
the same bytes as ``edgesplit.codecs`` and decodes any frame, under the same decode limits, from codec specs and
calibration records such as a plan or a bundle's manifest carries. ``bundle`` reads and checks a device bundle
(``load_bundle``, what `edgesplit export` writes); ``client`` runs a bundle's heads with onnxruntime against a tail
server (``DeviceClient``; `python -m edgesplit.device BUNDLE --server URL` prints `edgesplit infer`'s summary). Their
names are imported on first use, so ``import edgesplit.device`` loads no more than the codecs.
"""

import importlib

from edgesplit.device.codecs import (SPEC_HELP, CodecError, DecodeCost, DecodeLimits, NumpyCodec, PayloadError,
                                     codec_from_json, decode, decode_cost, pack, parse_codec, unpack, unpack_cost)

__all__ = ["SPEC_HELP", "Bundle", "BundleError", "CodecError", "DecodeCost", "DecodeLimits", "DeviceClient",
           "DeviceResult", "Manifest", "NumpyCodec", "PayloadError", "codec_from_json", "decode", "decode_cost",
           "load_bundle", "pack", "parse_codec", "run_device_inference", "unpack", "unpack_cost"]

_BUNDLE_NAMES = ("Bundle", "BundleError", "Manifest", "load_bundle")  # from edgesplit.device.bundle, on first use
_CLIENT_NAMES = ("DeviceClient", "DeviceResult", "run_device_inference")  # from edgesplit.device.client (httpx, ORT)


def __getattr__(name: str) -> object:
    if name in _BUNDLE_NAMES:
        return getattr(importlib.import_module("edgesplit.device.bundle"), name)
    if name in _CLIENT_NAMES:
        return getattr(importlib.import_module("edgesplit.device.client"), name)
    raise AttributeError(f"module 'edgesplit.device' has no attribute {name!r}")
