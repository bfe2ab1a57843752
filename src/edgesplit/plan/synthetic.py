"""Random residual-network workloads of any size, for planner benchmarks and property tests.

A synthetic workload looks like the graphs the planner meets in practice: a chain of blocks, each a few
convolution-like nodes whose output is added to the block's input (so one value fans out to two readers),
with tensors that shrink and channels that grow as the network deepens, and MACs in proportion.
"""

from __future__ import annotations

import numpy as np

from edgesplit.model.graph import TensorSpec
from edgesplit.plan.workload import OUTPUT, NodeWork, Workload, prefix_cuts

__all__ = ["synthetic_workload"]


def synthetic_workload(num_nodes: int, *, block_size: int = 3, seed: int = 0) -> Workload:
    """A residual chain of ``num_nodes`` compute nodes (the last is a small classifier head)."""
    if num_nodes < 2 or block_size < 1:
        raise ValueError("a synthetic workload needs at least 2 nodes and blocks of at least 1 node")
    rng = np.random.default_rng(seed)
    stages = max(1, min(4, num_nodes // 50))
    names = [f"n{i}" for i in range(num_nodes)]
    tensors: dict[str, TensorSpec | None] = {
        "x": TensorSpec(name="x", shape=(1, 3, 224, 224), dtype="float32", nbytes=3 * 224 * 224 * 4)}
    consumers: dict[str, list[str]] = {"x": [names[0]]}
    nodes: list[NodeWork] = []
    previous, block_input = "x", "x"
    for i, name in enumerate(names):
        stage = min(stages - 1, i * stages // num_nodes)
        channels, side = 64 * 2**stage, 56 // 2**stage
        shape = (1, channels, side, side) if i < num_nodes - 1 else (1, 1000)
        nbytes = int(np.prod(shape)) * 4
        tensors[name] = TensorSpec(name=name, shape=shape, dtype="float32", nbytes=nbytes)
        consumers[name] = []
        inputs = [previous]
        closes_block = i % block_size == block_size - 1 and block_input != previous and i < num_nodes - 1
        if closes_block:
            inputs.append(block_input)  # the residual add reads the block's input too
        for value in inputs:
            consumers[value].append(name)
        weights = channels * channels * 9 * 4 if not closes_block else 0
        macs = int(weights // 4 * side * side * rng.uniform(0.5, 1.5)) if weights else int(np.prod(shape))
        nodes.append(NodeWork(name=name, macs=macs, input_bytes=sum(tensors[v].nbytes for v in inputs),
                              output_bytes=nbytes, params={f"{name}.weight": weights} if weights else {}))
        previous = name
        if closes_block:
            block_input = name
        elif i % block_size == block_size - 1:
            block_input = name
    consumers[names[-1]].append(OUTPUT)
    cuts = prefix_cuts(names, ["x"], consumers, tensors)
    return Workload(name=f"synthetic-{num_nodes}", fingerprint=f"synthetic-{num_nodes}-{seed}", nodes=nodes,
                    inputs=["x"], consumers=consumers, tensors=tensors, prefix_cuts=cuts)
