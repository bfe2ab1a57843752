"""edgesplit: split DNN inference for edge devices.

Python API::

    import edgesplit
    traced = edgesplit.trace(model, example_input)       # graph, shapes, candidate cuts
    report = edgesplit.profile_model(traced, runs=20)    # MACs, bytes, latency, memory per cut
    halves = traced.split(7)                              # head and tail modules
    assert edgesplit.max_abs_diff(halves.tail(*halves.head(x)), model(x)) <= 1e-5

    with edgesplit.Client("plan.json", "http://server:8000", token) as client:   # split inference
        result = client.infer(x)                          # head here, tail there; result.logits, .label, .where
"""

from edgesplit.model.artifact import load_split, save_split
from edgesplit.errors import EdgesplitError
from edgesplit.model.graph import Cut, Split, TracedModel, max_abs_diff, trace
from edgesplit.profile import DeviceProfile, ProfileReport, load_device_profile, profile_model

__all__ = ["Client", "Cut", "DeviceProfile", "EdgesplitError", "ProfileReport", "Split", "TracedModel",
           "load_device_profile", "load_split", "max_abs_diff", "profile_model", "save_split", "trace"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``Client`` is imported on first use: the HTTP client it needs is not worth importing with the package."""
    if name == "Client":
        from edgesplit.runtime.client import Client

        return Client
    raise AttributeError(f"module 'edgesplit' has no attribute {name!r}")
