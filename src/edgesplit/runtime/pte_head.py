"""The device half as an ExecuTorch program: a split's head written as a ``.pte`` file, run by ExecuTorch's runtime.

`edgesplit export --format pte` writes one beside every ONNX head (and bottleneck encoder) of a bundle, for a
device that runs ExecuTorch rather than ONNX Runtime. :func:`export_pte` lowers the head with ``torch.export`` →
``executorch.exir.to_edge_transform_and_lower`` (the XNNPACK partitioner: the operators XNNPACK supports run in its
delegate, the rest in ExecuTorch's portable kernels) → ``to_executorch()``; the program's method ``forward`` takes
the head's inputs in order and returns its crossing tensors as a flat list, for a batch of :data:`BATCH` (1, the
planned batch: a device sends one input at a time). The batch is fixed because with the XNNPACK partitioner,
ExecuTorch 1.5.1 bounded a dynamic batch's input to 960 elements (15 of small_cnn's 1×8×8 inputs) whatever upper
bound ``torch.export.Dim`` declared, while the same program without XNNPACK took its whole range. :class:`PteHead`
runs such a file with ExecuTorch's Python runtime, and :func:`verify_pte` checks it against PyTorch.

``executorch`` is optional (``pip install 'edgesplit[pte]'``) and imported only inside these functions; the rest of
edgesplit never needs it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.utils._pytree as pytree

from edgesplit.errors import EdgesplitError
from edgesplit.runtime.onnx_head import _CrossingTuple, _quiet, _summary

__all__ = ["BATCH", "INSTALL_HINT", "PteExportError", "PteHead", "executorch_version", "export_pte",
           "require_executorch", "verify_pte"]

INSTALL_HINT = "pip install 'edgesplit[pte]'"
BATCH = 1  # the batch a .pte program takes (fixed; see the module's docstring)


class PteExportError(EdgesplitError):
    """ExecuTorch missing, a head it cannot lower, or a program that computes something else than its head."""


def executorch_version() -> str | None:
    """The installed executorch's version, or None when it is not installed (nothing is imported)."""
    try:
        return importlib.metadata.version("executorch")
    except importlib.metadata.PackageNotFoundError:
        return None


def require_executorch() -> str:
    """The installed executorch's version; a one-line user error saying how to install it when it is missing."""
    version = executorch_version()
    try:
        if version is None:
            raise ImportError("executorch is not installed")
        for name in ("executorch.exir", "executorch.runtime"):
            importlib.import_module(name)
    except ImportError as error:
        raise PteExportError(f"--format pte needs ExecuTorch, which is not importable here ({error}); install it "
                             f"with {INSTALL_HINT} (it keeps the CPU torch 2.13 wheel), or leave --format pte "
                             "out") from error
    return version


def export_pte(module: torch.nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
               path: str | Path) -> Path:
    """Lower ``module`` (a head or an encoder) to the ExecuTorch program ``path`` with the XNNPACK partitioner, for
    inputs shaped as ``example_inputs`` (their batch is the program's)."""
    require_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    path = Path(path)
    wrapped = _CrossingTuple(module).eval()
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), _quiet():
            program = torch.export.export(wrapped, inputs)
            buffer = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
    except Exception as error:  # noqa: BLE001 - torch.export and ExecuTorch raise many types; all mean the same
        raise PteExportError(f"ExecuTorch cannot lower {type(module).__name__} ({_summary(error)}); export "
                             "without --format pte (the ONNX files are unaffected)") from error
    finally:
        module.train(was_training)
    try:
        path.write_bytes(buffer)
    except OSError as error:
        raise PteExportError(f"cannot write {path} ({error.strerror or error}); choose a writable folder") from error
    return path


class PteHead:
    """An ExecuTorch program run by ExecuTorch's Python runtime; ``pte_head(*inputs)`` returns its outputs."""

    def __init__(self, path: str | Path):
        require_executorch()
        from executorch.runtime import Runtime

        self.path = Path(path)
        with _quiet():
            self._method = Runtime.get().load_program(self.path).load_method("forward")

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self._method.execute([t.contiguous() for t in inputs]))


def verify_pte(module: torch.nn.Module, head: PteHead, inputs: Sequence[torch.Tensor], *,
               atol: float = 1e-4, rtol: float = 1e-4) -> float:
    """The largest absolute difference between ``module`` and the program on ``inputs``; PteExportError when it
    is outside ``atol + rtol·|expected|`` anywhere, or the outputs' count or shapes differ."""
    with torch.no_grad():
        expected = pytree.tree_leaves(module(*inputs))
    got = head(*inputs)
    if len(got) != len(expected):
        raise PteExportError(f"{head.path.name} returns {len(got)} tensor(s), the head {len(expected)}")
    worst = 0.0
    for i, (e, g) in enumerate(zip(expected, got)):
        if tuple(e.shape) != tuple(g.shape):
            raise PteExportError(f"{head.path.name} output {i} has shape {tuple(g.shape)}, the head "
                                 f"{tuple(e.shape)}")
        e, g = e.detach().double(), g.detach().double()
        diff = (e - g).abs()
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
        if not torch.all(diff <= atol + rtol * e.abs()):
            raise PteExportError(f"{head.path.name} differs from PyTorch by up to {float(diff.max()):.3g} on "
                                 f"output {i} (tolerance {atol:g}); report it, and export without --format pte")
    return worst
