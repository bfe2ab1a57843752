"""edgesplit: split DNN inference for edge devices.

Python API::

    import edgesplit
    traced = edgesplit.trace(model, example_input)       # graph, shapes, candidate cuts
    report = edgesplit.profile_model(traced, runs=20)    # MACs, bytes, latency, memory per cut
    plan = edgesplit.plan_model(traced, device="rpi4", server="edge-gpu", link="lte")   # plan.chosen, .switch_table
    halves = traced.split(7)                              # head and tail modules
    assert edgesplit.max_abs_diff(halves.tail(*halves.head(x)), model(x)) <= 1e-5

    with edgesplit.Client(plan, "http://server:8000", token) as client:   # split inference (or "plan.json")
        result = client.infer(x)                          # head here, tail there; result.logits, .label, .where
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from edgesplit.errors import EdgesplitError

if TYPE_CHECKING:
    from edgesplit.model.artifact import load_split, save_split
    from edgesplit.model.graph import Cut, Split, TracedModel, max_abs_diff, trace
    from edgesplit.plan.api import plan_model
    from edgesplit.profile import DeviceProfile, ProfileReport, load_device_profile, profile_model
    from edgesplit.runtime.client import Client

__all__ = ["Client", "Cut", "DeviceProfile", "EdgesplitError", "ProfileReport", "Split", "TracedModel",
           "load_device_profile", "load_split", "max_abs_diff", "plan_model", "profile_model", "save_split", "trace"]
__version__ = "0.1.0"


# Every name but EdgesplitError is imported on first use, so ``import edgesplit`` stays light and needs no torch
# (``edgesplit.device``, the device client, runs where torch is not installed): the model and profile names need
# torch, the client an HTTP library (httpx), and the planner networkx and ~300 more modules (about 0.2 s).
_HOMES = {"load_split": "edgesplit.model.artifact", "save_split": "edgesplit.model.artifact",
          **dict.fromkeys(["Cut", "Split", "TracedModel", "max_abs_diff", "trace"], "edgesplit.model.graph"),
          **dict.fromkeys(["DeviceProfile", "ProfileReport", "load_device_profile", "profile_model"],
                          "edgesplit.profile"),
          "Client": "edgesplit.runtime.client", "plan_model": "edgesplit.plan.api"}


def __getattr__(name: str) -> object:
    """The public names, imported when first asked for (see ``_HOMES``)."""
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgesplit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
