"""A split is a partition: random monotone K-stage assignments of every zoo model, run stage by stage, are exact."""

import bisect
import itertools
import random
import zlib

import pytest
import torch
from torch import fx

import modelfactories as mf
from edgesplit.errors import CutError
from edgesplit.model import zoo
from edgesplit.model.graph import EXACT_TOLERANCE, Partition, TracedModel, max_abs_diff, trace

RESNET8_NON_PREFIX_HEAD = [
    "stem_0", "stem_1", "stem_2",
    "layers_0_conv1_0", "layers_0_conv1_1", "layers_0_conv1_2", "layers_0_conv2_0", "layers_0_conv2_1",
    "layers_0_shortcut", "add", "layers_0_relu",
    "layers_1_shortcut_0", "layers_1_shortcut_1",
]


def _small_input(name: str) -> torch.Tensor:
    # Exactness does not depend on resolution, so ImageNet-sized models (resnet18) run at 32×32 here.
    shape = zoo.ZOO[name].input_shape
    return torch.randn(*shape[:2], *(min(size, 32) for size in shape[2:]))


def _values(traced: TracedModel, x: torch.Tensor) -> dict[str, object]:
    """Every graph value of one run of the whole model, by node name."""
    values: dict[str, object] = {}

    class Capture(fx.Interpreter):
        def run_node(self, node: fx.Node):
            values[node.name] = result = super().run_node(node)
            return result

    with torch.no_grad():
        Capture(traced.graph_module).run(x)
    return values


def random_assignment(traced: TracedModel, stages: int, rng: random.Random) -> dict[str, int]:
    """A random monotone assignment: K − 1 random positions (repeats make empty stages), then nodes nudged
    a stage earlier or later at random, never before a stage their inputs come from."""
    nodes = traced.compute_nodes
    positions = sorted(rng.choices(range(len(nodes) + 1), k=stages - 1))
    stage_of: dict[str, int] = {}
    for i, node in enumerate(nodes):
        stage = bisect.bisect_right(positions, i) + (rng.choice((-1, 1)) if rng.random() < 0.3 else 0)
        lowest = max((stage_of[p.name] for p in node.all_input_nodes if p.name in stage_of), default=0)
        stage_of[node.name] = min(stages - 1, max(lowest, stage))
    return stage_of


def random_partitions(traced: TracedModel, stages: int, count: int, rng: random.Random) -> list[Partition]:
    """``count`` random partitions; assignments that would send a non-tensor are drawn again."""
    found, tries = [], 0
    while len(found) < count:
        tries += 1
        assert tries <= 50 * count, "too few random assignments send only tensors"
        try:
            found.append(traced.partition(random_assignment(traced, stages, rng), stages))
        except CutError as error:
            assert "not a tensor" in str(error)
    return found


def check_partition(partition: Partition, traced: TracedModel, x: torch.Tensor, values: dict, expected) -> None:
    stages = partition.stages
    assert [s.index for s in stages] == list(range(len(stages)))
    assert sorted(n for s in stages for n in s.nodes) == sorted(n.name for n in traced.compute_nodes)
    assert all(partition.assignment[n] == s.index for s in stages for n in s.nodes)
    assert [t.name for t in stages[0].inputs] == [n.name for n in traced.graph_module.graph.nodes
                                                  if n.op == "placeholder"]
    assert stages[-1].outputs == ()
    for sender, receiver in itertools.pairwise(stages):
        assert receiver.inputs == sender.outputs
    with torch.no_grad():
        returned = partition.run(x)
    assert len(returned) == len(stages) and max_abs_diff(returned[-1], expected) <= EXACT_TOLERANCE
    for stage, sent in zip(stages, returned[:-1]):
        assert isinstance(sent, tuple) and len(sent) == len(stage.outputs)
        for spec, tensor in zip(stage.outputs, sent):  # forwarded tensors included
            assert tuple(tensor.shape) == spec.shape and str(tensor.dtype) == f"torch.{spec.dtype}"
            assert tensor.numel() * tensor.element_size() == spec.nbytes
            assert max_abs_diff(tensor, values[spec.name]) <= EXACT_TOLERANCE, f"stage {stage.index} sends {spec.name}"


def _exact_random_partitions(name: str, per_stage_count: int) -> None:
    model = zoo.ZOO[name].factory()
    x = _small_input(name)
    traced = trace(model, x)
    with torch.no_grad():
        expected = model(x)
    values = _values(traced, x)
    rng = random.Random(zlib.crc32(name.encode()))
    forwarded = 0
    for stages in (2, 3, 4):
        for partition in random_partitions(traced, stages, per_stage_count, rng):
            assert len(partition.stages) == stages
            check_partition(partition, traced, x, values, expected)
            forwarded += sum(len(s.forwarded) for s in partition.stages)
    assert forwarded, "no random partition forwarded a tensor through a stage"


@pytest.mark.parametrize("name", sorted(set(zoo.ZOO) - zoo.LARGE_MODELS))
def test_random_monotone_partitions_of_every_zoo_model_are_exact(name):
    _exact_random_partitions(name, per_stage_count=3)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(zoo.ZOO) - zoo.LARGE_MODELS))
def test_many_random_partitions_of_every_zoo_model_are_exact(name):
    _exact_random_partitions(name, per_stage_count=10)


@pytest.mark.parametrize("factory", [mf.ShapeDependent, mf.DictOutput, mf.SizeReader, mf.ParameterBranch])
def test_random_partitions_of_export_graphs_structured_outputs_and_ints_are_exact(factory):
    model = factory()
    x = torch.rand(2, 3, 64, 64) if factory is mf.ParameterBranch else torch.randn(2, 1, 8, 8)
    traced = trace(model, x)
    with torch.no_grad():
        expected = model(x)
    values = _values(traced, x)
    rng = random.Random(1)
    for stages in (2, 3, 4):
        for partition in random_partitions(traced, stages, 4, rng):
            check_partition(partition, traced, x, values, expected)


