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

from edgesplit.errors import EdgesplitError
from edgesplit.model.artifact import load_split, save_split
from edgesplit.model.graph import Cut, Split, TracedModel, max_abs_diff, trace
from edgesplit.profile import DeviceProfile, ProfileReport, load_device_profile, profile_model

__all__ = ["Client", "Cut", "DeviceProfile", "EdgesplitError", "ProfileReport", "Split", "TracedModel",
           "load_device_profile", "load_split", "max_abs_diff", "plan_model", "profile_model", "save_split", "trace"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``Client`` and ``plan_model`` are imported on first use, so ``import edgesplit`` stays light: the client
    needs an HTTP library (httpx), and the planner networkx and ~300 more modules (about 0.2 s)."""
    if name == "Client":
        from edgesplit.runtime.client import Client  # lazy: httpx, see the docstring

        return Client
    if name == "plan_model":
        from edgesplit.plan.api import plan_model  # lazy: networkx and the planner, see the docstring

        return plan_model
    raise AttributeError(f"module 'edgesplit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "Client", "plan_model"})
