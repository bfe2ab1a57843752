"""No file chooses code to run, and no file makes edgesplit allocate what it names: the attacks, performed.

Plans, split records and weights metadata name the model to rebuild. A zoo name is fine; a `module:factory` runs
only when the user names it (`--model`, `model=`); factory arguments are plain scalars the signature names; input
shapes and model sizes are checked before anything is allocated. Each refusal is one line and exit code 2.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from torch import nn

from conftest import TESTS
from edgesplit.model.artifact import load_split, save_split
from edgesplit.errors import EdgesplitError, InputShapeError
from edgesplit.model.graph import trace
from edgesplit.model.intake import ModelRef, ModelRefError, ModelSizeError, build_model, load_model, save_weights
from edgesplit.plan import plan_model
from edgesplit.plan.schema import PlanReport, load_plan
from edgesplit.runtime.deployment import load_deployment
from runtime_plans import save_plan, with_routes
from test_cli import assert_user_error, edgesplit, edgesplit_in_process

TINY = "modelfactories:Tiny"


class KeywordsOnly(nn.Module):
    """A factory taking ``**kwargs``: that accepts no argument name from a file by itself."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory) -> tuple[Path, dict]:
    """A real plan of the test factory Tiny (1×1×8×8) with a split route, its folder, and its JSON."""
    folder = tmp_path_factory.mktemp("tiny")
    loaded = load_model(TINY, input_shape="1,1,8,8")
    weights = folder / "tiny.safetensors"  # so that server and client run the same weights
    save_weights(loaded.module, weights, loaded.ref, (1, 1, 8, 8))
    traced = trace(loaded.module, loaded.example_input)
    plan = plan_model(traced, device="rpi4", server="edge-gpu", link="wifi", codec=["fp32"], name=TINY,
                      model_ref={**loaded.ref.to_json(), "weights": str(weights)}, host_runs=1, progress=False)
    plan = with_routes(plan, [(0, 1e6, {"cut_index": 2, "codec": "fp32"})])
    path = save_plan(plan, folder / "plan.json")
    return path, json.loads(path.read_text())


def hostile(folder: Path, data: dict, **changes: object) -> Path:
    """``data`` with ``changes`` (``model_ref`` replaced, or top-level fields) written as plan.json in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plan.json"
    path.write_text(json.dumps({**data, **changes}))
    return path


def pwned(tmp_path: Path) -> tuple[dict, Path]:
    marker = tmp_path / "PWNED"
    return {"name": "os:system", "kwargs": {"command": f"touch {marker}"}}, marker


# ---------------------------------------------------------------------------------------------- the CLI


def test_serve_refuses_a_plan_that_names_os_system(tmp_path, tiny_plan):
    ref, marker = pwned(tmp_path)
    path = hostile(tmp_path / "p", tiny_plan[1], model_ref=ref)
    result = edgesplit("serve", str(path), "--port", "0")
    assert_user_error(result, "os:system", "--model os:system")
    assert not marker.exists()


def test_infer_refuses_a_plan_that_names_os_system(tmp_path, tiny_plan):
    ref, marker = pwned(tmp_path)
    path = hostile(tmp_path / "p", tiny_plan[1], model_ref=ref)
    result = edgesplit_in_process("infer", str(path), "--server", "http://127.0.0.1:9", "--data", "digits", "--limit",
                                  "1")
    assert_user_error(result, "os:system", "--model os:system")
    assert not marker.exists()


def run_main(capsys, monkeypatch, *args: str) -> tuple[int, str]:
    """`edgesplit ARGS` through the CLI's own entry point in this process (faster than a subprocess): exit code and
    stderr. Only for `infer` with an unreachable server and no fallback, which cannot hang if a check fails."""
    from edgesplit.cli import main

    monkeypatch.setattr(sys, "argv", ["edgesplit", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


def assert_refused(code: int, stderr: str, *fragments: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def infer_args(path: Path, *more: str) -> list[str]:
    return ["infer", str(path), "--server", "http://127.0.0.1:9", "--data", "digits", "--limit", "1", "--timeout",
            "0.5", "--retries", "0", "--no-fallback", "-q", *more]


def test_a_factory_other_than_the_one_given_is_refused(tmp_path, tiny_plan, capsys, monkeypatch):
    ref, marker = pwned(tmp_path)
    path = hostile(tmp_path / "p", tiny_plan[1], model_ref=ref)
    assert_refused(*run_main(capsys, monkeypatch, *infer_args(path, "--model", TINY)), "os:system",
                   f"not the '{TINY}' you gave")
    assert not marker.exists()


def test_serve_refuses_zoo_arguments_the_factory_does_not_take(tmp_path, tiny_plan):
    path = hostile(tmp_path / "p", tiny_plan[1], model_ref={"name": "small_cnn", "kwargs": {"command": "touch PWNED"}})
    result = edgesplit_in_process("serve", str(path), "--port", "0", cwd=tmp_path)
    assert_user_error(result, "small_cnn", "which it does not take (it takes: in_channels, num_classes)")
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("kwargs, fragment", [
    ({"num_classes": [10]}, "as a list; only numbers, strings"),
    ({"num_classes": 1e10}, "but it takes an int"),
])
def test_infer_refuses_zoo_arguments_that_are_not_plain_and_typed(tmp_path, tiny_plan, capsys, monkeypatch, kwargs,
                                                                  fragment):
    path = hostile(tmp_path / "p", tiny_plan[1], model_ref={"name": "small_cnn", "kwargs": kwargs})
    assert_refused(*run_main(capsys, monkeypatch, *infer_args(path)), "small_cnn", fragment)


def _peak_rss_cli(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, int]:
    """Run the CLI as `edgesplit` runs it, and the process's peak resident memory in bytes."""
    report = tmp_path / "maxrss"
    code = ("import atexit, resource, sys\n"
            "out = sys.argv.pop(1)\n"
            "atexit.register(lambda: open(out, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))\n"
            "from edgesplit.cli import main\n"
            "main()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code, str(report), *args], capture_output=True, text=True,
                            env=env, timeout=300)
    return result, int(report.read_text()) * 1024


