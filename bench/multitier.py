"""Plans on a chain of machines, measured: device ↔ gateway ↔ cloud over emulated links, and a pipeline of devices.

Every tier is a real process: the device runs stage 0 with edgesplit's chain client, the gateway and the cloud run
`edgesplit serve PLAN --tier K [--next URL]` in their own network namespaces, joined by `linkemu.ChainedLinks`
(veth pairs shaped by tbf, one rate per hop). A slower machine is this host with its CPU time capped by a cgroup:
factor F gets a quota of 1 ms (the kernel's smallest) per F ms period, and every tier's group has high
`cpu.shares`, so other processes on the host hardly slow a tier within its quota. Every process runs torch on
one thread. Each cap is calibrated before planning (:func:`calibrate`: whole forwards timed inside the cap,
printed against the nominal factor), and the planner is given, per tier, this host's profile rescaled to that
measured forward (:func:`tier_profile`). Processes start once: servers start uncapped (torch's import under a cap
of 1/8 took a minute) and join their cgroup when ready; one device process (:class:`Worker`, in the device's cap)
times every placement; between grid cells the links are reshaped in place (`ChainedLinks.set_rate`).

(a) + (c) For each model and each pair of link rates: the planner's choice, and the baselines it compares it with
    (all on the device, all on the cloud, the best plan on each pair of tiers), each served and timed; the planner's
    regret (its choice's measured latency over the best measured) and predicted against measured latency.
(b) A pipeline of 4 unequal devices (throughput objective, a topology YAML with each device's memory): the planned
    partition against an even split of the nodes (distributed-llama style) and a split of the weights proportional
    to each device's memory (exo style), throughput measured with several requests in flight.

Needs root, `ip` and `tc` (the emulated links) and cgroup v1's cpu controller; run it alone on a quiet machine:

    flock -x /tmp/es.lock .venv/bin/python bench/multitier.py [--models mobilenetv3_large] [--rates1 3,30]
        [--rates2 20,200] [--slow 8,2] [--requests 8] [--pipeline-model vit_s16] [--pipeline-slow 4,8,5,10] [--stage-seconds 4]
        [--pipeline-memory 8,4,4,4] [--skip chain|pipeline] [--json bench/results/multitier.json]
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
QUOTA_US = 1000  # the kernel's smallest CFS quota: the shortest slice, so throttling is fine-grained
REPLY = "@@"  # a worker's replies on stdout start with this


# ---------------------------------------------------------------------------------------------- slow machines


SHARES = 16384  # cpu.shares of every group here: 16× a lone task's, so that other users' processes on this host
# (each weighing 1024) hardly delay a tier within its quota; the quota, not the load, sets each tier's speed


@contextmanager
def cpu_cap(name: str, factor: float, quota_us: int = QUOTA_US):
    """A cgroup whose processes get 1/``factor`` of one core (factor 1: no quota); removed afterwards.

    CFS enforces a quota per period: a capped process runs at full speed until it has used ``quota_us`` of CPU,
    then stalls until the period ends. With the default 100 ms period a forward of a few ms runs unthrottled, or
    stalls for tens of ms, so the slowdown is bursty, not proportional. Here the quota is the kernel's 1 ms
    minimum and the period ``factor`` × that (8 ms for 1/8 of a core): a stage of a few ms is already slowed
    about ``factor`` times (:func:`calibrate` checks it). The group's high ``cpu.shares`` make it win the CPU
    from other processes while it has quota left, so its speed does not follow the host's load."""
    group = CGROUP_ROOT / f"es_{os.getpid()}_{name}"
    group.mkdir()
    try:
        if factor > 1.0:  # else no quota: one thread cannot take more than its core anyway
            (group / "cpu.cfs_period_us").write_text(str(round(quota_us * factor)))
            (group / "cpu.cfs_quota_us").write_text(str(quota_us))
        (group / "cpu.shares").write_text(str(SHARES))
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


def remove_stale_caps() -> list[str]:
    """Delete the cgroups of earlier runs whose process is gone (a killed run leaves them behind)."""
    removed = []
    for group in CGROUP_ROOT.glob("es_*"):
        pid = group.name.split("_")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            for task in (group / "cgroup.procs").read_text().split():
                try:
                    (CGROUP_ROOT / "cgroup.procs").write_text(task)
                except OSError:
                    pass
            group.rmdir()
            removed.append(group.name)
    return removed


