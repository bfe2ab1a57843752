"""The edgesplit command line: one thin function per verb; the work lives in the modules it calls."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import torch
import typer
from pydantic import BaseModel
from rich.console import Console

from edgesplit.model import zoo
from edgesplit.model.artifact import load_split, save_split, verify_split
from edgesplit.model.data import load_dataset
from edgesplit.errors import EdgesplitError
from edgesplit.model.graph import max_abs_diff, trace
from edgesplit.model.intake import ModelRef, build_model, load_model, save_weights
from edgesplit.profile import device_profile, profile_model
from edgesplit.model.train import train_classifier
from edgesplit.views import profile_table, split_table, zoo_table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Split DNN inference for edge devices: where to cut, what crosses, how long it takes.")
# Piped output keeps whole table rows on one line instead of wrapping them at 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)

ModelArg = Annotated[str, typer.Argument(help="zoo name (see `edgesplit zoo`) or package.module:factory")]
InputShape = Annotated[Optional[str], typer.Option(help="input shape N,C,H,W (zoo models have a default)")]
Weights = Annotated[Optional[Path], typer.Option(help=".safetensors, or a state dict torch.load reads with weights_only")]
JsonOut = Annotated[Optional[Path], typer.Option("--json", help="also write the result as JSON to this file")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
# A file never chooses code to run: a plan naming a module:factory is loaded only when the user names it here.
TrustedModel = Annotated[Optional[str], typer.Option("--model", help="the package.module:factory the plan's model "
                                                     "comes from, if it is not a zoo model (you choose the code that "
                                                     "runs, never the plan)")]


@app.command("zoo")
def zoo_command(json_out: JsonOut = None) -> None:
    """List the built-in models and their input shapes."""
    entries = sorted(zoo.ZOO.values(), key=lambda e: e.name)
    params = {e.name: sum(p.numel() for p in e.factory().parameters()) for e in entries}
    out.print(zoo_table(entries, params))
    write_json(json_out, [{"name": e.name, "input_shape": list(e.input_shape), "params": params[e.name],
                           "description": e.description} for e in entries])


@app.command()
def profile(model: ModelArg, input_shape: InputShape = None, weights: Weights = None,
            runs: Annotated[int, typer.Option(min=1, help="timed samples per measurement (median)")] = 20,
            warmup: Annotated[int, typer.Option(min=0, help="untimed calls before timing")] = 3,
            threads: Annotated[Optional[int], typer.Option(min=1, help="torch intra-op threads")] = None,
            json_out: JsonOut = None,
            plot: Annotated[Optional[Path], typer.Option(help="write the bytes/latency plot (PNG)")] = None,
            save_device: Annotated[Optional[Path], typer.Option(help="write this machine's device profile (JSON)")] = None,
            quiet: Quiet = False) -> None:
    """Measure every candidate cut: MACs, bytes crossing, head/tail latency and peak memory."""
    if threads:
        torch.set_num_threads(threads)
    loaded = load_model(model, input_shape=input_shape, weights=weights)
    traced = trace(loaded.module, loaded.example_input)
    report = profile_model(traced, name=model, runs=runs, warmup=warmup, progress=not quiet)
    out.print(profile_table(report))
    if report.uncounted_ops:
        out.print(f"[yellow]MACs not counted for ops without a formula: {report.uncounted_ops}")
    write_json(json_out, report)
    if plot:
        from edgesplit.plots import plot_profile
        out.print(f"plot written to {plot_profile(report, plot)}")
    if save_device:
        write_json(save_device, device_profile(report, name=save_device.stem))


@app.command()
def split(model: ModelArg, cut: Annotated[str, typer.Option(help="cut index, or the name of the last head node")],
          out_dir: Annotated[Path, typer.Option("--out", help="folder for split.json and the two halves")],
          input_shape: InputShape = None, weights: Weights = None, json_out: JsonOut = None) -> None:
    """Split MODEL at CUT into head and tail (safetensors + split.json), reload them and check them."""
    loaded = load_model(model, input_shape=input_shape, weights=weights)
    traced = trace(loaded.module, loaded.example_input)
    halves = traced.split(cut)
    expected = loaded.module(loaded.example_input)
    save_split(halves, traced, loaded.ref, out_dir, max_abs_diff(halves(loaded.example_input), expected))
    reloaded, record = load_split(out_dir, model=model)
    reloaded_diff = verify_split(reloaded, loaded.module, loaded.example_input)
    out.print(split_table(record))
    out.print(f"reloaded from {out_dir}: tail(*head(x)) vs model(x) max abs diff {reloaded_diff:.2e}")
    write_json(json_out, record)


@app.command()
def plan(model: ModelArg, input_shape: InputShape = None, weights: Weights = None,
         device: Annotated[str, typer.Option(help="preset (rpi4, jetson-nano, phone-npu, mcu), host, or a device "
                                                  "profile PATH.json; /F or *F scales it, @PRESET adds power")] = "rpi4",
         server: Annotated[str, typer.Option(help="as --device (edge-gpu is the server preset)")] = "edge-gpu",
         link: Annotated[str, typer.Option(help="3g, lte, 5g, wifi, ethernet, with overrides (lte:up=2,rtt=80), "
                                                "or custom:up=MBPS,down=MBPS,rtt=MS,tx=W,rx=W")] = "wifi",
         codec: Annotated[Optional[list[str]], typer.Option(help="how features cross, repeatable to choose codec and "
                                                                "cut together: fp32, fp16, int8, int4+zstd, int2+ans … "
                                                                "(default: fp32)")] = None,
         compressed: Annotated[Optional[list[Path]], typer.Option("--compress", help="result of `edgesplit compress` "
                                                                  "(JSON): its configurations become plans at its cut")] = None,
         max_accuracy_drop: Annotated[float, typer.Option(min=0.0, max=1.0, help="largest accuracy drop allowed for "
                                                          "--compress configurations (0.01 = 1 point)")] = 0.01,
         objective: Annotated[str, typer.Option(help="latency, energy, throughput or weighted:L,E")] = "latency",
         samples: Annotated[Optional[str], typer.Option(help="images to cost sending the input as PNG/JPEG: photos "
                                                   "(bundled), a data set spec, or a folder of images "
                                                   "(default: photos for colour inputs, digits for gray)")] = None,
         jpeg_quality: Annotated[int, typer.Option(min=1, max=95)] = 90,
         device_memory: Annotated[Optional[str], typer.Option(help="device memory for the head, e.g. 64MB "
                                                                   "(default: the device preset's)")] = None,
         max_bytes: Annotated[Optional[str], typer.Option(help="most bytes sent per inference, e.g. 20KB")] = None,
         keep_input: Annotated[bool, typer.Option("--keep-input", help="the raw input never leaves the device: "
                                                  "no all-server plans (a privacy policy)")] = False,
         leakage: Annotated[Optional[Path], typer.Option(help="per-cut leakage table (JSON from `edgesplit audit`)")] = None,
         max_ssim: Annotated[Optional[float], typer.Option(help="highest reconstruction SSIM allowed (needs --leakage)")] = None,
         max_probe_acc: Annotated[Optional[float], typer.Option(help="highest label-probe accuracy allowed (needs --leakage)")] = None,
         pareto: Annotated[bool, typer.Option("--pareto", help="also show the latency–energy–bytes Pareto front")] = False,
         top: Annotated[int, typer.Option(min=1, help="ranked plans to show")] = 10,
         runs: Annotated[int, typer.Option(min=1, help="timed runs per node when profiling this host")] = 10,
         json_out: JsonOut = None,
         plot: Annotated[Optional[Path], typer.Option(help="write latency vs bandwidth (PNG)")] = None,
         quiet: Quiet = False) -> None:
    """Choose where to cut MODEL for a device, a server and a link: ranked plans, speed-ups, switch table."""
    from edgesplit.model.data import sample_images
    from edgesplit.plan.hardware import parse_link, parse_machine, parse_size
    from edgesplit.compress.rate import load_compress
    from edgesplit.plan import Constraints, parse_codecs, parse_objective, plan_model
    from edgesplit.privacy.leakage import load_leakage
    from edgesplit.views import pareto_view, plan_table, switch_table_view

    codecs = list(codec or ["fp32"])
    for check, spec in ((parse_machine, device), (parse_machine, server), (parse_link, link), (parse_codecs, codecs),
                        (parse_objective, objective)):
        check(spec)  # every spec is checked before the slow work starts
    reports = [load_compress(path) for path in compressed or []]
    if (max_ssim is not None or max_probe_acc is not None) and leakage is None:
        raise EdgesplitError("--max-ssim and --max-probe-acc need the audit's leakage table: add --leakage FILE")
    loaded = load_model(model, input_shape=input_shape, weights=weights)
    traced = trace(loaded.module, loaded.example_input)
    shape = tuple(loaded.example_input.shape)
    images = None
    if len(shape) == 4 and shape[1] in (1, 3):
        images = sample_images(samples or ("photos" if shape[1] == 3 else "digits"), shape[1:])
    constraints = Constraints(
        device_memory_bytes=parse_size(device_memory) if device_memory else None,
        max_uplink_bytes=parse_size(max_bytes) if max_bytes else None, keep_input_on_device=keep_input,
        max_ssim=max_ssim, max_probe_accuracy=max_probe_acc, leakage_file=str(leakage) if leakage else None,
        max_accuracy_drop=max_accuracy_drop if reports else None, compress_files=[str(p) for p in compressed or []])
    table = load_leakage(leakage, traced.fingerprint) if leakage else None
    report = plan_model(traced, device=device, server=server, link=link, codec=codecs, objective=objective,
                        samples=images, jpeg_quality=jpeg_quality, constraints=constraints, leakage=table,
                        name=model, model_ref={**loaded.ref.to_json(), "weights": loaded.weights},
                        host_runs=runs, progress=not quiet,
                        compressed=reports)
    out.print(plan_table(report, top))
    chosen = report.chosen
    out.print(f"[bold]chosen:[/] {chosen.label} — {chosen.costs.latency_ms:.3g} ms per inference, "
              f"{report.speedup_vs_all_device:.2f}× all-device, {report.speedup_vs_all_server:.2f}× all-server "
              f"({report.all_server.label}); {report.candidates} plans costed in {report.planner_ms:.0f} ms; "
              f"min-cut {'agrees with' if report.min_cut_agrees else 'DISAGREES with'} the scan")
    out.print(switch_table_view(report))
    if pareto:
        out.print(pareto_view(report))
    write_json(json_out, report)
    if plot:
        from edgesplit.plots import plot_plan
        out.print(f"plot written to {plot_plan(report, plot)}")


@app.command()
def compress(model: ModelArg,
             cut: Annotated[str, typer.Option(help="cut index, or the name of the last head node")],
             weights: Weights = None, input_shape: InputShape = None,
             data: Annotated[str, typer.Option(help="digits | mnist:DIR | fashion-mnist:DIR | idx:DIR | folder:DIR | patches:DIR")] = "digits",
             codec: Annotated[Optional[list[str]], typer.Option(help="codec spec, repeatable: fp16, int8, int4+zstd, "
                                                                     "int2+ans, int8:channel,p99.9+ans … "
                                                                     "(default: fp32 fp16 int8 int4+zstd int2+ans)")] = None,
             bottleneck: Annotated[Optional[int], typer.Option(help="train a learned bottleneck with this many code channels")] = None,
             slimmable: Annotated[bool, typer.Option("--slimmable", help="train the bottleneck at 25/50/75/100% width")] = False,
             stride: Annotated[int, typer.Option(min=1, max=4, help="bottleneck spatial reduction")] = 2,
             bits: Annotated[int, typer.Option(min=1, max=8, help="bits per bottleneck code value")] = 4,
             epochs: Annotated[int, typer.Option(min=1, help="bottleneck epochs per stage (features, then task)")] = 2,
             batch_size: Annotated[int, typer.Option(min=1)] = 64,
             lr: Annotated[float, typer.Option(min=0.0)] = 2e-3,
             train_limit: Annotated[Optional[int], typer.Option(min=1, help="train the bottleneck on at most this many images")] = None,
             eval_limit: Annotated[int, typer.Option(min=1, help="evaluate on at most this many test images")] = 2000,
             checkpoint: Annotated[Optional[Path], typer.Option(help="folder to checkpoint the bottleneck in (resumes)")] = None,
             seed: int = 0, json_out: JsonOut = None,
             plot: Annotated[Optional[Path], typer.Option(help="write the rate–accuracy curve (PNG)")] = None,
             quiet: Quiet = False) -> None:
    """Measure bytes against accuracy at CUT: feature codecs, a learned bottleneck, and sending the input instead."""
    from edgesplit.compress.bottleneck import BottleneckConfig, TrainingPlan
    from edgesplit.codecs import parse_codec
    from edgesplit.compress.rate import DEFAULT_CODECS, SLIMMABLE_WIDTHS, compress as run_compress
    from edgesplit.views import compress_table

    specs = list(codec) if codec else list(DEFAULT_CODECS)
    for spec in specs:
        parse_codec(spec)  # every spec is checked before the slow work starts
    if slimmable and bottleneck is None:
        raise EdgesplitError("--slimmable needs --bottleneck CHANNELS (the code channels at full width)")
    dataset = load_dataset(data, limit=None)
    loaded = load_model(model, input_shape=input_shape or (1, *dataset.input_shape), weights=weights)
    traced = trace(loaded.module, loaded.example_input)
    config = None
    if bottleneck is not None:
        if bottleneck < 1:
            raise EdgesplitError(f"--bottleneck {bottleneck}: a bottleneck needs at least 1 code channel")
        config = BottleneckConfig(0, bottleneck, stride, bits, SLIMMABLE_WIDTHS if slimmable else (1.0,))
    torch.manual_seed(seed)
    report = run_compress(traced, loaded.module, dataset, cut, name=model, model_ref=loaded.ref.to_json(),
                          codecs=specs, bottleneck=config,
                          training=TrainingPlan(epochs, epochs, batch_size, lr, train_limit=train_limit, seed=seed),
                          checkpoint_dir=checkpoint, eval_limit=eval_limit, progress=not quiet)
    out.print(compress_table(report))
    best = report.at_most(0.01)
    features = [c for c in best if c.kind != "input"]
    if features:
        out.print(f"[bold]fewest bytes within 1 point of the baseline:[/] {features[0].name} — "
                  f"{features[0].bytes_per_inference:,.0f} B, {features[0].compression:.1f}× smaller than float32")
    write_json(json_out, report)
    if plot:
        from edgesplit.plots import plot_rate_accuracy
        out.print(f"plot written to {plot_rate_accuracy(report, plot)}")


@app.command()
def audit(model: ModelArg, weights: Weights = None, input_shape: InputShape = None,
          data: Annotated[str, typer.Option(help="victims: the test split of digits | mnist:DIR | fashion-mnist:DIR | "
                                                 "patches:DIR | folder:DIR")] = "digits",
          aux: Annotated[Optional[str], typer.Option(help="the attacker's images: the train split of this spec "
                                                     "(default: --data's train split)")] = None,
          cut: Annotated[str, typer.Option(help="all, or cut indices / node names, comma-separated")] = "all",
          codec: Annotated[Optional[str], typer.Option(help="the deployment codec (e.g. int8): attacks see what it "
                                                       "delivers (default: fp32)")] = None,
          attack: Annotated[str, typer.Option(help="inversion (black-box decoder), optimize (white-box), probe "
                                                   "(labels), comma-separated")] = "inversion,optimize,probe",
          defense: Annotated[Optional[list[str]], typer.Option(help="noise:SIGMA, dropout:P, quant:BITS, nopeek:ALPHA, "
                                                               "bottleneck:CHANNELS; repeatable or comma-separated")] = None,
          victims: Annotated[int, typer.Option(min=2, help="test images to attack")] = 256,
          aux_limit: Annotated[int, typer.Option(min=2, help="auxiliary images the attacker holds")] = 2000,
          epochs: Annotated[int, typer.Option(min=1, help="decoder training epochs (learned inversion)")] = 10,
          steps: Annotated[int, typer.Option(min=1, help="optimization steps (white-box inversion)")] = 200,
          defense_epochs: Annotated[int, typer.Option(min=1, help="NoPeek / bottleneck training epochs")] = 2,
          threads: Annotated[Optional[int], typer.Option(min=1, help="torch intra-op threads")] = None,
          seed: int = 0, json_out: JsonOut = None,
          out_dir: Annotated[Optional[Path], typer.Option("--out", help="folder for reconstruction grids and plots "
                                                          "(PNG)")] = None,
          quiet: Quiet = False) -> None:
    """Attack what crosses each cut (inversion, label probes) and measure what defenses cost in accuracy."""
    from edgesplit.codecs import parse_codec
    from edgesplit.privacy.audit import AuditSettings, parse_attacks, resolve_cuts, run_audit, summary_line
    from edgesplit.privacy.defenses import parse_defenses
    from edgesplit.views import audit_table

    attacks, defenses = parse_attacks(attack), parse_defenses(defense or [])
    if codec:
        parse_codec(codec)  # every spec is checked before the slow work starts
    if threads:
        torch.set_num_threads(threads)
    victim_data = load_dataset(data)
    aux_data = load_dataset(aux) if aux else victim_data
    loaded = load_model(model, input_shape=input_shape or (1, *victim_data.input_shape), weights=weights)
    warn = Console(stderr=True)
    if weights is None:
        # On stdout: stderr stays one line when the run then stops on a user error.
        out.print("[bold yellow]warning:[/] no --weights: auditing an untrained model says little about a trained one",
                  soft_wrap=True)
    traced = trace(loaded.module, loaded.example_input)
    settings = AuditSettings(attacks=attacks, codec=codec, victims=victims, aux_limit=aux_limit,
                             inversion_epochs=epochs, optimize_steps=steps, defense_epochs=defense_epochs, seed=seed)
    torch.manual_seed(seed)
    report = run_audit(traced, loaded.module, victim_data, aux_data, cuts=resolve_cuts(traced, cut), defenses=defenses,
                       settings=settings, name=model, model_ref={**loaded.ref.to_json(), "weights": loaded.weights},
                       data_spec=data, aux_spec=aux or data, out_dir=out_dir, progress=not quiet,
                       on_warning=lambda text: warn.print(f"[bold yellow]warning:[/] {text}", highlight=False,
                                                          soft_wrap=True))
    out.print(audit_table(report))
    out.print(summary_line(report))
    if out_dir is not None:
        out.print(f"grids and plots written to {out_dir}")
    write_json(json_out, report)


@app.command()
def train(model: ModelArg,
          out_path: Annotated[Path, typer.Option("--out", help="where to write the weights (.safetensors)")],
          data: Annotated[str, typer.Option(help="digits | mnist:DIR | fashion-mnist:DIR | idx:DIR | folder:DIR | patches:DIR")] = "digits",
          epochs: Annotated[int, typer.Option(min=1)] = 10,
          batch_size: Annotated[int, typer.Option(min=1)] = 64,
          lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
          image_size: Annotated[Optional[int], typer.Option(help="resize images to this size (folders)")] = None,
          limit: Annotated[Optional[int], typer.Option(help="use at most this many train and test images")] = None,
          seed: int = 0, json_out: JsonOut = None, quiet: Quiet = False) -> None:
    """Train MODEL on a data set on the CPU and report test accuracy."""
    dataset = load_dataset(data, image_size=image_size, limit=limit)
    channels = dataset.input_shape[0]
    ref = ModelRef(model, {"in_channels": channels, "num_classes": dataset.num_classes} if ":" not in model else {})
    torch.manual_seed(seed)
    network = build_model(ref, trusted_factory=model, input_shapes=[(1, *dataset.input_shape)],
                          source="the command line")
    result = train_classifier(network, dataset, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                              progress=not quiet)
    save_weights(network, out_path, ref, (1, *dataset.input_shape),
                 {"dataset": dataset.name, "test_accuracy": result.test_accuracy})
    out.print(f"{model} on {dataset.name}: test accuracy {result.test_accuracy:.2%} after {epochs} epochs "
              f"({result.seconds:.0f} s); weights written to {out_path}")
    write_json(json_out, {"model": ref.to_json(), "dataset": dataset.name, "epochs": epochs,
                          "test_accuracy": result.test_accuracy, "train_loss": result.train_loss,
                          "seconds": result.seconds, "weights": str(out_path)})


@app.command()
def demo(out_dir: Annotated[Path, typer.Option("--out", help="folder for every result")] = Path("demo-results"),
         json_out: JsonOut = None, quiet: Quiet = False) -> None:
    """The main job on bundled data: train, profile, plan, compress, serve and run, audit, report."""
    from edgesplit.pipeline.demo import run_demo
    write_json(json_out, run_demo(out_dir, out, progress=not quiet))


@app.command("run")
def run_config(config_path: Annotated[Path, typer.Argument(metavar="CONFIG.yaml", help="what to run (see "
                                                             "examples/run.yaml)")],
               out_dir: Annotated[Path, typer.Option("--out", help="folder for every result")] = Path("run-results"),
               json_out: JsonOut = None, quiet: Quiet = False) -> None:
    """The demo's pipeline on your model, data, device, server, link, codecs and attacks, from a config file."""
    from edgesplit.pipeline.run import load_config, run_pipeline
    write_json(json_out, run_pipeline(load_config(config_path), out_dir, out, progress=not quiet))


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="folder the stages wrote their --json "
                                                   "files into (searched recursively)")],
           out_path: Annotated[Path, typer.Option("--out", "-o", help="the HTML page to write")] = Path("report.html"),
           title: Annotated[Optional[str], typer.Option(help="page title (default: the run's title, else from RUN_DIR's name)")] = None,
           json_out: JsonOut = None) -> None:
    """One self-contained HTML page (plots embedded) from every stage's JSON in RUN_DIR."""
    from edgesplit.report.page import report_index, scan, write_report

    files = scan(run_dir)
    path = write_report(run_dir, out_path, title, files=files)
    shown = ", ".join(f.name + (" [unreadable]" if f.error else "") for f in files.found)
    out.print(f"report written to {path} from {len(files.found)} result file(s): {shown}", markup=False,
              highlight=False, soft_wrap=True)
    if files.other or files.unreadable:
        out.print(f"not shown: {', '.join(n for n, _ in [*files.other, *files.unreadable])}", markup=False,
                  highlight=False, soft_wrap=True)
    write_json(json_out, report_index(files, path))


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
          ) -> None:
    """Serve the tails of every route in PLAN's switch table: binary frames over HTTP and WebSocket."""
    from edgesplit.runtime.server import Guards, serve as run_server, token_from
    if ray:
        from edgesplit.runtime.ray_serve import run as run_ray
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
               log_level=log_level, console=out, model=model)


