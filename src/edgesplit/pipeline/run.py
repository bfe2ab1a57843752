"""The whole job, driven by one config: train, profile, plan, compress, serve and run, audit, report.

`edgesplit demo` runs it with the built-in config on the bundled digits; `edgesplit run CONFIG.yaml` runs a
user's. Every stage writes the same JSON its own verb writes (`--json`), so `edgesplit report` reads the run
folder like any other, and a stage can be rerun by hand from the files it left.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgesplit.errors import EdgesplitError
from edgesplit.model.graph import TracedModel, trace
from edgesplit.model.intake import LoadedModel, ModelRef, build_model, load_model, save_weights

RUN_KIND, RUN_VERSION = "edgesplit.run", 1
MAX_NAME_CHARS = 64  # a target's name, which names its files
_FILE_NAME = re.compile(r"[A-Za-z0-9._-]+")


class ConfigError(EdgesplitError):
    """A run config that cannot be read or does not say what the pipeline needs."""


# ---------------------------------------------------------------------------------------------- the config


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainConfig(_Section):
    """Train the model on `data` first (zoo models, or factories that take in_channels and num_classes)."""

    epochs: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)


class Target(_Section):
    """One deployment to plan for: device, server and link specs as `edgesplit plan` takes them."""

    name: str | None = None  # names the files; default: from the specs
    device: str
    server: str = "edge-gpu"
    link: str

    @field_validator("name")
    @classmethod
    def _file_safe(cls, name: str | None) -> str | None:
        return None if name is None else check_file_name(name, "a target's name")

    @property
    def slug(self) -> str:
        return target_slug(self.name, self.device, self.link)


def check_file_name(name: str, what: str = "a name") -> str:
    """``name`` if it is safe as one file name (letters, digits, ``._-``; not ``.`` or ``..``; at most 64
    characters), else ValueError (a config error where pydantic validates)."""
    if not _FILE_NAME.fullmatch(name) or name in (".", "..") or len(name) > MAX_NAME_CHARS:
        raise ValueError(f"{what} {name[:80]!r} names files, so it may use only letters, digits, '.', '_' and '-' "
                         f"(at most {MAX_NAME_CHARS}, not '.' or '..')")
    return name


def target_slug(name: str | None, device: str, link: str) -> str:
    """What names a target's files (plan_SLUG.json): its name (``Target`` checks it with ``check_file_name``), else
    its device and link specs made file-safe."""
    return name or re.sub(r"[^A-Za-z0-9.-]+", "_", f"{device}-{link}").strip("_")[:MAX_NAME_CHARS] or "target"


class CompressConfig(_Section):
    """Codecs and a learned bottleneck measured at the chosen cut (`edgesplit compress`)."""

    codecs: list[str] = ["fp16", "int8", "int4+zstd", "int2+ans"]
    bottleneck: int | None = Field(8, ge=1)  # code channels; null: no bottleneck
    stride: int = Field(2, ge=1, le=4)
    bits: int = Field(4, ge=1, le=8)
    epochs: int = Field(4, ge=1)  # per stage: distil the head's output, then fine-tune with the teacher
    eval_limit: int = Field(2000, ge=1)
    max_accuracy_drop: float = Field(0.01, ge=0, le=1)  # for the bottleneck routes the plan may take


class ServeConfig(_Section):
    """Serve the plan's tails in a subprocess on 127.0.0.1 and run held-out images through them."""

    target: str | None = None  # which target's plan (its name); default: the first whose plan sends anything
    images: int = Field(200, ge=1)
    batch: int = Field(1, ge=1, le=64)


class AuditConfig(_Section):
    """Attack what crosses each cut (`edgesplit audit`)."""

    cuts: str = "all"
    attacks: str = "inversion,optimize,probe"
    defenses: list[str] = []
    victims: int = Field(64, ge=2)
    aux_limit: int = Field(1000, ge=2)
    epochs: int = Field(4, ge=1)
    steps: int = Field(100, ge=1)


