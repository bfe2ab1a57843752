"""The device half as an ONNX file: export a split's head once, run it on the device with onnxruntime.

A device that runs the head needs neither PyTorch nor the model's Python code, only onnxruntime and one
``.onnx`` file. :func:`export_head` writes that file (inputs ``input_0..``, outputs ``crossing_0..``, the
batch dimension dynamic); :class:`OnnxHead` loads it and is called like the fx head (tensors in, a tuple
of crossing tensors out), so it can stand in for ``split.head`` in a client; :func:`verify_head` checks
that both compute the same crossing tensors.

``onnx``, ``onnxscript`` and ``onnxruntime`` come with the extra: ``pip install 'edgesplit[onnx]'``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from edgesplit.errors import EdgesplitError, InputShapeError

__all__ = ["INPUT_PREFIX", "OUTPUT_PREFIX", "OnnxExportError", "OnnxHead", "OnnxHeadError", "OnnxInputError",
           "export_head", "use_onnx_heads", "verify_head"]

INSTALL_HINT = "install the extra: pip install 'edgesplit[onnx]'"
INPUT_PREFIX = "input_"
OUTPUT_PREFIX = "crossing_"
BATCH_AXIS = "batch"

# onnxruntime's element types and the torch dtypes a caller passes for them (bfloat16 has no numpy dtype).
_ORT_DTYPES: dict[str, torch.dtype] = {
    "tensor(float)": torch.float32, "tensor(double)": torch.float64, "tensor(float16)": torch.float16,
    "tensor(int64)": torch.int64, "tensor(int32)": torch.int32, "tensor(int16)": torch.int16,
    "tensor(int8)": torch.int8, "tensor(uint8)": torch.uint8, "tensor(bool)": torch.bool,
}
# Loggers that print warnings (torchvision ops skipped, symbolic-shape notes) during an export.
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo",
                  "torch.fx.experimental.symbolic_shapes", "onnxscript")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class OnnxExportError(EdgesplitError):
    """A head that cannot be exported to ONNX, a path that cannot be written, or the ONNX packages missing."""


class OnnxHeadError(EdgesplitError):
    """An ONNX head file that is missing or unreadable, or one that computes something else than its head."""


class OnnxInputError(InputShapeError):
    """Inputs that do not match what the ONNX head was exported for (count, shape or dtype)."""


# --- export -----------------------------------------------------------------------------------


class _CrossingTuple(torch.nn.Module):
    """Wraps a head so that the exported graph always returns a flat tuple of tensors."""

    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(pytree.tree_leaves(self.head(*inputs)))


def export_head(head: torch.nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], path: str | Path,
                *, dynamic_batch: bool = True) -> Path:
    """Export ``head`` (e.g. ``split.head``) to the ONNX file ``path`` and return that path.

    The file's inputs are ``input_0..`` (one per tensor in ``example_inputs``) and its outputs are the
    crossing tensors ``crossing_0..`` in the order the head returns them (a single tensor becomes a list of
    one). With ``dynamic_batch`` the first dimension of every input and output is the symbolic ``batch``;
    otherwise every shape is fixed to that of ``example_inputs``. The head is exported in eval mode.

    Raises OnnxExportError when the ONNX packages are missing, the path cannot be written, or the exporter
    fails on the head.
    """
    _require("onnx", "onnxscript", error=OnnxExportError)
    inputs = _as_tuple(example_inputs)
    if not all(isinstance(t, torch.Tensor) for t in inputs):
        raise OnnxExportError("export_head needs tensors as example inputs; pass the tensors the head is called with")
    path = Path(path)
    _prepare_destination(path)

    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            try:
                outputs = pytree.tree_leaves(head(*inputs))
            except Exception as error:  # noqa: BLE001 - any failure means the example does not fit the head
                raise OnnxExportError(f"the head fails on the example inputs ({_summary(error)}); pass the "
                                      "inputs the head is called with (the model's input)") from error
            if not outputs or not all(isinstance(t, torch.Tensor) for t in outputs):
                raise OnnxExportError("the head must return one or more tensors (the crossing tensors) "
                                      "to be exported; split the model with traced.split(cut)")
            program = _export(head, inputs, len(outputs), dynamic_batch)
    finally:
        head.train(was_training)

    if dynamic_batch:
        _name_batch_axes(program)
    try:
        program.save(path)  # weights inside the file unless they pass ONNX's 2 GB limit
    except OSError as error:
        raise OnnxExportError(f"cannot write the ONNX head to {path} ({error.strerror or error}); "
                              "choose a writable file path") from error
    return path


def _export(head: torch.nn.Module, inputs: tuple[torch.Tensor, ...], n_outputs: int, dynamic_batch: bool) -> Any:
    dynamic_shapes = None
    if dynamic_batch:
        # _CrossingTuple.forward takes *inputs, so torch.export wants one entry (a tuple) for that argument.
        dynamic_shapes = (tuple({0: torch.export.Dim.DYNAMIC} if t.dim() else None for t in inputs),)
    try:
        with _quiet():
            return torch.onnx.export(
                _CrossingTuple(head), inputs, dynamo=True, verbose=False,
                input_names=[f"{INPUT_PREFIX}{i}" for i in range(len(inputs))],
                output_names=[f"{OUTPUT_PREFIX}{i}" for i in range(n_outputs)],
                dynamic_shapes=dynamic_shapes, optimize=True)
    except Exception as error:  # noqa: BLE001 - the exporter raises many types; all mean the same to a user
        raise OnnxExportError(
            f"cannot export {type(head).__name__} to ONNX: {_summary(error)}; make the head exportable with "
            "torch.export (no data-dependent Python control flow, no unsupported ops) or run the PyTorch head"
        ) from error


def _name_batch_axes(program: Any) -> None:
    # torch.export names dynamic dims s0, s77, ...; call the inputs' first axis "batch" (and outputs follow).
    mapping: dict[str, str] = {}
    for value in program.model.graph.inputs:
        shape = value.shape
        if shape is not None and len(shape) and not isinstance(shape[0], int) and shape[0].value is not None:
            name = str(shape[0].value)
            mapping.setdefault(name, BATCH_AXIS if not mapping else f"{BATCH_AXIS}_{len(mapping)}")
    if mapping and hasattr(program, "rename_axes"):  # an older torch keeps the exporter's names
        program.rename_axes(mapping)


def _prepare_destination(path: Path) -> None:
    if path.is_dir():
        raise OnnxExportError(f"{path} is a directory; give export_head a file path such as {path / 'head.onnx'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OnnxExportError(f"cannot create the folder {path.parent} for the ONNX head "
                              f"({error.strerror or error}); choose a writable file path") from error
    try:  # fail before the export (seconds), not after it
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise OnnxExportError(f"cannot write the ONNX head to {path} ({error.strerror or error}); "
                              "choose a writable file path") from error


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress prints, its warnings and its loggers for the length of an export."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _summary(error: BaseException) -> str:
    """One line for a user: the exporter's 'Exception summary' when it has one, else the first line."""
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    if "## Exception summary" in lines:
        after = lines[lines.index("## Exception summary") + 1:]
        if after:
            return re.sub(r"^<class '[^']*'>:\s*", "", after[0])[:300]
    return (lines[0] if lines else type(error).__name__)[:300]


