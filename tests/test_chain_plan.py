"""Plans over a chain of machines (`edgesplit plan --topology`): exact against brute force, runnable, checked input."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from edgesplit.codecs import parse_codec
from edgesplit.compress.payload import PlanCodec
from edgesplit.errors import EdgesplitError
from edgesplit.model.graph import max_abs_diff, trace
from edgesplit.model.zoo import resnet8
from edgesplit.plan.chain import ChainModel, Placement, message_host_ms_per_byte, plan_chain, plan_chain_workload
from edgesplit.plan.costs import parse_objective
from edgesplit.plan.hardware import HardwareError, PRESETS, parse_link
from edgesplit.plan.leakage import CutLeakage, LeakageTable
from edgesplit.plan.machines import preset_machine
from edgesplit.plan.schema import Constraints, load_chain_plan
from edgesplit.plan.synthetic import synthetic_workload
from edgesplit.plan.topology import load_topology, parse_topology
from edgesplit.plan.workload import workload_of
from tests.test_cli import assert_user_error, edgesplit_both_ways, edgesplit_in_process

CHAIN = "rpi4 > wifi > jetson-nano > ethernet:rtt=2 > edge-gpu"


@pytest.fixture(scope="module")
def traced():
    return trace(resnet8(), torch.randn(1, 3, 32, 32))


MESSAGE = (2e-5, 1e-5)  # ms per byte on the host, sender and receiver: 20 and 10 ms per MB, enough to move plans
FIXED = (0.3, 0.2)  # host CPU ms per message, sender and receiver, whatever its size
NO_MESSAGE = ((0.0, 0.0), (0.0, 0.0))
MESSAGES = [NO_MESSAGE, (MESSAGE, (0.0, 0.0)), (MESSAGE, FIXED)]  # (per byte, per message)


def chain_model(workload, topology: str, codec: str = "fp32",  # noqa: ANN001
                message: tuple[tuple[float, float], tuple[float, float]] = NO_MESSAGE) -> ChainModel:
    chain = parse_topology(topology)
    machines = [preset_machine(PRESETS[m], workload) for m in chain.machines]
    return ChainModel(workload, machines, [parse_link(l) for l in chain.links], PlanCodec(parse_codec(codec)), 10.0,
                      hop_ms=chain.hop_ms, message_ms_per_byte=message[0], message_ms=message[1])


def plan_of(model: ChainModel, topology: str, objective: str = "latency", constraints: Constraints | None = None):  # noqa: ANN201
    return plan_chain_workload(model, parse_objective(objective), constraints or Constraints(), model_name="m",
                               model_ref=None, topology=parse_topology(topology), codec_name="fp32",
                               input_shape=[1, 3, 224, 224])


def monotone_assignments(model: ChainModel):  # noqa: ANN201
    """Every assignment of the nodes to tiers in which no node reads from a later tier."""
    names = model.workload.node_names
    producers = {n: [v for v, readers in model.workload.consumers.items() if n in readers and v in names] for n in names}
    for tiers in itertools.product(range(model.tiers), repeat=len(names)):
        tier_of = dict(zip(names, tiers))
        if all(tier_of[p] <= tier_of[n] for n in names for p in producers[n]):
            yield tier_of


@pytest.mark.parametrize("topology", ["rpi4 > lte:up=3 > jetson-nano > wifi > edge-gpu",
                                      "mcu > 3g > rpi4 > lte > edge-gpu",
                                      "rpi4 > ethernet > rpi4 > ethernet > rpi4"])
@pytest.mark.parametrize("objective", ["latency", "energy"])
@pytest.mark.parametrize("message", MESSAGES)
def test_the_chosen_placement_is_the_best_of_every_monotone_assignment(topology: str, objective: str,
                                                                       message: tuple) -> None:
    """Brute force over all 3^7 assignments of a 7-node residual workload, each costed by the same evaluation the
    report uses (not by the min-cut's sums): the planner's choice is never beaten, and its min-cut is exact; with
    and without the per-message work of each byte sent and received, and of each message."""
    model = chain_model(synthetic_workload(7, block_size=2), topology, message=message)
    model.memory_limits = [None] * model.tiers
    goal = parse_objective(objective)
    best = math.inf
    for tier_of in monotone_assignments(model):
        parts = model.breakdown(Placement("x", "brute force", tier_of, max(tier_of.values())))
        best = min(best, model.costs(parts, goal)[4])
    report = plan_of(model, topology, objective)
    assert report.min_cut_exact
    assert report.chosen.objective == pytest.approx(best, rel=1e-9)
    assert all(report.chosen.objective <= entry.objective + 1e-9 for entry in report.baselines if entry.feasible)


@pytest.mark.parametrize("message", MESSAGES)
def test_throughput_is_the_best_contiguous_pipeline(message: tuple) -> None:
    topology = "rpi4 > ethernet > rpi4 > ethernet > rpi4"
    model = chain_model(synthetic_workload(9, block_size=3), topology, message=message)
    goal = parse_objective("throughput")
    end = len(model.workload.nodes)
    positions = sorted({cut.position for cut in model.workload.prefix_cuts if cut.position < end})
    best = math.inf
    for first, second in itertools.combinations_with_replacement(positions, 2):
        tier_of = {n: (0 if i < first else 1 if i < second else 2) for i, n in enumerate(model.workload.node_names)}
        parts = model.breakdown(Placement("x", "brute force", tier_of, max(tier_of.values())))
        best = min(best, model.costs(parts, goal)[4])
    report = plan_of(model, topology, "throughput")
    assert 1e3 / report.chosen.throughput_fps == pytest.approx(best, rel=1e-9)
    # three equal machines on fast links: the slowest stage is about a third of the whole model's time (less
    # gained when every byte a stage sends and receives costs it time)
    gain = report.chosen.throughput_fps / report.entry("all on the device").throughput_fps
    assert gain > (2 if message == NO_MESSAGE else 1.5)


def _both_ways(plain, priced):
    """Every monotone assignment's placement, its breakdowns under ``plain`` and ``priced``, and two zeroed arrays
    (one per tier used) for the extra encode and decode ms the test expects."""
    for tier_of in monotone_assignments(plain):
        placement = Placement("x", "brute force", tier_of, max(tier_of.values()))
        zeros = np.zeros(placement.last_tier + 1)
        yield placement, plain.breakdown(placement), priced.breakdown(placement), zeros, zeros.copy()


def _assert_priced(priced, plain, before, after, goal, extra_encode, extra_decode) -> None:
    """``after`` (a breakdown under ``priced``) costs ``before``'s (under ``plain``) plus the extra encode and
    decode ms per tier, in latency, and its throughput is its slowest stage, compute or link."""
    latency, fps, _, _, value = priced.costs(after, goal)
    assert latency == pytest.approx(plain.costs(before, goal)[0] + extra_encode.sum() + extra_decode.sum(), rel=1e-9)
    busy = after.compute_ms + after.decode_ms + after.encode_ms
    airtime = [max(priced.links[l].uplink_ms(b), priced.links[l].downlink_ms(after.result_bytes))
               for l, b in enumerate(after.payload_bytes)]
    assert value == pytest.approx(max([*busy, *airtime]), rel=1e-9) and fps == pytest.approx(1e3 / value)


def test_each_byte_sent_and_received_costs_its_tier() -> None:
    """The per-message work, priced apart from the model's code: on every link of every monotone assignment, the
    sender's encode time grows by payload × host ms per byte × host bandwidth / its bandwidth, the receiver's
    decode time likewise; latency by their sum, and the slowest stage is the largest busy time (compute +
    decode + encode) or airtime. With it, the throughput plan of a pipeline of slow machines moves: it sends fewer
    bytes over fewer hops."""
    topology = "rpi4 > ethernet > rpi4 > ethernet > rpi4"
    workload = synthetic_workload(7, block_size=2)
    plain, priced = chain_model(workload, topology), chain_model(workload, topology, message=(MESSAGE, (0.0, 0.0)))
    goal = parse_objective("throughput")
    checked = 0
    for placement, before, after, extra_encode, extra_decode in _both_ways(plain, priced):
        for l, nbytes in enumerate(after.payload_bytes):
            assert nbytes == before.payload_bytes[l] and nbytes > 0
            extra_encode[l] = nbytes * MESSAGE[0] * 10.0 / priced.machines[l].memory_gb_s
            extra_decode[l + 1] = nbytes * MESSAGE[1] * 10.0 / priced.machines[l + 1].memory_gb_s
        assert after.encode_ms == pytest.approx(before.encode_ms + extra_encode, rel=1e-9, abs=1e-12)
        assert after.decode_ms == pytest.approx(before.decode_ms + extra_decode, rel=1e-9, abs=1e-12)
        _assert_priced(priced, plain, before, after, goal, extra_encode, extra_decode)
        checked += 1
    assert checked >= 30  # every monotone assignment of the 7 nodes to 3 tiers
    free, paid = plan_of(plain, topology, "throughput"), plan_of(priced, topology, "throughput")
    assert paid.chosen.assignment != free.chosen.assignment
    assert sum(h.payload_bytes for h in paid.chosen.hops) < sum(h.payload_bytes for h in free.chosen.hops)


def test_a_tier_memory_limit_is_respected(traced, tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "chain.yaml").write_text("chain: [mcu, 'lte:up=50', rpi4, ethernet, edge-gpu]\n"
                                         "memory: [96KB, null, null]\nhop_ms: 0.5\n")
    topology = load_topology(tmp_path / "chain.yaml")
    assert topology.memory_bytes == (96_000, None, None) and topology.hop_ms == 0.5
    report = plan_chain(traced, topology, progress=False)
    stage = report.chosen.stages[0]
    assert stage.memory_bytes <= 96_000 and report.chosen.feasible
    assert not report.entry("all on the device").feasible  # 76 KiB of weights + 48 KiB of activations


def test_the_chosen_assignment_runs_as_a_partition_equal_to_the_model(traced) -> None:  # noqa: ANN001
    report = plan_chain(traced, "host/20 > lte:up=20 > host/4 > ethernet:rtt=1 > host", progress=False, host_runs=2)
    x = torch.randn(2, 3, 32, 32)
    for entry in [report.chosen, *report.baselines]:
        partition = traced.partition(entry.assignment, stages=entry.last_tier + 1)
        assert [[t.name for t in stage.outputs] for stage in partition.stages[:-1]] == \
            [[t.name for t in hop.crossing] for hop in entry.hops]
        assert max_abs_diff(partition(x), traced.graph_module(x)) < 1e-5


def test_keep_input_and_max_bytes_hold_on_every_link(traced) -> None:  # noqa: ANN001
    report = plan_chain(traced, CHAIN, progress=False,
                        constraints=Constraints(keep_input_on_device=True, max_uplink_bytes=20_000))
    chosen = report.chosen
    assert chosen.last_tier == 0 or "x" not in [t.name for t in chosen.hops[0].crossing]
    assert all(hop.payload_bytes <= 20_000 for hop in chosen.hops)
    assert not report.entry("all on tier 2 (edge-gpu)").feasible


def test_a_leakage_bound_holds_on_the_first_link(traced, tmp_path) -> None:  # noqa: ANN001
    """An audit's table (here: cuts before the middle leak SSIM 0.9, later ones 0.3) with --max-ssim 0.5: what
    crosses the first link is a measured cut within the bound; sending the input (all on a later tier), the free
    plan's choice on this chain, is refused and says why. The same through `edgesplit plan --leakage`."""
    workload = workload_of(traced, "resnet8")
    positions = sorted(cut.position for cut in workload.prefix_cuts)
    middle = positions[len(positions) // 2]
    table = LeakageTable(model="resnet8", fingerprint=traced.fingerprint, cuts=[
        CutLeakage(position=p, after=workload.cut_at[p].after or "input", ssim=0.9 if p < middle else 0.3)
        for p in positions])
    topology = "host/20 > ethernet > host/4 > ethernet:rtt=1 > host"

    def first_link(entry):  # noqa: ANN001, ANN202 - the prefix position that crosses link 0
        return workload.position_of_prefix(frozenset(n for n, t in entry.assignment.items() if t == 0))

    free = plan_chain(traced, topology, progress=False, host_runs=2)
    assert free.chosen.last_tier > 0 and first_link(free.chosen) < middle  # unbounded, it sends an early cut
    bounded = plan_chain(traced, topology, progress=False, host_runs=2, leakage=table,
                         constraints=Constraints(max_ssim=0.5))
    chosen = bounded.chosen
    assert chosen.last_tier == 0 or first_link(chosen) >= middle, chosen.label
    refused = bounded.entry("all on tier 2 (host)")
    assert not refused.feasible and refused.violations == ["first link: SSIM 0.900 above 0.5"]
    assert all(row.label in {e.label for e in [chosen, *bounded.baselines] if e.feasible}
               for row in bounded.switch_table)
    (tmp_path / "leakage.json").write_text(table.model_dump_json())
    result = edgesplit_in_process("plan", "resnet8", "--topology", topology, "--leakage", str(tmp_path / "leakage.json"),
                                  "--max-ssim", "0.5", "--runs", "2", "--json", str(tmp_path / "plan.json"))
    assert result.returncode == 0, result.stderr
    written = load_chain_plan(tmp_path / "plan.json")
    assert written.constraints.max_ssim == 0.5
    assert written.chosen.last_tier == 0 or first_link(written.chosen) >= middle


@pytest.mark.parametrize("text, fragment", [
    ("rpi4 > wifi", "must start and end with a machine"),
    ("rpi4 > > edge-gpu", "empty part"),
    ("rpi4", "at least two machines"),
    ("rpi4 > wifi > nosuch", "unknown machine 'nosuch'"),
    ("rpi4 > fiber > edge-gpu", "unknown link 'fiber'"),
])
def test_bad_topologies_are_one_line_errors(text: str, fragment: str) -> None:
    with pytest.raises(HardwareError, match=fragment):
        parse_topology(text)


def test_bad_topology_files_are_one_line_errors(tmp_path) -> None:  # noqa: ANN001
    cases = {"list.yaml": "- rpi4\n", "keys.yaml": "chain: [rpi4, wifi, host]\nmachines: 3\n",
             "memory.yaml": "chain: [rpi4, wifi, host]\nmemory: [1MB]\n", "bad.yaml": "chain: [rpi4, {a: 1}]\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(EdgesplitError):
            load_topology(tmp_path / name)
    with pytest.raises(EdgesplitError, match="cannot read topology file"):
        load_topology(tmp_path / "missing.yaml")


def test_plan_topology_cli_writes_a_chain_plan(tmp_path) -> None:  # noqa: ANN001
    result = edgesplit_both_ways("plan", "resnet8", "--topology", CHAIN, "--json", str(tmp_path / "plan.json"))
    assert result.returncode == 0, result.stderr
    assert "switch table" in result.stdout and "chosen:" in result.stdout
    report = load_chain_plan(tmp_path / "plan.json")
    assert report.topology == CHAIN and len(report.machines) == 3 and len(report.links) == 2
    assert json.loads((tmp_path / "plan.json").read_text())["kind"] == "edgesplit.chainplan"


@pytest.mark.parametrize("args, fragment", [
    (["--topology", "rpi4 > wifi"], "must start and end with a machine"),
    (["--topology", CHAIN, "--codec", "fp16", "--codec", "int8"], "several --codec is not supported"),
    (["--topology", CHAIN, "--plot", "x.png"], "--plot draws two-tier plans"),
    (["--topology", CHAIN, "--hop-ms", "-1"], "hop-ms"),
])
def test_plan_topology_user_errors(args: list[str], fragment: str, tmp_path) -> None:  # noqa: ANN001
    assert_user_error(edgesplit_in_process("plan", "resnet8", *args, cwd=tmp_path), fragment)


@pytest.mark.slow
def test_a_run_config_plans_a_chain_and_the_report_draws_it(tmp_path) -> None:  # noqa: ANN001
    """`edgesplit run` with a topology target beside a two-tier one: both planned, the chain's plan written with its
    figure, and the report renders the chain's section (its table, switch table and figure)."""
    (tmp_path / "run.yaml").write_text(
        "model: small_cnn\nuntrained: true\nprofile_runs: 2\ncompare: []\ncompress: null\nserve: null\naudit: null\n"
        "targets:\n  - {name: pair, device: rpi4, link: wifi}\n"
        f"  - {{name: chain, topology: '{CHAIN}'}}\n")
    result = edgesplit_in_process("run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out"), "--quiet")
    assert result.returncode == 0, result.stderr
    report = load_chain_plan(tmp_path / "out" / "plan_chain.json")
    assert report.topology == CHAIN
    assert (tmp_path / "out" / "plan_chain.png").read_bytes().startswith(b"\x89PNG")
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Plan on a chain" in html and "Placements compared" in html and "could not be shown" not in html
    assert html.count("<img") >= 2


@pytest.mark.parametrize("target, fragment", [
    ("{name: x, device: rpi4}", "names a device and a link"),
    (f"{{name: x, device: rpi4, link: wifi, topology: '{CHAIN}'}}", "not in device/link"),
    ("{name: x, topology: 'rpi4 > wifi'}", "must start and end with a machine"),
])
def test_bad_chain_targets_in_a_run_config(target: str, fragment: str, tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "run.yaml").write_text(f"model: small_cnn\nuntrained: true\ntargets:\n  - {target}\n")
    assert_user_error(edgesplit_in_process("run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out")),
                      fragment)


def test_each_message_costs_its_tiers_a_fixed_cpu_time() -> None:
    """The serving stack's fixed work per message (HTTP, the event loop, thread hand-offs), priced apart from the
    model's code: on every monotone assignment, every hop used adds the sender's share (scaled to its machine as
    codec times are) to its encode time and the receiver's to its decode time, whatever the payload, so a middle
    tier pays both; latency grows by their sum and the slowest stage is still the largest busy time. Made large
    against the stages, it moves the throughput plan onto fewer tiers."""
    topology = "rpi4 > ethernet > rpi4 > ethernet > rpi4"
    workload = synthetic_workload(7, block_size=2)
    plain, priced = chain_model(workload, topology), chain_model(workload, topology, message=((0.0, 0.0), FIXED))
    goal = parse_objective("throughput")
    checked = 0
    for placement, before, after, extra_encode, extra_decode in _both_ways(plain, priced):
        for l in range(placement.last_tier):
            extra_encode[l] = FIXED[0] * 10.0 / priced.machines[l].memory_gb_s
            extra_decode[l + 1] = FIXED[1] * 10.0 / priced.machines[l + 1].memory_gb_s
        assert after.encode_ms == pytest.approx(before.encode_ms + extra_encode, rel=1e-9, abs=1e-12)
        assert after.decode_ms == pytest.approx(before.decode_ms + extra_decode, rel=1e-9, abs=1e-12)
        if placement.last_tier == 2:  # the middle tier pays for the message it receives and the one it sends
            assert after.encode_ms[1] + after.decode_ms[1] - before.encode_ms[1] - before.decode_ms[1] == \
                pytest.approx((FIXED[0] + FIXED[1]) * 10.0 / priced.machines[1].memory_gb_s)
        _assert_priced(priced, plain, before, after, goal, extra_encode, extra_decode)
        checked += 1
    assert checked >= 30
    whole = float(plain.node_ms[0].sum())  # the whole model on one rpi4
    free = plan_of(plain, topology, "throughput").chosen
    heavy = chain_model(workload, topology, message=((0.0, 0.0), (whole * 0.4, whole * 0.4)))
    scale = 10.0 / heavy.machines[0].memory_gb_s
    heavy = chain_model(workload, topology, message=((0.0, 0.0), (whole * 0.4 / scale, whole * 0.4 / scale)))
    paid = plan_of(heavy, topology, "throughput").chosen
    assert free.last_tier == 2 and paid.last_tier < free.last_tier  # a middle tier would pay 0.8 of the model


def test_timing_the_message_work_has_a_deadline() -> None:
    """Every wait of the host's per-byte measurement (the reader thread, the socket, the join) is bounded: past its
    deadline it is a one-line error, not a hang; within it, two non-negative slopes."""
    with pytest.raises(EdgesplitError, match="took over") as error:
        message_host_ms_per_byte(1, 1e-6)
    assert "\n" not in str(error.value)
    send, receive = message_host_ms_per_byte(1, 30.0)
    assert 0.0 <= send < 1e-3 and 0.0 <= receive < 1e-3  # under a second per MB: a socket pair on this host

