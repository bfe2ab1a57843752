"""The device client without PyTorch (``edgesplit.device``): against a real `edgesplit serve`, from a bundle that
`edgesplit export` wrote for a plan `edgesplit plan` made, in a process where ``import torch`` fails. Its answers
equal the torch client's on every route, it falls back to the bundle's whole model when the server stops, retries
with one request id, refuses a wrong token clearly, and `python -m edgesplit.device` prints `edgesplit infer`'s
summary."""

import json
import os
import subprocess
import sys
import textwrap

import httpx
import numpy as np
import pytest
import torch

from edgesplit.device.bundle import load_bundle
from edgesplit.device.client import BundleView, DeviceClient
from edgesplit.plan.schema import load_plan
from edgesplit.runtime.adapt import BandwidthEstimator, SwitchPolicy
from edgesplit.runtime.client import Client
from edgesplit.runtime.deployment import load_deployment
from edgesplit.runtime.engine import Engine, ServerLimits
from edgesplit.runtime.server import ServerThread, decode_limits
from edgesplit.runtime.wire import Request
from runtime_plans import save_plan, with_routes, write_model
from test_cli import edgesplit_in_process

TOKEN = "device-client-test-token"
TOLERANCE = 1e-4
# The input whole as PNG and as 8-bit levels, two cuts of small_cnn with two codecs (one with zstd).
ROUTES = [(0.0, 2.0, {"kind": "all-server", "label": "all on server (png input)", "codec": "fp32"}),
          (2.0, 20.0, {"kind": "all-server", "label": "all on server (uint8 input)", "codec": "uint8"}),
          (20.0, 200.0, {"cut_index": 4, "codec": "int8"}),
          (200.0, 1e9, {"cut_index": 8, "codec": "fp16+zstd"})]

# Installed before anything else is imported: any import of torch (or a torch submodule) fails.
BLOCKER = textwrap.dedent("""\
    import importlib.abc, sys
    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == 'torch' or name.startswith('torch.'):
                raise ImportError('torch is blocked on this device')
    sys.meta_path.insert(0, NoTorch())
    """)


