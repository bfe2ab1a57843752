"""The edgesplit command line: each verb reads its options into its stage's settings and calls the stage.

The stages are ``pipeline.stages``'s, the functions `edgesplit run` calls too; their settings classes give every
option its default, help and bounds (``setting``), so an option and a run config's key never disagree. What a
verb prints is ``pipeline.show``'s; user errors print one line and exit 2 (``main``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import annotated_types
import torch
import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape

from edgesplit.errors import EdgesplitError
from edgesplit.model import zoo
from edgesplit.model.data import load_dataset
from edgesplit.model.train import TrainSettings
from edgesplit.pipeline import stages
from edgesplit.pipeline.config import load_config
from edgesplit.pipeline.demo import run_demo
from edgesplit.pipeline.run import run_pipeline
from edgesplit.pipeline.show import show_audit, show_chain_plan, show_compress, show_plan, show_profile, show_split, show_train
from edgesplit.pipeline.stages import CompressSettings, PlanSettings, ProfileSettings
from edgesplit.plan.schema import ChainPlanReport, load_any_plan
from edgesplit.plots import plot_plan, plot_profile, plot_rate_accuracy
from edgesplit.privacy.audit import AuditSettings
from edgesplit.profile import device_profile, onnx_profile, require_onnx_runtime
from edgesplit.report import report_index, scan, write_report
from edgesplit.runtime.auth import token_from
from edgesplit.runtime.client import Client
from edgesplit.runtime.infer import load_inputs, read_token, run_inference
from edgesplit.runtime.chain_client import ChainClient, chain_note, chain_text
from edgesplit.runtime.summary import summary_table
from edgesplit.versioned import write_json
from edgesplit.views import zoo_table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Split DNN inference for edge devices: where to cut, what crosses, how long it takes.")
# Piped output keeps whole table rows on one line instead of wrapping them at 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)


def setting(settings: type[BaseModel], name: str, *flags: str, bounds: bool = True, **options: Any) -> Any:
    """A typer option whose default, help and bounds (``ge``/``le``) are those of ``settings``'s field ``name``;
    ``options`` override them (a list option defaults to None: the settings' default applies)."""
    field = settings.model_fields[name]
    limits: dict[str, Any] = {}
    for rule in field.metadata if bounds else ():
        if isinstance(rule, annotated_types.Ge):
            limits["min"] = rule.ge
        elif isinstance(rule, annotated_types.Le):
            limits["max"] = rule.le
    return typer.Option(options.pop("default", field.default), *flags, help=field.description, **limits, **options)


def settings_of(settings: type[BaseModel], **values: Any) -> Any:
    """``settings`` from the options given (None: its default); a one-line EdgesplitError for a bad value."""
    try:
        return settings(**{key: value for key, value in values.items() if value is not None})
    except ValidationError as error:
        first = error.errors()[0]
        raise EdgesplitError(f"--{str(first['loc'][0]).replace('_', '-')} {first.get('input')!r}: "
                             f"{first['msg']}") from error


def save_json(path: Path | None, result: Any) -> None:
    """``--json FILE``: write the verb's result there, if asked."""
    if path is not None:
        write_json(path, result)


ModelArg = Annotated[str, typer.Argument(help="zoo name (see `edgesplit zoo`) or package.module:factory")]
InputShape = Annotated[Optional[str], typer.Option(help="input shape N,C,H,W (zoo models have a default)")]
Weights = Annotated[Optional[Path], typer.Option(help=".safetensors, or a state dict torch.load reads with weights_only")]
Data = Annotated[str, typer.Option(help="digits | mnist:DIR | fashion-mnist:DIR | idx:DIR | folder:DIR | patches:DIR")]
JsonOut = Annotated[Optional[Path], typer.Option("--json", help="also write the result as JSON to this file")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
Threads = Annotated[Optional[int], typer.Option(min=1, help="torch intra-op threads")]
# A file never chooses code to run: a plan naming a module:factory is loaded only when the user names it here.
TrustedModel = Annotated[Optional[str], typer.Option("--model", help="the package.module:factory the plan's model "
                                                     "comes from, if it is not a zoo model (you choose the code that "
                                                     "runs, never the plan)")]


@app.command("zoo")
def zoo_command(json_out: JsonOut = None) -> None:
    """List the built-in models and their input shapes."""
    entries = sorted(zoo.ZOO.values(), key=lambda e: e.name)
    # On the meta device: shapes only, no memory, no initialisation (all of them 0.27 s instead of 1.3 s).
    with torch.device("meta"):
        params = {e.name: sum(p.numel() for p in e.factory().parameters()) for e in entries}
    out.print(zoo_table(entries, params))
    save_json(json_out, [{"name": e.name, "input_shape": list(e.input_shape), "params": params[e.name],
                          "description": e.description} for e in entries])


@app.command()
def profile(model: ModelArg, input_shape: InputShape = None, weights: Weights = None,
            runs: int = setting(ProfileSettings, "runs"),
            warmup: int = setting(ProfileSettings, "warmup"),
            measure: str = setting(ProfileSettings, "measure"),
            measure_cut: Optional[list[str]] = setting(ProfileSettings, "measure_cuts", "--measure-cut", default=None),
            threads: Threads = None, json_out: JsonOut = None,
            plot: Annotated[Optional[Path], typer.Option(help="write the bytes/latency plot (PNG)")] = None,
            save_device: Annotated[Optional[Path], typer.Option(help="write this machine's device profile (JSON)")] = None,
            runtime: Annotated[str, typer.Option(help="time heads with torch, or under ONNX Runtime: onnx (float32) or "
                                                      "onnx-int8 (int8, as `export --quantize int8` runs them)")] = "torch",
            data: Annotated[Optional[str], typer.Option(help="images --runtime onnx-int8 calibrates on (default: photos "
                                                             "for colour inputs, digits for gray)")] = None,
            quiet: Quiet = False) -> None:
    """Measure every candidate cut: MACs, bytes crossing, head/tail latency and peak memory."""
    settings = settings_of(ProfileSettings, runs=runs, warmup=warmup, measure=measure, measure_cuts=measure_cut)
    if runtime != "torch":
        require_onnx_runtime(runtime)
    if data is not None and runtime != "onnx-int8":
        raise EdgesplitError("--data is read by --runtime onnx-int8 only (its calibration images); leave it out")
    if threads:
        torch.set_num_threads(threads)
    _, traced = stages.load(model, input_shape=input_shape, weights=weights)
    report = stages.profile(settings, traced, model, progress=not quiet)
    if runtime != "torch":
        report = onnx_profile(traced, report, runtime, data=data, runs=settings.runs, warmup=settings.warmup,
                              threads=threads, progress=not quiet)
    show_profile(out, report)
    if runtime != "torch":
        out.print(f"latencies measured under ONNX Runtime ({runtime}): {report.model_ms:.3f} ms for the model, "
                  f"{report.torch_model_ms:.3f} ms in PyTorch; {sum(c.measured for c in report.cuts)} of "
                  f"{len(report.cuts)} cuts timed as a whole, node latencies derived from them")
    save_json(json_out, report)
    if plot:
        out.print(f"plot written to {plot_profile(report, plot)}")
    if save_device:
        save_json(save_device, device_profile(report, name=save_device.stem))


@app.command()
def split(model: ModelArg, cut: Annotated[str, typer.Option(help="cut index, or the name of the last head node")],
          out_dir: Annotated[Path, typer.Option("--out", help="folder for split.json and the two halves")],
          input_shape: InputShape = None, weights: Weights = None, json_out: JsonOut = None) -> None:
    """Split MODEL at CUT into head and tail (safetensors + split.json), reload them and check them."""
    loaded, traced = stages.load(model, input_shape=input_shape, weights=weights)
    result = stages.split(loaded, traced, cut, out_dir)
    show_split(out, result)
    save_json(json_out, result.record)


@app.command()
def plan(model: ModelArg, input_shape: InputShape = None, weights: Weights = None,
         device: str = setting(PlanSettings, "device"),
         server: str = setting(PlanSettings, "server"),
         link: str = setting(PlanSettings, "link"),
         codec: Optional[list[str]] = setting(PlanSettings, "codecs", "--codec", default=None),
         compressed: Optional[list[Path]] = setting(PlanSettings, "compress", "--compress", default=None),
         max_accuracy_drop: float = setting(PlanSettings, "max_accuracy_drop"),
         objective: str = setting(PlanSettings, "objective"),
         samples: Optional[str] = setting(PlanSettings, "samples"),
         jpeg_quality: int = setting(PlanSettings, "jpeg_quality"),
         device_memory: Optional[str] = setting(PlanSettings, "device_memory"),
         max_bytes: Optional[str] = setting(PlanSettings, "max_bytes"),
         keep_input: bool = setting(PlanSettings, "keep_input", "--keep-input"),
         leakage: Optional[Path] = setting(PlanSettings, "leakage"),
         max_ssim: Optional[float] = setting(PlanSettings, "max_ssim"),
         max_probe_acc: Optional[float] = setting(PlanSettings, "max_probe_acc"),
         max_dfil: Optional[float] = setting(PlanSettings, "max_dfil"),
         pareto: Annotated[bool, typer.Option("--pareto", help="also show the latency–energy–bytes Pareto front")] = False,
         top: Annotated[int, typer.Option(min=1, help="ranked plans to show")] = 10,
         runs: int = setting(PlanSettings, "runs"),
         topology: Optional[str] = setting(PlanSettings, "topology"),
         hop_ms: float = setting(PlanSettings, "hop_ms", bounds=False),
         json_out: JsonOut = None,
         plot: Annotated[Optional[Path], typer.Option(help="write latency vs bandwidth (PNG)")] = None,
         quiet: Quiet = False) -> None:
    """Choose where to cut MODEL for a device, a server and a link (or place it on a --topology chain of machines):
    ranked plans, speed-ups, switch table."""
    settings = settings_of(PlanSettings, device=device, server=server, link=link, codecs=codec, objective=objective,
                           samples=samples, jpeg_quality=jpeg_quality, device_memory=device_memory,
                           max_bytes=max_bytes, keep_input=keep_input, leakage=leakage, max_ssim=max_ssim,
                           max_probe_acc=max_probe_acc, max_dfil=max_dfil, compress=compressed,
                           max_accuracy_drop=max_accuracy_drop,
                           runs=runs, topology=topology, hop_ms=hop_ms)
    stages.check_plan(settings)  # every spec is checked before the slow work starts
    if topology is not None and plot:
        raise EdgesplitError("--plot draws two-tier plans; `edgesplit report` draws a chain plan")
    loaded, traced = stages.load(model, input_shape=input_shape, weights=weights)
    report = stages.plan(settings, loaded, traced, progress=not quiet)
    if isinstance(report, ChainPlanReport):
        show_chain_plan(out, report)
        save_json(json_out, report)
        return
    show_plan(out, report, top=top, pareto=pareto)
    save_json(json_out, report)
    if plot:
        out.print(f"plot written to {plot_plan(report, plot)}")


@app.command()
def compress(model: ModelArg,
             cut: Annotated[str, typer.Option(help="cut index, or the name of the last head node")],
             weights: Weights = None, input_shape: InputShape = None, data: Data = "digits",
             codec: Optional[list[str]] = setting(CompressSettings, "codecs", "--codec", default=None),
             # No bounds from the settings: a bad channel count is a one-line error, as any bad value
             bottleneck: Optional[int] = setting(CompressSettings, "bottleneck", bounds=False),
             slimmable: bool = setting(CompressSettings, "slimmable", "--slimmable"),
             stride: int = setting(CompressSettings, "stride"),
             bits: int = setting(CompressSettings, "bits"),
             epochs: int = setting(CompressSettings, "epochs"),
             batch_size: int = setting(CompressSettings, "batch_size"),
             lr: float = setting(CompressSettings, "lr", min=0.0),
             train_limit: Optional[int] = setting(CompressSettings, "train_limit"),
             eval_limit: int = setting(CompressSettings, "eval_limit"),
             checkpoint: Annotated[Optional[Path], typer.Option(help="folder to checkpoint the bottleneck in (resumes)")] = None,
             seed: int = 0, json_out: JsonOut = None,
             plot: Annotated[Optional[Path], typer.Option(help="write the rate–accuracy curve (PNG)")] = None,
             quiet: Quiet = False) -> None:
    """Measure bytes against accuracy at CUT: feature codecs, a learned bottleneck, and sending the input instead."""
    settings = settings_of(CompressSettings, codecs=codec, bottleneck=bottleneck, slimmable=slimmable, stride=stride,
                           bits=bits, epochs=epochs, batch_size=batch_size, lr=lr, train_limit=train_limit,
                           eval_limit=eval_limit)
    stages.check_compress(settings)  # every spec is checked before the slow work starts
    dataset = load_dataset(data, limit=None)
    loaded, traced = stages.load(model, input_shape=input_shape or (1, *dataset.input_shape), weights=weights)
    report = stages.compress(settings, loaded, traced, dataset, cut, checkpoint=checkpoint, seed=seed,
                             progress=not quiet)
    show_compress(out, report, settings.max_accuracy_drop)
    save_json(json_out, report)
    if plot:
        out.print(f"plot written to {plot_rate_accuracy(report, plot)}")


@app.command()
def audit(model: ModelArg, weights: Weights = None, input_shape: InputShape = None,
          data: Annotated[str, typer.Option(help="victims: the test split of digits | mnist:DIR | fashion-mnist:DIR | "
                                                 "patches:DIR | folder:DIR")] = "digits",
          aux: Optional[str] = setting(AuditSettings, "aux"),
          cut: str = setting(AuditSettings, "cuts", "--cut"),
          codec: Optional[str] = setting(AuditSettings, "codec"),
          attack: str = setting(AuditSettings, "attacks", "--attack",
                                default=",".join(AuditSettings.model_fields["attacks"].default)),
          defense: Optional[list[str]] = setting(AuditSettings, "defenses", "--defense", default=None),
          victims: int = setting(AuditSettings, "victims"),
          aux_limit: int = setting(AuditSettings, "aux_limit"),
          epochs: int = setting(AuditSettings, "inversion_epochs", "--epochs"),
          steps: int = setting(AuditSettings, "optimize_steps", "--steps"),
          defense_epochs: int = setting(AuditSettings, "defense_epochs"),
          defense_train_limit: Optional[int] = setting(AuditSettings, "defense_train_limit"),
          dfil_sigma: Optional[float] = setting(AuditSettings, "dfil_sigma"),
          threads: Threads = None,
          seed: int = setting(AuditSettings, "seed"),
          json_out: JsonOut = None,
          out_dir: Annotated[Optional[Path], typer.Option("--out", help="folder for reconstruction grids and plots "
                                                          "(PNG)")] = None,
          quiet: Quiet = False) -> None:
    """Attack what crosses each cut (inversion, label probes) and measure what defenses cost in accuracy."""
    # Building the settings parses every spec (attacks, defenses, codec) before the slow work starts.
    settings = settings_of(AuditSettings, cuts=cut, attacks=attack, defenses=defense, aux=aux, codec=codec,
                           victims=victims, aux_limit=aux_limit, inversion_epochs=epochs, optimize_steps=steps,
                           defense_epochs=defense_epochs, defense_train_limit=defense_train_limit,
                           dfil_sigma=dfil_sigma, seed=seed)
    if threads:
        torch.set_num_threads(threads)
    victim_data = load_dataset(data)
    loaded, traced = stages.load(model, input_shape=input_shape or (1, *victim_data.input_shape), weights=weights)
    if weights is None:
        # On stdout: stderr stays one line when the run then stops on a user error.
        out.print("[bold yellow]warning:[/] no --weights: auditing an untrained model says little about a trained one",
                  soft_wrap=True)
    warn = Console(stderr=True)
    report = stages.audit(settings, loaded, traced, victim_data, data_spec=data, out_dir=out_dir, progress=not quiet,
                          warn=lambda text: warn.print(f"[bold yellow]warning:[/] {text}", highlight=False,
                                                       soft_wrap=True))
    show_audit(out, report)
    if out_dir is not None:
        out.print(f"grids and plots written to {out_dir}")
    save_json(json_out, report)


@app.command()
def train(model: ModelArg,
          out_path: Annotated[Path, typer.Option("--out", help="where to write the weights (.safetensors)")],
          data: Data = "digits",
          epochs: int = setting(TrainSettings, "epochs"),
          batch_size: int = setting(TrainSettings, "batch_size"),
          lr: float = setting(TrainSettings, "lr", min=0.0),
          image_size: Annotated[Optional[int], typer.Option(help="resize images to this size (folders)")] = None,
          limit: Annotated[Optional[int], typer.Option(help="use at most this many train and test images")] = None,
          seed: int = 0, json_out: JsonOut = None, quiet: Quiet = False) -> None:
    """Train MODEL on a data set on the CPU and report test accuracy."""
    settings = settings_of(TrainSettings, epochs=epochs, batch_size=batch_size, lr=lr)
    dataset = load_dataset(data, image_size=image_size, limit=limit)
    record = stages.train(settings, model, dataset, out_path, seed=seed, progress=not quiet)
    show_train(out, record)
    save_json(json_out, record)


@app.command()
def demo(out_dir: Annotated[Path, typer.Option("--out", help="folder for every result")] = Path("demo-results"),
         json_out: JsonOut = None, quiet: Quiet = False) -> None:
    """The main job on bundled data: train, profile, plan, compress, serve and run, audit, report."""
    save_json(json_out, run_demo(out_dir, out, progress=not quiet))


@app.command("run")
def run_config(config_path: Annotated[Path, typer.Argument(metavar="CONFIG.yaml", help="what to run (see "
                                                             "examples/run.yaml)")],
               out_dir: Annotated[Path, typer.Option("--out", help="folder for every result")] = Path("run-results"),
               json_out: JsonOut = None, quiet: Quiet = False) -> None:
    """The demo's pipeline on your model, data, device, server, link, codecs and attacks, from a config file."""
    save_json(json_out, run_pipeline(load_config(config_path), out_dir, out, progress=not quiet))


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="folder the stages wrote their --json "
                                                   "files into (searched recursively)")],
           out_path: Annotated[Path, typer.Option("--out", "-o", help="the HTML page to write")] = Path("report.html"),
           title: Annotated[Optional[str], typer.Option(help="page title (default: the run's title, else from RUN_DIR's name)")] = None,
           json_out: JsonOut = None) -> None:
    """One self-contained HTML page (plots embedded) from every stage's JSON in RUN_DIR."""
    files = scan(run_dir)
    path = write_report(run_dir, out_path, title, files=files)
    shown = ", ".join(f.name + (" [unreadable]" if f.error else "") for f in files.found)
    out.print(f"report written to {path} from {len(files.found)} result file(s): {shown}", markup=False,
              highlight=False, soft_wrap=True)
    if files.other or files.unreadable:
        out.print(f"not shown: {', '.join(n for n, _ in [*files.other, *files.unreadable])}", markup=False,
                  highlight=False, soft_wrap=True)
    save_json(json_out, report_index(files, path))


