"""Plans on a chain of machines, measured: device ↔ gateway ↔ cloud over emulated links, and a pipeline of devices.

Every tier is a real process: the device (this host's network namespace) runs stage 0 with edgesplit's chain
client, the gateway and the cloud run `edgesplit serve PLAN --tier K [--next URL]` in their own namespaces, joined
by `linkemu.ChainedLinks` (veth pairs shaped by tbf, one rate per hop). A slower machine is this host with its CPU
time capped by a cgroup (`cpu.cfs_quota_us` over a 1 ms period: factor F gets 1/F of one core), and every process
runs torch on one thread. The planner is given the same machines: this host's device profile (one thread), scaled
by each tier's factor (`host.json/F`).

(a) + (c) For each model and each pair of link rates: the planner's choice, and the baselines it compares it with
    (all on the device, all on the cloud, the best plan on each pair of tiers), each served and timed; the planner's
    regret (its choice's measured latency over the best measured) and predicted against measured latency.
(b) A pipeline of 4 unequal devices (throughput objective): the planned partition against an even split of the
    nodes (distributed-llama style) and a split proportional to each device's memory (exo style), throughput
    measured with several requests in flight.

Needs root, `ip` and `tc` (the emulated links) and cgroup v1's cpu controller; run it alone on a quiet machine:

    flock -x /tmp/es.lock .venv/bin/python bench/multitier.py [--models mobilenetv3_large,resnet18] [--rates1 3,30]
        [--rates2 20,200] [--slow 8,2] [--requests 10] [--pipeline-slow 1.5,3,2,4] [--json bench/results/multitier.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH))

CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 1000


# ---------------------------------------------------------------------------------------------- slow machines


@contextmanager
def cpu_cap(name: str, factor: float):
    """A cgroup whose processes get 1/``factor`` of one core (None for factor 1: no cap); removed afterwards. The
    period is as short as the kernel's 1 ms minimum quota allows, so a request of a few ms is slowed too."""
    if factor <= 1.0:
        yield None
        return
    group = CGROUP_ROOT / f"es_{os.getpid()}_{name}"
    group.mkdir()
    try:
        period = max(PERIOD_US, int(PERIOD_US * factor))
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(int(period / factor)))
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                (CGROUP_ROOT / "cgroup.procs").write_text(pid)
            except OSError:
                pass
        group.rmdir()


def cap_unavailable() -> str | None:
    if not (CGROUP_ROOT / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {CGROUP_ROOT}"
    if os.geteuid() != 0:
        return "needs root to create cgroups"
    return None


def place(process: subprocess.Popen, group: Path | None) -> None:
    if group is not None:
        (group / "cgroup.procs").write_text(str(process.pid))


# ---------------------------------------------------------------------------------------------- one placement


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _wait_ready(url: str, token: str, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0, headers={"Authorization": f"Bearer {token}"}).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} was not ready in {timeout_s:.0f} s" if process.poll() is None else
                       f"{url} exited with code {process.returncode}")


