"""A Hugging Face decoder that takes token ids, served: plan → a real server on 127.0.0.1 → infer, on the route that
sends the int64 ids themselves and on split routes that send hidden states (N×T×D); bad ids and dtypes refused."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

transformers = pytest.importorskip("transformers")

from runtime_plans import save_plan, with_routes
from test_cli import assert_user_error, edgesplit_in_process

from edgesplit.codecs import unpack
from edgesplit.plan.schema import load_plan
from edgesplit.runtime.client import Client
from edgesplit.runtime.deployment import Deployment, load_deployment
from edgesplit.runtime.engine import Engine, ServerLimits
from edgesplit.runtime.errors import ClientError
from edgesplit.runtime.infer import load_inputs, run_inference
from edgesplit.runtime.server import ServerThread, decode_limits
from edgesplit.runtime.wire import Request, Response, Status, new_request_id

VOCAB, LENGTH = 64, 8
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict:
    """A tiny GPT-2 planned with `edgesplit plan` (a slow device: it sends the ids), its switch table given a split
    route at a hidden-state cut in fp32 and in int8 per token, its deployment, and a server running it."""
    folder = tmp_path_factory.mktemp("hf-serve")
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=LENGTH, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
        eos_token_id=0)).save_pretrained(folder / "gpt2")
    model = f"hf:{folder / 'gpt2'}"
    planned = folder / "planned.json"
    result = edgesplit_in_process("plan", model, "--device", "host/50@mcu", "--link", "wifi", "--json", str(planned),
                                  "-q")
    assert result.returncode == 0, result.stderr[-2000:]
    report = load_plan(planned)
    assert report.chosen.kind == "all-server"
    # The deepest split whose crossing is hidden states only, float N×T×D (most cuts also send the ids' view).
    hidden = max((e for e in report.ranked if e.kind == "split" and e.crossing and all(
        t.dtype == "float32" and len(t.shape) == 3 for t in e.crossing)), key=lambda e: e.position)
    split = {"cut_index": hidden.cut_index}
    plan = save_plan(with_routes(report, [
        (0.1, 1, {**split, "codec": "int8:token", "label": "split int8"}),
        (1, 10, {**split, "codec": "fp32", "label": "split fp32"}),
        (10, 1000, {"kind": "all-server", "cut_index": 0, "codec": "fp32", "label": report.chosen.label})]),
        folder / "plan.json")
    deployment = load_deployment(load_plan(plan), model=model)
    limits = ServerLimits(decode=decode_limits([deployment], 64), max_wait_ms=1.0)
    ids = torch.randint(0, VOCAB, (3, LENGTH), generator=torch.Generator().manual_seed(1))
    (folder / "ids.txt").write_text("# three sequences\n" + "\n".join(" ".join(map(str, row)) for row in ids.tolist()))
    with ServerThread(Engine([deployment], limits)) as server:
        yield {"model": model, "plan": plan, "deployment": deployment, "server": server, "ids": ids,
               "ids_file": folder / "ids.txt", "all_server": report.chosen.label}


@pytest.mark.slow  # the served fixture: plan, trace and warm a server, ~10 s on 2 cores
def test_infer_sends_int64_ids_to_the_all_server_route(served, tmp_path):
    """`edgesplit infer --data tokens:FILE` on the route that sends the ids: answers equal the whole model's."""
    out = tmp_path / "infer.json"
    result = edgesplit_in_process("infer", str(served["plan"]), "--server", served["server"].url, "--model",
                                  served["model"], "--data", f"tokens:{served['ids_file']}", "--route",
                                  served["all_server"], "--json", str(out), "-q")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(out.read_text())["summary"]
    assert summary["images"] == 3 and summary["server_results"] == 3 and summary["fallbacks"] == 0
    assert summary["routes"] == {served["all_server"]: 3}
    assert summary["max_abs_diff"] <= TOLERANCE
    assert summary["bytes_per_image"] < 8 * LENGTH + 100  # the ids as int64, not floats or pictures


@pytest.mark.slow
@pytest.mark.parametrize(("label", "tolerance"), [("split fp32", TOLERANCE), ("split int8", 0.2)])
def test_split_routes_send_hidden_states(served, label, tolerance):
    deployment: Deployment = served["deployment"]
    route = deployment.route_for_label(label)
    assert [len(shape) for shape in route.sent_shapes] == [3] * len(route.sent_shapes)
    assert route.codecs[0].spec == ("int8:token" if "int8" in label else "fp32")
    with Client(deployment, served["server"].url, route=label, fallback=False) as client:
        run = run_inference(client, load_inputs(deployment.plan.input_shape, data=f"tokens:{served['ids_file']}"),
                            batch=2, progress=False)
        result = client.infer(served["ids"])
    summary = run["summary"]
    assert summary["server_results"] == 2 and summary["routes"] == {label: 2}
    assert summary["max_abs_diff"] <= tolerance
    with torch.no_grad():
        whole = deployment.model(served["ids"])
    assert result.where == "server" and result.logits.shape == (3, LENGTH, VOCAB)
    assert float((result.logits - whole).abs().max()) <= tolerance
    if "int8" in label:  # quantized: close, not exact
        assert float((result.logits - whole).abs().max()) > 0