class RunConfig(_Section):
    """What `edgesplit run` reads (YAML or JSON); every section but `model` and `targets` is optional."""

    title: str | None = None
    model: str
    weights: Path | None = None  # trained weights; without them, `train` trains the model on `data`
    data: str = "digits"
    train: TrainConfig | None = None
    compare: list[str] = []  # other models to profile beside it (zoo names, untrained)
    targets: list[Target] = Field(min_length=1)
    codecs: list[str] = ["fp32", "int8", "int4+zstd", "int2+ans"]  # what the planner may send at each cut
    objective: str = "latency"
    keep_input: bool = False  # the raw input never leaves the device: no all-server plans
    profile_runs: int = Field(10, ge=1)
    compress: CompressConfig | None = CompressConfig()
    serve: ServeConfig | None = ServeConfig()
    audit: AuditConfig | None = AuditConfig()
    seed: int = 0

    @field_validator("targets")
    @classmethod
    def _distinct_names(cls, targets: list[Target]) -> list[Target]:
        slugs = [t.slug for t in targets]
        if len(set(slugs)) != len(slugs):
            raise ValueError(f"two targets share a name ({', '.join(slugs)}); give each a distinct `name`")
        return targets


DEMO_CONFIG = RunConfig(
    title="edgesplit demo: small_cnn on scikit-learn's digits",
    model="small_cnn", data="digits", train=TrainConfig(), compare=["resnet8"],
    # A Raspberry Pi on LTE (Neurosurgeon's setting), and an MCU-class board (the STM32H743 has a
    # 100 Mbit/s Ethernet MAC) on wired Ethernet; the raw input stays on the device (a privacy policy).
    targets=[Target(name="rpi4-lte", device="rpi4", link="lte"),
             Target(name="mcu-ethernet", device="mcu", link="ethernet:up=100,down=100")],
    keep_input=True,
)


def load_config(path: Path) -> RunConfig:
    """Read and check a run config; relative paths in it are taken from the config's folder."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; pass a run config (see examples/run.yaml)") from None
    except OSError as error:
        raise ConfigError(f"cannot read {path} ({error.strerror})") from None
    try:
        import yaml

        data = yaml.safe_load(text)  # safe_load builds plain data only, never objects
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML ({str(error).splitlines()[0]}); fix it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds no mapping; a run config names at least `model` and `targets`")
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "config"
        raise ConfigError(f"{path}: {where}: {first['msg']} ({error.error_count()} problem(s); see examples/run.yaml)"
                          ) from None
    if config.weights is not None and not config.weights.is_absolute():
        config.weights = path.parent / config.weights
    return config


def check_config(config: RunConfig) -> None:
    """Parse every spec in the config before any slow work starts."""
    from edgesplit.codecs import parse_codec
    from edgesplit.plan.hardware import parse_link, parse_machine
    from edgesplit.plan import parse_codecs, parse_objective
    from edgesplit.privacy.audit import parse_attacks
    from edgesplit.privacy.defenses import parse_defenses

    for target in config.targets:
        parse_machine(target.device), parse_machine(target.server), parse_link(target.link)
    parse_codecs(config.codecs), parse_objective(config.objective)
    for spec in config.compress.codecs if config.compress else []:
        parse_codec(spec)
    if config.audit:
        parse_attacks(config.audit.attacks), parse_defenses(config.audit.defenses)
    if config.weights is None and config.train is None:
        raise ConfigError("the config has neither `weights` nor a `train` section; give trained weights or add "
                          "`train: {epochs: 10}`")
    if config.serve and config.serve.target and config.serve.target not in {t.slug for t in config.targets}:
        raise ConfigError(f"serve.target {config.serve.target!r} is none of the targets "
                          f"({', '.join(t.slug for t in config.targets)})")


# ---------------------------------------------------------------------------------------------- the run


class Run:
    """One pipeline run: the folder it writes, the console it talks to, and what each stage left."""

    def __init__(self, config: RunConfig, out_dir: Path, console: Console, progress: bool) -> None:
        self.config, self.out_dir, self.console, self.progress = config, out_dir.resolve(), console, progress
        self.summary: dict[str, Any] = {"kind": RUN_KIND, "version": RUN_VERSION, "out_dir": str(self.out_dir),
                                        "config": json.loads(config.model_dump_json()), "stages": {}}
        self.step = 0
        self._samples: torch.Tensor | None = None

    @cached_property
    def dataset(self) -> Any:
        """The config's data set, loaded once for every stage that needs it."""
        from edgesplit.model.data import load_dataset

        return load_dataset(self.config.data)

    def samples(self, loaded: LoadedModel) -> torch.Tensor | None:
        """Images to cost sending the input as PNG/JPEG (image models only), drawn once per run."""
        shape = tuple(loaded.example_input.shape)
        if not (len(shape) == 4 and shape[1] in (1, 3)):
            return None
        if self._samples is None:
            from edgesplit.model.data import sample_images

            self._samples = sample_images(self.config.data, shape[1:])
        return self._samples

    def stage(self, title: str) -> None:
        self.step += 1
        self.console.rule(f"{self.step}. {title}")

    def write(self, name: str, result: Any) -> Path:
        """Write ``result`` as JSON to ``name`` inside the run folder; a name that leads outside it is refused."""
        path = (self.out_dir / name).resolve()
        if not path.is_relative_to(self.out_dir):
            raise ConfigError(f"refusing to write {name!r}: it leads outside the run folder {self.out_dir}; use "
                              "names made of letters, digits, '.', '_' and '-'")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(result.model_dump_json(indent=2) if isinstance(result, BaseModel) else
                        json.dumps(result, indent=2))
        return path

    def record(self, stage: str, started: float, seconds: float | None = None, **facts: Any) -> None:
        seconds = time.perf_counter() - started if seconds is None else seconds
        self.summary["stages"][stage] = {**facts, "seconds": round(seconds, 2)}


