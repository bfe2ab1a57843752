"""Save a split to a folder and load it back, with no pickle anywhere.

A split folder holds ``head.safetensors`` and ``tail.safetensors`` (each half's own state dict) and
``split.json``: how to rebuild the model (zoo name or import path plus factory arguments), the input
shape, the graph's fingerprint and the cut. Loading rebuilds the graph from the model's code, checks the
fingerprint, splits at the recorded cut and loads each half's weights strictly. A device needs only
``split.json`` and ``head.safetensors``; a server only ``split.json`` and ``tail.safetensors``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from edgesplit.errors import EdgesplitError, SplitArtifactError
from edgesplit.model.graph import EXACT_TOLERANCE, Split, TensorSpec, TracedModel, max_abs_diff, trace
from edgesplit.model.intake import ModelRef, build_model, example_input
from edgesplit.versioned import read_versioned

SPLIT_VERSION = 1
Part = Literal["head", "tail"]

__all__ = ["SPLIT_VERSION", "CutRecord", "Part", "SplitRecord", "load_split", "read_split_record", "save_split",
           "verify_split"]


class CutRecord(BaseModel):
    index: int
    position: int
    after: str


class SplitRecord(BaseModel):
    """The content of ``split.json``."""

    version: int = SPLIT_VERSION
    kind: Literal["edgesplit.split"] = "edgesplit.split"
    model: dict
    input_shapes: list[list[int]]
    tracer: Literal["fx", "export"]
    fingerprint: str
    cut: CutRecord
    crossing: list[TensorSpec]
    crossing_bytes: int
    files: dict[str, str]
    max_abs_diff: float


def save_split(split: Split, traced: TracedModel, ref: ModelRef, out_dir: str | Path,
               max_abs_diff: float) -> SplitRecord:
    """Write head and tail weights as safetensors and ``split.json`` describing the cut."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"head": "head.safetensors", "tail": "tail.safetensors"}
    save_model(split.head, str(out_dir / files["head"]))
    save_model(split.tail, str(out_dir / files["tail"]))
    cut = split.cut
    record = SplitRecord(
        model=ref.to_json(), input_shapes=[list(t.shape) for t in traced.example_inputs], tracer=traced.tracer,
        fingerprint=traced.fingerprint, cut=CutRecord(index=cut.index, position=cut.position, after=cut.after),
        crossing=list(cut.crossing), crossing_bytes=cut.crossing_bytes, files=files, max_abs_diff=max_abs_diff,
    )
    (out_dir / "split.json").write_text(record.model_dump_json(indent=2))
    return record


def read_split_record(folder: str | Path) -> SplitRecord:
    """Read and validate ``split.json`` in ``folder``."""
    path = Path(folder) / "split.json"
    if not path.is_file():
        raise SplitArtifactError(f"{path} not found; make a split folder with `edgesplit split MODEL --cut CUT --out DIR`")
    return read_versioned(path, SplitRecord, kind="edgesplit.split", version=SPLIT_VERSION, what="split description",
                          make="`edgesplit split MODEL --cut CUT --out DIR`", again="write the split again",
                          error=SplitArtifactError)


def load_split(folder: str | Path, parts: tuple[Part, ...] = ("head", "tail"), *,
               model: str | None = None) -> tuple[Split, SplitRecord]:
    """Rebuild the split saved in ``folder`` and load the weights of the requested halves.

    ``split.json`` may name a zoo model; a ``module:factory`` is built only if ``model`` names that same factory
    (the caller's choice: a file never chooses code to run). Its arguments and input shapes are checked before
    anything is allocated (``intake.build_model``)."""
    folder = Path(folder)
    record = read_split_record(folder)
    name, kwargs = record.model.get("name"), record.model.get("kwargs") or {}
    if not isinstance(name, str) or not record.input_shapes:
        raise SplitArtifactError(f"{folder / 'split.json'} does not say which model and input shape to rebuild; "
                                 "write the split again")
    model_module = build_model(ModelRef(name, kwargs), trusted_factory=model,
                               input_shapes=[tuple(s) for s in record.input_shapes],
                               source=f"split record {folder / 'split.json'}")
    example = tuple(example_input(model_module, shape, seed=None) for shape in record.input_shapes)  # zeros
    try:
        traced = trace(model_module, example)
    except EdgesplitError as error:
        raise SplitArtifactError(f"cannot rebuild the model of split {folder}: {error}") from error
    if traced.fingerprint != record.fingerprint:
        raise SplitArtifactError(f"the model code of '{name}' changed since split {folder} was "
                                 "written (graph fingerprint differs); write the split again")
    split = traced.split(record.cut.index)
    if split.cut.position != record.cut.position or split.cut.after != record.cut.after:
        raise SplitArtifactError(f"split {folder} names cut {record.cut.index} after '{record.cut.after}', which the "
                                 "rebuilt graph does not have; write the split again")
    for part in parts:
        file_name = record.files.get(part, "")
        if Path(file_name).name != file_name or file_name in ("", ".", ".."):
            raise SplitArtifactError(f"{folder / 'split.json'} names the {part} file {file_name[:80]!r}, not a file in "
                                     "its own folder; write the split again")
        path = folder / file_name
        if not path.is_file():
            raise SplitArtifactError(f"{path} not found; copy the whole split folder or write the split again")
        try:
            missing, unexpected = load_model(getattr(split, part), str(path), strict=False)
        except (SafetensorError, OSError, RuntimeError, ValueError) as error:
            raise SplitArtifactError(f"{path} is corrupt or does not fit the {part} ({str(error).splitlines()[0][:200]}); "
                                     "write the split again") from error
        if missing or unexpected:
            raise SplitArtifactError(f"{path} does not fit the {part}: {len(missing)} missing and {len(unexpected)} "
                                     "unexpected tensors; write the split again")
    return split, record


def verify_split(split: Split, model: torch.nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> float:
    """Run both halves and the whole model on ``inputs``; the max abs difference, or an error above 1e-5."""
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
    with torch.no_grad():
        difference = max_abs_diff(split(*inputs), model(*inputs))
    if difference > EXACT_TOLERANCE:
        raise SplitArtifactError(f"the split halves differ from the model by {difference:.3g} (> {EXACT_TOLERANCE}); "
                                 "the weights on disk do not match the model: write the split again")
    return difference