def place(process: subprocess.Popen, group: Path | None) -> None:
    if group is not None:
        (group / "cgroup.procs").write_text(str(process.pid))


# ---------------------------------------------------------------------------------------------- processes


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


def serve_chain(links, plan_path: Path, last_tier: int, token_file: Path, caps: list[Path | None],
                port: int = 8700) -> tuple[str, list[subprocess.Popen]]:
    """Start tiers ``last_tier`` … 1 of a chain plan in their namespaces; the URL of tier 1. Each server starts
    uncapped (importing torch and loading the model at 1/8 of a core took about a minute) and joins its tier's
    cgroup once it answers /readyz, before any timed request."""
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
        processes.append(process)
        next_url = f"http://{address}:{port}"
        try:
            _wait_ready(next_url, token, process)
        except RuntimeError as error:
            stop(processes)
            tail = plan_path.with_suffix(f".tier{tier}.log").read_text()[-1500:]
            raise RuntimeError(f"{error}; tier {tier} said:\n{tail}") from error
        place(process, caps[tier])
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
            process.wait()


class Worker:
    """A long-lived process of this file's `worker` mode: it imports torch uncapped, then joins ``cap`` and
    answers timing commands (whole forwards, requests through a chain) over its stdin and stdout, so one process
    serves every cell of the grid, in the same cgroup and on the same one torch thread throughout."""

    def __init__(self, cap: Path | None, log: Path, prepare: dict | None = None) -> None:
        self._log = open(log, "w")  # noqa: SIM115 - the process writes it
        self.process = subprocess.Popen([sys.executable, __file__, "worker"], env=_env(), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1)
        self._reply()
        if prepare is not None:  # e.g. building stages: done uncapped, like a server's start
            self(**prepare)
        place(self.process, cap)

    def _reply(self) -> dict:
        while line := self.process.stdout.readline():  # type: ignore[union-attr]
            if line.startswith(REPLY):
                reply = json.loads(line[len(REPLY):])
                if "error" in reply:
                    raise RuntimeError(f"worker: {reply['error']}")
                return reply
        raise RuntimeError(f"worker exited ({self.process.wait()}); see {self._log.name}")

    def __call__(self, **command) -> dict:
        self.send(**command)
        return self._reply()

    def send(self, **command) -> None:
        """Send a command without waiting for its reply (``reply`` reads it): several workers run at once."""
        self.process.stdin.write(json.dumps(command) + "\n")  # type: ignore[union-attr]

    def reply(self) -> dict:
        return self._reply()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()  # type: ignore[union-attr]
                self.process.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def worker_main() -> None:
    """The worker's loop (see :class:`Worker`): one JSON command a line in, one JSON reply a line out.

    ``forward``: times of ``runs`` whole forwards of ``ref`` after 3 warm-up ones. ``latency``: times of
    ``requests`` sequential requests of the chain plan ``plan`` through ``url`` (stage 0 here) after 2 warm-up
    ones, or whole forwards where ``url`` is null (an all-device plan). ``throughput``: requests completed in
    ``seconds`` by ``concurrency`` clients, each with one request in flight."""
    import torch

    from edgesplit.model.intake import ModelRef, build_model, load_weights, read_weights
    from edgesplit.plan.schema import load_chain_plan
    from edgesplit.runtime.chain_client import ChainClient

    torch.set_num_threads(1)
    models: dict[str, torch.nn.Module] = {}
    clients: dict[tuple[str, str], ChainClient] = {}

    def model_of(ref: dict) -> torch.nn.Module:
        if ref["weights"] not in models:
            model = build_model(ModelRef(ref["name"], ref.get("kwargs") or {})).eval()
            state_dict, _ = read_weights(ref["weights"])
            load_weights(model, state_dict, ref["weights"])
            models[ref["weights"]] = model
        return models[ref["weights"]]

    def timed(call, runs: int, warmup: int) -> list[float]:
        for _ in range(warmup):
            call()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1e3)
        return times

    stages: dict[str, object] = {}

    def stage_call(path: str, tier: int):  # noqa: ANN202 - a closure
        """What tier ``tier`` of the served chain plan at ``path`` does per request: stage 0 and its encoding on
        the device, a middle tier's stage and encoding, the last tier's stage (on warm inputs of the right shape)."""
        from edgesplit.runtime.relay import load_chain_deployment

        plan = load_chain_plan(path)
        route = load_chain_deployment(plan, tier).routes[0]
        if tier == 0:
            x0 = torch.rand(*plan.input_shape)
            return lambda: route.encode(route.device_side(x0))
        inputs = route.warm_inputs()
        if route.ends_here:
            return lambda: route.server_side(inputs)
        return lambda: route.forward(inputs)

    def handle(command: dict) -> dict:
        op = command["op"]
        if op == "load_stages":
            for path in command["plans"]:
                stages[path] = stage_call(path, command["tier"])
                stages[path]()  # warm
            return {"loaded": len(command["plans"])}
        if op == "stage":  # a stage run back to back for ``seconds``: its time per request in this cap
            call, times = stages[command["plan"]], []
            end = time.perf_counter() + command["seconds"]
            with torch.no_grad():
                call()
                while time.perf_counter() < end or len(times) < 2:
                    start = time.perf_counter()
                    call()
                    times.append((time.perf_counter() - start) * 1e3)
            return {"ms": times}
        if op == "forward":
            model, x = model_of(command["ref"]), torch.rand(*command["shape"])
            with torch.no_grad():
                return {"ms": timed(lambda: model(x), command["runs"], 3)}
        plan = load_chain_plan(command["plan"])
        x = torch.rand(*plan.input_shape)
        token = Path(command["token_file"]).read_text().strip()
        if op == "latency":
            if command["url"] is None:
                model = model_of(plan.model_ref)
                with torch.no_grad():
                    return {"ms": timed(lambda: model(x), command["requests"], 3)}
            key = (command["plan"], command["url"])
            if key not in clients:
                clients[key] = ChainClient(plan, command["url"], token, timeout_s=120, fallback=False)
            client = clients[key]
            server_ms: list[float] = []
            times = timed(lambda: server_ms.append(client.infer(x).server_ms), command["requests"], 2)
            head = client.deployment.routes[0]
            with torch.no_grad():  # stage 0 alone, and its encoding, in this cap: what the device's part costs
                head_ms = timed(lambda: head.device_side(x), command["requests"], 1)
                encode_ms = timed(lambda: head.encode(head.device_side(x)), command["requests"], 0)
            return {"ms": times, "server_ms": server_ms[2:], "head_ms": head_ms, "head_encode_ms": encode_ms}
        if op == "throughput":
            return throughput(plan, command["url"], token, x, command["concurrency"], command["seconds"])
        raise ValueError(f"unknown op {op!r}")

    print(REPLY + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            reply = handle(json.loads(line))
        except Exception as error:  # noqa: BLE001 - reported to the parent, which raises it
            reply = {"error": repr(error)}
        print(REPLY + json.dumps(reply), flush=True)
    for client in clients.values():
        client.close()


def throughput(plan, url: str, token: str, x, concurrency: int, seconds: float) -> dict:
    from edgesplit.runtime.chain_client import ChainClient

    done, stop_at, errors, clients = [0] * concurrency, [0.0], [], []
    for _ in range(concurrency):
        client = ChainClient(plan, url, token, timeout_s=120, fallback=False)
        client.infer(x)  # connects and warms up
        clients.append(client)

    def worker(index: int) -> None:
        try:
            barrier.wait()
            while time.perf_counter() < stop_at[0]:
                clients[index].infer(x)
                done[index] += 1
        except Exception as error:  # noqa: BLE001 - reported in the result
            errors.append(repr(error))

    barrier = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    stop_at[0] = start + seconds
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    for client in clients:
        client.close()
    return {"completed": sum(done), "seconds": elapsed, "throughput": sum(done) / elapsed, "errors": errors}


def calibrate(ref: dict, caps: dict[str, tuple[float, Path | None]], folder: Path, runs: int) -> dict[str, dict]:
    """Each cap's real slowdown: whole forwards of the model in a worker inside the cap, against a worker with no
    cap; printed beside the nominal factor. The planner is given ``host profile / measured factor``."""
    shape = [1, 3, 224, 224]
    with cpu_cap("free", 1.0) as one_core, Worker(one_core, folder / "calibrate-free.log") as free:
        base = statistics.median(free(op="forward", ref=ref, shape=shape, runs=runs)["ms"])
    out = {}
    for name, (factor, cap) in caps.items():
        with Worker(cap, folder / f"calibrate-{name}.log") as capped:
            times = capped(op="forward", ref=ref, shape=shape, runs=max(3, runs // 2))["ms"]
        measured = statistics.median(times) / base
        out[name] = {"nominal": factor, "measured": measured, "forward_ms": statistics.median(times),
                     "spread_ms": [min(times), max(times)]}
        print(f"cap {name}: 1/{factor:g} core (quota {QUOTA_US} us / period {round(QUOTA_US * factor)} us): "
              f"forward {statistics.median(times):.1f} ms (min {min(times):.1f}, max {max(times):.1f}) against "
              f"{base:.1f} ms uncapped = {measured:.2f}x (nominal {factor:g}x)", flush=True)
    return out


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


def with_chosen(plan, entry, path: Path) -> Path:
    """The plan with ``entry`` as its chosen placement and as its whole switch table: what the relays serve (that
    one placement, no other route)."""
    from edgesplit.plan.schema import ChainSwitchRange

    table = [ChainSwitchRange(low_mbps=0.0, high_mbps=1e9, label=entry.label)]
    path.write_text(plan.model_copy(update={"chosen": entry, "switch_table": table}).model_dump_json())
    return path


def tier_profile(host: Path, whole_ms: float, path: Path, slowdown: float = 1.0) -> str:
    """The host's profile as one emulated machine: every node's in-context latency scaled so that they sum to
    ``whole_ms`` (the whole forward timed in the tier's cap, :func:`calibrate`), and every cut's head and tail
    the scaled sums. The profiler's node latencies sum to well under a whole forward (mobilenetv3_large: 37.7
    against 52.0 ms measured whole in the same profile, and ~70 ms in a serving process), and the planner takes
    node sums for most stages but measured heads and tails at a few cuts, so scaling the profile by the cap's
    factor alone mixes two bases; here every stage is priced on the one basis of a timed whole forward. The
    profile's memory bandwidth is divided by ``slowdown`` (the cap's measured factor): the planner scales codec
    and per-message work (framing, the socket) by it, and the cap slows that work as it slows compute."""
    from edgesplit.profile import load_device_profile
    from edgesplit.versioned import write_json

    profile = load_device_profile(host)
    scale = whole_ms / sum(node.latency_ms for node in profile.nodes)
    nodes = [node.model_copy(update={"latency_ms": node.latency_ms * scale}) for node in profile.nodes]
    prefix = [0.0]
    for node in nodes:
        prefix.append(prefix[-1] + node.latency_ms)
    cuts = [cut.model_copy(update={"head_ms": prefix[cut.position], "tail_ms": prefix[-1] - prefix[cut.position],
                                   "measured": False}) for cut in profile.cuts]
    from edgesplit.profile import memory_bandwidth_gb_s

    machine = profile.machine.model_copy(
        update={"memory_gb_s": (profile.machine.memory_gb_s or memory_bandwidth_gb_s()) / slowdown})
    write_json(path, profile.model_copy(update={"name": path.stem, "model_ms": whole_ms, "nodes": nodes,
                                                "cuts": cuts, "machine": machine}))
    return str(path)


# ---------------------------------------------------------------------------------------------- (a) + (c)


def placement_key(entry) -> tuple:
    return entry.last_tier, tuple(sorted(entry.assignment.items()))


def hop_rtts_ms(links, repeats: int = 5) -> list[float]:
    """Each hop's measured round trip: an empty request to an echo server in the next tier (median)."""
    return [statistics.median(links.measure_hop(hop, 0, 0, repeats)) * 1e3 for hop in range(1, links.tiers)]


def breakdown(entry) -> dict:
    """What the planner's latency is made of: per tier compute, encode and decode; per hop transfer, round trip,
    fixed cost and the result coming back."""
    return {"compute_ms": [round(s.compute_ms, 2) for s in entry.stages],
            "codec_ms": [round(s.encode_ms + s.decode_ms, 2) for s in entry.stages],
            "transfer_ms": [round(h.transfer_ms, 2) for h in entry.hops], "rtt_ms": [h.rtt_ms for h in entry.hops],
            "overhead_ms": [h.overhead_ms for h in entry.hops], "result_ms": [round(h.result_ms, 3) for h in entry.hops]}


def bench_chain(model_name: str, traced, profile: Path, ref: dict, args, folder: Path,
                token_file: Path) -> tuple[list[dict], dict]:
    """Every cell planned first (so each distinct placement is known), its servers started once, then the cells
    measured one after another with the links reshaped in place between them."""
    from linkemu import ChainedLinks

    from edgesplit.plan.chain import plan_chain
    from edgesplit.plan.topology import parse_topology

    slow_device, slow_gateway = args.slow
    names = ("device", "gateway", "cloud")
    rows: list[dict] = []
    cells = [(r1, r2) for r1 in args.rates1 for r2 in args.rates2]
    with ExitStack() as stack:
        caps = [stack.enter_context(cpu_cap("device", slow_device)),
                stack.enter_context(cpu_cap("gateway", slow_gateway)), stack.enter_context(cpu_cap("cloud", 1.0))]
        calibration = calibrate(ref, {n: (f, c) for n, f, c in zip(names, (slow_device, slow_gateway, 1.0), caps)},
                                folder, args.calibrate_runs)
        machines = [tier_profile(profile, calibration[n]["forward_ms"], folder / f"{model_name}-{n}.json",
                                 calibration[n]["measured"])
                    for n in names]
        links = stack.enter_context(ChainedLinks(list(cells[0])))
        planned, served = [], {}
        for r1, r2 in cells:
            links.set_rate(1, r1)
            links.set_rate(2, r2)
            rtts = hop_rtts_ms(links)
            topology = parse_topology(f"{machines[0]} > custom:up={r1:g},rtt={rtts[0]:.3f} > {machines[1]}"
                                      f" > custom:up={r2:g},rtt={rtts[1]:.3f} > {machines[2]}", hop_ms=args.hop_ms)
            plan = plan_chain(traced, topology, name=model_name, progress=False, model_ref=ref)
            entries = {placement_key(plan.chosen): (plan.chosen.label, plan.chosen)}
            for entry in plan.baselines:
                if entry.method == "baseline" or entry.label.startswith("best two-tier"):
                    entries.setdefault(placement_key(entry), (entry.label, entry))
            for key, (label, entry) in entries.items():
                for machine, name in zip(machines, names):
                    label = label.replace(machine, name)
                if entry.latency_ms > args.skip_over * plan.chosen.latency_ms:
                    print(f"{model_name} {r1:g}/{r2:g} Mbit/s {label}: predicted {entry.latency_ms:.1f} ms, over "
                          f"{args.skip_over:g}× the choice: not measured", flush=True)
                    continue
                if key not in served:
                    served[key] = with_chosen(plan, entry, folder / f"{model_name}-placement{len(served)}.json")
                planned.append((r1, r2, rtts, label, entry, entry is plan.chosen, key))
        urls: dict[tuple, str | None] = {}
        started = time.perf_counter()
        for index, (key, path) in enumerate(served.items()):
            urls[key] = None
            if key[0] > 0:
                urls[key], processes = serve_chain(links, path, key[0], token_file, caps, port=8700 + index)
                stack.callback(stop, processes)
        print(f"{len(served)} placements served ({time.perf_counter() - started:.0f} s to start their servers)",
              flush=True)
        device = stack.enter_context(Worker(caps[0], folder / "device.log"))
        current = None
        for r1, r2, rtts, label, entry, chosen, key in planned:
            if current != (r1, r2):
                links.set_rate(1, r1)
                links.set_rate(2, r2)
                current = (r1, r2)
            reply = device(op="latency", plan=str(served[key]), url=urls[key], requests=args.requests,
                           token_file=str(token_file))
            measured = reply["ms"]
            latency = statistics.median(measured)
            parts = {name: round(statistics.median(reply[name]), 2) for name in ("server_ms", "head_ms",
                                                                                 "head_encode_ms") if name in reply}
            rows.append({"model": model_name, "rate1_mbps": r1, "rate2_mbps": r2, "rtt_ms": rtts, "placement": label,
                         "chosen": chosen, "last_tier": entry.last_tier,
                         "nodes_per_tier": [s.nodes for s in entry.stages],
                         "bytes_per_link": [h.payload_bytes for h in entry.hops],
                         "predicted_ms": entry.latency_ms, "predicted_parts": breakdown(entry),
                         "measured_ms": latency, "measured_all_ms": measured, "measured_parts": parts})
            print(f"{model_name} {r1:g}/{r2:g} Mbit/s {label}: predicted {entry.latency_ms:.1f} ms "
                  f"{breakdown(entry)}, measured {latency:.1f} ms (min {min(measured):.1f}) {parts}", flush=True)
    return rows, calibration


# ---------------------------------------------------------------------------------------------- (b)


def contiguous_placement(names: list[str], bounds: list[int]) -> dict[str, int]:
    """Tier of each node when the nodes are cut at ``bounds`` (positions in topological order)."""
    tier_of = {}
    for tier, (start, end) in enumerate(zip([0, *bounds], [*bounds, len(names)])):
        for name in names[start:end]:
            tier_of[name] = tier
    return tier_of


def nearest_cuts(workload, targets: list[float]) -> list[int]:
    """Candidate cut positions nearest the fractional positions wanted (nested, in order)."""
    positions = sorted(cut.position for cut in workload.prefix_cuts if 0 < cut.position < len(workload.nodes))
    chosen, low = [], 0
    for target in targets:
        best = min((p for p in positions if p > low), key=lambda p: abs(p - target))
        chosen.append(best)
        low = best
    return chosen


def stage_times(entries: dict, paths: dict[str, Path], caps: list[Path | None], folder: Path,
                seconds: float) -> dict[str, dict]:
    """Each partition's stages timed in their caps, with no HTTP between them: each stage alone (the other tiers
    idle), then all of a partition's stages at once, each back to back for ``seconds``. Alone against the plan's
    stage time checks the calibrated basis; together against alone shows how much the capped processes slow each
    other down on this host's 2 cores (a cap's quota unused in its period while it waits for a core is lost)."""
    k = len(caps)
    served = {t: [str(paths[label]) for label, entry in entries.items() if entry.last_tier >= t] for t in range(k)}
    found: dict[str, dict] = {}
    with ExitStack() as stack:
        workers = [stack.enter_context(Worker(caps[t], folder / f"stages-{t}.log",
                                              prepare={"op": "load_stages", "plans": served[t], "tier": t}))
                   for t in range(k)]
        for label, entry in entries.items():
            path, used = str(paths[label]), range(entry.last_tier + 1)
            alone = [statistics.median(workers[t](op="stage", plan=path, seconds=seconds)["ms"]) for t in used]
            for t in used:
                workers[t].send(op="stage", plan=path, seconds=seconds * 1.5)
            together = [statistics.median(workers[t].reply()["ms"]) for t in used]
            planned = [s.compute_ms + s.encode_ms + s.decode_ms for s in entry.stages]
            found[label] = {"planned_stage_ms": [round(x, 1) for x in planned],
                            "alone_ms": [round(x, 1) for x in alone], "together_ms": [round(x, 1) for x in together]}
            print(f"stages of {label}: planned {found[label]['planned_stage_ms']} ms, each alone in its cap "
                  f"{found[label]['alone_ms']} ms, all at once {found[label]['together_ms']} ms", flush=True)
    return found


def bench_pipeline(model_name: str, traced, profile: Path, ref: dict, args, folder: Path,
                   token_file: Path, json_out) -> tuple[list[dict], dict]:
    """A pipeline of unequal devices (the topology YAML gives each its memory), planned for throughput; the
    planned partition, an even split of the nodes and a memory-proportional split of the weights, each served by
    its own relays (started once) and measured with ``args.concurrency`` requests in flight."""
    import yaml
    from linkemu import ChainedLinks

    from edgesplit.codecs import parse_codec
    from edgesplit.compress.payload import PlanCodec
    from edgesplit.plan.chain import ChainModel, Placement, _entry, message_host_ms_per_byte, plan_chain
    from edgesplit.plan.costs import parse_objective
    from edgesplit.plan.hardware import parse_link
    from edgesplit.plan.machines import resolve_machine
    from edgesplit.plan.schema import Constraints
    from edgesplit.plan.topology import load_topology
    from edgesplit.plan.workload import workload_of
    from edgesplit.profile import memory_bandwidth_gb_s

    factors, memories = args.pipeline_slow, args.pipeline_memory
    k = len(factors)
    with ExitStack() as stack:
        caps = [stack.enter_context(cpu_cap(f"p{t}", f)) for t, f in enumerate(factors)]
        calibration = calibrate(ref, {f"p{t}": (f, c) for t, (f, c) in enumerate(zip(factors, caps))}, folder,
                                args.calibrate_runs)
        machines = [tier_profile(profile, calibration[f"p{t}"]["forward_ms"], folder / f"{model_name}-p{t}.json",
                                 calibration[f"p{t}"]["measured"])
                    for t in range(k)]
        links = stack.enter_context(ChainedLinks([args.pipeline_mbps] * (k - 1)))
        rtt = statistics.median(hop_rtts_ms(links))
        link = f"custom:up={args.pipeline_mbps:g},rtt={rtt:.3f}"
        chain = [machines[0]]
        for machine in machines[1:]:
            chain += [link, machine]
        topology_file = folder / f"{model_name}-pipeline.yaml"
        topology_file.write_text(yaml.safe_dump({"chain": chain, "memory": [f"{m:g}GB" for m in memories],
                                                 "hop_ms": args.hop_ms}))
        topology = load_topology(topology_file)
        plan = plan_chain(traced, topology, objective="throughput", name=model_name, progress=False, model_ref=ref)
        workload = workload_of(traced, model_name)
        resolved = [resolve_machine(m, workload, lambda: None, memory_bandwidth_gb_s) for m in machines]
        model = ChainModel(workload, resolved, [parse_link(link)] * (k - 1), PlanCodec(parse_codec("fp32")),
                           memory_bandwidth_gb_s(), hop_ms=plan.hop_ms, memory_limits=list(topology.memory_bytes),
                           message_ms_per_byte=message_host_ms_per_byte())  # what plan_chain used (cached)
        names = workload.node_names
        even = nearest_cuts(workload, [len(names) * t / k for t in range(1, k)])
        weights = [sum(n.params.values()) for n in workload.nodes]
        total = sum(weights)
        shares = [sum(memories[:t]) / sum(memories) * total for t in range(1, k)]
        cumulative = [sum(weights[:i]) for i in range(len(names) + 1)]
        proportional = nearest_cuts(workload, [min(range(len(cumulative)), key=lambda i: abs(cumulative[i] - s))
                                               for s in shares])
        objective = parse_objective("throughput")
        entries = {"planned (throughput objective)": plan.chosen}
        for label, bounds in (("even split of the nodes", even),
                              ("memory-proportional split of the weights", proportional)):
            placement = Placement(label, "baseline", contiguous_placement(names, bounds), k - 1)
            placement.last_tier = max(placement.tier_of.values())
            entries[label] = _entry(model, model.breakdown(placement), objective, Constraints())
        paths = {label: with_chosen(plan, entry, folder / f"{model_name}-pipeline-{index}.json")
                 for index, (label, entry) in enumerate(entries.items())}
        stages: dict[str, dict] = {}
        if args.stage_seconds > 0:
            try:
                stages = stage_times(entries, paths, caps, folder, args.stage_seconds)
            except RuntimeError as error:  # a diagnostic: the throughput measurement goes on without it
                print(f"stage timing failed: {error}", flush=True)
        device = stack.enter_context(Worker(caps[0], folder / "pipeline-device.log"))
        rows = []
        for index, (label, entry) in enumerate(entries.items()):
            path = paths[label]
            processes = []
            try:
                url, processes = serve_chain(links, path, entry.last_tier, token_file, caps, port=8800 + index)
                single = statistics.median(device(op="latency", plan=str(path), url=url, requests=3,
                                                  token_file=str(token_file))["ms"])
                measured = device(op="throughput", plan=str(path), url=url, concurrency=args.concurrency,
                                  seconds=args.seconds, token_file=str(token_file))
            finally:
                stop(processes)
            rows.append({"model": model_name, "placement": label, "factors": factors,
                         "measured_factors": [round(calibration[f"p{t}"]["measured"], 3) for t in range(k)],
                         "memory_gb": memories, "nodes_per_tier": [s.nodes for s in entry.stages],
                         "compute_ms_per_tier": [round(s.compute_ms, 1) for s in entry.stages],
                         "bytes_per_link": [h.payload_bytes for h in entry.hops], "bottleneck": entry.bottleneck,
                         "predicted_fps": entry.throughput_fps, "measured_fps": measured["throughput"],
                         "predicted_latency_ms": entry.latency_ms, "measured_latency_ms": single,
                         "completed": measured["completed"], "errors": measured["errors"],
                         "caps_cores": round(sum(1 / f for f in factors), 3),
                         "message_host_ms_per_mb": [round(x * 1e6, 3) for x in message_host_ms_per_byte()],
                         **stages.get(label, {})})
            print(f"{model_name} pipeline {label}: nodes {[s.nodes for s in entry.stages]}, compute/tier "
                  f"{[round(s.compute_ms, 1) for s in entry.stages]} ms, predicted {entry.throughput_fps:.2f}/s, "
                  f"measured {measured['throughput']:.2f}/s ({measured['completed']} in {measured['seconds']:.1f} s, "
                  f"{len(measured['errors'])} errors); one request alone {single:.0f} ms (predicted "
                  f"{entry.latency_ms:.0f})", flush=True)
            json_out(rows)
    return rows, calibration


# ---------------------------------------------------------------------------------------------- main


def floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker_main()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mobilenetv3_large")
    parser.add_argument("--rates1", type=floats, default=[3.0, 30.0])
    parser.add_argument("--rates2", type=floats, default=[20.0, 200.0])
    parser.add_argument("--slow", type=floats, default=[8.0, 2.0], help="device and gateway slow-down factors")
    parser.add_argument("--hop-ms", type=float, default=1.0, help="the planner's fixed cost per hop and message")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--pipeline-model", default="vit_s16")
    parser.add_argument("--stage-seconds", type=float, default=4.0,
                        help="each pipeline stage timed alone and all at once in its cap for this long (0: not)")
    parser.add_argument("--pipeline-slow", type=floats, default=[4.0, 8.0, 5.0, 10.0],
                        help="per device (1/F of a core each; the shares should sum to well under the 2 cores)")
    parser.add_argument("--pipeline-memory", type=floats, default=[8.0, 4.0, 4.0, 4.0], help="GB, per device")
    parser.add_argument("--pipeline-mbps", type=float, default=200.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--profile-runs", type=int, default=5)
    parser.add_argument("--calibrate-runs", type=int, default=10)
    parser.add_argument("--skip-over", type=float, default=3.0,
                        help="placements predicted this many times slower than the choice are not measured")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: chain, pipeline")
    parser.add_argument("--json", type=Path, default=RESULTS / "multitier.json")
    args = parser.parse_args()
    from linkemu import link_emulation_unavailable, remove_stale_links

    # `timeout` and Ctrl-C: unwind, so that servers, links and cgroups are stopped and removed on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if reason := (link_emulation_unavailable() or cap_unavailable()):
        sys.exit(f"cannot run: {reason}")
    if stale := remove_stale_links() + remove_stale_caps():
        print(f"removed what killed runs left: {', '.join(stale)}")
    skip = set(filter(None, args.skip.split(",")))
    result: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    args.json.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after each part, so that a later failure or timeout keeps what was measured
        result["seconds"] = round(time.perf_counter() - began)
        result.setdefault("load_average_1min", []).append(round(os.getloadavg()[0], 2))  # others' load, 2 cores
        args.json.write_text(json.dumps(result, indent=1))

    began = time.perf_counter()
    # This process (the planner, the host profile, the link helpers) runs in a one-core group of its own, with the
    # groups' high shares: its children start there and the tiers' processes then move to their own caps.
    with cpu_cap("main", 1.0) as group, tempfile.TemporaryDirectory() as tmp:
        (group / "cgroup.procs").write_text(str(os.getpid()))
        folder = Path(tmp)
        token_file = folder / "token"
        token_file.write_text("bench-token-" + os.urandom(8).hex())
        token_file.chmod(0o600)
        if "chain" not in skip:
            result["chain"], result["chain_calibration"] = [], {}
            for model_name in args.models.split(","):
                traced, profile, ref = host_profile(model_name, folder, args.profile_runs)
                rows, calibration = bench_chain(model_name, traced, profile, ref, args, folder, token_file)
                result["chain"] += rows
                result["chain_calibration"][model_name] = calibration
                write()
        if "pipeline" not in skip:
            traced, profile, ref = host_profile(args.pipeline_model, folder, args.profile_runs)

            def partial(rows: list[dict]) -> None:
                result["pipeline"] = rows
                write()

            result["pipeline"], result["pipeline_calibration"] = bench_pipeline(
                args.pipeline_model, traced, profile, ref, args, folder, token_file, partial)
    summarize(result)
    write()
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
        if len(pipeline) < 3:
            return
        planned, even, memory = (r["measured_fps"] for r in pipeline)
        result["pipeline_ratios"] = {"vs_even": planned / even, "vs_memory_proportional": planned / memory}
        console.print(f"planned / even split: {planned / even:.2f}× (target ≥ 1.5×); planned / memory-proportional: "
                      f"{planned / memory:.2f}× (target ≥ 1.2×)")


if __name__ == "__main__":
    main()