def run_pipeline(config: RunConfig, out_dir: Path, console: Console, progress: bool = True) -> dict:
    """Run every stage the config names into ``out_dir``, finishing with report.html; the run summary."""
    check_config(config)
    started = time.perf_counter()
    run = Run(config, out_dir, console, progress)
    run.out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)

    loaded = _train_or_load(run)
    traced = trace(loaded.module, loaded.example_input)
    _profile(run, loaded, traced)
    plans = _plan(run, loaded, traced)
    served = _served_target(run, plans)
    run.summary["served_target"] = served
    entry = _chosen_cut(plans[served]) if served is not None else None
    if entry is not None:
        _split(run, loaded, traced, entry)
        if config.compress is not None:
            plans[served] = _compress_and_replan(run, loaded, traced, served, entry)
    if served is not None and config.serve is not None:
        _serve_and_infer(run, plans[served], run.out_dir / f"plan_{served}.json")
    if config.audit is not None:
        _audit(run, loaded, traced)

    run.stage("report")
    from edgesplit.report.page import write_report

    run.summary["seconds"] = round(time.perf_counter() - started, 1)
    run.write("run.json", run.summary)
    report_path = write_report(run.out_dir, run.out_dir / "report.html", config.title)
    run.summary["report"] = str(report_path)
    run.write("run.json", run.summary)
    console.print(_results_table(run))
    return run.summary


def _train_or_load(run: Run) -> LoadedModel:
    from edgesplit.model.train import train_classifier

    config = run.config
    if config.weights is not None:
        run.stage(f"load {config.model} from {config.weights}")
        return load_model(config.model, weights=config.weights)
    run.stage(f"train {config.model} on {config.data}")
    started = time.perf_counter()
    dataset = run.dataset
    ref = ModelRef(config.model, _data_kwargs(config.model, dataset))
    # The run config is the user's own choice, so its model may be a factory.
    network = build_model(ref, trusted_factory=config.model, input_shapes=[(1, *dataset.input_shape)],
                          source="the run config")
    result = train_classifier(network, dataset, epochs=config.train.epochs, batch_size=config.train.batch_size,
                              lr=config.train.lr, seed=config.seed, progress=run.progress)
    weights = run.out_dir / f"{config.model.replace(':', '_')}.safetensors"
    save_weights(network, weights, ref, (1, *dataset.input_shape),
                 {"dataset": dataset.name, "test_accuracy": result.test_accuracy})
    run.write("train.json", {"model": ref.to_json(), "dataset": dataset.name, "epochs": config.train.epochs,
                             "test_accuracy": result.test_accuracy, "train_loss": result.train_loss,
                             "seconds": result.seconds, "weights": str(weights)})
    run.console.print(f"test accuracy {result.test_accuracy:.2%} on {len(dataset.test_labels)} held-out images "
                      f"({result.seconds:.0f} s); weights written to {weights}")
    run.record("train", started, test_accuracy=result.test_accuracy, weights=str(weights))
    return load_model(config.model, weights=weights)


