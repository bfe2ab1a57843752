"""A device bundle's manifest: what `edgesplit export` writes and a device reads, checked without PyTorch.

A bundle is one folder: ``manifest.json`` (:class:`Manifest`, ``kind: edgesplit.bundle``) and the ONNX files it
names (each route's head, a bottleneck route's encoder, int8 heads, the whole model for local fallback, and with
``export --format pte`` each head's and encoder's ExecuTorch program, :class:`PteProgram`). Every file
is named by a bare file name inside the folder: :func:`load_bundle` refuses a manifest naming anything else (``..``,
a folder, an absolute path, a link that leads out of the bundle) before any file is opened, and checks each file's
size and SHA-256 against the manifest. Routes are numbered as ``edgesplit serve`` numbers them, so a device names
the server's route by the manifest's ``route_id``; the codec records are those ``codec_from_json`` reads.

This module imports pydantic and the standard library only (the device runs without torch).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from edgesplit.errors import EdgesplitError
from edgesplit.versioned import read_versioned

__all__ = ["BUNDLE_KIND", "BUNDLE_VERSION", "MANIFEST_NAME", "Bundle", "BundleError", "BundleFile",
           "ExecutorchSettings", "InputSpec", "Manifest", "PteProgram", "QuantizationSettings", "QuantizedHead",
           "QuantizedOutput", "RouteEntry", "SwitchRow", "check_file_name", "file_record", "load_bundle"]

BUNDLE_KIND = "edgesplit.bundle"
BUNDLE_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 16 * 2**20  # a manifest is text: routes, codec records and their calibration
# A bare file name: no separators, no leading dot (so never "." or ".."), nothing a shell or a file system reads
# specially; what `export` writes matches it.
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class BundleError(EdgesplitError):
    """A bundle folder that is missing, whose manifest is malformed or names files outside it, or whose files
    differ from what the manifest records."""


def check_file_name(name: str) -> str:
    """``name`` if it is a bare file name (letters, digits, ``._-``, not starting with a dot); else ValueError."""
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a bare file name inside the bundle (letters, digits, '.', '_', '-'; "
                         "no folders, no '..')")
    return name


class BundleFile(BaseModel):
    """One file of the bundle: its bare name, its size on disk and its SHA-256."""

    name: str
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("name")
    @classmethod
    def _bare(cls, name: str) -> str:
        return check_file_name(name)


class InputSpec(BaseModel):
    """What the model takes and how a device prepares it."""

    shape: list[int]  # the planned shape, batch first (the ONNX files take any batch)
    dtype: Literal["float32", "int64"]
    layout: str  # "NCHW" for images, "NT" for token ids, else "N..."
    low: float  # the value range: [0, 1] pixels, or token ids 0..vocab-1
    high: float
    channels: Literal["gray", "rgb"] | None = None  # images: 1 or 3 channels
    vocab_size: int | None = None
    preprocessing: str  # in words, for whoever writes a device in another language


class SwitchRow(BaseModel):
    """One row of the plan's switch table: below ``high_mbps`` (from ``low_mbps``) run ``route_id``."""

    low_mbps: float
    high_mbps: float
    label: str
    kind: Literal["split", "all-server", "all-device"]
    route_id: int | None  # None for all-device: nothing is sent, the device runs ``fallback``


class QuantizedOutput(BaseModel):
    """The int8 head with its last DequantizeLinear removed: it returns the uint8 tensor its last QuantizeLinear
    makes, which the device writes as the route's int8 codec frame directly (``device.codecs.quantized_frame``:
    the range [-zero_point·scale, (255 - zero_point)·scale] in the header), instead of dequantizing it and the codec
    quantizing it again. Written by export for the routes whose every codec is plain ``int8`` (8 bits, one range
    per tensor, no calibration, no lossless stage) and that have no bottleneck encoder. The server decodes the
    frame as any int8 frame."""

    file: BundleFile
    scales: list[float]  # one per tensor sent
    zero_points: list[int]


class QuantizedHead(BaseModel):
    """A route's int8 head (ONNX Runtime static quantization, QDQ: int8 weights, 8-bit activations) and how it
    compares with the float head."""

    file: BundleFile | None  # None when no route runs it (the file is not shipped; its measurement is kept)
    format: Literal["QDQ"] = "QDQ"
    weights: Literal["int8"] = "int8"
    activations: Literal["uint8"] = "uint8"  # 8-bit activations: unsigned (U8S8), ONNX Runtime's fast path on x86
    per_channel: bool
    calibration_samples: int
    metric: Literal["accuracy", "agreement"]  # accuracy on labels, else top-1 agreement with the float route
    float_score: float  # the float route's accuracy (1.0 when the metric is agreement)
    int8_score: float  # the int8 route's accuracy, or its top-1 agreement with the float route
    agreement: float  # top-1 agreement of the int8 route with the float route, always measured
    drop: float  # float_score - int8_score
    samples: int  # held-out inputs measured
    used: bool  # whether the route runs this head (drop within max_accuracy_drop)
    note: str
    quantized_output: QuantizedOutput | None = None  # what an int8-codec route runs instead (frames it directly)


