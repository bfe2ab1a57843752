"""Hugging Face models as edgesplit models: ``hf:DIR`` names a folder that transformers' ``save_pretrained`` wrote.

The folder must hold ``config.json`` and safetensors weights (``model.safetensors``, or shards with their
``model.safetensors.index.json``); a folder with only ``pytorch_model.bin`` is refused, since that is pickle. It is
read offline only: ``HF_HUB_OFFLINE`` is set, ``local_files_only=True``, ``trust_remote_code=False``,
``use_safetensors=True``, so nothing is downloaded and no code from the folder runs. The model class is the one
``config.json``'s ``architectures`` names, when that is a class of ``transformers`` itself with a suffix from
``CLASS_SUFFIXES``; else ``AutoModelForImageClassification``, else ``AutoModel``.

The model is wrapped in :class:`HFModel`, whose ``forward`` takes one tensor (``pixel_values`` for vision models,
int64 ``input_ids`` for token models) and returns one tensor: the ``logits`` of a ``ModelOutput`` if it has them,
else its ``last_hidden_state``, else its first tensor (``output_key`` says which). Sizes are checked from the
config before any weight is read: the caller (``intake.build_model``) builds the model on the meta device with
:func:`build_on_meta` and applies ``limits``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgesplit.errors import EdgesplitError, InputShapeError, ModelNotFoundError, WeightsError

__all__ = ["CLASS_SUFFIXES", "DEFAULT_IMAGE_SIZE", "DEFAULT_TOKENS", "HF_PREFIX", "HFFolder", "HFModel",
           "build_on_meta", "default_input_shape", "hf_path", "is_hf", "load_hf_model", "read_folder"]

HF_PREFIX = "hf:"
CLASS_SUFFIXES = ("Model", "ForImageClassification", "ForCausalLM", "ForSequenceClassification", "ForMaskedLM",
                  "ForTokenClassification", "ForSemanticSegmentation", "ForDepthEstimation")
DEFAULT_IMAGE_SIZE = 224  # pixels, for a vision config that does not say (ResNet's does not)
DEFAULT_TOKENS = 64  # example sequence length for a token model, at most its number of positions
MAX_CONFIG_BYTES = 1 << 20
_INSTALL = "pip install 'edgesplit[hf]'"
_PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
log = logging.getLogger("edgesplit")


def is_hf(name: str) -> bool:
    """Whether a model name is ``hf:DIR``."""
    return name.startswith(HF_PREFIX)


def hf_path(name: str) -> Path:
    """The folder of ``hf:DIR``."""
    return Path(name[len(HF_PREFIX):]).expanduser()


@dataclass(frozen=True)
class HFFolder:
    """A checked ``save_pretrained`` folder: its config, the class to build and how the model takes its input."""

    name: str  # hf:DIR as given
    path: Path
    config: Any  # a transformers PretrainedConfig
    model_class: type
    input_name: str  # pixel_values, input_ids, ...

    @property
    def input_dtype(self) -> torch.dtype:
        return torch.int64 if self.input_name == "input_ids" else torch.float32

    @property
    def vocab_size(self) -> int | None:
        size = getattr(self.config, "vocab_size", None)
        return size if isinstance(size, int) and size > 0 else None


def _transformers() -> Any:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import transformers
    except ImportError as error:
        raise ModelNotFoundError(f"hf: models need the transformers package ({error}); {_INSTALL}") from error
    return transformers


@contextmanager
def _quiet(transformers: Any):
    verbosity = transformers.utils.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def read_folder(name: str) -> HFFolder:
    """Check ``hf:DIR`` (folder, config.json, safetensors weights) and choose its class; nothing is built yet."""
    path = hf_path(name)
    if not path.is_dir():
        raise ModelNotFoundError(f"{name}: no folder {path}; give hf:DIR with DIR a folder that save_pretrained wrote "
                                 "(config.json and model.safetensors)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"{name}: {config_file} not found; save the model with save_pretrained(DIR)")
    if config_file.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelNotFoundError(f"{name}: {config_file} is larger than {MAX_CONFIG_BYTES:,} bytes, which no model "
                                 "config is; save the model again")
    if not any(path.glob("*.safetensors")):
        pickled = [f for f in _PICKLE_FILES if (path / f).is_file()]
        found = f"it holds only {', '.join(pickled)}, which edgesplit does not read (pickle runs code)" if pickled \
            else "it holds no weights"
        raise WeightsError(f"{name}: no *.safetensors in {path}; {found}: save the model with "
                           "save_pretrained(DIR, safe_serialization=True)")
    try:
        raw = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelNotFoundError(f"{name}: {config_file} is not JSON ({error}); save the model again") from error
    if not isinstance(raw, dict):
        raise ModelNotFoundError(f"{name}: {config_file} is not a JSON object; save the model again")
    transformers = _transformers()
    try:
        with _quiet(transformers):
            config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as error:  # noqa: BLE001 - transformers raises many types for configs it cannot read
        raise ModelNotFoundError(f"{name}: transformers cannot read {config_file} offline without remote code "
                                 f"({_first_line(error)}); use a model whose class is in transformers "
                                 f"{transformers.__version__}") from error
    model_class = _model_class(transformers, config, raw.get("architectures"), name)
    input_name = getattr(model_class, "main_input_name", "pixel_values")
    return HFFolder(name, path, config, model_class, input_name if isinstance(input_name, str) else "pixel_values")


def _allowed_classes(transformers: Any) -> set[str]:
    """Names of transformers' own model classes edgesplit builds: public names with a suffix in CLASS_SUFFIXES."""
    return {name for name in dir(transformers)
            if name.endswith(CLASS_SUFFIXES) and name[:1].isupper()
            and not name.startswith(("TF", "Flax", "Auto", "PreTrained"))}