def _data_kwargs(model: str, dataset: Any) -> dict[str, int]:
    """The data's channels and classes, for the factory parameters named so (every zoo factory has them; a
    ``**kwargs`` catch-all is not given them, as ``intake.check_model_args`` would refuse them)."""
    import inspect

    from edgesplit.model.intake import resolve_factory

    wanted = {"in_channels": dataset.input_shape[0], "num_classes": dataset.num_classes}
    try:
        parameters = inspect.signature(resolve_factory(model)).parameters
    except (TypeError, ValueError):
        return {}
    named = {k for k, p in parameters.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return {k: v for k, v in wanted.items() if k in named}


def _profile(run: Run, loaded: LoadedModel, traced: TracedModel) -> None:
    from edgesplit.plots import plot_profile
    from edgesplit.profile import device_profile, profile_model
    from edgesplit.views import profile_table

    for name in [run.config.model, *run.config.compare]:
        run.stage(f"profile {name} on this machine")
        started = time.perf_counter()
        if name == run.config.model:
            graph = traced
        else:
            other = load_model(name)
            graph = trace(other.module, other.example_input)
        slug = name.replace(":", "_")
        report = profile_model(graph, name=name, runs=run.config.profile_runs, progress=run.progress)
        run.console.print(profile_table(report))
        run.write(f"profile_{slug}.json", report)
        plot_profile(report, run.out_dir / f"profile_{slug}.png")
        if name == run.config.model:
            run.write("device_this_machine.json", device_profile(report, "this_machine"))
        run.record(f"profile {name}", started, macs=report.model.macs, cuts=report.model.cuts,
                   model_ms=report.model_ms)


def _plan(run: Run, loaded: LoadedModel, traced: TracedModel) -> dict[str, Any]:
    from edgesplit.plan import Constraints

    plans = {}
    for target in run.config.targets:
        run.stage(f"plan {run.config.model} for {target.device} → {target.link} → {target.server}")
        plans[target.slug] = _plan_target(run, loaded, traced, target, f"plan {target.slug}",
                                          Constraints(keep_input_on_device=run.config.keep_input))
    return plans


def _plan_target(run: Run, loaded: LoadedModel, traced: TracedModel, target: Target, stage: str,
                 constraints: Any, compressed: list[Any] = ()) -> Any:
    """Plan one target, write plan_SLUG.json and its plot, show it, and record the stage."""
    from edgesplit.plan import plan_model
    from edgesplit.plots import plot_plan
    from edgesplit.views import switch_table_view

    started = time.perf_counter()
    report = plan_model(traced, device=target.device, server=target.server, link=target.link,
                        codec=run.config.codecs, objective=run.config.objective, samples=run.samples(loaded),
                        constraints=constraints, name=run.config.model,
                        model_ref={**loaded.ref.to_json(), "weights": loaded.weights}, progress=run.progress,
                        compressed=list(compressed))
    run.write(f"plan_{target.slug}.json", report)
    plot_plan(report, run.out_dir / f"plan_{target.slug}.png")
    _say_plan(run, report)
    run.console.print(switch_table_view(report))
    run.record(stage, started, chosen=report.chosen.label, latency_ms=report.chosen.costs.latency_ms,
               switch_table=[r.label for r in report.switch_table])
    return report


def _say_plan(run: Run, report: Any) -> None:
    chosen = report.chosen
    run.console.print(f"[bold]chosen:[/] {escape(chosen.label)} — {chosen.costs.latency_ms:.3g} ms per inference, "
                      f"{report.speedup_vs_all_device:.2f}× all-device, {report.speedup_vs_all_server:.2f}× "
                      f"all-server; {report.candidates} plans costed")


def _sends(report: Any) -> bool:
    return any(row.kind != "all-device" for row in report.switch_table)


def _served_target(run: Run, plans: dict[str, Any]) -> str | None:
    """The target whose plan is compressed and served: the config's, else the first that sends anything."""
    wanted = run.config.serve.target if run.config.serve else None
    if wanted:
        return wanted
    served = next((slug for slug, report in plans.items() if _sends(report)), None)
    if served is None:
        run.console.print("[bold yellow]note:[/] every target's plan runs the whole model on the device at every "
                          "bandwidth, so nothing is compressed or served; add a slower device or a faster link")
    return served


def _chosen_cut(report: Any) -> Any | None:
    """The plan's chosen split, else its best allowed split: where compression is measured."""
    splits = [e for e in report.ranked if e.kind == "split" and e.feasible and e.cut_index is not None]
    return splits[0] if splits else None


def _split(run: Run, loaded: LoadedModel, traced: TracedModel, entry: Any) -> None:
    from edgesplit.model.artifact import load_split, save_split, verify_split
    from edgesplit.model.graph import max_abs_diff
    from edgesplit.views import human_bytes, split_table

    run.stage(f"split at cut {entry.cut_index} (after {entry.after}), save, reload, check on held-out images")
    started = time.perf_counter()
    halves = traced.split(entry.cut_index)
    folder = run.out_dir / "split"
    save_split(halves, traced, loaded.ref, folder,
               max_abs_diff(halves(loaded.example_input), loaded.module(loaded.example_input)))
    reloaded, record = load_split(folder, model=run.config.model)
    run.console.print(split_table(record))
    facts: dict[str, Any] = {"cut": entry.cut_index, "after": entry.after, "crossing_bytes": record.crossing_bytes}
    dataset = run.dataset
    if tuple(dataset.input_shape) == tuple(loaded.example_input.shape[1:]):
        images = dataset.test_images
        difference = verify_split(reloaded, loaded.module, images)
        with torch.no_grad():
            agreement = (reloaded(images).argmax(1) == loaded.module(images).argmax(1)).float().mean().item()
        run.console.print(f"{len(images)} held-out images: tail(*head(x)) vs model(x) max abs diff {difference:.2e}, "
                          f"predictions agree on {agreement:.2%}; {human_bytes(record.crossing_bytes)} of float32 "
                          "features cross per image before compression")
        facts.update(images=len(images), max_abs_diff=difference, agreement=agreement)
    run.record("split", started, **facts)


def _compress_and_replan(run: Run, loaded: LoadedModel, traced: TracedModel, slug: str, entry: Any) -> Any:
    from edgesplit.compress.bottleneck import BottleneckConfig, TrainingPlan
    from edgesplit.compress.rate import compress
    from edgesplit.plan import Constraints
    from edgesplit.plots import plot_rate_accuracy
    from edgesplit.views import compress_table

    settings = run.config.compress
    run.stage(f"compress at cut {entry.cut_index} (after {entry.after}): codecs and a learned bottleneck")
    started = time.perf_counter()
    bottleneck = (BottleneckConfig(0, settings.bottleneck, settings.stride, settings.bits)
                  if settings.bottleneck else None)
    result = compress(traced, loaded.module, run.dataset, entry.cut_index, name=run.config.model,
                      model_ref=loaded.ref.to_json(), codecs=["fp32", *settings.codecs], bottleneck=bottleneck,
                      training=TrainingPlan(settings.epochs, settings.epochs, seed=run.config.seed),
                      checkpoint_dir=run.out_dir / "bottleneck", eval_limit=settings.eval_limit,
                      progress=run.progress)
    compress_path = run.write("compress.json", result)
    plot_rate_accuracy(result, run.out_dir / "compress.png")
    run.console.print(compress_table(result))
    run.record("compress", started, cut=entry.cut_index,
               configurations={c.name: {"bytes": c.bytes_per_inference, "accuracy": c.accuracy}
                               for c in result.configurations})
    target = next(t for t in run.config.targets if t.slug == slug)
    run.stage(f"plan {slug} again with the measured configurations")
    constraints = Constraints(keep_input_on_device=run.config.keep_input, max_accuracy_drop=settings.max_accuracy_drop,
                              compress_files=[str(compress_path)])
    # Rewrites plan_SLUG.json: what is served is the first plan with the measured configurations added.
    return _plan_target(run, loaded, traced, target, f"plan {slug} with compress", constraints, [result])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served(plan_path: Path, token_file: Path, log_path: Path, ready_s: float = 120.0,
           model: str | None = None) -> Iterator[str]:
    """`edgesplit serve PLAN` in a subprocess on 127.0.0.1; yields its URL once /readyz answers, stops it after.

    ``model`` is passed as `--model` when it is a ``module:factory``: the plan the pipeline wrote names the run
    config's factory, and the server builds a factory only when told to on its command line."""
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "edgesplit", "serve", str(plan_path), "--port", str(port),
                                    "--token-file", str(token_file), "--log-level", "warning",
                                    *(["--model", model] if model and ":" in model else [])],
                                   stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            deadline = time.monotonic() + ready_s
            while True:
                if process.poll() is not None:
                    tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                    raise EdgesplitError(f"the server exited before it was ready: {tail[0]} (log: {log_path})")
                try:
                    if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise EdgesplitError(f"the server was not ready after {ready_s:.0f} s (log: {log_path})")
                time.sleep(0.1)
            yield url
        finally:
            process.terminate()  # SIGTERM: the server finishes what is in flight and exits
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _serve_and_infer(run: Run, report: Any, plan_path: Path) -> None:
    """Serve the plan and send held-out images twice: on the plan's chosen route, then with the adaptive client."""
    from edgesplit.runtime.client import load_inputs, summary_table

    settings = run.config.serve
    run.stage(f"serve the {report.device.spec} → {report.link.spec} plan on 127.0.0.1 and run held-out images")
    started = time.perf_counter()
    token = secrets.token_urlsafe(32)
    token_file = write_secret(run.out_dir / "token", token + "\n")
    inputs = load_inputs(report.input_shape, data=run.config.data, limit=settings.images)
    pinned = _pinned_route(report)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the server subprocess takes one thread: two spinning thread pools on two cores crawl
    try:
        results = _infer_through_server(run, report, plan_path, token, token_file, inputs, pinned)
    finally:
        torch.set_num_threads(threads)
    server_s = time.perf_counter() - started - sum(r["summary"]["seconds"] for r in results.values())
    for index, ((name, how), result) in enumerate(results.items()):
        run.write(f"{name}.json", result)
        summary = result["summary"]
        run.console.print(summary_table(summary))
        # The first pass also pays for starting and stopping the server.
        seconds = summary["seconds"] + (server_s if index == 0 else 0.0)
        run.record(f"serve and infer, {how}", started, seconds, images=summary["images"], routes=summary["routes"],
                   accuracy=summary["accuracy"], agreement=summary["agreement"],
                   max_abs_diff=summary["max_abs_diff"], latency_ms=summary["latency_ms"],
                   bytes_per_image=summary["bytes_per_image"], server_results=summary["server_results"],
                   switches=summary["switch_count"])