def test_a_skip_connection_is_forwarded_through_the_stage_between():
    traced = trace(zoo.resnet8(), torch.randn(1, 3, 32, 32))
    branch = {"layers_0_conv1_0", "layers_0_conv1_1", "layers_0_conv1_2", "layers_0_conv2_0", "layers_0_conv2_1"}
    stem = {"stem_0", "stem_1", "stem_2"}
    assignment = {n.name: 0 if n.name in stem else 1 if n.name in branch else 2 for n in traced.compute_nodes}
    partition = traced.partition(assignment)
    first, middle, last = partition.stages
    assert [t.name for t in first.outputs] == ["stem_2"]
    assert [t.name for t in middle.inputs] == ["stem_2"]
    assert [t.name for t in middle.outputs] == ["stem_2", "layers_0_conv2_1"]  # the skip passes through
    assert [t.name for t in middle.forwarded] == ["stem_2"]
    assert [t.name for t in last.inputs] == ["stem_2", "layers_0_conv2_1"] and last.forwarded == ()
    assert partition.boundaries == (first.outputs, middle.outputs)
    x = torch.randn(3, 3, 32, 32)  # a traced graph runs on other batch sizes too
    with torch.no_grad():
        assert max_abs_diff(partition(x), traced.graph_module(x)) <= EXACT_TOLERANCE


def test_empty_stages_pass_on_what_they_receive():
    traced = trace(mf.Tiny(), torch.randn(1, 1, 8, 8))
    partition = traced.partition({n.name: 3 for n in traced.compute_nodes})
    assert [s.nodes for s in partition.stages[:3]] == [(), (), ()]
    assert all([t.name for t in s.outputs] == ["x"] for s in partition.stages[:3])
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        assert max_abs_diff(partition(x), traced.graph_module(x)) <= EXACT_TOLERANCE
    whole = traced.partition(lambda node: 0)  # one stage is the whole model
    assert len(whole.stages) == 1 and whole.stages[0].outputs == ()
    with torch.no_grad():
        assert max_abs_diff(whole(x), traced.graph_module(x)) <= EXACT_TOLERANCE


def test_a_non_monotone_assignment_is_refused():
    traced = trace(mf.Tiny(), torch.randn(1, 1, 8, 8))
    assignment = {n.name: 1 for n in traced.compute_nodes}
    assignment["conv"] = 2  # relu, in stage 1, would read conv's result from stage 2
    with pytest.raises(CutError, match=r"not monotone: relu runs in stage 1 but reads conv from the later stage 2"):
        traced.partition(assignment)
    with pytest.raises(CutError, match="not monotone"):
        traced.partition(lambda node: 0 if node.name == "fc" else 1)


def test_bad_assignments_say_what_is_wrong():
    traced = trace(mf.Tiny(), torch.randn(1, 1, 8, 8))
    names = [n.name for n in traced.compute_nodes]
    with pytest.raises(CutError, match="no compute node named nope"):
        traced.partition({**dict.fromkeys(names, 0), "nope": 1})
    with pytest.raises(CutError, match=r"gives no stage to 1 compute nodes \(e\.g\. fc\)"):
        traced.partition({name: 0 for name in names if name != "fc"})
    with pytest.raises(CutError, match=r"fc is assigned stage 2; the stages are 0\.\.1"):
        traced.partition({name: 2 if name == "fc" else 0 for name in names}, stages=2)
    with pytest.raises(CutError, match="stage is an integer"):
        traced.partition(lambda node: 0.5)
    with pytest.raises(CutError, match="at least one stage"):
        traced.partition(lambda node: 0, stages=0)


def test_an_int_may_not_cross_between_stages():
    traced = trace(mf.SizeReader(), torch.randn(2, 1, 8, 8))
    size = next(n for n in traced.compute_nodes if n.op == "call_method" and n.target == "size")
    with pytest.raises(CutError, match=rf"stage 0 would send {size.name}, which is not a tensor"):
        traced.partition(lambda node: 0 if node is size else 1)


@pytest.mark.parametrize("name", ["resnet8", "small_cnn",
                                  pytest.param("hybrid_vit", marks=pytest.mark.slow)])
def test_two_stages_are_the_split_at_every_candidate_cut(name):
    x = _small_input(name)
    traced = trace(zoo.ZOO[name].factory(), x)
    cuts = [*traced.cuts]
    if name == "resnet8":
        cuts.append(traced.head_cut(RESNET8_NON_PREFIX_HEAD))
    for cut in cuts:
        split = traced.split(cut)
        partition = traced.partition(cut)
        assert partition.assignment == cut.assignment(traced.compute_nodes)
        head, tail = partition.stages
        assert head.outputs == cut.crossing == tail.inputs
        assert head.module.code == split.head.code and tail.module.code == split.tail.code
        with torch.no_grad():
            sent = split.head(x)
            assert all(torch.equal(a, b) for a, b in zip(head(x), sent))
            assert max_abs_diff(tail(*sent), split.tail(*sent)) == 0


def test_a_cut_from_another_graph_is_refused():
    small = trace(zoo.small_cnn(), torch.randn(1, 1, 28, 28))
    resnet = trace(zoo.resnet8(), torch.randn(1, 3, 32, 32))
    with pytest.raises(CutError, match="does not fit this graph"):
        resnet.split(small.cuts[3])