class PteProgram(BaseModel):
    """A route's device part as ExecuTorch programs (``export --format pte``), beside its ONNX files: the head
    (and a bottleneck route's encoder) lowered with the XNNPACK partitioner; method ``forward`` takes the ONNX file's
    inputs in order and returns its outputs in order, for a batch of exactly ``batch`` (1: one input at a time)."""

    head: BundleFile
    encoder: BundleFile | None = None
    method: Literal["forward"] = "forward"
    backend: Literal["xnnpack"] = "xnnpack"  # the partitioner; operators XNNPACK lacks run in portable kernels
    batch: int = Field(ge=1)  # fixed (ExecuTorch's XNNPACK delegate bounded dynamic batches; pte_head.py)
    max_abs_diff: float  # the programs against PyTorch on the check inputs (ExecuTorch's Python runtime)


class QuantizationSettings(BaseModel):
    """How ``export --quantize int8`` made and measured the int8 heads (each route's outcome is its ``int8``)."""

    data: str | None  # the data spec given to --data
    source: str  # the images it resolved to, in words
    calibration_samples: int = Field(ge=1)
    holdout_samples: int = Field(ge=0)
    max_accuracy_drop: float
    format: Literal["QDQ"] = "QDQ"
    weights: Literal["int8"] = "int8"
    activations: Literal["uint8"] = "uint8"
    per_channel: bool
    calibration_method: Literal["minmax"] = "minmax"


class ExecutorchSettings(BaseModel):
    """How ``export --format pte`` lowered the programs (each route's files are its ``pte``)."""

    version: str  # of the executorch package that wrote them
    method: Literal["forward"] = "forward"
    backend: Literal["xnnpack"] = "xnnpack"
    batch: int = Field(ge=1)
    io: str  # the programs' inputs and outputs, in words


class RouteEntry(BaseModel):
    """One route of the plan's switch table, numbered as ``edgesplit serve`` numbers it."""

    route_id: int = Field(ge=0)
    label: str
    kind: Literal["split", "all-server"]
    cut_index: int | None
    position: int | None
    head_nodes: list[str] | None
    ranges_mbps: list[list[float]]
    codecs: list[dict]  # one codec record (``codec_from_json``) per tensor sent; empty for a picture route
    picture: str | None = None  # all-server routes that send the input as "png" or "jpeg q90"
    width: float | None = None  # a bottleneck route's width
    sends: list[list[int]]  # the shape of each tensor sent for one input
    sends_dtypes: list[str]
    head: BundleFile | None  # the float head; None for all-server routes (only the input's encoding runs here)
    encoder: BundleFile | None = None  # a bottleneck route's encoder, run on the head's output
    int8: QuantizedHead | None = None
    pte: PteProgram | None = None  # the ExecuTorch programs of the head (and encoder), with --format pte
    runs: Literal["float32", "int8"] = "float32"  # which head the device runs
    max_abs_diff: float | None  # the float ONNX files against PyTorch on the check inputs
    device_bytes: int  # bytes on disk of the files this route runs (head or int8 head, encoder)
    bytes_on_disk: int  # bytes on disk of every file of this route (float head, int8 head, encoder, .pte files)

    @model_validator(mode="after")
    def _consistent(self) -> RouteEntry:
        if self.runs == "int8" and (self.int8 is None or not self.int8.used or self.int8.file is None):
            raise ValueError(f"route {self.route_id} runs int8 but has no int8 head in use")
        if self.kind == "split" and self.head is None:
            raise ValueError(f"split route {self.route_id} has no head file")
        return self

    @property
    def run_file(self) -> BundleFile | None:
        """The head file the device runs for this route (with int8, the one emitting uint8 where there is one)."""
        if self.runs == "int8" and self.int8 is not None:
            return self.int8.quantized_output.file if self.int8.quantized_output else self.int8.file
        return self.head

    def files(self) -> list[BundleFile]:
        """The files of this route that the bundle holds."""
        pte = (self.pte.head, self.pte.encoder) if self.pte else ()
        direct = self.int8.quantized_output.file if self.int8 and self.int8.quantized_output else None
        return [f for f in (self.head, self.encoder, self.int8.file if self.int8 else None, direct, *pte)
                if f is not None]