def write_secret(path: Path, text: str) -> Path:
    """Write ``text`` to a new file at ``path`` that is 0600 from its creation (never readable by others, not even
    for a moment); an old file or link there is removed first, and a link is never followed."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    return path


def _pinned_route(report: Any) -> str:
    """The route every image takes in the first pass: the switch table's at the plan's link, else the fastest."""
    rows = [row for row in report.switch_table if row.kind != "all-device"]
    at_link = [row for row in rows if row.low_mbps <= report.link.uplink_mbps < row.high_mbps]
    return (at_link or sorted(rows, key=lambda row: -row.high_mbps))[0].label


def _infer_through_server(run: Run, report: Any, plan_path: Path, token: str, token_file: Path, inputs: Any,
                          pinned: str) -> dict[tuple[str, str], dict]:
    from edgesplit.runtime.client import Client, run_inference

    results = {}
    with served(plan_path, token_file, run.out_dir / "server.log", model=run.config.model) as url:
        run.console.print(f"server ready at {url} (a subprocess, bearer token in {token_file}); routes: "
                          + escape(", ".join(f"{r.label} ({r.low_mbps:g}–{r.high_mbps:g} Mbit/s)"
                                             for r in report.switch_table)))
        for name, how, route in (("infer_pinned", f"every image on {pinned}", pinned),
                                 ("infer_adaptive", "adaptive client", None)):
            run.console.print(f"[bold]{escape(how)}[/]")
            with Client(report, url, token, plan_dir=plan_path.parent, route=route,
                        model=run.config.model) as client:
                results[(name, how)] = run_inference(client, inputs, batch=run.config.serve.batch, check=True,
                                                     progress=run.progress)
    return results


def _audit(run: Run, loaded: LoadedModel, traced: TracedModel) -> None:
    from edgesplit.privacy.audit import AuditSettings, parse_attacks, resolve_cuts, run_audit, summary_line
    from edgesplit.privacy.defenses import parse_defenses
    from edgesplit.views import audit_table

    settings = run.config.audit
    run.stage(f"audit what crosses {'every cut' if settings.cuts == 'all' else 'cuts ' + settings.cuts}")
    started = time.perf_counter()
    dataset = run.dataset
    audit_settings = AuditSettings(attacks=parse_attacks(settings.attacks), victims=settings.victims,
                                   aux_limit=settings.aux_limit, inversion_epochs=settings.epochs,
                                   optimize_steps=settings.steps, seed=run.config.seed)
    torch.manual_seed(run.config.seed)
    report = run_audit(traced, loaded.module, dataset, dataset, cuts=resolve_cuts(traced, settings.cuts),
                       defenses=parse_defenses(settings.defenses), settings=audit_settings, name=run.config.model,
                       model_ref={**loaded.ref.to_json(), "weights": loaded.weights}, data_spec=run.config.data,
                       aux_spec=run.config.data, out_dir=run.out_dir / "audit", progress=run.progress,
                       on_warning=lambda text: run.console.print(f"[bold yellow]warning:[/] {text}"))
    run.write("audit/audit.json", report)
    run.console.print(audit_table(report))
    line = summary_line(report)
    run.console.print(line)
    run.record("audit", started, summary=line, rows=len(report.rows))


def _results_table(run: Run) -> Table:
    table = Table(title=f"results in {run.out_dir}/ ({run.summary['seconds']:.0f} s)", show_header=True)
    table.add_column("stage")
    table.add_column("s", justify="right")
    table.add_column("result")
    for stage, facts in run.summary["stages"].items():
        table.add_row(stage, f"{facts['seconds']:.1f}", escape(_fact_text(stage, facts)))
    table.add_row("report", "", run.summary.get("report", ""))
    return table


def _fact_text(stage: str, facts: dict) -> str:
    if stage == "train":
        return f"test accuracy {facts['test_accuracy']:.2%}"
    if stage.startswith("profile"):
        return f"{facts['macs'] / 1e6:.2f} M MACs, {facts['cuts']} cuts, whole model {facts['model_ms']:.3f} ms here"
    if stage.startswith("plan"):
        return f"chosen {facts['chosen']} ({facts['latency_ms']:.3g} ms); switch table: {' | '.join(facts['switch_table'])}"
    if stage == "split":
        checked = (f"; {facts['images']} held-out images agree {facts['agreement']:.2%}, max abs diff "
                   f"{facts['max_abs_diff']:.1e}" if "images" in facts else "")
        return f"cut {facts['cut']} after {facts['after']}, {facts['crossing_bytes']:,} B of float32{checked}"
    if stage == "compress":
        best = min(facts["configurations"].items(), key=lambda kv: kv[1]["bytes"])
        return f"at cut {facts['cut']}: fewest bytes {best[0]} ({best[1]['bytes']:.0f} B, accuracy {best[1]['accuracy']:.2%})"
    if stage.startswith("serve and infer"):
        agreement = facts["agreement"]
        return (f"{facts['images']} images, routes {facts['routes']}, p50 {facts['latency_ms']['p50']} ms, "
                f"accuracy {facts['accuracy']:.2%}, agreement with the whole model "
                f"{'n/a' if agreement is None else f'{agreement:.2%}'}")
    if stage == "audit":
        return facts["summary"]
    return ""