@app.command()
def serve(plan_path: Annotated[Path, typer.Argument(metavar="PLAN.json", help="a plan from `edgesplit plan ... --json`")],
          host: Annotated[str, typer.Option(help="address to listen on; anything but loopback needs a token")] = "127.0.0.1",
          port: Annotated[int, typer.Option(min=0, max=65535, help="port (0 picks a free one)")] = 8000,
          token_file: Annotated[Optional[Path], typer.Option(help="file whose first line is the bearer token "
                                                             "(default: $EDGESPLIT_TOKEN, else no auth)")] = None,
          weights: Weights = None, model: TrustedModel = None,
          model_id: Annotated[Optional[str], typer.Option(help="the id clients name (default: from the plan's model)")] = None,
          max_batch: Annotated[int, typer.Option(min=1, help="most inputs in one forward pass (1: no batching)")] = 32,
          max_wait_ms: Annotated[float, typer.Option(min=0.0, max=10000.0, help="how long a request waits for "
                                                     "others to batch with")] = 2.0,
          max_request_mb: Annotated[Optional[float], typer.Option(min=0.001, help="largest request body (MiB; "
                                                                  "default: the largest valid request for the plan)")] = None,
          client_concurrency: Annotated[int, typer.Option(min=1, help="requests in flight per client address (429 "
                                                          "beyond)")] = 16,
          max_connections: Annotated[int, typer.Option(min=1, help="open connections (503 and closed beyond)")] = 256,
          tls_cert: Annotated[Optional[Path], typer.Option(help="serve HTTPS/WSS with this certificate chain (PEM)")] = None,
          tls_key: Annotated[Optional[Path], typer.Option(help="the certificate's private key (PEM)")] = None,
          allow_origin: Annotated[Optional[list[str]], typer.Option(help="a web page allowed to call the server, "
                                                                    "e.g. https://app.example (repeatable)")] = None,
          allow_host: Annotated[Optional[list[str]], typer.Option(help="a DNS name of this server that clients use "
                                                                  "(repeatable; its address is always allowed)")] = None,
          log_level: Annotated[str, typer.Option(help="debug, info, warning or error (JSON lines on stderr)")] = "info",
          ray: Annotated[bool, typer.Option("--ray", help="serve from Ray Serve replicas (needs the ray extra)")] = False,
          replicas: Annotated[int, typer.Option(min=1, help="with --ray: replicas to start")] = 1,
          max_replicas: Annotated[Optional[int], typer.Option(min=1, help="with --ray: autoscale up to this many")] = None,
          num_cpus: Annotated[float, typer.Option(min=0.1, help="with --ray: CPUs per replica")] = 1.0,
          tier: Annotated[Optional[int], typer.Option(help="a chain plan's tier to serve (1..last; tier 0 is the "
                                                      "device)")] = None,
          next_url: Annotated[Optional[str], typer.Option("--next", help="with --tier below the last: the URL of "
                                                          "the next tier's server, e.g. http://10.0.0.3:8000")] = None,
          next_token_file: Annotated[Optional[Path], typer.Option(help="file whose first line is the --next "
                                                                  "server's token (default: none)")] = None,
          next_timeout: Annotated[float, typer.Option(min=0.001, help="seconds the next tier may take to answer a "
                                                      "request")] = 10.0,
          threads: Threads = None) -> None:
    """Serve the tails of every route in PLAN's switch table (or one tier of a chain plan, --tier K, relaying to
    --next): binary frames over HTTP and WebSocket."""
    # Imported here: the server's FastAPI and uvicorn (0.3 s) are needed by this verb only, and Ray is an extra.
    from edgesplit.runtime.server import Guards, serve as run_server
    if ray and (tier is not None or next_url is not None):
        raise EdgesplitError("--ray serves two-tier plans; serve a chain plan's tier (--tier, --next) without --ray")
    if ray and threads:
        raise EdgesplitError("--threads sets this process's torch threads; with --ray give replicas --num-cpus instead")
    if threads:
        torch.set_num_threads(threads)
    if ray:
        from edgesplit.runtime.ray_serve import run as run_ray  # Ray is an optional extra
        run_ray(plan_path, host=host, port=port, token=token_from(token_file)[0], weights=weights, model_id=model_id,
                replicas=replicas, max_replicas=max_replicas, max_batch=max_batch, max_wait_ms=max_wait_ms,
                max_request_mb=max_request_mb, client_concurrency=client_concurrency, log_level=log_level,
                num_cpus=num_cpus, model=model)
        return
    guards = Guards(max_connections=max_connections, allow_origins=tuple(allow_origin or ()),
                    allow_hosts=tuple(allow_host or ()))
    run_server(plan_path, host=host, port=port, token_file=token_file, weights=weights, model_id=model_id,
               max_batch=max_batch, max_wait_ms=max_wait_ms, max_request_mb=max_request_mb,
               client_concurrency=client_concurrency, guards=guards, tls_cert=tls_cert, tls_key=tls_key,
               log_level=log_level, console=out, model=model, tier=tier, next_url=next_url,
               next_token_file=next_token_file, next_timeout_s=next_timeout)