@pytest.mark.slow
def test_serve_refuses_a_4000x4000_input_without_allocating_it(tmp_path, tiny_plan):
    """small_cnn at 1×1×4000×4000 would produce ~8 GiB of activations (5.3 GB were reached before the fix)."""
    path = hostile(tmp_path / "p", tiny_plan[1], input_shape=[1, 1, 4000, 4000],
                   model_ref={"name": "small_cnn", "kwargs": {}})
    result, peak = _peak_rss_cli(tmp_path, "serve", str(path), "--port", "0")
    assert_user_error(result, "small_cnn", "at input 1×1×4000×4000", "GiB of tensors, more than the 2 GiB allowed")
    assert peak < 1.5 * 2**30, f"peak memory {peak / 2**30:.2f} GiB"


@pytest.mark.parametrize("shape, model_ref, fragments", [
    ([1, 1, 1e9, 1e9], None, ["input_shape", "elements, more than the 16,777,216 allowed"]),
    ([-1, 1, 8, 8], None, ["input_shape", "not a list of positive integers"]),
    ([1, 1, 8, 8], {"name": "small_cnn", "kwargs": {"num_classes": 10**10}}, ["GiB of parameters", "more than"]),
])
def test_infer_refuses_plans_that_would_allocate_gigabytes(tmp_path, tiny_plan, capsys, monkeypatch, shape,
                                                           model_ref, fragments):
    changes = {"input_shape": shape, **({"model_ref": model_ref} if model_ref else {})}
    path = hostile(tmp_path / "p", tiny_plan[1], **changes)
    assert_refused(*run_main(capsys, monkeypatch, *infer_args(path)), *fragments)


# ---------------------------------------------------------------------------------------------- the Python API


@pytest.mark.slow
def test_the_factory_the_user_names_is_served(tiny_plan, tmp_path, monkeypatch):
    """The legitimate case: `edgesplit serve --model modelfactories:Tiny` serves a plan of that factory."""
    from edgesplit.pipeline import served, write_secret
    from edgesplit.runtime.client import Client

    path, _ = tiny_plan
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    token = secrets.token_urlsafe(32)
    token_file = write_secret(tmp_path / "token", token + "\n")
    with served(path, token_file, tmp_path / "server.log", ready_s=60, model=TINY) as url:
        models = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {token}"}).json()
        assert TINY in json.dumps(models)
        with Client(path, url, token, model=TINY, fallback=False) as client:
            image = torch.rand(1, 1, 8, 8)
            result = client.infer(image)
            assert result.where == "server" and torch.allclose(result.logits, client.run_locally(image)[0],
                                                               atol=1e-5)
    with pytest.raises(ModelRefError, match="pass --model modelfactories:Tiny"):
        Client(path, url, token)