# --- run --------------------------------------------------------------------------------------


class OnnxHead:
    """An exported head run by onnxruntime on the CPU; ``onnx_head(*inputs)`` returns the crossing tensors.

    Called like the fx head it replaces: torch tensors in (``input_0..``), a tuple of CPU torch tensors out
    (``crossing_0..``). ``threads`` sets onnxruntime's intra-op threads (None: onnxruntime's default, one
    per physical core).
    """

    def __init__(self, path: str | Path, *, threads: int | None = None):
        ort = _require("onnxruntime", error=OnnxHeadError)[0]
        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxHeadError(f"no ONNX head at {self.path}; export one with export_head(split.head, inputs, path)")
        if threads is not None and threads < 1:
            raise OnnxHeadError(f"threads must be at least 1 (got {threads}); or pass None for onnxruntime's default")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise OnnxHeadError(f"cannot load the ONNX head {self.path} ({_summary(error)}); "
                                "re-export it with export_head") from error
        self.threads = threads
        inputs = self.session.get_inputs()
        self.input_names: tuple[str, ...] = tuple(i.name for i in inputs)
        self.output_names: tuple[str, ...] = tuple(o.name for o in self.session.get_outputs())
        # Per input: each dimension as an int (fixed) or a str (symbolic, e.g. "batch").
        self.input_shapes: tuple[tuple[int | str, ...], ...] = tuple(
            tuple(d if isinstance(d, int) else str(d) for d in i.shape) for i in inputs)
        self.input_dtypes: tuple[torch.dtype | None, ...] = tuple(_ORT_DTYPES.get(i.type) for i in inputs)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._check(inputs)
        feed = {name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in zip(self.input_names, inputs)}
        outputs = self.session.run(list(self.output_names), feed)
        return tuple(torch.from_numpy(np.asarray(o)) for o in outputs)

    def _check(self, inputs: tuple[torch.Tensor, ...]) -> None:
        if len(inputs) != len(self.input_names):
            raise OnnxInputError(f"the ONNX head {self.path.name} takes {len(self.input_names)} input tensor(s), "
                                 f"got {len(inputs)}; pass the model's inputs in order")
        bound: dict[str, int] = {}
        for i, (tensor, expected, dtype) in enumerate(zip(inputs, self.input_shapes, self.input_dtypes)):
            if not isinstance(tensor, torch.Tensor):
                raise OnnxInputError(f"input {i} of the ONNX head is a {type(tensor).__name__}, not a tensor; "
                                     "pass torch tensors")
            shape = tuple(tensor.shape)
            wanted = "×".join(str(d) if isinstance(d, int) else d for d in expected)
            mismatch = len(shape) != len(expected) or any(
                isinstance(want, int) and want != got for want, got in zip(expected, shape))
            for want, got in zip(expected, shape):
                if isinstance(want, str) and bound.setdefault(want, got) != got:
                    mismatch = True
            if mismatch:
                got_text = "×".join(map(str, shape)) or "a scalar"
                raise OnnxInputError(f"input {i} of the ONNX head {self.path.name} has shape {got_text}, but it "
                                     f"was exported for {wanted}; pass inputs of that shape (or re-export the "
                                     "head with dynamic_batch=True for another batch size)")
            if dtype is not None and tensor.dtype != dtype:
                raise OnnxInputError(f"input {i} of the ONNX head {self.path.name} is {tensor.dtype}, but it was "
                                     f"exported for {dtype}; convert it with .to({dtype})")

    def __repr__(self) -> str:
        shapes = ", ".join("×".join(map(str, s)) for s in self.input_shapes)
        return f"OnnxHead({str(self.path)!r}, inputs=[{shapes}], outputs={len(self.output_names)})"