@app.command()
def infer(plan_path: Annotated[Path, typer.Argument(metavar="PLAN.json", help="a plan from `edgesplit plan ... --json`")],
          server: Annotated[str, typer.Option(help="the tail server's URL, e.g. http://10.0.0.2:8000")],
          token_file: Annotated[Optional[Path], typer.Option(help="file whose first line is the server's token "
                                                             "(default: $EDGESPLIT_TOKEN, else none)")] = None,
          images: Annotated[Optional[Path], typer.Option(help="folder of PNG/JPEG images (class subfolders "
                                                         "give labels)")] = None,
          data: Annotated[Optional[str], typer.Option(help="digits | mnist:DIR | fashion-mnist:DIR (test split) "
                                                      "(default: digits for 1×8×8 models); token models: "
                                                      "tokens:FILE (ids, a sequence a line) | tokens:random")] = None,
          limit: Annotated[Optional[int], typer.Option(min=1, help="send at most this many images")] = None,
          batch: Annotated[int, typer.Option(min=1, max=64, help="images per request")] = 1,
          top_k: Annotated[int, typer.Option(min=0, max=255, help="ask for the k largest outputs only (0: all)")] = 0,
          weights: Weights = None, model: TrustedModel = None,
          model_id: Annotated[Optional[str], typer.Option(help="the id the server serves the plan under "
                                                          "(default: from the plan's model)")] = None,
          timeout: Annotated[float, typer.Option(min=0.001, help="seconds an attempt may wait on the network "
                                                 "(to connect, to send, for the answer)")] = 5.0,
          retries: Annotated[int, typer.Option(min=0, max=20, help="attempts after the first (same request id)")] = 2,
          probe_every: Annotated[float, typer.Option(min=0.01, help="seconds between probes of a faster route or "
                                                     "of a server that stopped answering")] = 2.0,
          initial_mbps: Annotated[Optional[float], typer.Option(min=0.001, help="uplink to assume before measuring "
                                                               "(default: the plan's link)")] = None,
          hysteresis: Annotated[float, typer.Option(min=0.0, max=10.0, help="switch once the estimate is this far "
                                                    "past a threshold (0.2 = 20%)")] = 0.2,
          route: Annotated[Optional[str], typer.Option(help="always run this plan of the switch table (its "
                                                       "label): no switching")] = None,
          no_fallback: Annotated[bool, typer.Option("--no-fallback", help="fail instead of running the whole model "
                                                    "here when the server does not answer")] = False,
          check: Annotated[bool, typer.Option(help="also run the whole model here and report agreement")] = True,
          stream: Annotated[bool, typer.Option("--stream", help="send frames over one WebSocket instead of one HTTP "
                                               "POST each")] = False,
          onnx: Annotated[Optional[Path], typer.Option(help="export the heads to ONNX in this folder and run them "
                                                       "with onnxruntime (needs the onnx extra)")] = None,
          ca_file: Annotated[Optional[Path], typer.Option(help="PEM file of the CA (or self-signed certificate) that "
                                                          "signed an https:// server's certificate (default: the "
                                                          "system's trusted roots)")] = None,
          threads: Threads = None, json_out: JsonOut = None, quiet: Quiet = False) -> None:
    """Run PLAN's head here and its tail on a server: adapts the cut to the uplink, falls back when it is down."""
    if threads:
        torch.set_num_threads(threads)
    token = read_token(token_file)
    report = load_any_plan(plan_path)  # a chain plan: this device is its tier 0, --server its tier 1
    inputs = load_inputs(report.input_shape, images=images, data=data, limit=limit)
    kind = ChainClient if isinstance(report, ChainPlanReport) else Client
    with kind(report, server, token, weights=weights, timeout_s=timeout, retries=retries, fallback=not no_fallback,
                probe_every_s=probe_every, initial_mbps=initial_mbps, hysteresis=hysteresis, top_k=top_k,
                route=route, model_id=model_id, model=model, plan_dir=plan_path.parent, onnx_dir=onnx,
                stream=stream, ca_file=ca_file) as client:
        result = run_inference(client, inputs, batch=batch, check=check, progress=not quiet)
    out.print(summary_table(result["summary"]))
    if (note := chain_note(client)) is not None:
        result["chain"] = note
        out.print(chain_text(note), markup=False, highlight=False, soft_wrap=True)
    save_json(json_out, result)


