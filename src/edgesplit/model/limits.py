"""Bounds on what a file may make edgesplit allocate: input shapes, model sizes, forward-pass memory.

A plan, split record or weights file says which input shape and which factory arguments to rebuild a model
with. Every such value is checked against these bounds *before* anything is allocated, so a hostile or broken
file ends in a one-line error instead of gigabytes of memory. Each bound has a default that fits every model
edgesplit targets and can be raised for one run with an environment variable:

- ``EDGESPLIT_MAX_INPUT_ELEMENTS`` (default 2**24 = 16,777,216): elements of one model input (64 MiB as float32,
  e.g. 1×3×2048×2048), for shapes of rank 1 to 8 with every size at least 1;
- ``EDGESPLIT_MAX_MODEL_BYTES`` (default 4 GiB): a model's parameters and buffers, counted on the meta device;
- ``EDGESPLIT_MAX_ACTIVATION_BYTES`` (default 2 GiB): every tensor one forward pass at the input shape
  produces, counted on the meta device (views and in-place results not counted twice).

This module imports no torch, so the plan schema can check shapes on a device without it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from edgesplit.errors import InputShapeError

__all__ = ["MAX_RANK", "check_input_shape", "limit", "max_activation_bytes", "max_input_elements",
           "max_model_bytes"]

MAX_RANK = 8
_DEFAULTS = {"EDGESPLIT_MAX_INPUT_ELEMENTS": 2**24, "EDGESPLIT_MAX_MODEL_BYTES": 4 * 2**30,
             "EDGESPLIT_MAX_ACTIVATION_BYTES": 2 * 2**30}


def limit(variable: str) -> int:
    """The bound named by environment ``variable``: its value if set (a positive integer), else the default."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return _DEFAULTS[variable]
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise InputShapeError(f"${variable}={text!r} is not a positive integer; unset it or give e.g. "
                              f"{_DEFAULTS[variable]}")
    return value


def max_input_elements() -> int:
    return limit("EDGESPLIT_MAX_INPUT_ELEMENTS")


def max_model_bytes() -> int:
    return limit("EDGESPLIT_MAX_MODEL_BYTES")


def max_activation_bytes() -> int:
    return limit("EDGESPLIT_MAX_ACTIVATION_BYTES")


def check_input_shape(shape: Sequence[object], source: str = "input shape") -> tuple[int, ...]:
    """``shape`` as a tuple of ints, refused (InputShapeError) unless rank 1..8, every size ≥ 1, and at most
    ``max_input_elements()`` elements in all."""
    shown = "[" + ", ".join(str(s) for s in list(shape)[:MAX_RANK + 1]) + (", …]" if len(shape) > MAX_RANK + 1
                                                                             else "]")
    if not 1 <= len(shape) <= MAX_RANK:
        raise InputShapeError(f"{source} {shown} has rank {len(shape)}; give 1 to {MAX_RANK} sizes, e.g. 1,3,224,224")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise InputShapeError(f"{source} {shown} is not a list of positive integers; give it like 1,3,224,224")
    elements, bound = math.prod(shape), max_input_elements()
    if elements > bound:
        raise InputShapeError(f"{source} {shown} has {elements:,} elements, more than the {bound:,} allowed per "
                              "input; use a smaller input, or raise $EDGESPLIT_MAX_INPUT_ELEMENTS if you mean it")
    return tuple(shape)  # type: ignore[arg-type]
