"""Run torch code that never compiles without importing ``torch._dynamo`` (about 1 s, several under load).

torch wraps many of its own Python functions in ``torch._disable_dynamo``: the reference kernels that run every op
on meta and fake tensors, the decompositions, and each ``TorchDispatchMode.__torch_dispatch__``. The wrapper only
marks the function so that ``torch.compile`` does not trace into it, but it imports ``torch._dynamo`` on its first
call to do so. A forward pass on the meta device (``intake``'s activation bound) or under a counting mode
(``profile.macs``) therefore imports the compiler, although nothing is compiled.

:func:`without_dynamo` runs a function with a stand-in for ``torch._dynamo`` whose ``disable`` returns the function
unchanged, so the same kernels run and give the same results, and then takes the stand-in away and forgets every
function it marked (their next call, if any, imports and uses the real ``torch._dynamo``, as before). If the code
asks the stand-in for anything else (it meant to use dynamo), its result is thrown away and it runs again with the
real module. Once ``torch._dynamo`` has been imported (``torch.export``, ONNX export), the function just runs.
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["without_dynamo"]

T = TypeVar("T")
_MODULE = "torch._dynamo"
_CACHE = "__dynamo_disable"  # where torch._compile._disable_dynamo keeps the function it made
_lock = threading.Lock()  # one stand-in at a time


class _StandIn(types.ModuleType):
    """``torch._dynamo`` as the ``_disable_dynamo`` wrapper uses it: ``disable(fn)`` is ``fn``."""

    def __init__(self) -> None:
        super().__init__(_MODULE)
        self.marked: list[Callable[..., Any]] = []
        self.asked: str | None = None

    def disable(self, fn: Callable[..., Any], recursive: bool = True, wrapping: bool = True,  # noqa: ARG002
                reason: str | None = None) -> Callable[..., Any]:  # noqa: ARG002
        self.marked.append(fn)
        return fn

    def __getattr__(self, name: str) -> Any:
        self.__dict__["asked"] = name
        raise AttributeError(f"{_MODULE} is not imported here ({name})")


def without_dynamo(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` without importing ``torch._dynamo`` where only torch's disable wrappers want it; else
    (it was imported already, another thread holds the stand-in, or ``fn`` wanted more of it) exactly as usual."""
    if _MODULE in sys.modules or not _lock.acquire(blocking=False):
        return fn(*args, **kwargs)
    stand_in = _StandIn()
    try:
        sys.modules[_MODULE] = stand_in
        try:
            result = fn(*args, **kwargs)
        except Exception:
            if stand_in.asked is None:
                raise
    finally:
        if sys.modules.get(_MODULE) is stand_in:
            del sys.modules[_MODULE]
        if torch.__dict__.get("_dynamo") is stand_in:
            delattr(torch, "_dynamo")
        for marked in stand_in.marked:
            getattr(marked, "__dict__", {}).pop(_CACHE, None)
        _lock.release()
    if stand_in.asked is not None:
        return fn(*args, **kwargs)
    return result
