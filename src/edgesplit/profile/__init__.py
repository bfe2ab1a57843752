"""Measure a traced model per node and per cut: MACs, parameters, crossing bytes, latency, peak memory.

*Profile once per machine, decide anywhere*: ``profile_model`` returns a versioned ``ProfileReport``;
``DeviceProfile`` is its machine-specific part (latencies and machine info), the file a user makes on
their Raspberry Pi or Jetson for the planner to read on any machine.

One concept per module:

- ``schema``: the file formats, ``ProfileReport`` and ``DeviceProfile``, and ``load_device_profile``;
- ``macs``: MAC counting (``count_macs`` and the formulas torch's flop counter lacks);
- ``weights``: parameter counts and weight bytes of a module or a node;
- ``timing``: samplers that time a call, or every node in context during whole-graph runs;
- ``memory``: peak memory of one call, measured, or predicted for every head from tensor liveness;
- ``machine``: host facts (``machine_info``, ``memory_bandwidth_gb_s``);
- ``profiler``: ``profile_model``, which runs all of the above over every node and cut (or a calibrating few);
- ``onnx_timing``: ``onnx_profile``, a profile's latencies measured again under ONNX Runtime (float32 or int8).
"""

from edgesplit.profile.machine import MachineInfo, machine_info, memory_bandwidth_gb_s
from edgesplit.profile.macs import count_macs, is_counted
from edgesplit.profile.memory import liveness_peak_bytes, peak_memory_bytes
from edgesplit.profile.onnx_timing import RUNTIMES, OnnxProfileError, onnx_profile, require_onnx_runtime
from edgesplit.profile.profiler import MAX_MEASURED_CUTS, profile_model
from edgesplit.profile.schema import (PROFILE_VERSION, Calibration, CutLatency, CutProfile, DeviceProfile, ModelInfo,
                                      NodeLatency, NodeProfile, ProfileReport, Runtime, device_profile,
                                      load_device_profile)
from edgesplit.profile.timing import MIN_SAMPLE_SECONDS, in_context_node_ms, median_ms

__all__ = ["MAX_MEASURED_CUTS", "MIN_SAMPLE_SECONDS", "PROFILE_VERSION", "RUNTIMES", "Calibration", "CutLatency",
           "CutProfile", "DeviceProfile", "MachineInfo", "ModelInfo", "NodeLatency", "NodeProfile", "OnnxProfileError",
           "ProfileReport", "Runtime", "count_macs", "device_profile", "in_context_node_ms", "is_counted",
           "liveness_peak_bytes", "load_device_profile", "machine_info", "median_ms", "memory_bandwidth_gb_s",
           "onnx_profile", "peak_memory_bytes", "profile_model", "require_onnx_runtime"]
