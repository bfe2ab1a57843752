"""Count the multiply-accumulates (MACs) of every node of a traced graph, and the ops nothing counted.

``torch.utils.flop_counter.FlopCounterMode`` counts convolutions, matrix products and attention
(as FLOPs = 2 × MACs). We add formulas for everything else a vision model runs, in MAC-equivalents:
elementwise ops and reductions 1 per element, batch norm (inference) 1 per element, layer/group norm
2 per element, softmax 3 per element, pooling 1 per window element, and CPU attention kernels that
stock FlopCounterMode counts as 0. Ops with no formula that are not pure data movement are reported in
``uncounted_ops`` instead of silently counting 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import fx
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_flop_count

__all__ = ["ELEMENTWISE", "MAC_FORMULAS", "REDUCTIONS", "ZERO_COST", "count_macs", "is_counted"]

aten = torch.ops.aten


def _numel(shape: Any) -> int:
    return math.prod(shape) if isinstance(shape, (torch.Size, tuple, list)) else 1


def _per_output_element(macs_per_element: int) -> Callable[..., int]:
    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * macs_per_element * _first_numel(out_shape)
    return formula


def _per_input_element(macs_per_element: int) -> Callable[..., int]:
    def formula(input_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * macs_per_element * _numel(input_shape)
    return formula


def _first_numel(shape: Any) -> int:
    # Ops such as max_pool2d_with_indices and native_layer_norm return a tuple; the first item is the result.
    while isinstance(shape, (tuple, list)) and shape and isinstance(shape[0], (torch.Size, tuple, list)):
        shape = shape[0]
    return _numel(shape)


def _pool_formula(input_shape: Any, kernel_size: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    kernel = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size, kernel_size)
    if len(kernel) == 1:
        kernel = (kernel[0], kernel[0])
    return 2 * _first_numel(out_shape) * math.prod(kernel)


def _sdpa_cpu_formula(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                      **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _packets(*names: str) -> list[Any]:
    return [getattr(aten, name) for name in names if hasattr(aten, name)]


ELEMENTWISE = _packets(
    "add", "sub", "rsub", "mul", "div", "relu", "relu_", "hardtanh", "hardtanh_", "clamp", "clamp_min", "clamp_max",
    "sigmoid", "tanh", "gelu", "silu", "hardswish", "hardsigmoid", "leaky_relu", "elu", "prelu", "exp", "log", "neg",
    "abs", "pow", "sqrt", "rsqrt", "reciprocal", "erf", "where", "maximum", "minimum", "masked_fill", "sin", "cos",
    "add_", "mul_", "div_", "sub_", "addcmul", "lerp", "round", "floor", "ceil", "sign", "eq", "ne", "gt", "lt",
    "ge", "le", "logical_and", "logical_or", "logical_not", "bitwise_and", "square", "log1p", "expm1", "mish",
)
REDUCTIONS = _packets("sum", "mean", "amax", "amin", "max", "min", "argmax", "argmin", "prod", "cumsum", "norm",
                      "linalg_vector_norm", "logsumexp", "any", "all")
ZERO_COST = set(_packets(
    "view", "_unsafe_view", "reshape", "_reshape_alias", "permute", "transpose", "t", "expand", "expand_as",
    "squeeze", "unsqueeze", "flatten", "unflatten", "select", "slice", "unbind", "split", "split_with_sizes",
    "chunk", "narrow", "as_strided", "alias", "detach", "lift_fresh", "view_as", "contiguous", "clone", "copy_",
    "_to_copy", "to", "cat", "stack", "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones",
    "ones_like", "full", "full_like", "fill_", "zero_", "arange", "new_zeros", "new_ones", "new_empty",
    "new_full", "embedding", "index", "index_select", "gather", "pad", "constant_pad_nd", "repeat", "roll",
    "flip", "tile", "movedim", "dropout", "native_dropout", "feature_dropout", "sym_size", "sym_stride",
    "sym_numel", "_assert_tensor_metadata", "scalar_tensor", "item", "_local_scalar_dense", "lift_fresh_copy",
    "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
))

MAC_FORMULAS: dict[Any, Callable[..., int]] = {
    **{op: _per_output_element(1) for op in ELEMENTWISE},
    **{op: _per_input_element(1) for op in REDUCTIONS},
    **{op: _per_input_element(2) for op in _packets("var", "std", "var_mean", "std_mean")},
    **{op: _per_input_element(3) for op in _packets("softmax", "_softmax", "log_softmax", "_log_softmax")},
    **{op: _per_output_element(1) for op in _packets(
        "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training", "batch_norm")},
    **{op: _per_output_element(2) for op in _packets("native_layer_norm", "native_group_norm", "rms_norm",
                                                    "_fused_rms_norm")},
    **{op: _pool_formula for op in _packets("max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "max_pool1d",
                                           "avg_pool1d")},
    **{op: _per_input_element(1) for op in _packets("_adaptive_avg_pool2d", "adaptive_avg_pool2d",
                                                   "adaptive_max_pool2d", "adaptive_avg_pool1d")},
    **{op: _per_output_element(1) for op in _packets("upsample_nearest2d", "_upsample_nearest_exact2d")},
    **{op: _per_output_element(4) for op in _packets("upsample_bilinear2d", "_upsample_bilinear2d_aa")},
    **{op: _sdpa_cpu_formula for op in _packets("_scaled_dot_product_flash_attention_for_cpu",
                                               "_scaled_dot_product_attention_math")},
}


class _OpRecorder(TorchDispatchMode):
    """Records every ATen op that runs, so ops without a MAC formula can be reported."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[Any] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        self.ops.add(func._overloadpacket)
        return func(*args, **(kwargs or {}))


def is_counted(op: Any) -> bool:
    """Whether an ATen op has a MAC formula (ours or torch's) or is known to do no arithmetic."""
    return op in flop_registry or op in MAC_FORMULAS or op in ZERO_COST


class _CountingInterpreter(fx.Interpreter):
    def __init__(self, graph_module: fx.GraphModule, counter: FlopCounterMode, recorder: _OpRecorder) -> None:
        super().__init__(graph_module)
        self.counter, self.recorder = counter, recorder
        self.macs: dict[str, int] = {}
        self.uncounted: dict[str, set[str]] = {}

    def run_node(self, node: fx.Node) -> Any:
        before, self.recorder.ops = self.counter.get_total_flops(), set()
        result = super().run_node(node)
        self.macs[node.name] = (self.counter.get_total_flops() - before) // 2
        missing = {str(op) for op in self.recorder.ops if not is_counted(op)}
        if missing:
            self.uncounted[node.name] = missing
        return result


def count_macs(graph_module: fx.GraphModule, *inputs: torch.Tensor) -> tuple[dict[str, int], dict[str, set[str]]]:
    """MACs of every node, and the ATen ops per node that ran without a MAC formula."""
    counter = FlopCounterMode(display=False, custom_mapping=MAC_FORMULAS)
    recorder = _OpRecorder()
    interpreter = _CountingInterpreter(graph_module, counter, recorder)
    with torch.no_grad(), counter, recorder:
        interpreter.run(*inputs)
    return interpreter.macs, interpreter.uncounted