def test_load_deployment_builds_a_factory_only_when_named(tiny_plan):
    plan = load_plan(tiny_plan[0])
    assert load_deployment(plan, model=TINY).routes
    with pytest.raises(ModelRefError, match="names the model factory 'modelfactories:Tiny', code that only you"):
        load_deployment(plan)
    with pytest.raises(ModelRefError, match="not the 'modelfactories:DigitNet' you gave"):
        load_deployment(plan, model="modelfactories:DigitNet")


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"command": "id"}, ModelRefError, "does not take"),
    ({"num_classes": {"a": 1}}, ModelRefError, "as a dict"),
    ({"num_classes": float("nan")}, ModelRefError, "as a float"),
    ({"num_classes": "10"}, ModelRefError, "takes an int"),
    ({"in_channels": True}, ModelRefError, "takes an int"),
    ({"num_classes": 10**10}, ModelSizeError, "GiB of parameters"),
])
def test_zoo_arguments_from_a_file_are_checked_before_the_call(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        build_model(ModelRef("small_cnn", kwargs))


def test_a_kwargs_catch_all_accepts_no_name_from_a_file():
    name = "test_file_code:KeywordsOnly"
    assert isinstance(build_model(ModelRef(name, {}), trusted_factory=name), KeywordsOnly)
    with pytest.raises(ModelRefError, match="which it does not take"):
        build_model(ModelRef(name, {"command": "id"}), trusted_factory=name)


def test_nothing_is_imported_before_the_trust_check():
    module = "this_module_would_run_code_on_import"
    with pytest.raises(ModelRefError, match="code that only you may choose"):
        build_model(ModelRef(f"{module}:f"))
    assert module not in sys.modules


def test_a_split_record_that_names_os_system_is_refused(tmp_path):
    loaded = load_model(TINY, input_shape="1,1,8,8")
    traced = trace(loaded.module, loaded.example_input)
    save_split(traced.split(2), traced, loaded.ref, tmp_path / "s", 0.0)
    split, _ = load_split(tmp_path / "s", model=TINY)
    assert torch.equal(split(loaded.example_input), loaded.module(loaded.example_input))
    with pytest.raises(ModelRefError, match="pass --model modelfactories:Tiny"):
        load_split(tmp_path / "s")
    with pytest.raises(ModelRefError, match="not the 'modelfactories:DigitNet' you gave"):
        load_split(tmp_path / "s", model="modelfactories:DigitNet")
    ref, marker = pwned(tmp_path)
    record = json.loads((tmp_path / "s" / "split.json").read_text())
    (tmp_path / "s" / "split.json").write_text(json.dumps({**record, "model": ref}))
    for given in (None, TINY):
        with pytest.raises(ModelRefError, match="os:system"):
            load_split(tmp_path / "s", model=given)
    assert not marker.exists()
    (tmp_path / "s" / "split.json").write_text(json.dumps({**record, "input_shapes": [[1, 1, 10**6, 10**6]]}))
    with pytest.raises(InputShapeError, match="elements, more than"):
        load_split(tmp_path / "s", model=TINY)
    (tmp_path / "s" / "split.json").write_text(json.dumps({**record, "files": {"head": "../../etc/passwd",
                                                                              "tail": "tail.safetensors"}}))
    with pytest.raises(EdgesplitError, match="not a file in its own folder"):
        load_split(tmp_path / "s", model=TINY)


def test_weights_metadata_cannot_smuggle_arguments(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(build_model(ModelRef("small_cnn", {})), path, ModelRef("small_cnn", {"command": "id"}), (1, 1, 8, 8))
    with pytest.raises(ModelRefError, match="weights .* gives 'small_cnn' the argument 'command'"):
        load_model("small_cnn", weights=path)
    save_weights(build_model(ModelRef("small_cnn", {})), path, ModelRef("small_cnn", {}), (1, 1, 10**5, 10**5))
    with pytest.raises(InputShapeError, match="recorded input shape"):
        load_model("small_cnn", weights=path)


def test_the_plan_schema_bounds_its_input_shape(tiny_plan):
    data = tiny_plan[1]
    for shape, fragment in (([1] * 9, "rank 9"), ([], "rank 0"), ([1, 0, 8, 8], "positive integers"),
                            ([1, 3, 5000, 5000], "75,000,000 elements")):
        with pytest.raises(InputShapeError, match=fragment):
            PlanReport.model_validate({**data, "input_shape": shape})


def test_the_bounds_can_be_raised_for_one_run(tiny_plan, monkeypatch):
    data = tiny_plan[1]
    monkeypatch.setenv("EDGESPLIT_MAX_INPUT_ELEMENTS", str(10**8))
    assert PlanReport.model_validate({**data, "input_shape": [1, 3, 5000, 5000]}).input_shape == [1, 3, 5000, 5000]
    monkeypatch.setenv("EDGESPLIT_MAX_INPUT_ELEMENTS", "lots")
    with pytest.raises(InputShapeError, match="EDGESPLIT_MAX_INPUT_ELEMENTS='lots' is not a positive integer"):
        PlanReport.model_validate(data)


@pytest.mark.parametrize("rows, fragment", [
    ([(10.0, 1e6), (0.1, 10.0)], "must rise without overlapping"),  # out of order
    ([(0.1, 20.0), (10.0, 1e6)], "must rise without overlapping"),  # overlapping
    ([(5.0, 5.0)], "has an empty range"),
])
def test_a_plan_whose_switch_table_a_client_would_misread_is_refused(tmp_path, tiny_plan, rows, fragment):
    """The client looks its uplink up row by row: a table out of order or overlapping would run a wrong plan
    without a word, so the plan's reader refuses it (one line, exit 2)."""
    row = tiny_plan[1]["switch_table"][0]
    table = [{**row, "low_mbps": low, "high_mbps": high} for low, high in rows]
    path = hostile(tmp_path / "p", tiny_plan[1], switch_table=table)
    with pytest.raises(EdgesplitError, match=fragment):
        load_plan(path)
    result = edgesplit_in_process("serve", str(path), "--port", "0", cwd=tmp_path)
    assert_user_error(result, "switch_table", fragment)
    load_plan(tiny_plan[0])  # the real plan reads