class Manifest(BaseModel):
    """Everything a device needs to run its part of a plan, and the files that hold it."""

    kind: Literal["edgesplit.bundle"] = BUNDLE_KIND
    version: Literal[1] = BUNDLE_VERSION
    model: str
    model_id: str  # the id ``edgesplit serve`` serves the plan under
    fingerprint: str  # the model's graph fingerprint (the plan's; the server checks the same)
    input: InputSpec
    outputs: list[list[int]]  # the whole model's output shapes for the planned input
    uplink_mbps: float  # the plan's link: what a client assumes before it measures
    chosen: str  # the plan's chosen label
    switch_table: list[SwitchRow]
    routes: list[RouteEntry]
    fallback: BundleFile  # the whole model, for when the server is gone (or the table says all-device)
    onnx_io: dict[str, str]  # the ONNX files' tensor names: inputs input_0.., outputs crossing_0..
    quantization: QuantizationSettings | None = None  # with --quantize int8
    executorch: ExecutorchSettings | None = None  # with --format pte
    edgesplit_version: str

    @model_validator(mode="after")
    def _numbered(self) -> Manifest:
        ids = [r.route_id for r in self.routes]
        if ids != list(range(len(ids))):
            raise ValueError(f"routes must be numbered 0..{len(ids) - 1} in order, got {ids}")
        for row in self.switch_table:
            if row.route_id is not None and not 0 <= row.route_id < len(ids):
                raise ValueError(f"switch-table row '{row.label}' names route {row.route_id}, which is not listed")
            if (row.kind == "all-device") != (row.route_id is None):
                raise ValueError(f"switch-table row '{row.label}' is {row.kind} but names route {row.route_id}")
        for lower, upper in zip(self.switch_table, self.switch_table[1:]):
            # A device looks a rate up in the table row by row (label_at): rows must rise and not overlap.
            if not (lower.low_mbps < lower.high_mbps <= upper.low_mbps < upper.high_mbps):
                raise ValueError(f"switch-table rows must be in rising, disjoint Mbit/s ranges: "
                                 f"'{lower.label}' [{lower.low_mbps}, {lower.high_mbps}) then "
                                 f"'{upper.label}' [{upper.low_mbps}, {upper.high_mbps})")
        return self

    def files(self) -> list[BundleFile]:
        """Every file the manifest names, once each."""
        seen: dict[str, BundleFile] = {}
        for f in [f for r in self.routes for f in r.files()] + [self.fallback]:
            seen.setdefault(f.name, f)
        return list(seen.values())


class Bundle:
    """A bundle folder and its checked manifest: ``bundle.path(route.run_file)`` is a file inside the folder."""

    def __init__(self, folder: Path, manifest: Manifest):
        self.folder = folder
        self.manifest = manifest

    def path(self, file: BundleFile) -> Path:
        return self.folder / check_file_name(file.name)

    def route(self, route_id: int) -> RouteEntry:
        routes = self.manifest.routes
        if not 0 <= route_id < len(routes):
            raise BundleError(f"the bundle has routes 0..{len(routes) - 1}, not {route_id}")
        return routes[route_id]

    def __repr__(self) -> str:
        return f"Bundle({str(self.folder)!r}, model={self.manifest.model!r}, routes={len(self.manifest.routes)})"


def load_bundle(folder: str | Path, *, verify: bool = True) -> Bundle:
    """Read and check the bundle in ``folder``: its manifest's kind, version and shape, every file name bare and
    inside the folder (a link leading out is refused), and, with ``verify``, every file's size and SHA-256."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"no bundle folder at {folder}; make one with `edgesplit export PLAN.json --out {folder}`")
    manifest_path = folder / MANIFEST_NAME
    try:
        size = manifest_path.stat().st_size
    except OSError as error:
        raise BundleError(f"{folder} holds no {MANIFEST_NAME}; make the bundle with `edgesplit export PLAN.json "
                          f"--out {folder}`") from error
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path} is {size:,} bytes, over the {MAX_MANIFEST_BYTES:,} a manifest may "
                          "hold; export the bundle again")
    manifest = read_versioned(manifest_path, Manifest, kind=BUNDLE_KIND, version=BUNDLE_VERSION,
                              what="bundle manifest", make="`edgesplit export PLAN.json --out DIR`",
                              again="export the bundle again", error=BundleError)
    root = folder.resolve()
    for record in manifest.files():
        path = folder / check_file_name(record.name)
        if path.is_symlink() or path.resolve().parent != root:
            raise BundleError(f"bundle file {record.name} is a link; a bundle holds its files themselves")
        if not path.is_file():
            raise BundleError(f"bundle file {record.name} named by {manifest_path} is missing; copy the whole "
                              "bundle folder, or export it again")
        if verify:
            actual = path.stat().st_size
            if actual != record.bytes:
                raise BundleError(f"bundle file {record.name} is {actual:,} bytes, the manifest says "
                                  f"{record.bytes:,}; copy the whole bundle again, or export it again")
            if _sha256(path) != record.sha256:
                raise BundleError(f"bundle file {record.name} differs from what was exported (SHA-256); copy the "
                                  "whole bundle again, or export it again")
    return Bundle(folder, manifest)


def file_record(path: Path) -> BundleFile:
    """The manifest's record of the file ``path`` (a bare name inside the bundle)."""
    return BundleFile(name=path.name, bytes=path.stat().st_size, sha256=_sha256(path))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
