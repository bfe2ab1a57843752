"""Count the multiply-accumulates (MACs) of every node of a traced graph, and the ops nothing counted.

``torch.utils.flop_counter``'s formulas count convolutions, matrix products and attention
(as FLOPs = 2 × MACs). We add formulas for everything else a vision model runs, in MAC-equivalents:
elementwise ops and reductions 1 per element, batch norm (inference) 1 per element, layer/group norm
2 per element, softmax 3 per element, pooling 1 per window element, and CPU attention kernels that
stock FlopCounterMode counts as 0 (also ``nn.MultiheadAttention``'s fused inference path). Ops with no
formula that are not pure data movement are reported in
``uncounted_ops`` instead of silently counting 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_flop_count, shape_wrapper

from edgesplit.model.nodynamo import without_dynamo

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


def _native_mha_formula(query_shape: Any, key_shape: Any, value_shape: Any, embed_dim: int, num_heads: int,
                        *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    # nn.MultiheadAttention's inference fast path (batch first): in-projections, QKᵀ and AV, out-projection.
    batch, queries, dim = query_shape
    keys = key_shape[1]
    return 2 * batch * (queries * dim * dim + 2 * keys * dim * dim + 2 * queries * keys * dim + queries * dim * dim)


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
    "hardswish_", "hardsigmoid_", "sigmoid_", "silu_", "gelu_", "tanh_", "leaky_relu_", "elu_",
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
)) | {torch.ops.prim.device}  # prim.device: a fake tensor's device query, when counting on fake tensors

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
    **{op: _native_mha_formula for op in _packets("_native_multi_head_attention")},
}


class _MacCounter(TorchDispatchMode):
    """Adds up the FLOPs of every ATen op that runs (torch's formulas and ours) and records which ops ran.

    ``FlopCounterMode`` without its module tracker (whose hooks cost more than the counting): the same formulas,
    and the same decomposition of ops without one into ops that may have one."""

    def __init__(self) -> None:
        super().__init__()
        self.formulas = {**flop_registry, **{op: shape_wrapper(formula) for op, formula in MAC_FORMULAS.items()}}
        self.flops = 0
        self.ops: set[Any] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in self.formulas and func is not torch.ops.prim.device.default:
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        self.ops.add(packet)
        out = func(*args, **kwargs)
        if (formula := self.formulas.get(packet)) is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def is_counted(op: Any) -> bool:
    """Whether an ATen op has a MAC formula (ours or torch's) or is known to do no arithmetic."""
    return op in flop_registry or op in MAC_FORMULAS or op in ZERO_COST


class _CountingInterpreter(fx.Interpreter):
    def __init__(self, graph_module: fx.GraphModule, counter: _MacCounter) -> None:
        super().__init__(graph_module)
        self.counter = counter
        self.macs: dict[str, int] = {}
        self.uncounted: dict[str, set[str]] = {}

    def run_node(self, node: fx.Node) -> Any:
        before, self.counter.ops = self.counter.flops, set()
        result = super().run_node(node)
        self.macs[node.name] = (self.counter.flops - before) // 2
        missing = {str(op) for op in self.counter.ops if not is_counted(op)}
        if missing:
            self.uncounted[node.name] = missing
        return result


def count_macs(graph_module: fx.GraphModule, *inputs: torch.Tensor) -> tuple[dict[str, int], dict[str, set[str]]]:
    """MACs of every node, and the ATen ops per node that ran without a MAC formula.

    A large graph runs on fake tensors (shapes only, no arithmetic), so counting costs far less than a forward;
    a small one (activations under ``REAL_RUN_ELEMENTS`` values in all) runs for real, which is then cheaper than
    fake tensors' fixed cost, as does a graph that fake tensors cannot run (data-dependent shapes)."""
    return without_dynamo(_count_macs, graph_module, inputs)  # the counting mode and fake kernels need no compiler


def _count_macs(graph_module: fx.GraphModule, inputs: tuple[Any, ...]) -> tuple[dict[str, int], dict[str, set[str]]]:
    if _activation_elements(graph_module) < REAL_RUN_ELEMENTS:
        return _count(graph_module, inputs)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            return _count(graph_module, tuple(mode.from_tensor(t) if isinstance(t, torch.Tensor) else t
                                              for t in inputs))
    except Exception:  # noqa: BLE001 - any op fake tensors do not support: count on the real inputs
        return _count(graph_module, inputs)


REAL_RUN_ELEMENTS = 1 << 21  # activation values below which counting runs the graph for real (a few ms at most)


def _activation_elements(graph_module: fx.GraphModule) -> float:
    """Values in all node outputs, from the shapes the trace propagated (inf where a shape is unknown)."""
    total = 0
    for node in graph_module.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if node.op in ("call_module", "call_function", "call_method"):
            if not hasattr(meta, "shape"):
                return float("inf")
            total += math.prod(meta.shape)
    return total


def _count(graph_module: fx.GraphModule, inputs: tuple[Any, ...]) -> tuple[dict[str, int], dict[str, set[str]]]:
    counter = _MacCounter()
    interpreter = _CountingInterpreter(graph_module, counter)
    with torch.no_grad(), counter:
        interpreter.run(*inputs)
    return interpreter.macs, interpreter.uncounted
