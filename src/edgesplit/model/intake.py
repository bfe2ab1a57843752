"""Turn what a user names on the command line into a model and an example input.

``MODEL`` is a zoo name (``small_cnn``), an import path ``package.module:factory`` whose factory returns
an ``nn.Module``, or ``hf:DIR``, a folder that Hugging Face transformers' ``save_pretrained`` wrote (``model.hf``).
Weights come from ``.safetensors`` files or from state dicts that ``torch.load`` reads with ``weights_only=True``
(never pickle). Weights that ``edgesplit train`` writes carry the model's name,
constructor arguments and input shape in the safetensors metadata, so they rebuild the right model alone.

No file chooses code to run. A plan, split record or weights file may name a zoo model; a ``module:factory``
or an ``hf:DIR`` is built only when the person running the command named that same one (``--model`` on the command
line, ``model=`` in Python, or their own run config): ``build_model(ref, trusted_factory=...)`` refuses any other,
before importing anything. The factory's arguments are checked too: JSON scalars only (int, float, str, bool, None), for
parameters the factory's signature names (a ``**kwargs`` catch-all accepts nothing by itself), of the type its
default value has. The model is built on the meta device first and refused above ``limits.max_model_bytes()`` of
parameters and buffers, or above ``limits.max_activation_bytes()`` for one forward pass at the given input shape.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from edgesplit.errors import EdgesplitError, InputShapeError, ModelNotFoundError, WeightsError
from edgesplit.model import hf
from edgesplit.model.limits import check_input_shape, max_activation_bytes, max_model_bytes
from edgesplit.model.nodynamo import without_dynamo
from edgesplit.model.zoo import ZOO, get_entry

__all__ = ["METADATA_KEY", "LoadedModel", "ModelRef", "ModelRefError", "ModelSizeError", "build_model",
           "check_model_args", "check_trusted", "data_arguments", "example_input", "is_factory", "load_model",
           "load_weights", "parse_input_shape", "read_weights", "resolve_factory", "save_weights"]

METADATA_KEY = "edgesplit"
MAX_MODEL_ARGS = 32  # keyword arguments a model reference may carry
MAX_ARG_CHARS = 256  # characters in one string argument
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class ModelRefError(EdgesplitError):
    """A model reference from a file that names code the user did not choose, or arguments its factory does not
    take."""


class ModelSizeError(EdgesplitError):
    """A model whose parameters, or whose forward pass at the given input shape, would exceed the memory bounds."""


@dataclass(frozen=True)
class ModelRef:
    """How to rebuild a model: a zoo name or import path, and the keyword arguments of its factory."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": self.kwargs}


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``1,3,32,32`` (or ``1x3x32x32``) into a shape of positive ints, within ``limits.check_input_shape``."""
    parts = re.split(r"[,x×]", text.strip())
    shape = tuple(int(p) for p in parts) if all(p.strip().isdigit() and len(p.strip()) <= 12 for p in parts) else ()
    if not shape or any(size <= 0 for size in shape):
        raise InputShapeError(f"input shape '{text}' is not a list of positive integers; write it like 1,3,32,32")
    return check_input_shape(shape, f"input shape '{text}'")


def is_factory(name: str) -> bool:
    """Whether ``name`` is code only the user may choose: an import path (``package.module:factory``) or a Hugging
    Face folder (``hf:DIR``), rather than a zoo name."""
    return ":" in name


def check_trusted(name: str, trusted_factory: str | None, source: str = "the file") -> None:
    """Refuse (ModelRefError) a model that ``source`` names unless it is a zoo name and no other model was given,
    or exactly the factory the user gave; nothing is imported before this check passes."""
    if trusted_factory is not None and name == trusted_factory:
        return
    if hf.is_hf(name):
        if trusted_factory is None:
            raise ModelRefError(f"{source} names the Hugging Face model '{name[:200]}', which only you may choose to "
                                f"load; if you trust it, pass --model {name[:200]} (model='{name[:200]}' in Python)")
        raise ModelRefError(f"{source} names the Hugging Face model '{name[:200]}', not the '{trusted_factory}' you "
                            f"gave; pass --model {name[:200]} if you trust it, or use a file made for "
                            f"{trusted_factory}")
    if is_factory(name):
        if trusted_factory is None:
            raise ModelRefError(f"{source} names the model factory '{name}', code that only you may choose to run; "
                                f"if you trust it, pass --model {name} (model='{name}' in Python)")
        raise ModelRefError(f"{source} names the model factory '{name}', not the '{trusted_factory}' you gave; pass "
                            f"--model {name} if you trust it, or use a file made for {trusted_factory}")
    if trusted_factory is not None:
        raise ModelRefError(f"{source} names the zoo model '{name}', not the '{trusted_factory}' you gave; drop "
                            f"--model, or use a file made for {trusted_factory}")


def resolve_factory(name: str) -> Any:
    """The zoo factory called ``name``, the callable at import path ``package.module:factory``, or for ``hf:DIR`` a
    function of no arguments loading that folder (checked here, built by ``build_model``)."""
    if hf.is_hf(name):
        folder = hf.read_folder(name)
        return lambda: hf.load_hf_model(folder, hf.default_input_shape(folder))
    if ":" not in name:
        return get_entry(name).factory
    if not _IMPORT_PATH.fullmatch(name):
        raise ModelNotFoundError(f"model '{name[:200]}' is neither a zoo name nor an import path; give MODEL as a "
                                 "zoo name (see `edgesplit zoo`) or package.module:factory")
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelNotFoundError(f"cannot import '{module_name}' for model '{name}' ({error}); "
                                 "check the spelling and that the module is on PYTHONPATH") from error
    factory: Any = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ModelNotFoundError(f"module '{module_name}' has no attribute '{attribute}'; "
                                     "give MODEL as package.module:factory naming a callable that returns a model")
    if not callable(factory):
        raise ModelNotFoundError(f"'{name}' is not callable; it must be a factory (a class or function) returning a model")
    return factory


def data_arguments(name: str, in_channels: int, num_classes: int) -> dict[str, int]:
    """The data's channels and classes for the factory ``name``, as far as its signature names those parameters
    (every zoo factory does; a ``**kwargs`` catch-all is given neither, as ``check_model_args`` would refuse them)."""
    wanted = {"in_channels": in_channels, "num_classes": num_classes}
    try:
        parameters = inspect.signature(resolve_factory(name)).parameters
    except (TypeError, ValueError):
        return {}
    named = {key for key, p in parameters.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return {key: value for key, value in wanted.items() if key in named}


def check_model_args(factory: Any, kwargs: Any, name: str, source: str = "the file") -> dict[str, Any]:
    """``kwargs`` if every one is a JSON scalar for a parameter ``factory``'s signature names, of its default's
    type; else ModelRefError. A ``**kwargs`` catch-all accepts no name by itself: only named parameters count."""
    if not isinstance(kwargs, dict):
        raise ModelRefError(f"{source} gives the arguments of '{name}' as a {type(kwargs).__name__}, not a mapping "
                            "of names to numbers or strings; make the file again")
    if len(kwargs) > MAX_MODEL_ARGS:
        raise ModelRefError(f"{source} gives {len(kwargs)} arguments for '{name}', more than {MAX_MODEL_ARGS}; "
                            "make the file again")
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    named = {key: p for key, p in parameters.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    for key, value in kwargs.items():
        where = f"{source} gives '{name}' the argument {str(key)[:60]!r}"
        if key not in named:
            takes = ", ".join(named) or "none"
            raise ModelRefError(f"{where}, which it does not take (it takes: {takes}); make the file again for this "
                                "model")
        if not (value is None or isinstance(value, (bool, int, str)) or
                (isinstance(value, float) and math.isfinite(value))):
            raise ModelRefError(f"{where} as a {type(value).__name__}; only numbers, strings, true/false and null "
                                "are allowed; make the file again")
        if isinstance(value, str) and len(value) > MAX_ARG_CHARS:
            raise ModelRefError(f"{where} as a string of {len(value):,} characters (at most {MAX_ARG_CHARS}); make "
                                "the file again")
        default = named[key].default
        if isinstance(default, (bool, int, float, str)) and not _same_kind(value, default):
            kind = next(k for t, k in ((bool, "true or false"), (int, "an int"), (float, "a number"), (str, "a string"))
                        if isinstance(default, t))
            raise ModelRefError(f"{where} = {str(value)[:40]!r}, but it takes {kind} (default {default!r}); make the "
                                "file again")
    return dict(kwargs)


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, str)


def build_model(ref: ModelRef, *, trusted_factory: str | None = None,
                input_shapes: list[tuple[int, ...]] | None = None, source: str = "the file") -> torch.nn.Module:
    """Call the factory that ``ref`` names with its keyword arguments, after checking everything about it.

    ``ref`` comes from ``source`` (a plan, a split record, ...). A zoo name is built as it is; a ``module:factory``
    only when it is ``trusted_factory``, the one the user gave (``check_trusted``). Arguments are checked by
    ``check_model_args``. The model is built on the meta device first: above ``max_model_bytes()`` of parameters
    and buffers, or ``max_activation_bytes()`` for one forward pass at ``input_shapes``, it is refused with
    ModelSizeError before any weight is allocated.
    """
    check_trusted(ref.name, trusted_factory, source)
    if hf.is_hf(ref.name):
        return _build_hf(ref, input_shapes, source)
    factory = resolve_factory(ref.name)
    kwargs = check_model_args(factory, ref.kwargs, ref.name, source)
    shapes = [check_input_shape(list(shape), f"{source}'s input shape") for shape in input_shapes or []]
    _check_size(factory, kwargs, ref.name, shapes)
    try:
        model = factory(**kwargs)
    except TypeError as error:
        raise ModelNotFoundError(f"cannot build '{ref.name}' with arguments {kwargs}: {error}") from error
    if not isinstance(model, torch.nn.Module):
        raise ModelNotFoundError(f"'{ref.name}' returned a {type(model).__name__}, not a torch.nn.Module; "
                                 "the factory must return the model")
    return model


def _build_hf(ref: ModelRef, input_shapes: list[tuple[int, ...]] | None, source: str) -> torch.nn.Module:
    """An ``hf:DIR`` model: no arguments, its sizes checked on the meta device from its config, then loaded."""
    if ref.kwargs:
        raise ModelRefError(f"{source} gives the Hugging Face model '{ref.name[:200]}' arguments "
                            f"({', '.join(map(str, list(ref.kwargs)[:3]))}); it takes none: make the file again")
    folder = hf.read_folder(ref.name)
    shapes = [check_input_shape(list(shape), f"{source}'s input shape") for shape in input_shapes or []]
    meta = hf.build_on_meta(folder)
    if meta is not None:
        _check_module_size(meta, ref.name, {}, shapes)
    return hf.load_hf_model(folder, shapes[0] if shapes else hf.default_input_shape(folder))


def _check_size(factory: Any, kwargs: dict[str, Any], name: str, shapes: list[tuple[int, ...]]) -> None:
    """Build on the meta device (no memory) and refuse a model or a forward pass above the bounds.

    A factory that cannot be built on meta (it reads a file, say) is not checked here: only the user's own factory
    can be such code, since zoo models all build on meta. A model whose forward pass cannot run on meta (it
    branches on values) has only its parameters checked."""
    try:
        model = without_dynamo(_build_on_meta, factory, kwargs)  # meta initializers are Python references too
    except Exception:  # noqa: BLE001 - the real build below reports what is wrong with the factory
        return
    if not isinstance(model, torch.nn.Module):
        return
    _check_module_size(model, name, kwargs, shapes)


def _build_on_meta(factory: Any, kwargs: dict[str, Any]) -> Any:
    with torch.device("meta"):
        return factory(**kwargs)


def _check_module_size(model: torch.nn.Module, name: str, kwargs: dict[str, Any],
                       shapes: list[tuple[int, ...]]) -> None:
    """Refuse a model built on the meta device whose weights, or forward pass at ``shapes``, exceed the bounds."""
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    bound = max_model_bytes()
    if size > bound:
        raise ModelSizeError(f"'{name}' with arguments {kwargs} has {size / 2**30:.3g} GiB of parameters and "
                             f"buffers, more than the {bound / 2**30:.3g} GiB allowed; check the arguments, or raise "
                             "$EDGESPLIT_MAX_MODEL_BYTES if you mean it")
    if not shapes:
        return
    produced = _forward_bytes(model, shapes)
    bound = max_activation_bytes()
    if produced is not None and produced > bound:
        shown = " and ".join("×".join(map(str, s)) for s in shapes)
        raise ModelSizeError(f"one forward pass of '{name}' at input {shown} produces {produced / 2**30:.3g} GiB of "
                             f"tensors, more than the {bound / 2**30:.3g} GiB allowed; use a smaller input shape, or "
                             "raise $EDGESPLIT_MAX_ACTIVATION_BYTES if you mean it")


def _forward_bytes(model: torch.nn.Module, shapes: list[tuple[int, ...]]) -> int | None:
    """Bytes of every tensor a forward pass on meta inputs produces (views and in-place results once); None if the
    model cannot run on meta. Meta kernels are torch's Python references, whose wrappers would import
    ``torch._dynamo`` (a second or more) for nothing: ``nodynamo.without_dynamo`` runs them without it."""
    return without_dynamo(_meta_forward_bytes, model, shapes)


def _meta_forward_bytes(model: torch.nn.Module, shapes: list[tuple[int, ...]]) -> int | None:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            out = func(*args, **(kwargs or {}))
            inputs = {id(a) for a in args if isinstance(a, torch.Tensor)}
            for tensor in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(tensor, torch.Tensor) and id(tensor) not in inputs and not tensor._is_view():
                    Count.total += tensor.numel() * tensor.element_size()
            return out

    try:
        dtype = getattr(model, "input_dtype", torch.float32)
        inputs = [torch.zeros(shape, device="meta", dtype=dtype) for shape in shapes]
        with torch.no_grad(), Count():
            model.eval()(*inputs)
    except Exception:  # noqa: BLE001 - data-dependent models cannot run on meta tensors
        return None
    return Count.total


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
                               "re-create or re-download it") from error
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch.load raises many types for bad files
        raise WeightsError(f"weights file {path} cannot be read as a state dict with weights_only=True "
                           f"({str(error).splitlines()[0][:200]}); save it with torch.save(model.state_dict()) "
                           "or as .safetensors") from error
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
    """Build the model named on the command line, load its weights, and make a seeded example input.

    ``name`` is the user's choice, so it may be a factory; the arguments and input shape a weights file records
    are checked as any file's are (a forward pass at a recorded shape within ``max_activation_bytes()``; a shape
    the user gives is theirs to choose, within ``max_input_elements()``)."""
    folder = hf.read_folder(name) if hf.is_hf(name) else None
    if folder is None:
        resolve_factory(name)  # an unknown name is the first thing to report
    state_dict, metadata = read_weights(weights) if weights else ({}, {})
    try:
        recorded = json.loads(metadata.get(METADATA_KEY, "{}")) if metadata else {}
    except ValueError:
        recorded = None
    recorded_model = recorded.get("model") or {} if isinstance(recorded, dict) else None
    if not isinstance(recorded_model, dict) or not isinstance(recorded_model.get("kwargs") or {}, dict):
        raise WeightsError(f"weights {weights} carry edgesplit metadata that is not what `edgesplit train` writes; "
                           "save the weights again (or without metadata)")
    if recorded_model and recorded_model.get("name") != name:
        raise WeightsError(f"weights {weights} were trained for model '{recorded_model.get('name')}', not '{name}'; "
                           "name that model or use weights trained for this one")
    shape = _choose_input_shape(name, input_shape, recorded.get("input_shape"),
                                None if folder is None else hf.default_input_shape(folder))
    kwargs = dict(recorded_model.get("kwargs") or {})
    if ":" not in name and "in_channels" not in kwargs and len(shape) == 4:
        kwargs["in_channels"] = shape[1]  # zoo models adapt to the channels of the given input
    ref = ModelRef(name, kwargs)
    from_file = input_shape is None and bool(recorded.get("input_shape"))  # else the user's or the zoo's shape
    module = build_model(ref, trusted_factory=name, input_shapes=[shape] if from_file or folder else None,
                         source=f"weights {weights}" if recorded_model else "the command line")
    if weights:
        load_weights(module, state_dict, str(weights))
    module = module.eval()
    return LoadedModel(module, example_input(module, shape, seed), ref, str(weights) if weights else None)


def example_input(module: torch.nn.Module, shape: tuple[int, ...] | list[int], seed: int | None = 0) -> torch.Tensor:
    """An input for ``module`` of ``shape``: uniform in [0, 1) for a float model, token ids in [0, vocab) for a
    model that takes int64 ids (``hf.HFModel``); seeded, or all zeros when ``seed`` is None."""
    dtype = getattr(module, "input_dtype", torch.float32)
    shape = tuple(shape)
    if seed is None:
        return torch.zeros(shape, dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return torch.rand(shape, generator=generator, dtype=dtype)
    return torch.randint(0, getattr(module, "vocab_size", None) or 2, shape, generator=generator, dtype=dtype)


def _choose_input_shape(name: str, given: str | tuple[int, ...] | None, recorded: list[int] | None,
                        configured: tuple[int, ...] | None = None) -> tuple[int, ...]:
    if given is not None:
        return parse_input_shape(given) if isinstance(given, str) else check_input_shape(list(given))
    if recorded:
        if not isinstance(recorded, list):
            raise InputShapeError(f"the weights' recorded input shape {str(recorded)[:60]} is not a list of sizes; "
                                  "pass --input-shape N,C,H,W")
        return check_input_shape(recorded, "the weights' recorded input shape")
    if configured is not None:
        return check_input_shape(list(configured), f"{name[:200]}'s input shape from its config")
    if name in ZOO:
        return ZOO[name].input_shape
    raise InputShapeError(f"model '{name}' is not in the zoo, so its input shape is unknown; pass --input-shape "
                          "N,C,H,W (e.g. 1,3,224,224)")
