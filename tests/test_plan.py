"""The planner: min-cut optimality, the cost model's arithmetic, constraints, the switch table, real splits."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgesplit.model import zoo
from edgesplit.model.graph import max_abs_diff, trace
from edgesplit.plan.hardware import LINKS, PRESETS, HardwareError, parse_link, parse_machine, parse_size
from edgesplit.plan import Constraints, PlanError, plan_model
from edgesplit.plan.costs import CostModel, LinkSweep, at_link, parse_objective
from edgesplit.plan.machines import preset_machine
from edgesplit.plan.mincut import FlowGraph, PlacementProblem, brute_force_head, closed_heads
from edgesplit.codecs import parse_codec
from edgesplit.compress.payload import PlanCodec
from edgesplit.plan.synthetic import synthetic_workload
from edgesplit.plan.workload import prefix_cuts, workload_of
from edgesplit.privacy.leakage import CutLeakage, LeakageTable
from modelfactories import ParameterBranch

# --- min-cut vs brute force --------------------------------------------------------------------------------


@st.composite
def placement_problems(draw):
    """A random DAG of up to 12 nodes between a pinned input and a pinned output, with fan-out and values
    that cannot cross (not tensors), and random device, server and transfer costs (zeros included)."""
    size = draw(st.integers(1, 10))
    names = [f"n{i}" for i in range(size)]
    nodes = ["x", *names, "output"]
    consumers = {}
    for i, value in enumerate(nodes[:-1]):
        later = nodes[i + 1:]
        readers = draw(st.lists(st.sampled_from(later), min_size=1, max_size=min(3, len(later)), unique=True))
        consumers[value] = sorted(readers, key=nodes.index)
    cost = st.one_of(st.just(0.0), st.floats(0.001, 100.0))
    device = {v: draw(cost) for v in names}
    server = {v: draw(cost) for v in names}
    transfer = {v: draw(st.one_of(cost, st.just(math.inf))) if v != "x" else draw(cost) for v in consumers}
    return PlacementProblem(nodes, consumers, device, server, transfer, frozenset({"x"}), frozenset({"output"}))


@settings(max_examples=300, deadline=None)
@given(placement_problems())
def test_min_cut_equals_brute_force_on_random_dags(problem):
    best, _ = brute_force_head(problem)
    graph = FlowGraph(problem)
    for method in ("scipy", "networkx"):
        cost, head = graph.solve(method=method)
        assert problem.is_closed(head), method
        assert math.isclose(problem.cost(head), cost, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(cost, best, rel_tol=1e-6, abs_tol=1e-6), (method, cost, best)


def test_a_fanned_out_value_is_paid_once():
    # x feeds a; a feeds three readers; moving all readers to the server costs one transfer of a, not three
    problem = PlacementProblem(
        nodes=["x", "a", "b", "c", "d", "output"],
        consumers={"x": ["a"], "a": ["b", "c", "d"], "b": ["output"], "c": ["output"], "d": ["output"]},
        device_cost={"a": 1.0, "b": 10.0, "c": 10.0, "d": 10.0}, server_cost={"a": 5.0, "b": 1.0, "c": 1.0, "d": 1.0},
        transfer_cost={"x": 100.0, "a": 4.0, "b": 1.0, "c": 1.0, "d": 1.0},
        on_device=frozenset({"x"}), on_server=frozenset({"output"}))
    cost, head = FlowGraph(problem).solve()
    assert head == {"x", "a"}
    assert cost == pytest.approx(1.0 + 4.0 + 3 * 1.0)


def test_closed_heads_respect_predecessors():
    problem = PlacementProblem(["x", "a", "b", "output"], {"x": ["a"], "a": ["b"], "b": ["output"]},
                               {}, {}, {}, frozenset({"x"}), frozenset({"output"}))
    assert {frozenset(h) for h in closed_heads(problem)} == {frozenset({"x"}), frozenset({"x", "a"}),
                                                              frozenset({"x", "a", "b"})}


def test_scipy_and_networkx_agree_on_a_1000_node_workload():
    workload = synthetic_workload(300)
    model = _cost_model(workload, "rpi4", "edge-gpu", "lte")
    graph = FlowGraph(model.placement_problem(parse_objective("latency")))
    from edgesplit.plan.costs import TransferCosts
    transfer = TransferCosts(model, parse_objective("latency"), graph)
    for mbps in (0.1, 3.0, 300.0):
        scipy_cost, _ = graph.solve(transfer.at(model.link.at_uplink(mbps)), method="scipy")
        networkx_cost, _ = graph.solve(transfer.at(model.link.at_uplink(mbps)), method="networkx")
        assert scipy_cost == pytest.approx(networkx_cost, rel=1e-6)


# --- workloads ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet8():
    entry = zoo.get_entry("resnet8")
    traced = trace(entry.factory(), torch.rand(*entry.input_shape))
    return traced, workload_of(traced, "resnet8")


def test_prefix_sweeps_match_the_direct_computation(resnet8):
    traced, workload = resnet8
    assert prefix_cuts(workload.node_names, workload.inputs, workload.consumers, workload.tensors) == traced.cuts
    for position in range(1, len(workload.nodes) + 1):
        head = workload.prefix(position)
        assert workload.prefix_peak_bytes[position] == workload.head_activation_bytes(head)
        assert workload.prefix_weight_bytes[position] == workload.head_weight_bytes(head)


def test_parameters_are_counted_once_per_head(resnet8):
    _, workload = resnet8
    params = sum(p.numel() * 4 for p in zoo.get_entry("resnet8").factory().state_dict().values()
                 if p.dtype == torch.float32)
    assert workload.prefix_weight_bytes[-1] == pytest.approx(params, rel=0.01)


# --- hardware and specs ---------------------------------------------------------------------------------


def test_every_preset_and_link_cites_a_source():
    for preset in PRESETS.values():
        assert len(preset.source) > 40 and preset.peak_macs_per_s > 0 and preset.active_w > preset.idle_w
    for link in LINKS.values():
        assert len(link.source) > 40 and link.uplink_mbps > 0


@pytest.mark.parametrize("spec, kind, speed, borrow", [
    ("rpi4", "preset", 1.0, None), ("host", "host", 1.0, None), ("host/8", "host", 0.125, None),
    ("host*2@jetson-nano", "host", 2.0, "jetson-nano"), ("pi.json/4@rpi4", "profile", 0.25, "rpi4"),
])
def test_machine_specs(spec, kind, speed, borrow):
    parsed = parse_machine(spec)
    assert (parsed.kind, parsed.speed, parsed.borrow) == (kind, speed, borrow)


@pytest.mark.parametrize("spec, fragment", [
    ("rpi5", "unknown machine 'rpi5'"), ("host/0", "must be positive"), ("host@nope", "unknown preset 'nope'"),
    ("rpi4/2", "a preset takes no factor"),
])
def test_bad_machine_specs(spec, fragment):
    with pytest.raises(HardwareError, match=fragment):
        parse_machine(spec)


def test_links_and_overrides():
    lte = parse_link("lte:up=2,rtt=80")
    assert (lte.uplink_mbps, lte.rtt_ms, lte.downlink_mbps) == (2.0, 80.0, LINKS["lte"].downlink_mbps)
    assert lte.uplink_ms(250_000) == pytest.approx(1000.0)  # 2 Mbit at 2 Mbit/s
    slower = lte.at_uplink(1.0)
    assert slower.downlink_mbps / slower.uplink_mbps == pytest.approx(lte.downlink_mbps / lte.uplink_mbps)
    for bad, fragment in (("lte:up=0", "must be positive"), ("lte:up=-3", "must be positive"),
                          ("wlan", "unknown link"), ("lte:speed=3", "unknown key"), ("lte:up=fast", "needs a number")):
        with pytest.raises(HardwareError, match=fragment):
            parse_link(bad)


def test_sizes():
    assert parse_size("4096") == 4096
    assert parse_size("64MB") == 64_000_000
    assert parse_size("1.5MiB") == 1_572_864
    for bad in ("", "-1MB", "12 parsecs", "0"):
        with pytest.raises(HardwareError):
            parse_size(bad)


# --- the cost model -------------------------------------------------------------------------------------


def _cost_model(workload, device, server, link, codec="fp32"):
    return CostModel(workload, preset_machine(PRESETS[device], workload), preset_machine(PRESETS[server], workload),
                     parse_link(link), PlanCodec(parse_codec(codec)), host_gb_s=10.0)


def test_roofline_node_time():
    workload = synthetic_workload(20)
    preset = PRESETS["rpi4"]
    node = workload.nodes[0]
    expected = max(node.macs / (preset.peak_macs_per_s * preset.utilization),
                   node.bytes_moved / (preset.memory_gb_s * 1e9)) * 1e3 + preset.overhead_ms
    assert preset_machine(preset, workload).node_ms[node.name] == pytest.approx(expected)


@settings(max_examples=30, deadline=None)
@given(size=st.integers(2, 80), seed=st.integers(0, 10_000), block=st.integers(1, 4),
       device=st.sampled_from(["rpi4", "jetson-nano", "mcu"]), link=st.sampled_from(["wifi", "lte", "3g"]),
       measured=st.booleans())
def test_batch_costs_equal_one_by_one(size, seed, block, device, link, measured):
    """The planner costs every prefix split at once (``evaluate_many``, numpy); each figure must be the very float
    the one-by-one path (``evaluate``) gives, on random residual DAGs, with several codecs, power figures and, where
    ``measured``, measured prefix heads and tails overriding the node sums at some cuts."""
    from edgesplit.plan.planner import candidates

    workload = synthetic_workload(size, block_size=block, seed=seed)
    codecs = [PlanCodec(parse_codec("fp16")), PlanCodec(parse_codec("int8"))]

    def model():
        built = _cost_model(workload, device, "edge-gpu", link)
        if measured:  # as a measured device profile gives them: a few cuts timed whole
            positions = [cut.position for cut in workload.prefix_cuts][::3]
            built.device.prefix_head_ms = {p: 0.5 + p * 0.25 for p in positions}
            built.device.prefix_tail_ms = {p: 7.0 + p * 0.125 for p in positions[::2]}
        return built

    fast, slow = model(), model()  # separate models: no cache is shared between the two paths
    found = candidates(fast, parse_objective("latency"), [], codecs=codecs)
    assert sum(c.kind == "split" and c.head is None for c in found) >= len(workload.prefix_cuts) - 2
    batch = fast.evaluate_many(found)
    one_by_one = [slow.evaluate(c) for c in found]
    assert [c.model_dump() for c in batch] == [c.model_dump() for c in one_by_one]
    assert all(type(a) is type(b) for x, y in zip(batch, one_by_one)
               for a, b in zip(x.model_dump().values(), y.model_dump().values()))


def test_trusted_equals_model_construct():
    """The planner's quick builder (costs.trusted) makes the instance model_construct makes: the same __dict__ in the
    same order (JSON key order), the same fields set, equal, the same dump; given the fields in another order it
    puts them in the schema's; a missing field is an error, not a silently incomplete plan."""
    from edgesplit.plan.costs import trusted
    from edgesplit.plan.schema import Costs, PlanEntry, SentTensor

    figures = dict(device_ms=1.5, encode_ms=0.25, uplink_ms=3.0, rtt_ms=20.0, decode_ms=0.5, server_ms=2.0,
                   downlink_ms=0.125, latency_ms=27.375, throughput_fps=333.3, uplink_bytes=4096,
                   downlink_bytes=40, device_compute_mj=None, radio_mj=1.0, idle_mj=None, energy_mj=None,
                   head_memory_bytes=10, head_weight_bytes=20)
    sent = dict(name="x", shape=(1, 8), dtype="float32", nbytes=32, payload_bytes=60)
    costs = Costs(**figures)
    entry = dict(label="cut 1 after a", kind="split", position=1, cut_index=0, after="a", head_nodes=None,
                 input_format=None, crossing=[SentTensor(**sent)], costs=costs, objective=27.375, feasible=True,
                 violations=[], codec="fp32", accuracy_drop=None)
    for cls, values in ((Costs, figures), (SentTensor, sent), (PlanEntry, entry)):
        quick, slow = trusted(cls)(**values), cls.model_construct(**values)
        assert type(quick) is cls and quick == slow
        assert list(quick.__dict__) == list(slow.__dict__) == list(cls.model_fields)
        assert quick.model_fields_set == slow.model_fields_set
        assert quick.model_dump_json() == slow.model_dump_json() == cls(**values).model_dump_json()
        backwards = trusted(cls)(**dict(reversed(list(values.items()))))
        assert backwards.model_dump_json() == slow.model_dump_json()
        with pytest.raises(KeyError):
            trusted(cls)(**{k: v for k, v in values.items() if k != "label" and k != "name" and k != "rtt_ms"})
    quick = trusted(PlanEntry)(**entry)
    quick.objective = 1.0  # assignment marks its own instance's fields, not the next one's
    assert trusted(PlanEntry)(**entry).objective == 27.375


