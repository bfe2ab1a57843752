"""Turn what a user names on the command line into a model and an example input.

``MODEL`` is a zoo name (``small_cnn``) or an import path ``package.module:factory`` whose factory returns
an ``nn.Module``. Weights come from ``.safetensors`` files or from state dicts that ``torch.load`` reads
with ``weights_only=True`` (never pickle). Weights that ``edgesplit train`` writes carry the model's name,
constructor arguments and input shape in the safetensors metadata, so they rebuild the right model alone.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from .errors import InputShapeError, ModelNotFoundError, WeightsError
from .zoo import ZOO, get_entry

METADATA_KEY = "edgesplit"


@dataclass(frozen=True)
class ModelRef:
    """How to rebuild a model: a zoo name or import path, and the keyword arguments of its factory."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": self.kwargs}


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``1,3,32,32`` (or ``1x3x32x32``) into a shape of positive ints."""
    parts = re.split(r"[,x×]", text.strip())
    shape = tuple(int(p) for p in parts) if all(p.strip().isdigit() for p in parts) else ()
    if not shape or any(size <= 0 for size in shape):
        raise InputShapeError(f"input shape '{text}' is not a list of positive integers; write it like 1,3,32,32")
    return shape


def resolve_factory(name: str) -> Any:
    """The zoo factory called ``name``, or the callable at import path ``package.module:factory``."""
    if ":" not in name:
        return get_entry(name).factory
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelNotFoundError(f"cannot import '{module_name}' for model '{name}' ({error}); "
                                 "check the spelling and that the module is on PYTHONPATH") from None
    factory: Any = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ModelNotFoundError(f"module '{module_name}' has no attribute '{attribute}'; "
                                     "give MODEL as package.module:factory naming a callable that returns a model")
    if not callable(factory):
        raise ModelNotFoundError(f"'{name}' is not callable; it must be a factory (a class or function) returning a model")
    return factory


def build_model(ref: ModelRef) -> torch.nn.Module:
    """Call the factory that ``ref`` names with its keyword arguments."""
    factory = resolve_factory(ref.name)
    try:
        model = factory(**ref.kwargs)
    except TypeError as error:
        raise ModelNotFoundError(f"cannot build '{ref.name}' with arguments {ref.kwargs}: {error}") from None
    if not isinstance(model, torch.nn.Module):
        raise ModelNotFoundError(f"'{ref.name}' returned a {type(model).__name__}, not a torch.nn.Module; "
                                 "the factory must return the model")
    return model


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A state dict and the edgesplit metadata (empty if none) from a safetensors or torch file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found; check the path (make one with `edgesplit train`)")
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            return load_file(str(path)), metadata
        except (SafetensorError, OSError, ValueError) as error:
            raise WeightsError(f"weights file {path} is not a valid safetensors file ({error}); "
                               "re-create or re-download it") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch.load raises many types for bad files
        raise WeightsError(f"weights file {path} cannot be read as a state dict with weights_only=True "
                           f"({str(error).splitlines()[0][:200]}); save it with torch.save(model.state_dict()) "
                           "or as .safetensors") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict (a mapping of names to tensors); "
                           "save it with torch.save(model.state_dict())")
    return loaded, {}


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict strictly, explaining any mismatch in one line."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [f"{k} {tuple(state_dict[k].shape)}≠{tuple(v.shape)}" for k, v in expected.items()
                   if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            problems.append(f"{len(wrong_shape)} of another shape (e.g. {', '.join(wrong_shape[:2])})")
        raise WeightsError(f"weights {source} do not match {type(model).__name__}: {'; '.join(problems)}; "
                           "use the weights trained for this model and input size")
    model.load_state_dict(state_dict, strict=True)


def save_weights(model: torch.nn.Module, path: str | Path, ref: ModelRef, input_shape: tuple[int, ...],
                 extra: dict[str, Any] | None = None) -> None:
    """Write a model's weights as safetensors, with how to rebuild it in the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {METADATA_KEY: json.dumps({"model": ref.to_json(), "input_shape": list(input_shape), **(extra or {})})}
    save_model(model, str(path), metadata=metadata)


@dataclass
class LoadedModel:
    """A model ready to trace: the module, an example input, and how to rebuild it."""

    module: torch.nn.Module
    example_input: torch.Tensor
    ref: ModelRef
    weights: str | None


def load_model(name: str, *, input_shape: str | tuple[int, ...] | None = None, weights: str | Path | None = None,
               seed: int = 0) -> LoadedModel:
    """Build the model named on the command line, load its weights, and make a seeded example input."""
    resolve_factory(name)  # an unknown name is the first thing to report
    state_dict, metadata = read_weights(weights) if weights else ({}, {})
    recorded = json.loads(metadata.get(METADATA_KEY, "{}")) if metadata else {}
    recorded_model = recorded.get("model") or {}
    if recorded_model and recorded_model.get("name") != name:
        raise WeightsError(f"weights {weights} were trained for model '{recorded_model.get('name')}', not '{name}'; "
                           "name that model or use weights trained for this one")
    shape = _choose_input_shape(name, input_shape, recorded.get("input_shape"))
    kwargs = dict(recorded_model.get("kwargs") or {})
    if ":" not in name and "in_channels" not in kwargs and len(shape) == 4:
        kwargs["in_channels"] = shape[1]  # zoo models adapt to the channels of the given input
    ref = ModelRef(name, kwargs)
    module = build_model(ref)
    if weights:
        load_weights(module, state_dict, str(weights))
    generator = torch.Generator().manual_seed(seed)
    return LoadedModel(module.eval(), torch.rand(shape, generator=generator), ref, str(weights) if weights else None)


def _choose_input_shape(name: str, given: str | tuple[int, ...] | None, recorded: list[int] | None,
                        ) -> tuple[int, ...]:
    if given is not None:
        return parse_input_shape(given) if isinstance(given, str) else tuple(given)
    if recorded:
        return tuple(recorded)
    if name in ZOO:
        return ZOO[name].input_shape
    raise InputShapeError(f"model '{name}' is not in the zoo, so its input shape is unknown; pass --input-shape "
                          "N,C,H,W (e.g. 1,3,224,224)")