def serve_chain(links, plan_path: Path, last_tier: int, token_file: Path, caps: list[Path | None],  # noqa: ANN001
                port: int = 8700) -> tuple[str, list[subprocess.Popen]]:
    """Start tiers ``last_tier`` … 1 of a chain plan in their namespaces; the URL of tier 1."""
    exe = shutil.which("edgesplit") or str(Path(sys.executable).parent / "edgesplit")
    token = token_file.read_text().strip()
    processes: list[subprocess.Popen] = []
    next_url = None
    for tier in range(last_tier, 0, -1):
        address = links.address(tier)
        args = [exe, "serve", str(plan_path), "--tier", str(tier), "--host", address, "--port", str(port),
                "--token-file", str(token_file), "--log-level", "warning", "--max-batch", "1"]
        if next_url is not None:
            args += ["--next", next_url, "--next-token-file", str(token_file), "--next-timeout", "60"]
        log = open(plan_path.with_suffix(f".tier{tier}.log"), "w")  # noqa: SIM115 - the process writes it
        process = links.popen(tier, args, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        place(process, caps[tier])
        processes.append(process)
        next_url = f"http://{address}:{port}"
        try:
            _wait_ready(next_url, token, process)
        except RuntimeError as error:
            stop(processes)
            tail = plan_path.with_suffix(f".tier{tier}.log").read_text()[-1500:]
            raise RuntimeError(f"{error}; tier {tier} said:\n{tail}") from error
    return next_url, processes  # type: ignore[return-value]


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def run_device(plan_path: Path, url: str | None, token_file: Path, cap: Path | None, *, requests: int,
               concurrency: int = 1, seconds: float = 0.0) -> dict:
    """This file's `device` mode in a subprocess (capped like the device): latencies, or throughput."""
    out = plan_path.with_suffix(".device.json")
    args = [sys.executable, __file__, "device", "--plan", str(plan_path), "--token-file", str(token_file),
            "--requests", str(requests), "--concurrency", str(concurrency), "--seconds", str(seconds),
            "--out", str(out)]
    if url:
        args += ["--url", url]
    process = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    place(process, cap)
    stdout, stderr = process.communicate(timeout=900)
    if process.returncode != 0:
        raise RuntimeError(f"device run failed: {stderr[-1500:]}")
    return json.loads(out.read_text())


def device_main(args: argparse.Namespace) -> None:
    """The device: stage 0 here and the rest through the first hop (or the whole model here for an all-device plan),
    on random 224×224 images; median latency of sequential requests, or throughput with requests in flight."""
    import torch

    from edgesplit.plan.schema import load_chain_plan
    from edgesplit.runtime.relay import ChainClient as Client

    torch.set_num_threads(1)
    plan = load_chain_plan(args.plan)
    token = Path(args.token_file).read_text().strip()
    x = torch.rand(*plan.input_shape)
    if args.url is None:  # everything on the device
        from edgesplit.model.intake import ModelRef, build_model, load_weights, read_weights

        model = build_model(ModelRef(plan.model_ref["name"], plan.model_ref.get("kwargs") or {})).eval()
        state_dict, _ = read_weights(plan.model_ref["weights"])
        load_weights(model, state_dict, plan.model_ref["weights"])
        with torch.no_grad():
            for _ in range(3):
                model(x)
            times = []
            for _ in range(args.requests):
                start = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - start) * 1e3)
        Path(args.out).write_text(json.dumps({"latency_ms": times}))
        return
    if args.concurrency <= 1:
        with Client(plan, args.url, token, timeout_s=60, fallback=False) as client:
            client.infer(x)  # connects and warms up
            times = []
            for _ in range(args.requests):
                start = time.perf_counter()
                client.infer(x)
                times.append((time.perf_counter() - start) * 1e3)
        Path(args.out).write_text(json.dumps({"latency_ms": times}))
        return
    done, stop_at, errors = [0] * args.concurrency, [0.0], []

    def worker(index: int) -> None:
        try:
            with Client(plan, args.url, token, timeout_s=120, fallback=False) as client:
                client.infer(x)
                barrier.wait()
                while time.perf_counter() < stop_at[0]:
                    client.infer(x)
                    done[index] += 1
        except Exception as error:  # noqa: BLE001 - reported in the result
            errors.append(repr(error))

    barrier = threading.Barrier(args.concurrency + 1)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    stop_at[0] = start + args.seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    Path(args.out).write_text(json.dumps({"completed": sum(done), "seconds": elapsed,
                                          "throughput": sum(done) / elapsed, "errors": errors}))


# ---------------------------------------------------------------------------------------------- planning


def host_profile(model_name: str, folder: Path, runs: int) -> tuple[object, Path, dict]:
    """This host's device profile of the model at 224×224 on one thread, the traced model, and its model_ref (its
    random weights saved, so that every tier runs the same model)."""
    import torch

    from edgesplit.model.graph import trace
    from edgesplit.model.intake import ModelRef, save_weights
    from edgesplit.model.zoo import get_entry
    from edgesplit.profile import device_profile, profile_model
    from edgesplit.versioned import write_json

    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = get_entry(model_name).factory().eval()
    weights = folder / f"{model_name}.safetensors"
    save_weights(module, weights, ModelRef(model_name), (1, 3, 224, 224))
    traced = trace(module, torch.rand(1, 3, 224, 224))
    report = profile_model(traced, name=model_name, runs=runs, progress=False)
    path = folder / f"{model_name}-host.json"
    write_json(path, device_profile(report, name="host-1-thread"))
    return traced, path, {"name": model_name, "kwargs": {}, "weights": str(weights)}


def with_chosen(plan, entry, path: Path) -> Path:  # noqa: ANN001
    """The plan with ``entry`` as its chosen placement: what the relays serve."""
    path.write_text(plan.model_copy(update={"chosen": entry}).model_dump_json())
    return path


# ---------------------------------------------------------------------------------------------- (a) + (c)


