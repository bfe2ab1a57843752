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


CPUSET_ROOT = Path("/sys/fs/cgroup/cpuset")
_pinned: dict[Path, tuple[Path, int, float]] = {}  # a capped cpu group -> its cpuset group, that CPU, its share


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _pick_cpu(share: float) -> int:
    """The CPU with the least capped share pinned to it so far (ties: the lowest number)."""
    load = {cpu: 0.0 for cpu in _cpus()}
    for _, cpu, taken in _pinned.values():
        load[cpu] = load.get(cpu, 0.0) + taken
    return min(load, key=lambda cpu: (load[cpu], cpu))


@contextmanager
def cpu_cap(name: str, factor: float, quota_us: int = QUOTA_US, pin: bool = True):
    """A cgroup whose processes get 1/``factor`` of one core (factor 1: no quota); removed afterwards.

    CFS enforces a quota per period: a capped process runs at full speed until it has used ``quota_us`` of CPU,
    then stalls until the period ends. With the default 100 ms period a forward of a few ms runs unthrottled, or
    stalls for tens of ms, so the slowdown is bursty, not proportional. Here the quota is the kernel's 1 ms
    minimum and the period ``factor`` × that (8 ms for 1/8 of a core): a stage of a few ms is already slowed
    about ``factor`` times (:func:`calibrate` checks it). The group's high ``cpu.shares`` make it win the CPU
    from other processes while it has quota left, so its speed does not follow the host's load.

    A capped group is also **pinned to one CPU** (a cpuset group; ``pin``), the one with the least capped share
    so far, so that all of a tier's threads (a relay's event loop, decoder and compute threads; the device's
    client threads) share one run queue, as on a one-core device: unpinned, each CPU's run queue takes its own
    slice of the group's quota and may keep up to 1 ms of it (``min_cfs_rq_runtime``), all of a 1 ms quota. Its
    effect was not measured apart (one forward per setting, 2026-12-07: 194 ms of CPU per forward pinned against
    239 unpinned at 1/10 of a core, 164 against 154 at 1/4)."""
    group = CGROUP_ROOT / f"es_{os.getpid()}_{name}"
    group.mkdir()
    cpuset = None
    try:
        if factor > 1.0:  # else no quota: one thread cannot take more than its core anyway
            (group / "cpu.cfs_period_us").write_text(str(round(quota_us * factor)))
            (group / "cpu.cfs_quota_us").write_text(str(quota_us))
            if pin and (CPUSET_ROOT / "cpuset.cpus").exists():
                cpu = _pick_cpu(1 / factor)
                cpuset = CPUSET_ROOT / group.name
                cpuset.mkdir()
                (cpuset / "cpuset.cpus").write_text(str(cpu))
                (cpuset / "cpuset.mems").write_text((CPUSET_ROOT / "cpuset.mems").read_text().strip())
                _pinned[group] = (cpuset, cpu, 1 / factor)
        (group / "cpu.shares").write_text(str(SHARES))
        yield group
    finally:
        _pinned.pop(group, None)
        for folder, root in ((group, CGROUP_ROOT), (cpuset, CPUSET_ROOT)):
            if folder is not None:
                _remove_group(folder, root)


def _remove_group(group: Path, root: Path) -> None:
    """Move whatever still runs in ``group`` back to ``root`` (gone processes are skipped), then delete it."""
    for pid in (group / "cgroup.procs").read_text().split():
        try:
            (root / "cgroup.procs").write_text(pid)
        except OSError:
            pass
    group.rmdir()


def pinned_cpu(group: Path | None) -> int | None:
    """The CPU a capped group is pinned to (None: not pinned)."""
    return _pinned[group][1] if group in _pinned else None