def _model_class(transformers: Any, config: Any, architectures: Any, name: str) -> type:
    allowed = _allowed_classes(transformers)
    if isinstance(architectures, list):
        for architecture in architectures:
            if isinstance(architecture, str) and architecture in allowed:
                found = getattr(transformers, architecture, None)
                if isinstance(found, type) and issubclass(found, transformers.PreTrainedModel) \
                        and found is not transformers.PreTrainedModel:
                    return found
    for auto in (transformers.AutoModelForImageClassification, transformers.AutoModel):
        mapping = getattr(auto, "_model_mapping", None)
        try:
            return mapping[type(config)]
        except (KeyError, TypeError, ValueError):
            continue
    raise ModelNotFoundError(f"{name}: transformers {transformers.__version__} has no model class for "
                             f"{type(config).__name__} (architectures {str(architectures)[:80]}); edgesplit builds "
                             "transformers' own classes only")


def default_input_shape(folder: HFFolder) -> tuple[int, ...]:
    """The example input shape the config implies: 1×C×S×S for images, 1×tokens for token ids."""
    config = folder.config
    if folder.input_name == "input_ids":
        positions = next((getattr(config, key) for key in ("max_position_embeddings", "n_positions", "n_ctx")
                          if isinstance(getattr(config, key, None), int)), DEFAULT_TOKENS)
        return (1, max(1, min(DEFAULT_TOKENS, positions)))
    if folder.input_name != "pixel_values":
        raise InputShapeError(f"{folder.name} takes '{folder.input_name}', whose shape its config does not say; "
                              "pass --input-shape")
    channels = getattr(config, "num_channels", 3)
    size = getattr(config, "image_size", DEFAULT_IMAGE_SIZE)
    height, width = (size, size) if isinstance(size, int) else tuple(size)[:2] if isinstance(size, (list, tuple)) \
        else (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
    return (1, int(channels), int(height), int(width))


class HFModel(torch.nn.Module):
    """A transformers model as a one-tensor-in, one-tensor-out module: ``forward(x)`` is ``model(**{input_name: x})``
    reduced to its ``output_key`` (``logits``, ``last_hidden_state``, a tuple index, or None for a bare tensor)."""

    edgesplit_name_prefix = "model"  # graph.trace names export nodes by module path without this attribute

    def __init__(self, model: torch.nn.Module, input_name: str, input_dtype: torch.dtype,
                 vocab_size: int | None, call_kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.input_name = input_name
        self.input_dtype = input_dtype
        self.vocab_size = vocab_size
        self.call_kwargs = dict(call_kwargs)
        self.output_key: str | int | None = None

    def _call(self, x: torch.Tensor) -> Any:
        return self.model(**{self.input_name: x}, **self.call_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._call(x)
        return out if self.output_key is None else out[self.output_key]

    def choose_output(self, example: torch.Tensor) -> str:
        """Run ``example`` once, fix ``output_key`` and say what the model's output is reduced to."""
        with torch.no_grad():
            out = self._call(example)
        self.output_key = _output_key(out)
        chosen = out if self.output_key is None else out[self.output_key]
        if not isinstance(chosen, torch.Tensor):
            raise EdgesplitError(f"{type(self.model).__name__} returns {type(out).__name__} with no tensor in it; "
                                 "edgesplit splits models that return a tensor")
        shape = "×".join(map(str, chosen.shape))
        if self.output_key is None:
            return f"{type(self.model).__name__} returns a tensor ({shape})"
        return (f"{type(self.model).__name__} returns {type(out).__name__}; edgesplit uses its {self.output_key!r} "
                f"({shape})")


def _output_key(out: Any) -> str | int | None:
    if isinstance(out, torch.Tensor):
        return None
    if isinstance(out, Mapping):  # ModelOutput is an OrderedDict of its set fields
        for key in ("logits", "last_hidden_state"):
            if isinstance(out.get(key), torch.Tensor):
                return key
        return next((key for key, value in out.items() if isinstance(value, torch.Tensor)), "logits")
    if isinstance(out, (tuple, list)):
        return next((i for i, value in enumerate(out) if isinstance(value, torch.Tensor)), 0)
    return None


def _call_kwargs(config: Any) -> dict[str, Any]:
    # No key/value cache: it is not a tensor, and one forward pass needs none.
    return {"use_cache": False} if hasattr(config, "use_cache") else {}


def _wrap(folder: HFFolder, model: torch.nn.Module) -> HFModel:
    return HFModel(model, folder.input_name, folder.input_dtype, folder.vocab_size, _call_kwargs(folder.config))


def build_on_meta(folder: HFFolder) -> HFModel | None:
    """The wrapped model with no memory (meta device), for the size checks; None if it cannot be built so."""
    transformers = _transformers()
    try:
        with _quiet(transformers), torch.device("meta"):
            return _wrap(folder, folder.model_class(folder.config))
    except Exception:  # noqa: BLE001 - the real load reports what is wrong
        return None


def load_hf_model(folder: HFFolder, input_shape: tuple[int, ...]) -> HFModel:
    """Load the folder's weights into its class (offline, safetensors only), wrapped, its output chosen on one
    zero input of ``input_shape``."""
    transformers = _transformers()
    try:
        with _quiet(transformers):
            model = folder.model_class.from_pretrained(  # a class of transformers itself: no remote code
                str(folder.path), config=folder.config, local_files_only=True, use_safetensors=True,
                **{_dtype_argument(transformers): torch.float32})
    except Exception as error:  # noqa: BLE001 - transformers raises many types for folders it cannot load
        raise WeightsError(f"{folder.name}: cannot load {folder.model_class.__name__} from {folder.path} "
                           f"({_first_line(error)}); save the model again with save_pretrained") from error
    wrapped = _wrap(folder, model).eval()
    if folder.input_name == "input_ids" and len(input_shape) != 2:
        raise InputShapeError(f"{folder.name} takes token ids (batch×tokens, e.g. --input-shape 1,16), not an input "
                              f"of shape {'×'.join(map(str, input_shape))}: image data, attacks on images and "
                              "`edgesplit infer`'s images do not apply to it")
    try:
        said = wrapped.choose_output(torch.zeros(input_shape, dtype=folder.input_dtype))
    except EdgesplitError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure means the input does not fit the model
        raise InputShapeError(f"{folder.name}: {folder.model_class.__name__} failed on a {folder.input_name} input of "
                              f"shape {'×'.join(map(str, input_shape))} ({_first_line(error)}); pass the shape it "
                              "expects (--input-shape)") from error
    log.warning("%s: %s", folder.name, said)
    return wrapped


def _dtype_argument(transformers: Any) -> str:
    """``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    try:
        major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    except ValueError:
        return "dtype"
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]
