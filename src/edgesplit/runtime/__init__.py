"""Running a split model across a real network: the device's client, the tail server, and what travels between.

The modules, from the wire up:

* ``wire``: the request and response frames; ``deployment``: a plan's routes rebuilt (head, codec, tail);
  ``onnx_head``: heads run with onnxruntime.
* ``engine``: the server's batching of tails; ``server``: the HTTP/WebSocket API over it (``guard``: connection
  limits, Host/Origin checks); ``ray_serve``: the same API on Ray Serve.
* ``auth``: bearer tokens, read one way for both ends (``token_from``).
* ``client``: :class:`Client`, the device side (``transport``: its sockets; ``adapt``: its bandwidth estimate and
  choice of route per request, shared with the torch-free device client; ``errors``: what it raises).
* ``relay``: a chain plan's server tiers (`serve --tier K --next URL`); ``chain_client``: :class:`ChainClient`, the
  device of a chain plan.
* ``infer`` and ``summary``: `edgesplit infer` (its inputs, the run, the summary file's schema and table).

The names below are imported on first use (``edgesplit.runtime.Client``): importing the package imports neither
httpx nor fastapi.
"""

from __future__ import annotations

import importlib

__all__ = ["Adapter", "BandwidthEstimator", "ChainClient", "Client", "ClientError", "ClientStats", "Deployment", "Engine", "InferSummary",
           "Inputs", "Result", "Route", "ServerLimits", "ServerMismatchError", "ServerRejectedError", "ServerThread",
           "ServerUnreachableError", "ServerUntrustedError", "Switch", "SwitchPolicy", "TokenError",
           "load_deployment", "load_infer_summary", "load_inputs", "run_inference", "serve", "summary_table",
           "token_from"]

_HOMES = {
    "adapt": ("Adapter", "BandwidthEstimator", "ClientStats", "Switch", "SwitchPolicy"),
    "auth": ("TokenError", "token_from"),
    "chain_client": ("ChainClient",),
    "client": ("Client", "Result"),
    "deployment": ("Deployment", "Route", "load_deployment"),
    "engine": ("Engine", "ServerLimits"),
    "errors": ("ClientError", "ServerMismatchError", "ServerRejectedError", "ServerUnreachableError",
               "ServerUntrustedError"),
    "infer": ("Inputs", "load_inputs", "run_inference"),
    "server": ("ServerThread", "serve"),
    "summary": ("InferSummary", "load_infer_summary", "summary_table"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> object:
    """A public name, imported from its module on first use."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'edgesplit.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"edgesplit.runtime.{module}"), name)