@app.command()
def infer(plan_path: Annotated[Path, typer.Argument(metavar="PLAN.json", help="a plan from `edgesplit plan ... --json`")],
          server: Annotated[str, typer.Option(help="the tail server's URL, e.g. http://10.0.0.2:8000")],
          token_file: Annotated[Optional[Path], typer.Option(help="file whose first line is the server's token "
                                                             "(default: $EDGESPLIT_TOKEN, else none)")] = None,
          images: Annotated[Optional[Path], typer.Option(help="folder of PNG/JPEG images (class subfolders "
                                                         "give labels)")] = None,
          data: Annotated[Optional[str], typer.Option(help="digits | mnist:DIR | fashion-mnist:DIR (test split) "
                                                      "(default: digits for 1×8×8 models)")] = None,
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
          json_out: JsonOut = None, quiet: Quiet = False) -> None:
    """Run PLAN's head here and its tail on a server: adapts the cut to the uplink, falls back when it is down."""
    from edgesplit.plan.schema import load_plan
    from edgesplit.runtime.client import Client, load_inputs, read_token, run_inference, summary_table

    token = read_token(token_file)
    report = load_plan(plan_path)
    inputs = load_inputs(report.input_shape, images=images, data=data, limit=limit)
    with Client(report, server, token, weights=weights, timeout_s=timeout, retries=retries, fallback=not no_fallback,
                probe_every_s=probe_every, initial_mbps=initial_mbps, hysteresis=hysteresis, top_k=top_k,
                route=route, model_id=model_id, model=model, plan_dir=plan_path.parent, onnx_dir=onnx,
                stream=stream, ca_file=ca_file) as client:
        result = run_inference(client, inputs, batch=batch, check=check, progress=not quiet)
    out.print(summary_table(result["summary"]))
    write_json(json_out, result)


def write_json(path: Path | None, result: Any) -> None:
    """Write a pydantic model (or plain data) as indented JSON, creating parent folders."""
    if path is None:
        return
    text = result.model_dump_json(indent=2) if isinstance(result, BaseModel) else json.dumps(result, indent=2)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as error:
        raise EdgesplitError(f"cannot write {path} ({error.strerror}); choose a writable path") from None


def main() -> None:
    """Console entry point: user errors print one line and exit 2, never a traceback."""
    try:
        app()
    except EdgesplitError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