def profile_under_cap(model_name: str, ref: dict, cap: Path | None, path: Path, runs: int) -> Path:
    """`edgesplit profile --save-device` run inside a tier's CPU cap: the planner gets that tier as measured (the
    cap's cost is not exactly 1/F of the core: CFS throttling in short periods and the other processes' load)."""
    exe = shutil.which("edgesplit") or str(Path(sys.executable).parent / "edgesplit")
    process = subprocess.Popen([exe, "profile", model_name, "--weights", ref["weights"], "--runs", str(runs),
                                "--threads", "1", "--save-device", str(path), "-q"], env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    place(process, cap)
    _, stderr = process.communicate(timeout=900)
    if process.returncode != 0:
        raise RuntimeError(f"profiling {model_name} under the cap failed: {stderr[-1500:]}")
    return path


def bench_chain(model_name: str, traced, profile: Path, ref: dict, args, folder: Path,  # noqa: ANN001
                token_file: Path) -> list[dict]:
    from linkemu import ChainedLinks

    from edgesplit.plan.chain import plan_chain

    slow_device, slow_gateway = args.slow
    rows = []
    with ExitStack() as capped:
        caps = [capped.enter_context(cpu_cap("device", slow_device)),
                capped.enter_context(cpu_cap("gateway", slow_gateway)), None]
        names = ("device", "gateway", "cloud")
        profiles = [profile_under_cap(model_name, ref, cap, folder / f"{model_name}-{name}.json", args.profile_runs)
                    for cap, name in zip(caps, names)]
        for r1 in args.rates1:
            for r2 in args.rates2:
                topology = (f"{profiles[0]} > custom:up={r1:g},rtt={args.rtt_ms:g} > {profiles[1]}"
                            f" > custom:up={r2:g},rtt={args.rtt_ms:g} > {profiles[2]}")
                plan = plan_chain(traced, topology, name=model_name, progress=False, model_ref=ref)
                entries = {plan.chosen.label: plan.chosen}
                for entry in plan.baselines:
                    if entry.method == "baseline" or entry.label.startswith("best two-tier"):
                        key = (entry.last_tier, tuple(sorted(entry.assignment.items())))
                        if all((e.last_tier, tuple(sorted(e.assignment.items()))) != key for e in entries.values()):
                            entries[entry.label] = entry
                with ChainedLinks([r1, r2]) as links:
                    for label, entry in entries.items():
                        for path_text, name in zip(map(str, profiles), names):
                            label = label.replace(path_text, name)
                        if entry.latency_ms > args.skip_over * plan.chosen.latency_ms:
                            print(f"{model_name} {r1:g}/{r2:g} Mbit/s {label}: predicted {entry.latency_ms:.1f} ms, "
                                  f"over {args.skip_over:g}× the choice: not measured", flush=True)
                            continue
                        path = with_chosen(plan, entry, folder / f"{model_name}-{r1:g}-{r2:g}-{len(rows)}.json")
                        processes = []
                        try:
                            url = None
                            if entry.last_tier > 0:
                                url, processes = serve_chain(links, path, entry.last_tier, token_file, caps)
                            measured = run_device(path, url, token_file, caps[0], requests=args.requests)
                        finally:
                            stop(processes)
                        latency = statistics.median(measured["latency_ms"])
                        rows.append({"model": model_name, "rate1_mbps": r1, "rate2_mbps": r2, "placement": label,
                                     "chosen": entry is plan.chosen, "last_tier": entry.last_tier,
                                     "nodes_per_tier": [s.nodes for s in entry.stages],
                                     "bytes_per_link": [h.payload_bytes for h in entry.hops],
                                     "predicted_ms": entry.latency_ms, "measured_ms": latency,
                                     "measured_all_ms": measured["latency_ms"]})
                        print(f"{model_name} {r1:g}/{r2:g} Mbit/s {label}: predicted {entry.latency_ms:.1f} ms, "
                              f"measured {latency:.1f} ms", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- (b)


def contiguous_placement(names: list[str], bounds: list[int]) -> dict[str, int]:
    """Tier of each node when the nodes are cut at ``bounds`` (positions in topological order)."""
    tier_of = {}
    for tier, (start, end) in enumerate(zip([0, *bounds], [*bounds, len(names)])):
        for name in names[start:end]:
            tier_of[name] = tier
    return tier_of


def nearest_cuts(workload, targets: list[float]) -> list[int]:  # noqa: ANN001
    """Candidate cut positions nearest the fractional positions wanted (nested, in order)."""
    positions = sorted(cut.position for cut in workload.prefix_cuts if 0 < cut.position < len(workload.nodes))
    chosen, low = [], 0
    for target in targets:
        best = min((p for p in positions if p >= low), key=lambda p: abs(p - target))
        chosen.append(best)
        low = best
    return chosen


def bench_pipeline(model_name: str, traced, profile: Path, ref: dict, args, folder: Path,  # noqa: ANN001
                   token_file: Path) -> list[dict]:
    from linkemu import ChainedLinks

    from edgesplit.codecs import parse_codec
    from edgesplit.compress.payload import PlanCodec
    from edgesplit.plan.chain import ChainModel, Placement, _entry, plan_chain
    from edgesplit.plan.costs import parse_objective
    from edgesplit.plan.hardware import parse_link
    from edgesplit.plan.machines import resolve_machine
    from edgesplit.plan.schema import Constraints
    from edgesplit.plan.workload import workload_of
    from edgesplit.profile import memory_bandwidth_gb_s

    factors, memories = args.pipeline_slow, args.pipeline_memory
    link = f"custom:up={args.pipeline_mbps:g},rtt={args.rtt_ms:g}"
    capped = ExitStack()
    caps = [capped.enter_context(cpu_cap(f"p{t}", f)) for t, f in enumerate(factors)]
    machines = [str(profile_under_cap(model_name, ref, cap, folder / f"{model_name}-p{t}.json", args.profile_runs))
                for t, cap in enumerate(caps)]
    parts = [machines[0]]
    for machine in machines[1:]:
        parts += [link, machine]
    topology = " > ".join(parts)
    plan = plan_chain(traced, topology, objective="throughput", name=model_name, progress=False,
                      model_ref=ref)
    workload = workload_of(traced, model_name)
    resolved = [resolve_machine(m, workload, lambda: None, memory_bandwidth_gb_s) for m in machines]
    model = ChainModel(workload, resolved, [parse_link(link)] * (len(machines) - 1),
                       PlanCodec(parse_codec("fp32")), memory_bandwidth_gb_s(), hop_ms=plan.hop_ms)
    names = workload.node_names
    k = len(machines)
    even = nearest_cuts(workload, [len(names) * t / k for t in range(1, k)])
    weights = [sum(n.params.values()) for n in workload.nodes]
    total = sum(weights)
    shares = [sum(memories[:t]) / sum(memories) * total for t in range(1, k)]
    cumulative = [sum(weights[:i]) for i in range(len(names) + 1)]
    proportional = nearest_cuts(workload, [min(range(len(cumulative)), key=lambda i: abs(cumulative[i] - s))
                                           for s in shares])
    objective = parse_objective("throughput")
    entries = {"planned (throughput objective)": plan.chosen}
    for label, bounds in (("even split of the nodes", even), ("memory-proportional split of the weights", proportional)):
        placement = Placement(label, "baseline", contiguous_placement(names, bounds), k - 1)
        placement.last_tier = max(placement.tier_of.values())
        entries[label] = _entry(model, model.breakdown(placement), objective, Constraints())
    rows = []
    with capped, ChainedLinks([args.pipeline_mbps] * (k - 1)) as links:
        for label, entry in entries.items():
            path = with_chosen(plan, entry, folder / f"{model_name}-pipeline-{len(rows)}.json")
            processes = []
            try:
                url, processes = serve_chain(links, path, entry.last_tier, token_file, caps)
                measured = run_device(path, url, token_file, caps[0], requests=0, concurrency=args.concurrency,
                                      seconds=args.seconds)
            finally:
                stop(processes)
            rows.append({"model": model_name, "placement": label, "factors": factors, "memory_gb": memories,
                         "nodes_per_tier": [s.nodes for s in entry.stages],
                         "predicted_fps": entry.throughput_fps, "measured_fps": measured["throughput"],
                         "completed": measured["completed"], "errors": measured["errors"]})
            print(f"{model_name} pipeline {label}: nodes {[s.nodes for s in entry.stages]}, predicted "
                  f"{entry.throughput_fps:.2f}/s, measured {measured['throughput']:.2f}/s", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- main


def floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "device":
        parser = argparse.ArgumentParser()
        parser.add_argument("mode")
        for name in ("--plan", "--url", "--token-file", "--out"):
            parser.add_argument(name)
        parser.add_argument("--requests", type=int, default=10)
        parser.add_argument("--concurrency", type=int, default=1)
        parser.add_argument("--seconds", type=float, default=0.0)
        device_main(parser.parse_args())
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mobilenetv3_large,resnet18")
    parser.add_argument("--rates1", type=floats, default=[3.0, 30.0])
    parser.add_argument("--rates2", type=floats, default=[20.0, 200.0])
    parser.add_argument("--slow", type=floats, default=[8.0, 2.0], help="device and gateway slow-down factors")
    parser.add_argument("--rtt-ms", type=float, default=0.3)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--pipeline-model", default="resnet18")
    parser.add_argument("--pipeline-slow", type=floats, default=[1.5, 3.0, 2.0, 4.0])
    parser.add_argument("--pipeline-memory", type=floats, default=[4.0, 8.0, 2.0, 4.0], help="GB, per device")
    parser.add_argument("--pipeline-mbps", type=float, default=200.0)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--profile-runs", type=int, default=5)
    parser.add_argument("--skip-over", type=float, default=3.0,
                        help="placements predicted this many times slower than the choice are not measured")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: chain, pipeline")
    parser.add_argument("--json", type=Path, default=RESULTS / "multitier.json")
    args = parser.parse_args()
    from linkemu import link_emulation_unavailable

    if reason := (link_emulation_unavailable() or cap_unavailable()):
        sys.exit(f"cannot run: {reason}")
    skip = set(filter(None, args.skip.split(",")))
    result: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        token_file = folder / "token"
        token_file.write_text("bench-token-" + os.urandom(8).hex())
        token_file.chmod(0o600)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        if "chain" not in skip:
            result["chain"] = []
            for model_name in args.models.split(","):
                traced, profile, ref = host_profile(model_name, folder, args.profile_runs)
                result["chain"] += bench_chain(model_name, traced, profile, ref, args, folder, token_file)
                args.json.write_text(json.dumps(result, indent=1))  # kept if a later part fails or times out
        if "pipeline" not in skip:
            traced, profile, ref = host_profile(args.pipeline_model, folder, args.profile_runs)
            result["pipeline"] = bench_pipeline(args.pipeline_model, traced, profile, ref, args, folder, token_file)
    summarize(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"written to {args.json}")


def summarize(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=170)
    chain = result.get("chain", [])
    if chain:
        table = Table(title="(a) chain placements, measured (median of sequential requests)")
        for column in ("model", "Mbit/s link 0/1", "placement", "nodes/tier", "predicted ms", "measured ms", "error"):
            table.add_column(column)
        errors, regrets = [], []
        cells = sorted({(r["model"], r["rate1_mbps"], r["rate2_mbps"]) for r in chain})
        for cell in cells:
            rows = [r for r in chain if (r["model"], r["rate1_mbps"], r["rate2_mbps"]) == cell]
            best = min(r["measured_ms"] for r in rows)
            chosen = next(r for r in rows if r["chosen"])
            regrets.append(chosen["measured_ms"] / best - 1)
            for r in rows:
                error = abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"]
                errors.append(error)
                table.add_row(r["model"], f"{r['rate1_mbps']:g}/{r['rate2_mbps']:g}",
                              ("▶ " if r["chosen"] else "") + r["placement"], str(r["nodes_per_tier"]),
                              f"{r['predicted_ms']:.1f}", f"{r['measured_ms']:.1f}", f"{error:.0%}")
        console.print(table)
        result["regret"] = {"per_cell": regrets, "max": max(regrets), "median": statistics.median(regrets)}
        result["prediction_error"] = {"median": statistics.median(errors), "max": max(errors)}
        console.print(f"regret of the planner's choice against the best measured: median "
                      f"{statistics.median(regrets):.1%}, max {max(regrets):.1%} (target ≤ 5%); predicted vs measured "
                      f"latency: median |error| {statistics.median(errors):.1%} (target ≤ 10%)")
    pipeline = result.get("pipeline", [])
    if pipeline:
        table = Table(title="(b) a pipeline of 4 unequal devices: throughput with requests in flight")
        for column in ("placement", "nodes/tier", "predicted /s", "measured /s"):
            table.add_column(column)
        for r in pipeline:
            table.add_row(r["placement"], str(r["nodes_per_tier"]), f"{r['predicted_fps']:.2f}",
                          f"{r['measured_fps']:.2f}")
        console.print(table)
        planned, even, memory = (r["measured_fps"] for r in pipeline)
        result["pipeline_ratios"] = {"vs_even": planned / even, "vs_memory_proportional": planned / memory}
        console.print(f"planned / even split: {planned / even:.2f}× (target ≥ 1.5×); planned / memory-proportional: "
                      f"{planned / memory:.2f}× (target ≥ 1.2×)")


if __name__ == "__main__":
    main()