def cap_unavailable() -> str | None:
    if not (CGROUP_ROOT / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {CGROUP_ROOT}"
    if os.geteuid() != 0:
        return "needs root to create cgroups"
    return None


def remove_stale_caps() -> list[str]:
    """Delete the cgroups (cpu and cpuset) of earlier runs whose process is gone (a killed run leaves them)."""
    removed = []
    for root in (CGROUP_ROOT, CPUSET_ROOT):
        for group in root.glob("es_*"):
            pid = group.name.split("_")[1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                _remove_group(group, root)
                removed.append(f"{root.name}/{group.name}")
    return removed


def place(process: subprocess.Popen, group: Path | None) -> None:
    """Move ``process`` (all its threads) into ``group``, and onto its CPU where the group is pinned."""
    if group is not None:
        if group in _pinned:
            (_pinned[group][0] / "cgroup.procs").write_text(str(process.pid))
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
    """Start tiers ``last_tier`` … 1 of a chain plan in their namespaces; the URL of tier 1. The servers start
    all at once (each one's import of torch and load of the model took up to a minute on this busy host, one
    after another most of a partition's time), uncapped (at 1/8 of a core the import took about a minute), and
    each joins its tier's cgroup once it answers /readyz (the last tier first: a relay is ready when its next hop
    is), before any timed request."""
    exe = shutil.which("edgesplit") or str(Path(sys.executable).parent / "edgesplit")
    token = token_file.read_text().strip()
    processes: list[subprocess.Popen] = []
    urls = {tier: f"http://{links.address(tier)}:{port}" for tier in range(1, last_tier + 1)}
    for tier in range(last_tier, 0, -1):
        args = [exe, "serve", str(plan_path), "--tier", str(tier), "--host", links.address(tier), "--port",
                str(port), "--token-file", str(token_file), "--log-level", "warning", "--max-batch", "1"]
        if tier < last_tier:
            args += ["--next", urls[tier + 1], "--next-token-file", str(token_file), "--next-timeout", "60"]
        log = open(plan_path.with_suffix(f".tier{tier}.log"), "w")  # noqa: SIM115 - the process writes it
        processes.append(links.popen(tier, args, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True))
    for tier, process in zip(range(last_tier, 0, -1), processes):
        try:
            _wait_ready(urls[tier], token, process, timeout_s=240.0)
        except RuntimeError as error:
            stop(processes)
            tail = plan_path.with_suffix(f".tier{tier}.log").read_text()[-1500:]
            raise RuntimeError(f"{error}; tier {tier} said:\n{tail}") from error
        place(process, caps[tier])
    return urls[1], processes


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
            return throughput(plan, command["url"], token, x, command["concurrency"], command["seconds"],
                              command.get("pids", []), command.get("groups", []), command.get("warm_s", 0.0))
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


def cpu_ms(pid: int | str) -> float:
    """CPU time (user + system, all threads, ms) that process ``pid`` ("self": this one) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1e3 / os.sysconf("SC_CLK_TCK")


def throttling(group: str) -> dict[str, int]:
    """A cgroup v1 cpu group's counters: periods, periods throttled, ns throttled."""
    return {k: int(v) for k, v in (line.split() for line in Path(group, "cpu.stat").read_text().splitlines())
            if k in ("nr_periods", "nr_throttled", "throttled_time")}


def throughput(plan, url: str, token: str, x, concurrency: int, seconds: float, pids: list | None = None,
               groups: list | None = None, warm_s: float = 0.0) -> dict:
    """Requests answered per second by ``concurrency`` clients with one request in flight each: the clients run
    for ``warm_s`` + ``seconds``, and the answers that arrive in the last ``seconds`` are counted (the pipeline
    is full by then; the whole run's completed / elapsed, which counts its filling and draining, is kept
    beside it); with ``pids``
    (tier 0 being "self") the CPU each tier's process used per request over exactly that window (from the moment
    the clients start, none in flight, to the moment the last one's final request is answered), and with
    ``groups`` (their cgroups) how often each was throttled."""
    from edgesplit.runtime.chain_client import ChainClient

    done, stop_at, errors, clients = [0] * concurrency, [0.0], [], []
    finished: list[float] = []  # when each request was answered (list.append is atomic)
    for _ in range(concurrency):
        client = ChainClient(plan, url, token, timeout_s=120, fallback=False)
        client.infer(x)  # connects and warms up
        clients.append(client)

    def worker(index: int) -> None:
        try:
            barrier.wait()
            while time.perf_counter() < stop_at[0]:
                clients[index].infer(x)
                finished.append(time.perf_counter())
                done[index] += 1
        except Exception as error:  # noqa: BLE001 - reported in the result
            errors.append(repr(error))

    barrier = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    pids, groups = pids or [], groups or []
    cpu_before = [cpu_ms(pid) for pid in pids]
    throttled_before = [throttling(g) for g in groups]
    start = time.perf_counter()
    stop_at[0] = start + warm_s + seconds
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    cpu = [cpu_ms(pid) - before for pid, before in zip(pids, cpu_before)]
    throttled = [{k: v - before[k] for k, v in throttling(g).items()} for g, before in zip(groups, throttled_before)]
    for client in clients:
        client.close()
    completed = sum(done)
    window = start + warm_s
    steady = [t for t in finished if window < t <= stop_at[0]]
    return {"completed": completed, "seconds": elapsed, "throughput": len(steady) / seconds,
            "throughput_whole_run": completed / elapsed, "steady_seconds": seconds, "steady_completed": len(steady),
            "errors": errors,
            "cpu_ms_per_request": [c / max(completed, 1) for c in cpu],
            "cpu_share": [c / (elapsed * 1e3) for c in cpu], "throttled": throttled}


def calibrate(ref: dict, caps: dict[str, tuple[float, Path | None]], folder: Path, runs: int) -> dict[str, dict]:
    """Each cap's real slowdown: whole forwards of the model in a worker inside the cap, against a worker with no
    cap; printed beside the nominal factor. The caps are timed all at once (each pinned to its CPU), as the tiers
    run in the pipeline: a capped forward's CPU time depends on what else runs on its CPU between its slices."""
    shape = [1, 3, 224, 224]
    with cpu_cap("free", 1.0) as one_core, Worker(one_core, folder / "calibrate-free.log") as free:
        base = statistics.median(free(op="forward", ref=ref, shape=shape, runs=runs)["ms"])
    out = {}
    with ExitStack() as stack:  # every cap at once, as they run in the pipeline (each on its pinned CPU)
        workers = {name: stack.enter_context(Worker(cap, folder / f"calibrate-{name}.log"))
                   for name, (_, cap) in caps.items()}
        for worker in workers.values():
            worker.send(op="forward", ref=ref, shape=shape, runs=max(3, runs // 2))
        replies = {name: worker.reply()["ms"] for name, worker in workers.items()}
    for name, (factor, cap) in caps.items():
        times = replies[name]
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


def message_costs(links, folder: Path, token_file: Path, concurrency: int, seconds: float = 4.0) -> dict:
    """The serving stack's CPU per message on this host, apart from any model's compute: (sender, receiver) ms.

    A tiny model (resnet8 at 32×32, stages of well under a millisecond) is served as a three-tier chain in the
    first namespaces (uncapped: this host's figures, which the planner scales to each machine), requests are sent
    with ``concurrency`` in flight as in (b), and each process's CPU per request is read over the run: the last
    tier's, less its stage, is what a **receiver** spends on a message (parse, check, decode, answer); the
    relay's, less its stage and the receiver's share, what a **sender** spends (post the request, read its answer,
    pass it back); the device's, less stage 0, is printed beside it (its client is synchronous httpx, the
    relay's asynchronous)."""
    import torch

    from edgesplit.model.graph import trace
    from edgesplit.model.intake import ModelRef, save_weights
    from edgesplit.model.zoo import resnet8
    from edgesplit.plan.chain import plan_chain

    torch.manual_seed(0)
    module = resnet8().eval()
    weights = folder / "message-resnet8.safetensors"
    save_weights(module, weights, ModelRef("resnet8"), (1, 3, 32, 32))
    traced = trace(module, torch.rand(1, 3, 32, 32))
    plan = plan_chain(traced, "host > ethernet > host > ethernet > host", objective="throughput", name="resnet8",
                      progress=False, model_ref={"name": "resnet8", "kwargs": {}, "weights": str(weights)})
    entry = next(e for e in [plan.chosen, *plan.baselines] if e.last_tier == 2)
    path = with_chosen(plan, entry, folder / "message-chain.json")
    processes = []
    try:
        url, processes = serve_chain(links, path, 2, token_file, [None] * links.tiers, port=8790)
        with Worker(None, folder / "message-device.log") as device:
            stage = []
            for tier in range(3):  # each tier's stage alone, on this host, as the servers run it
                device(op="load_stages", plans=[str(path)], tier=tier)
                stage.append(statistics.median(device(op="stage", plan=str(path), seconds=0.5)["ms"]))
            pids = ["self", *[process.pid for process in reversed(processes)]]
            before, began = [cpu_ms(pid if pid != "self" else device.process.pid) for pid in pids], time.perf_counter()
            time.sleep(2.0)  # idle: what the processes use with no request (timers, polling), per second
            idle = [(cpu_ms(pid if pid != "self" else device.process.pid) - b) / (time.perf_counter() - began) / 1e3
                    for pid, b in zip(pids, before)]
            measured = device(op="throughput", plan=str(path), url=url, concurrency=concurrency, seconds=seconds,
                              token_file=str(token_file), pids=pids)
    finally:
        stop(processes)
    cpu = measured["cpu_ms_per_request"]
    receive = max(cpu[2] - stage[2], 0.0)
    send = max(cpu[1] - stage[1] - receive, 0.0)
    found = {"send_ms": round(send, 3), "receive_ms": round(receive, 3),
             "device_send_ms": round(max(cpu[0] - stage[0], 0.0), 3), "cpu_ms_per_request": [round(c, 3) for c in cpu],
             "stage_ms": [round(x, 3) for x in stage], "requests": measured["completed"],
             "throughput": round(measured["throughput"], 1), "idle_share": [round(x, 4) for x in idle]}
    print(f"serving stack per message on this host: sender {send:.2f} ms, receiver {receive:.2f} ms of CPU (device's "
          f"client {found['device_send_ms']:.2f} ms; CPU per request per tier {found['cpu_ms_per_request']}, stages "
          f"{found['stage_ms']} ms, {measured['completed']} requests at {measured['throughput']:.0f}/s; idle, share "
          f"of a core per tier {found['idle_share']})", flush=True)
    return found


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
        message = {"send_ms": 0.0, "receive_ms": 0.0}
        if args.message_cost:
            message = message_costs(links, folder, token_file, args.concurrency)
        message_ms = (message["send_ms"], message["receive_ms"])
        plan = plan_chain(traced, topology, objective="throughput", name=model_name, progress=False, model_ref=ref,
                          message_ms=message_ms)
        workload = workload_of(traced, model_name)
        resolved = [resolve_machine(m, workload, lambda: None, memory_bandwidth_gb_s) for m in machines]
        model = ChainModel(workload, resolved, [parse_link(link)] * (k - 1), PlanCodec(parse_codec("fp32")),
                           memory_bandwidth_gb_s(), hop_ms=plan.hop_ms, memory_limits=list(topology.memory_bytes),
                           message_ms_per_byte=message_host_ms_per_byte(),  # what plan_chain used (cached)
                           message_ms=message_ms)
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
            if args.partitions and index not in args.partitions:
                continue
            path = paths[label]
            processes = []
            try:
                url, processes = serve_chain(links, path, entry.last_tier, token_file, caps, port=8800 + index)
                single = statistics.median(device(op="latency", plan=str(path), url=url, requests=3,
                                                  token_file=str(token_file))["ms"])
                pids = ["self", *[process.pid for process in reversed(processes)]]  # tiers 0, 1, … last
                measured = device(op="throughput", plan=str(path), url=url, concurrency=args.concurrency,
                                  seconds=args.seconds, token_file=str(token_file), pids=pids,
                                  groups=[str(cap) for cap in caps[:entry.last_tier + 1]], warm_s=args.warm_seconds)
            finally:
                stop(processes)
            rows.append({"model": model_name, "placement": label, "factors": factors,
                         "measured_factors": [round(calibration[f"p{t}"]["measured"], 3) for t in range(k)],
                         "memory_gb": memories, "nodes_per_tier": [s.nodes for s in entry.stages],
                         "compute_ms_per_tier": [round(s.compute_ms, 1) for s in entry.stages],
                         "bytes_per_link": [h.payload_bytes for h in entry.hops], "bottleneck": entry.bottleneck,
                         "predicted_fps": entry.throughput_fps, "measured_fps": measured["throughput"],
                         "measured_fps_whole_run": measured["throughput_whole_run"],
                         "steady_seconds": measured["steady_seconds"], "steady_completed": measured["steady_completed"],
                         "predicted_latency_ms": entry.latency_ms, "measured_latency_ms": single,
                         "completed": measured["completed"], "errors": measured["errors"],
                         "caps_cores": round(sum(1 / f for f in factors), 3),
                         "message_host_ms_per_mb": [round(x * 1e6, 3) for x in message_host_ms_per_byte()],
                         "message_host_ms": message,
                         "planned_busy_ms": [round(s.compute_ms + s.encode_ms + s.decode_ms, 1) for s in entry.stages],
                         "pinned_cpus": [pinned_cpu(cap) for cap in caps],
                         "cpu_ms_per_request": [round(x, 2) for x in measured["cpu_ms_per_request"]],
                         "cpu_share": [round(x, 4) for x in measured["cpu_share"]],
                         "throttled": measured["throttled"],
                         **stages.get(label, {})})
            print(f"{model_name} pipeline {label}: nodes {[s.nodes for s in entry.stages]}, compute/tier "
                  f"{[round(s.compute_ms, 1) for s in entry.stages]} ms, predicted {entry.throughput_fps:.2f}/s, "
                  f"measured {measured['throughput']:.2f}/s ({measured['steady_completed']} answers in the last "
                  f"{measured['steady_seconds']:g} s; whole run {measured['throughput_whole_run']:.2f}/s, "
                  f"{measured['completed']} in {measured['seconds']:.1f} s, "
                  f"{len(measured['errors'])} errors); one request alone {single:.0f} ms (predicted "
                  f"{entry.latency_ms:.0f}); CPU per request per tier "
                  f"{[round(x, 1) for x in measured['cpu_ms_per_request']]} ms, share of a core "
                  f"{[round(x, 3) for x in measured['cpu_share']]}", flush=True)
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
    parser.add_argument("--no-message-cost", dest="message_cost", action="store_false",
                        help="(b): do not measure the serving stack's CPU per message (the planner then takes 0)")
    parser.add_argument("--concurrency", type=int, default=8, help="(b): requests in flight")
    parser.add_argument("--warm-seconds", type=float, default=8.0,
                        help="(b): requests flow this long before the --seconds whose answers are counted")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--profile-runs", type=int, default=5)
    parser.add_argument("--calibrate-runs", type=int, default=10)
    parser.add_argument("--skip-over", type=float, default=3.0,
                        help="placements predicted this many times slower than the choice are not measured")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: chain, pipeline")
    parser.add_argument("--partitions", type=lambda t: [int(x) for x in t.split(",") if x], default=[],
                        help="(b): measure only these partitions (0 planned, 1 even, 2 memory-proportional)")
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