def verify_head(head: torch.nn.Module, onnx_head: OnnxHead, inputs: torch.Tensor | Sequence[torch.Tensor],
                atol: float = 1e-4, rtol: float = 1e-4) -> float:
    """Run both heads on ``inputs``; the max abs difference over all crossing tensors.

    Raises OnnxHeadError when the heads return a different number of tensors or shapes, or when any element
    differs by more than ``atol + rtol * |expected|`` (the rule of ``torch.allclose``).
    """
    inputs = _as_tuple(inputs)
    with torch.no_grad():
        expected = [t.detach().cpu() for t in pytree.tree_leaves(head(*inputs))]
    actual = list(onnx_head(*inputs))
    if len(actual) != len(expected):
        raise OnnxHeadError(f"the ONNX head returns {len(actual)} tensor(s) but the PyTorch head returns "
                            f"{len(expected)}; re-export the ONNX head from this head")
    worst = 0.0
    for i, (a, e) in enumerate(zip(actual, expected)):
        if a.shape != e.shape:
            raise OnnxHeadError(f"crossing_{i} has shape {tuple(a.shape)} from the ONNX head but {tuple(e.shape)} "
                                "from the PyTorch head; re-export the ONNX head from this head")
        if not a.numel():
            continue
        a64, e64 = a.double(), e.double()
        difference = (a64 - e64).abs()
        worst = max(worst, difference.max().item())
        excess = (difference - (atol + rtol * e64.abs())).max().item()
        if excess > 0 or not torch.isfinite(difference).all():
            raise OnnxHeadError(f"the ONNX head differs from the PyTorch head on crossing_{i}: max abs diff "
                                f"{difference.max().item():.3g} exceeds atol={atol:g}, rtol={rtol:g}; re-export it "
                                "from this head, or run the PyTorch head")
    return worst


# --- helpers ----------------------------------------------------------------------------------


def _as_tuple(inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def _require(*modules: str, error: type[EdgesplitError]) -> list[Any]:
    loaded = []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError as missing:
            raise error(f"the ONNX runtime needs the package {name}, which is not installed; "
                        f"{INSTALL_HINT}") from missing
    return loaded


def use_onnx_heads(deployment, folder: str | Path, *, threads: int | None = None) -> list[Path]:  # noqa: ANN001
    """Export every route's head of ``deployment`` to ``folder`` and run it with onnxruntime from now on.

    Each exported head is checked against the PyTorch head on the plan's example input first (``verify_head``),
    so a client never runs a head that computes something else. Returns the files written.
    """
    folder = Path(folder)
    example = tuple(deployment.traced.example_inputs)
    written = []
    for route in deployment.routes:
        if route.kind == "all-server":
            continue  # nothing runs on the device but the input's encoding
        path = export_head(route.split.head, example, folder / f"{deployment.model_id}-route{route.route_id}.onnx")
        runner = OnnxHead(path, threads=threads)
        verify_head(route.split.head, runner, example)
        route.split.head = runner
        written.append(path)
    return written