@app.command("export")
def export_command(
        plan_path: Annotated[Path, typer.Argument(metavar="PLAN.json", help="a plan from `edgesplit plan ... --json`")],
        out_dir: Annotated[Path, typer.Option("--out", help="the bundle's folder (new or empty)")],
        quantize: Annotated[Optional[str], typer.Option(help="int8: also write int8 heads (ONNX Runtime static "
                                                        "quantization, QDQ) where they lose little accuracy")] = None,
        data: Annotated[Optional[str], typer.Option(help="with --quantize: images to calibrate on and measure with "
                                                    "(digits | mnist:DIR | fashion-mnist:DIR | folder:DIR ...)")] = None,
        max_accuracy_drop: Annotated[float, typer.Option(min=0.0, max=1.0, help="a route runs int8 only if it loses "
                                                         "at most this much accuracy (0.01 = 1 point)")] = 0.01,
        calibration: Annotated[int, typer.Option(min=1, help="images the int8 ranges are calibrated on")] = 128,
        holdout: Annotated[int, typer.Option(min=1, help="further images the int8 routes are measured on")] = 1000,
        formats: Annotated[str, typer.Option("--format", help="onnx (always written), or pte / onnx,pte: also "
                                             "ExecuTorch programs of the heads (needs pip install "
                                             "'edgesplit[pte]')")] = "onnx",
        weights: Weights = None, model: TrustedModel = None,
        model_id: Annotated[Optional[str], typer.Option(help="the id the server serves the plan under "
                                                        "(default: from the plan's model)")] = None,
        json_out: JsonOut = None) -> None:
    """Write a device bundle: a manifest and the ONNX files a device runs for PLAN (heads, encoders, int8 heads,
    the whole model for fallback)."""
    # Imported here: the ONNX exporter and onnxruntime's quantization are needed by this verb only.
    from edgesplit.runtime.export import ExportSettings, export_bundle, summary_lines
    chosen = ["onnx", *(f.strip() for f in formats.split(",") if f.strip())]  # ONNX files are always written
    settings = ExportSettings(weights=weights, model=model, model_id=model_id, quantize=quantize, data=data,
                              max_accuracy_drop=max_accuracy_drop, calibration=calibration, holdout=holdout,
                              formats=tuple(dict.fromkeys(chosen)))
    manifest = export_bundle(plan_path, out_dir, settings)
    for line in summary_lines(out_dir, manifest):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    save_json(json_out, {"bundle": str(out_dir), "manifest": manifest.model_dump()})


def main() -> None:
    """Console entry point: user errors print one line and exit 2, never a traceback."""
    try:
        app()
    except EdgesplitError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