def _without_torch(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(script), *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(plan path, bundle folder, deployment): small_cnn planned by `edgesplit plan --json`, its switch table set to
    ROUTES, exported by `edgesplit export`."""
    folder = tmp_path_factory.mktemp("device")
    weights, _ = write_model(folder, "small_cnn", shape=(1, 1, 8, 8))
    planned = edgesplit_in_process("plan", "small_cnn", "--weights", str(weights), "--input-shape", "1,1,8,8",
                                   "--device", "rpi4", "--server", "edge-gpu", "--link", "wifi", "--runs", "2",
                                   "--json", str(folder / "planned.json"), "-q")
    assert planned.returncode == 0, planned.stderr
    plan = save_plan(with_routes(load_plan(folder / "planned.json"), ROUTES), folder / "plan.json")
    exported = edgesplit_in_process("export", str(plan), "--out", str(folder / "bundle"))
    assert exported.returncode == 0, exported.stderr
    return plan, folder / "bundle", load_deployment(load_plan(plan), plan_dir=folder)


@pytest.fixture(scope="module")
def server(setup):
    _, _, deployment = setup
    limits = ServerLimits(max_request_bytes=1 << 20, decode=decode_limits([deployment], 64), max_wait_ms=1.0)
    with ServerThread(Engine([deployment], limits), token=TOKEN) as srv:
        yield srv


def _inputs(count: int = 5) -> np.ndarray:
    return np.random.default_rng(1).random((count, 1, 8, 8), dtype=np.float32)


def test_answers_equal_the_torch_clients_on_every_route_without_torch(setup, server, tmp_path):
    plan, bundle, deployment = setup
    labels = [row.label for row in deployment.plan.switch_table]
    x = _inputs()
    np.save(tmp_path / "x.npy", x)
    script = """
        import json, sys
        import numpy as np
        from edgesplit.device.client import DeviceClient
        bundle, url, token, out, labels = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
        x = np.load(out + '/x.npy')
        found, where = {}, {}
        for i, label in enumerate(labels):
            with DeviceClient(bundle, url, token, route=label, fallback=False) as client:
                results = [client.infer(row) for row in x] + [client.infer(x)]  # one at a time, and a batch of 5
                found[f'r{i}'] = np.concatenate([r.logits for r in results[:-1]])
                found[f'b{i}'] = results[-1].logits
                where[label] = sorted({(r.where, r.label, r.mode) for r in results})
                found[f'local{i}'] = client.run_locally(x)[0]
        np.savez(out + '/device.npz', **found)
        print(json.dumps({'where': where, 'torch': [m for m in sys.modules if m.split('.')[0] == 'torch']}))
        """
    done = _without_torch(script, str(bundle), server.url, TOKEN, str(tmp_path), json.dumps(labels))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["torch"] == []
    device = np.load(tmp_path / "device.npz")
    with torch.no_grad():
        whole = deployment.model(torch.from_numpy(x)).numpy()
    for i, label in enumerate(labels):
        assert report["where"][label] == [["server", label, "route"]]
        with Client(plan, server.url, TOKEN, route=label, fallback=False) as client:
            mine = torch.cat([client.infer(torch.from_numpy(row)).logits for row in x]).numpy()
            batch = client.infer(torch.from_numpy(x)).logits.numpy()
        assert np.abs(device[f"r{i}"] - mine).max() <= TOLERANCE, label
        assert np.abs(device[f"b{i}"] - batch).max() <= TOLERANCE, label
        assert np.abs(device[f"local{i}"] - whole).max() <= TOLERANCE  # the bundle's model.onnx
    assert not np.allclose(device["r0"], device["r3"], atol=1e-6)  # the routes are not one computation


def test_it_falls_back_to_the_bundles_model_when_the_server_stops_and_refuses_a_wrong_token(setup, tmp_path):
    _, bundle, deployment = setup
    x = _inputs(3)
    np.save(tmp_path / "x.npy", x)
    script = """
        import json, sys
        import numpy as np
        from edgesplit.device.client import DeviceClient
        from edgesplit.runtime.errors import ServerRejectedError
        bundle, url, token, out = sys.argv[1:5]
        x = np.load(out + '/x.npy')
        try:
            DeviceClient(bundle, url, 'not-the-token').infer(x[0])
            refused = None
        except ServerRejectedError as error:
            refused = str(error)
        client = DeviceClient(bundle, url, token, route='split 8 [fp16+zstd]', retries=1, backoff_s=0.01,
                              timeout_s=2.0, probe_every_s=60)
        first = client.infer(x[0])
        print('answered', flush=True)
        sys.stdin.readline()  # the server is stopped now
        later = [client.infer(row) for row in x]
        np.save(out + '/fallback.npy', np.concatenate([r.logits for r in later]))
        s = client.stats
        print(json.dumps({'refused': refused, 'first': [first.where, first.mode],
                          'later': sorted({(r.where, r.mode, r.label) for r in later}),
                          'stats': [s.fallbacks, s.outages, s.retries, s.server_results, s.device_results],
                          'torch': [m for m in sys.modules if m.split('.')[0] == 'torch']}))
        """
    limits = ServerLimits(max_request_bytes=1 << 20, decode=decode_limits([deployment], 64))
    srv = ServerThread(Engine([deployment], limits), token=TOKEN).start()
    child = subprocess.Popen([sys.executable, "-c", BLOCKER + textwrap.dedent(script), str(bundle), srv.url, TOKEN,
                              str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "answered", child.stderr.read()
    finally:
        srv.stop()
    out, err = child.communicate("go\n", timeout=120)
    assert child.returncode == 0, err
    report = json.loads(out)
    assert "HTTP 401" in report["refused"] and "token" in report["refused"]
    assert report["first"] == ["server", "route"]
    assert report["later"] == [["device", "fallback", "all on device"]]
    fallbacks, outages, retries, server_results, device_results = report["stats"]
    assert (fallbacks, outages, retries, server_results, device_results) == (3, 1, 1, 1, 3)
    assert report["torch"] == []
    with torch.no_grad():
        whole = deployment.model(torch.from_numpy(x)).numpy()
    assert np.abs(np.load(tmp_path / "fallback.npy") - whole).max() <= TOLERANCE


def test_the_whole_model_is_loaded_only_when_the_device_runs_it_and_answers_when_the_server_is_gone(setup):
    """Sessions are made on first use: a client pinned to one split route holds that route's head only; the
    bundle's model.onnx is loaded on the first outage, and answers as the whole model does."""
    _, bundle, deployment = setup
    x = _inputs(3)
    limits = ServerLimits(max_request_bytes=1 << 20, decode=decode_limits([deployment], 64))
    srv = ServerThread(Engine([deployment], limits), token=TOKEN).start()
    try:
        client = DeviceClient(bundle, srv.url, TOKEN, route="split 8 [fp16+zstd]", retries=0, timeout_s=2.0,
                              probe_every_s=60)
        view = client.deployment
        assert not view.model.loaded and not any(r.head.loaded for r in view.routes if r.head is not None)
        first = client.infer(x[0])
        loaded = {r.label for r in view.routes if r.head is not None and r.head.loaded}
        assert first.where == "server" and loaded == {"split 8 [fp16+zstd]"}
        assert not view.model.loaded  # connected and answered: the fallback is still on disk only
    finally:
        srv.stop()
    later = client.infer(x)
    client.close()
    assert (later.where, later.mode) == ("device", "fallback") and view.model.loaded
    with torch.no_grad():
        whole = deployment.model(torch.from_numpy(x)).numpy()
    assert np.abs(later.logits - whole).max() <= TOLERANCE


def test_retries_keep_the_request_id(setup, server):
    """A 503 then an answer: two attempts of one request, one id (the server answers an id at most once)."""
    _, bundle, _ = setup
    seen: list[bytes] = []
    forward = httpx.Client(base_url=server.url, timeout=30)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/infer":
            seen.append(Request.from_bytes(request.content).request_id)
            if len(seen) == 1:
                return httpx.Response(503, json={"error": "busy"})
        reply = forward.request(request.method, request.url.path, content=request.content,
                                headers=dict(request.headers))
        return httpx.Response(reply.status_code, content=reply.content, headers=reply.headers)

    with DeviceClient(bundle, server.url, TOKEN, route="split 4 [int8]", transport=httpx.MockTransport(handler),
                      backoff_s=0.01) as client:
        result = client.infer(_inputs(1)[0])
    forward.close()
    assert result.where == "server" and result.attempts == 2 and client.stats.retries == 1
    assert len(seen) == 2 and seen[0] == seen[1] == bytes.fromhex(result.request_id)


def test_the_policy_chooses_the_routes_the_torch_client_would(setup):
    """One SwitchPolicy and BandwidthEstimator for both clients: fed the same samples, the bundle's view of the switch
    table and the deployment choose the same plans."""
    _, bundle, deployment = setup
    view = BundleView(load_bundle(bundle))
    ours, theirs = SwitchPolicy(view), SwitchPolicy(deployment)
    assert ours.ranges == theirs.ranges and ours.all_device_label == theirs.all_device_label
    rng = np.random.default_rng(0)
    label_a = label_b = ours.label_at(deployment.plan.link.uplink_mbps)
    estimator = BandwidthEstimator(deployment.plan.link.uplink_mbps)
    for _ in range(200):
        mbps = estimator.add(float(rng.integers(1_000, 2_000_000)), float(rng.uniform(0.001, 2.0)))
        label_a, label_b = ours.next(label_a, mbps), theirs.next(label_b, mbps)
        assert label_a == label_b
        assert ours.above(label_a) == theirs.above(label_b)
        assert (view.route_for_label(label_a) is None) == (deployment.route_for_label(label_b) is None)
    for mbps in (0.5, 1.99, 2.0, 19.0, 25.0, 250.0, 1e10):
        assert view.label_at(mbps) == deployment.label_at(mbps)


def test_python_m_edgesplit_device_prints_the_infer_summary(setup, server, tmp_path):
    """The same summary as `edgesplit infer` on the same route: the same bytes sent to within 0.1% (the codecs
    write the same frames for the same tensors, tests/test_device_codecs.py; here the heads are onnxruntime's and
    PyTorch's, whose float32 outputs differ in the last bits, which can round a value to another fp16 and change
    what zstd writes by a few bytes: 24,152 against 24,154 on one x86 machine), the same predictions, accuracy and
    agreement."""
    plan, bundle, _ = setup
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    args = ["--server", server.url, "--token-file", str(token_file), "--data", "digits", "--limit", "12",
            "--route", "split 8 [fp16+zstd]"]
    run = ("import runpy, sys\n"
           "sys.argv = ['edgesplit.device', *sys.argv[1:]]\n"
           "runpy.run_module('edgesplit.device', run_name='__main__')\n")
    done = _without_torch(run, str(bundle), *args, "--json", str(tmp_path / "device.json"))
    assert done.returncode == 0, done.stderr
    infer = edgesplit_in_process("infer", str(plan), *args, "--json", str(tmp_path / "torch.json"), "-q")
    assert infer.returncode == 0, infer.stderr
    ours, theirs = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("device", "torch"))
    summary = ours["summary"]
    assert summary["kind"] == "edgesplit.infer" and summary["images"] == 12 and summary["model"] == "small_cnn"
    assert summary.keys() == theirs["summary"].keys()
    for key in ("images", "requests", "routes", "server_results", "fallbacks", "accuracy", "agreement",
                "final_route", "source"):
        assert summary[key] == theirs["summary"][key], key
    assert abs(summary["bytes_sent"] - theirs["summary"]["bytes_sent"]) <= 1e-3 * theirs["summary"]["bytes_sent"]
    assert abs(summary["max_abs_diff"] - theirs["summary"]["max_abs_diff"]) <= TOLERANCE
    assert [r["predictions"] for r in ours["records"]] == [r["predictions"] for r in theirs["records"]]
    for line in (f"small_cnn via {server.url}: 12 images from digits (test split)", "agreement with the model run",
                 "split 8 [fp16+zstd] ×12"):
        assert line in done.stdout and line in infer.stdout, line
    assert f"{summary['bytes_sent']:,} (" in done.stdout
    token_file.write_text("a-wrong-token-that-is-long-enough-for-the-rules\n")
    refused = _without_torch(run, str(bundle), "--server", server.url, "--token-file", str(token_file), "--limit", "2")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "HTTP 401" in lines[0]


