"""edgesplit: split DNN inference for edge devices.

Python API::

    import edgesplit
    traced = edgesplit.trace(model, example_input)       # graph, shapes, candidate cuts
    report = edgesplit.profile_model(traced, runs=20)    # MACs, bytes, latency, memory per cut
    halves = traced.split(7)                              # head and tail modules
    assert edgesplit.max_abs_diff(halves.tail(*halves.head(x)), model(x)) <= 1e-5
"""

from .artifact import load_split, save_split
from .errors import EdgesplitError
from .graph import Cut, Split, TracedModel, max_abs_diff, trace
from .profile import DeviceProfile, ProfileReport, load_device_profile, profile_model

__all__ = ["Cut", "DeviceProfile", "EdgesplitError", "ProfileReport", "Split", "TracedModel", "load_device_profile",
           "load_split", "max_abs_diff", "profile_model", "save_split", "trace"]
__version__ = "0.1.0"
