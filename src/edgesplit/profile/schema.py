"""The profile file formats: ``ProfileReport`` (``edgesplit profile --json``) and ``DeviceProfile`` (``--save-device``).

*Profile once per machine, decide anywhere*: a ``ProfileReport`` is everything measured about one model on
one machine; ``DeviceProfile`` is its machine-specific part (latencies and machine info), the file a user
makes on their Raspberry Pi or Jetson for the planner to read on any machine. Both are versioned JSON with
a ``kind``, and name the ``runtime`` their latencies were measured with: ``torch`` (PyTorch, eager fx), ``onnx``
or ``onnx-int8`` (ONNX Runtime, float32 or the int8 QDQ model of ``edgesplit export --quantize int8``; see
``edgesplit.profile.onnx_timing``). ``runtime`` came after version 1 files were first written and defaults to
``torch``, which is what those files measured, so they still read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, computed_field

from edgesplit.model.graph import TensorSpec
from edgesplit.profile.machine import MachineInfo
from edgesplit.versioned import read_versioned

__all__ = ["PROFILE_VERSION", "Calibration", "CutLatency", "CutProfile", "DeviceProfile", "ModelInfo", "NodeLatency",
           "NodeProfile", "ProfileReport", "Runtime", "device_profile", "load_device_profile"]

PROFILE_VERSION = 1
Runtime = Literal["torch", "onnx", "onnx-int8"]
"""What ran the model when it was timed: PyTorch, or ONNX Runtime in float32 or int8 (QDQ, as export's)."""


class ModelInfo(BaseModel):
    """What was profiled: enough to check that a profile and a split describe the same graph."""

    name: str
    input_shapes: list[list[int]]
    tracer: Literal["fx", "export"]
    fallback_reason: str | None = None
    fingerprint: str
    nodes: int
    cuts: int
    macs: int
    params: int
    weight_bytes: int


class NodeProfile(BaseModel):
    index: int
    name: str
    kind: str
    target: str
    output_shape: list[int] | None
    output_bytes: int
    macs: int
    params: int
    latency_ms: float
    latency_isolated_ms: float | None = None
    """The node timed alone in a loop; ``--measure all`` only (None in the default mode)."""


class CutProfile(BaseModel):
    index: int
    position: int
    after: str
    crossing: list[TensorSpec]
    crossing_bytes: int
    head_macs: int
    tail_macs: int
    head_params: int
    head_weight_bytes: int
    tail_params: int
    tail_weight_bytes: int
    head_ms: float
    head_ms_summed: float
    """The sum of the head's node latencies (in context); ``head_ms`` of a cut not measured is this."""
    tail_ms: float
    tail_ms_summed: float
    head_peak_bytes: int
    measured: bool = True
    """Head and tail were run as a whole (``head_ms``/``tail_ms`` measured); else they are the summed-node values."""
    head_ms_torch: float | None = None
    """In a profile of runtime ``onnx`` or ``onnx-int8``: PyTorch's ``head_ms`` of the same run, to compare."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def head_ms_error(self) -> float:
        """Relative error of the summed-node estimate against the measured head latency."""
        return (self.head_ms_summed - self.head_ms) / self.head_ms if self.head_ms > 0 else 0.0


class Calibration(BaseModel):
    """How well summed node latencies predict heads and tails, on the cuts measured as a whole.

    Errors are relative, |summed - measured| / measured, over measured cuts with a non-empty head (tail)."""

    cuts: list[int]
    head_median_abs_error: float
    head_max_abs_error: float
    tail_median_abs_error: float
    tail_max_abs_error: float
    scale: float = 1.0
    """Median measured / summed latency over the measured heads and tails: how much the sums, which stand in
    for the cuts not measured, under- (> 1) or over-estimate; reported, not applied."""


class ProfileReport(BaseModel):
    """Everything ``edgesplit profile`` measured; versioned JSON."""

    version: int = PROFILE_VERSION
    kind: Literal["edgesplit.profile"] = "edgesplit.profile"
    model: ModelInfo
    machine: MachineInfo
    runs: int
    model_ms: float
    """The whole model; with runtime ``onnx-int8``, its float32 ONNX model, which a bundle's all-device route and
    fallback run (``edgesplit export`` quantizes heads only)."""
    uncounted_ops: dict[str, list[str]]
    nodes: list[NodeProfile]
    cuts: list[CutProfile]
    measure: Literal["calibrate", "all"] = "all"
    """``all``: every cut's head and tail measured; ``calibrate``: a few, the rest summed from node latencies."""
    calibration: Calibration | None = None
    runtime: Runtime = "torch"
    """What ran the model: PyTorch, or ONNX Runtime (``onnx``, ``onnx-int8``), whose node latencies are then derived
    from the heads timed under it, ``calibration`` is None and ``head_peak_bytes`` stay PyTorch's liveness."""
    torch_model_ms: float | None = None
    """With an ONNX runtime: PyTorch's ``model_ms`` measured in the same profile."""


class CutLatency(BaseModel):
    index: int
    position: int
    after: str
    head_ms: float
    tail_ms: float
    head_peak_bytes: int
    measured: bool = True
    """Head and tail were run as a whole; else their latencies are derived from the node latencies."""


class NodeLatency(BaseModel):
    name: str
    latency_ms: float


class DeviceProfile(BaseModel):
    """Latencies of one model measured on one machine: what the planner needs to know about a device."""

    version: int = PROFILE_VERSION
    kind: Literal["edgesplit.device-profile"] = "edgesplit.device-profile"
    name: str
    machine: MachineInfo
    model: ModelInfo
    model_ms: float
    nodes: list[NodeLatency]
    cuts: list[CutLatency]
    runtime: Runtime = "torch"
    """What the latencies were measured with: a device running a bundle's int8 heads is planned with ``onnx-int8``."""


def device_profile(report: ProfileReport, name: str) -> DeviceProfile:
    """The machine-specific part of a profile, named after the device it was measured on."""
    return DeviceProfile(
        name=name, machine=report.machine, model=report.model, model_ms=report.model_ms,
        nodes=[NodeLatency(name=n.name, latency_ms=n.latency_ms) for n in report.nodes],
        cuts=[CutLatency(index=c.index, position=c.position, after=c.after, head_ms=c.head_ms, tail_ms=c.tail_ms,
                         head_peak_bytes=c.head_peak_bytes, measured=c.measured) for c in report.cuts],
        runtime=report.runtime,
    )


def load_device_profile(path: str | Path) -> DeviceProfile:
    """Read a device profile JSON, refusing other kinds and versions with a clear message."""
    return read_versioned(path, DeviceProfile, kind="edgesplit.device-profile", version=PROFILE_VERSION,
                          what="device profile", again="measure it again",
                          make="`edgesplit profile MODEL --save-device NAME.json` on that device")