def test_importing_the_device_package_pulls_in_no_torch():
    done = _without_torch("""
        import sys
        import edgesplit.device
        import edgesplit.device.client, edgesplit.device.__main__
        from edgesplit.device import DeviceClient, load_bundle
        print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))
        """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_route_the_manifest_runs_in_int8_runs_its_int8_head(setup, server, tmp_path):
    import onnxruntime as ort

    plan, _, _ = setup
    exported = edgesplit_in_process("export", str(plan), "--out", str(tmp_path / "int8"), "--quantize", "int8",
                                    "--data", "digits", "--calibration", "16", "--holdout", "32")
    assert exported.returncode == 0, exported.stderr
    bundle = load_bundle(tmp_path / "int8")
    entry = bundle.manifest.routes[2]
    assert entry.runs == "int8" and entry.int8.file.name != entry.head.name
    # Route 2 sends int8: its int8 head returns the uint8 tensor of its last QuantizeLinear, sent as it is.
    direct = entry.int8.quantized_output
    assert direct is not None and entry.run_file == direct.file
    x = _inputs(4)
    with DeviceClient(bundle, server.url, TOKEN, route=entry.label, fallback=False) as client:
        sent = client.deployment.routes[2].device_side(x)[0]
        payload = client.deployment.routes[2].encode([sent])
        answer = client.infer(x)
    dequantized, floats, emitted = (
        ort.InferenceSession(str(bundle.path(f)), providers=["CPUExecutionProvider"]).run(None, {"input_0": x})[0]
        for f in (entry.int8.file, entry.head, direct.file))
    assert sent.dtype == np.uint8 and np.array_equal(sent, emitted)
    assert answer.where == "server" and answer.logits.shape == (4, 10)
    # What the server reads from those bytes is the int8 head's dequantized output; its answer is its tail's on it.
    plan_path, _, deployment = setup
    route = deployment.route_for_label(entry.label)
    received = route.decode(payload, decode_limits([deployment], 64), 64)[0].numpy()
    assert np.abs(received - dequantized).max() <= 1e-6 * max(1.0, float(np.abs(dequantized).max()))

    def tail(features: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.utils._pytree.tree_leaves(route.server_side([torch.from_numpy(features)]))[0].numpy()

    assert np.abs(answer.logits - tail(dequantized)).max() <= TOLERANCE
    # The float route (the torch client: float head, then the int8 codec) within the int8 codec's tolerance: no
    # further from it than the int8 head's output sent through the codec again (the route before this change), with
    # half a codec step of slack.
    with Client(plan_path, server.url, TOKEN, route=entry.label, fallback=False) as client:
        float_route = client.infer(torch.from_numpy(x)).logits.numpy()
    codec = route.codecs[0]
    recoded = route.decode(route.encode([torch.from_numpy(dequantized)]), decode_limits([deployment], 64), 64)[0]
    before = np.abs(tail(recoded.numpy()) - float_route).max()
    step = float(floats.max() - floats.min()) / 255
    slack = np.abs(tail(dequantized + step / 2) - tail(dequantized)).max()
    assert codec.spec == "int8" and np.abs(answer.logits - float_route).max() <= before + slack + TOLERANCE


def _closure(requirements: list[str]) -> set[str]:
    """The distributions ``requirements`` pull in, as installed here (markers evaluated without extras)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        requirement = Requirement(todo.pop())
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            todo.extend(metadata.requires(name) or [])
        except metadata.PackageNotFoundError:
            pass
    return seen


def test_the_edgesplit_device_wheel_has_no_torch_and_runs_without_it(setup, server, tmp_path):
    """device-dist/ builds a wheel of the torch-free modules only; torch is nowhere in its requirements (or theirs,
    as installed here), and the client runs from the unpacked wheel alone with ``import torch`` blocked."""
    import zipfile
    from email.parser import Parser
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            str(root / "device-dist"), "-w", str(tmp_path)], capture_output=True, text=True,
                           timeout=120, check=False)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("edgesplit_device-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = Parser().parsestr(archive.read(next(n for n in names if n.endswith("METADATA"))).decode())
        archive.extractall(tmp_path / "site")
    requires = metadata.get_all("Requires-Dist")
    assert "onnxruntime" in " ".join(requires) and not any("torch" in r for r in requires)
    assert not any("torch" in name for name in _closure(requires))
    modules = sorted(n.removesuffix(".py").replace("/", ".").removesuffix(".__init__") for n in names
                     if n.endswith(".py"))
    assert "edgesplit.device.client" in modules and "edgesplit.runtime.client" not in modules
    bundle, token_file = setup[1], tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    script = (f"import importlib, runpy, sys\n"
              f"for name in {modules!r}: importlib.import_module(name)\n"
              f"assert sys.modules['edgesplit'].__file__.startswith({str(tmp_path / 'site')!r})\n"
              "sys.argv = ['edgesplit.device', *sys.argv[1:]]\n"
              "runpy.run_module('edgesplit.device', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", BLOCKER + script, str(bundle), "--server", server.url,
                           "--token-file", str(token_file), "--limit", "4"], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert done.returncode == 0, done.stderr
    assert "4 images from digits (test split)" in done.stdout