@pytest.mark.slow
def test_random_ids_come_from_the_vocabulary(served):
    deployment = served["deployment"]
    inputs = load_inputs(deployment.plan.input_shape, data="tokens:random", limit=5).for_model(deployment)
    assert inputs.images.shape == (5, LENGTH) and inputs.images.dtype == torch.int64
    assert 0 <= int(inputs.images.min()) and int(inputs.images.max()) < VOCAB
    with Client(deployment, served["server"].url, route=served["all_server"]) as client, \
            pytest.raises(ClientError, match=f"vocabulary of {VOCAB}"):
        client.infer(torch.full((1, LENGTH), VOCAB))
    with Client(deployment, served["server"].url, route=served["all_server"]) as client, \
            pytest.raises(ClientError, match="takes integer token ids, not float32"):
        client.infer(torch.zeros(1, LENGTH))


@pytest.mark.slow
def test_the_server_refuses_ids_outside_the_vocabulary_and_other_dtypes(served):
    deployment = served["deployment"]
    route = deployment.route_for_label(served["all_server"])
    bad = {"an id past the vocabulary": (torch.full((1, LENGTH), VOCAB), "token ids in 0..63"),
           "a negative id": (torch.full((1, LENGTH), -1), "token ids in 0..63"),
           "float ids": (torch.zeros(1, LENGTH), "takes int64 tensors, got float32"),
           "int32 ids": (torch.zeros(1, LENGTH, dtype=torch.int32), "takes int64 tensors, got int32")}
    with httpx.Client(base_url=served["server"].url, timeout=30) as http:
        for name, (tensor, fragment) in bad.items():
            frame = Request(new_request_id(), deployment.model_id, route.route_id, route.encode([tensor])).to_bytes()
            reply = http.post("/v1/infer", content=frame)
            assert reply.status_code == 400, (name, reply.text)
            assert fragment in reply.json()["error"], (name, reply.json())
        good = Request(new_request_id(), deployment.model_id, route.route_id, route.encode([served["ids"]])).to_bytes()
        reply = http.post("/v1/infer", content=good)
        assert reply.status_code == 200, reply.text
        (logits,) = unpack(Response.from_bytes(reply.content).payload)
        assert Response.from_bytes(reply.content).status == Status.OK
    with torch.no_grad():
        assert float((logits - deployment.model(served["ids"])).abs().max()) <= TOLERANCE


@pytest.mark.slow
def test_bad_token_inputs_are_one_line_errors(served, tmp_path):
    plan, url, model = str(served["plan"]), served["server"].url, served["model"]

    def infer(*args: str):  # noqa: ANN202
        return edgesplit_in_process("infer", plan, "--server", url, "--model", model, *args)

    (tmp_path / "far.txt").write_text(" ".join(["1"] * (LENGTH - 1) + [str(VOCAB + 5)]) + "\n")
    # Checked against the vocabulary once the model is loaded (after its load notes), before anything is sent.
    result = infer("--data", f"tokens:{tmp_path / 'far.txt'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "far.txt#0 holds token id 69" in error and "vocabulary of 64" in error
    (tmp_path / "short.txt").write_text("1 2 3\n")
    assert_user_error(infer("--data", f"tokens:{tmp_path / 'short.txt'}"), "line 1 holds 3 token ids",
                      f"exactly {LENGTH}")
    (tmp_path / "float.txt").write_text(" ".join(["0.5"] * LENGTH) + "\n")
    assert_user_error(infer("--data", f"tokens:{tmp_path / 'float.txt'}"), "'0.5' is not an integer token id")
    assert_user_error(infer("--data", f"tokens:{tmp_path / 'none.txt'}"), "does not exist")
    assert_user_error(infer("--data", "digits"), "token ids (N×T: --data tokens:FILE or tokens:random)")
    assert_user_error(infer(), "--data tokens:FILE")


def test_token_ids_for_an_image_plan_are_refused():
    with pytest.raises(ClientError, match="gives token ids"):
        load_inputs((1, 1, 8, 8), data="tokens:random")