def test_costs_add_up(resnet8):
    traced, _ = resnet8
    report = plan_model(traced, device="rpi4", server="edge-gpu", link="lte", progress=False)
    link, device = LINKS["lte"], PRESETS["rpi4"]
    for entry in report.ranked:
        c = entry.costs
        assert c.latency_ms == pytest.approx(c.device_ms + c.encode_ms + c.uplink_ms + c.rtt_ms + c.decode_ms
                                             + c.server_ms + c.downlink_ms)
        assert c.uplink_ms == pytest.approx(c.uplink_bytes * 8 / (link.uplink_mbps * 1e6) * 1e3)
        assert c.energy_mj == pytest.approx(device.active_w * (c.device_ms + c.encode_ms) + link.tx_w * c.uplink_ms
                                            + link.rx_w * c.downlink_ms
                                            + device.idle_w * (c.rtt_ms + c.decode_ms + c.server_ms))
        if entry.kind == "split":
            # fp32 sends each tensor as it is, in a frame exactly as large as the one the codec writes
            assert c.uplink_bytes == sum(len(parse_codec("fp32").encode(torch.zeros(t.shape)))
                                         for t in entry.crossing)
    assert report.all_device.costs.uplink_bytes == 0 and report.all_device.costs.rtt_ms == 0
    fp16 = plan_model(traced, device="rpi4", server="edge-gpu", link="lte", codec="fp16", progress=False)
    split = next(e for e in fp16.ranked if e.kind == "split")
    assert split.costs.uplink_bytes == sum(len(parse_codec("fp16").encode(torch.zeros(t.shape)))
                                           for t in split.crossing)
    assert split.costs.uplink_bytes < sum(t.nbytes // 2 + 32 for t in split.crossing)


def test_speedups_and_chosen(resnet8):
    traced, _ = resnet8
    report = plan_model(traced, device="mcu", server="edge-gpu", link="wifi", progress=False)
    assert report.chosen == report.ranked[0]
    assert report.speedup_vs_all_device == pytest.approx(report.all_device.costs.latency_ms
                                                         / report.chosen.costs.latency_ms)
    assert report.speedup_vs_all_server >= 1.0 - 1e-9
    assert report.min_cut_agrees


def test_the_min_cut_finds_a_head_that_is_not_a_prefix_and_it_splits_exactly():
    model = ParameterBranch()
    x = torch.rand(1, 3, 64, 64)
    traced = trace(model, x)
    report = plan_model(traced, device="rpi4", server="edge-gpu", link="custom:up=30,down=30,rtt=1", progress=False)
    chosen = report.chosen
    assert chosen.kind == "split" and chosen.head_nodes == ["reduce"] and chosen.position is None
    best_prefix = min(e.costs.latency_ms for e in report.ranked if e.position is not None)
    assert chosen.costs.latency_ms < best_prefix
    halves = traced.split(traced.head_cut(chosen.head_nodes))
    assert [t.name for t in halves.cut.crossing] == ["reduce"]
    assert max_abs_diff(halves(x), model(x)) <= 1e-5


def test_objectives(resnet8):
    traced, _ = resnet8
    energy = plan_model(traced, device="rpi4", server="edge-gpu", link="3g", objective="energy", progress=False)
    assert energy.chosen.costs.energy_mj == min(e.costs.energy_mj for e in energy.ranked)
    throughput = plan_model(traced, device="rpi4", server="edge-gpu", link="lte", objective="throughput",
                            progress=False)
    assert throughput.chosen.costs.throughput_fps == max(e.costs.throughput_fps for e in throughput.ranked)
    weighted = plan_model(traced, device="rpi4", server="edge-gpu", link="lte", objective="weighted:1,0.5",
                          progress=False)
    value = lambda e: e.costs.latency_ms + 0.5 * e.costs.energy_mj  # noqa: E731
    assert value(weighted.chosen) == pytest.approx(min(value(e) for e in weighted.ranked))
    with pytest.raises(Exception, match="unknown objective"):
        parse_objective("fastest")


# --- switch table and Pareto front ---------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["latency", "energy"])
def test_switch_table_names_the_best_plan_in_each_range(resnet8, objective):
    traced, _ = resnet8
    report = plan_model(traced, device="rpi4", server="edge-gpu", link="lte:rtt=1", objective=objective,
                        samples=torch.rand(4, 3, 32, 32), progress=False)
    table = report.switch_table
    assert table[0].low_mbps == 0.1 and table[-1].high_mbps == 1000.0
    assert all(a.high_mbps == b.low_mbps for a, b in zip(table, table[1:]))
    assert len(table) >= 2  # all-device wins at 0.1 Mbit/s, sending the input at 1 Gbit/s
    goal = parse_objective(objective)
    machine = preset_machine(PRESETS["rpi4"], workload_of(traced))
    feasible = [e for e in report.ranked if e.feasible]
    for entry in table:
        middle = math.sqrt(entry.low_mbps * entry.high_mbps)
        link = parse_link("lte:rtt=1").at_uplink(middle)
        values = [goal.value(at_link(e.costs, link, machine)) for e in feasible]
        named = next(e for e in feasible if e.label == entry.label)
        assert goal.value(at_link(named.costs, link, machine)) == pytest.approx(min(values))
    at_link_rate = next(e for e in table if e.low_mbps <= parse_link("lte:rtt=1").uplink_mbps < e.high_mbps)
    assert at_link_rate.label == report.chosen.label


def test_link_sweep_matches_at_link(resnet8):
    traced, workload = resnet8
    report = plan_model(traced, device="rpi4", server="edge-gpu", link="lte", progress=False)
    machine = preset_machine(PRESETS["rpi4"], workload)
    for name in ("latency", "energy", "throughput"):
        goal = parse_objective(name)
        table = LinkSweep([e.costs for e in report.ranked], goal, LINKS["lte"], machine.idle_w).values(
            np.array([0.3, 7.0, 900.0]))
        for row, mbps in zip(table, (0.3, 7.0, 900.0)):
            expected = [goal.value(at_link(e.costs, LINKS["lte"].at_uplink(mbps), machine)) for e in report.ranked]
            assert row == pytest.approx(expected, rel=1e-9)


def test_pareto_front_is_undominated(resnet8):
    traced, _ = resnet8
    report = plan_model(traced, device="rpi4", server="edge-gpu", link="lte", samples=torch.rand(4, 3, 32, 32),
                        progress=False)
    point = {e.label: (e.costs.latency_ms, e.costs.energy_mj, e.costs.uplink_bytes) for e in report.ranked}
    assert report.pareto and len(report.pareto) == len(set(report.pareto))
    for label in report.pareto:
        p = point[label]
        assert not any(all(a <= b for a, b in zip(q, p)) and q != p for q in point.values())
    lowest_latency = min(point, key=lambda k: point[k][0])
    assert point[report.pareto[0]][0] == point[lowest_latency][0]
    assert report.all_device.label in report.pareto  # it alone sends nothing


# --- constraints -----------------------------------------------------------------------------------------


def test_memory_and_bytes_constraints(resnet8):
    traced, workload = resnet8
    free = plan_model(traced, device="rpi4", server="edge-gpu", link="ethernet", progress=False)
    assert free.chosen.kind == "all-server"
    limit = min(e.costs.uplink_bytes for e in free.ranked if e.kind == "split") + 100
    capped = plan_model(traced, device="rpi4", server="edge-gpu", link="ethernet",
                        constraints=Constraints(max_uplink_bytes=limit), progress=False)
    assert capped.chosen.costs.uplink_bytes <= limit
    assert any("more than" in v for e in capped.ranked for v in e.violations)
    small = int(workload.prefix_peak_bytes[-1] + workload.prefix_weight_bytes[-1]) - 1
    squeezed = plan_model(traced, device="rpi4", server="edge-gpu", link="3g",
                          constraints=Constraints(device_memory_bytes=small), progress=False)
    assert not squeezed.all_device.feasible and squeezed.chosen.kind != "all-device"


def test_keep_input_rules_out_every_all_server_plan(resnet8):
    traced, workload = resnet8
    free = plan_model(traced, device="rpi4", server="edge-gpu", link="ethernet", progress=False)
    assert free.chosen.kind == "all-server"
    kept = plan_model(traced, device="rpi4", server="edge-gpu", link="ethernet",
                      constraints=Constraints(keep_input_on_device=True), progress=False)
    assert kept.chosen.kind == "split" and kept.constraints.keep_input_on_device
    servers = [e for e in kept.ranked if e.kind == "all-server"]
    assert servers and all(not e.feasible and "--keep-input" in e.violations[0] for e in servers)
    assert all(row.kind != "all-server" for row in kept.switch_table)
    small = int(workload.prefix_peak_bytes[-1] + workload.prefix_weight_bytes[-1]) - 1
    with pytest.raises(PlanError, match="no plan satisfies all constraints together"):
        plan_model(traced, device="rpi4", server="edge-gpu", link="ethernet", progress=False,
                   constraints=Constraints(keep_input_on_device=True, device_memory_bytes=small, max_uplink_bytes=1))


class _InputSkip(torch.nn.Module):
    """A tiny, cheap head and a large tail, with the raw input added back after the head: cuts inside the head
    send the input itself beside the features."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.ReLU())
        self.tail = torch.nn.Sequential(*[torch.nn.Conv2d(3, 3, 3, padding=1) for _ in range(8)],
                                        torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))

    def forward(self, x):
        return self.tail(self.head(x) + x)


def test_keep_input_rules_out_splits_that_send_the_input_beside_the_features():
    torch.manual_seed(0)
    traced = trace(_InputSkip(), torch.rand(1, 3, 32, 32))
    free = plan_model(traced, device="mcu", server="edge-gpu", link="ethernet", progress=False)
    carrying = [e for e in free.ranked if e.kind == "split" and "x" in {t.name for t in e.crossing}]
    assert carrying, "some split sends the raw input beside the features"
    kept = plan_model(traced, device="mcu", server="edge-gpu", link="ethernet", progress=False,
                      constraints=Constraints(keep_input_on_device=True))
    for entry in kept.ranked:
        if entry.kind == "split" and "x" in {t.name for t in entry.crossing}:
            assert not entry.feasible and any("raw input (x) crosses the link" in v for v in entry.violations)
    assert kept.chosen.kind != "all-server" and "x" not in {t.name for t in kept.chosen.crossing}
    assert all(row.kind != "all-server" for row in kept.switch_table)


def test_a_constraint_nothing_meets_names_itself(resnet8):
    traced, workload = resnet8
    with pytest.raises(PlanError, match="no plan satisfies the device memory constraint; the nearest"):
        plan_model(traced, device="rpi4", server="edge-gpu", link="lte",
                   constraints=Constraints(device_memory_bytes=1000), progress=False)
    everything = int(workload.prefix_peak_bytes[-1] + workload.prefix_weight_bytes[-1])
    with pytest.raises(PlanError, match="no plan satisfies all constraints together"):
        plan_model(traced, device="rpi4", server="edge-gpu", link="lte",
                   constraints=Constraints(max_uplink_bytes=10, device_memory_bytes=everything - 1), progress=False)


def test_mcu_weights_must_fit_its_flash(resnet8):
    traced, workload = resnet8
    report = plan_model(traced, device="mcu", server="edge-gpu", link="lte", progress=False)
    too_big = [e for e in report.ranked if e.costs.head_weight_bytes > PRESETS["mcu"].weight_storage_bytes]
    assert all(not e.feasible for e in too_big)


def test_leakage_bound_keeps_only_cuts_that_leak_less(resnet8):
    traced, workload = resnet8
    cuts = [CutLeakage(position=c.position, after=c.after, ssim=max(0.0, 0.9 - 0.03 * c.position),
                       probe_accuracy=0.9) for c in workload.prefix_cuts]
    table = LeakageTable(model="resnet8", fingerprint=traced.fingerprint, cuts=cuts)
    report = plan_model(traced, device="rpi4", server="edge-gpu", link="ethernet", leakage=table,
                        constraints=Constraints(max_ssim=0.3), progress=False)
    leak = {c.position: c.ssim for c in cuts}
    for entry in report.ranked:
        if entry.feasible and entry.kind != "all-device":
            assert entry.position is not None and leak[entry.position] <= 0.3
    assert report.chosen.kind == "all-device" or leak[report.chosen.position] <= 0.3
    assert not any(e.feasible for e in report.ranked if e.kind == "all-server")


# --- device profiles -------------------------------------------------------------------------------------


def test_a_measured_profile_from_another_model_is_refused(tmp_path, resnet8):
    traced, _ = resnet8
    from edgesplit.profile import device_profile, profile_model
    small = zoo.get_entry("small_cnn")
    other = trace(small.factory(), torch.rand(*small.input_shape))
    path = tmp_path / "small.json"
    path.write_text(device_profile(profile_model(other, name="small_cnn", runs=2, warmup=1, progress=False),
                                   name="small").model_dump_json())
    with pytest.raises(HardwareError, match="was measured on model small_cnn"):
        plan_model(traced, device=str(path), server="edge-gpu", link="lte", progress=False)
    ok = plan_model(other, device=f"{path}/4@rpi4", server="edge-gpu", link="lte", objective="energy", progress=False)
    assert ok.device.kind == "profile" and ok.device.active_w == PRESETS["rpi4"].active_w
    with pytest.raises(Exception, match="needs the device's power figures"):
        plan_model(other, device=str(path), server="edge-gpu", link="lte", objective="energy", progress=False)


def test_plan_chooses_codec_and_cut_together(resnet8):
    traced, _ = resnet8
    images = torch.rand(4, *traced.example_inputs[0].shape[1:]).relu()
    report = plan_model(traced, device="rpi4", server="edge-gpu", link="3g", codec=["fp32", "int8", "int2+ans"],
                        samples=images, progress=False)
    prefix = {(e.position, e.codec): e for e in report.ranked if e.kind == "split" and e.head_nodes is None}
    assert {codec for _, codec in prefix} == {"fp32", "int8", "int2+ans"}
    for (position, codec), entry in prefix.items():
        fp32 = prefix[(position, "fp32")].costs.uplink_bytes
        if codec == "int8":  # fixed rate: a quarter of the floats plus the frame's ranges
            assert entry.costs.uplink_bytes < fp32 / 3
            assert entry.costs.encode_ms > 0 and entry.label.endswith("[int8]")
        if codec == "int2+ans" and fp32 > 4096:  # measured on the samples: ≤ 2 bits a value plus the header
            assert entry.costs.uplink_bytes < fp32 / 10
    assert all(r.codec in {"fp32", "int8", "int2+ans", None} for r in report.switch_table)
    assert report.codec == "fp32, int8, int2+ans"
