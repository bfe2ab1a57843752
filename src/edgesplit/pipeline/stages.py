"""Every stage of the job, once: train, profile, plan, split, compress, serve and infer, audit.

Each function takes its stage's settings (a pydantic model: what the CLI verb's options fill in, and the run
config's section of the same name) and the model it works on, and returns the stage's record: the file the verb
writes with ``--json`` and a run writes into its folder. `edgesplit VERB` (cli.py) and `edgesplit run`
(``pipeline.run``) both call these functions; nothing here prints (``pipeline.show`` does, for both).

Every default lives in one settings class: ``TrainSettings`` (``model.train``) and ``AuditSettings``
(``privacy.audit``) are the library's own; ``ProfileSettings``, ``PlanSettings``, ``CompressSettings`` and
``ServeSettings`` are defined here. ``check_*`` parses a stage's specs before any slow work starts.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from edgesplit.codecs import parse_codec
from edgesplit.compress.bottleneck import BottleneckConfig, TrainingPlan
from edgesplit.compress.rate import DEFAULT_CODECS, SLIMMABLE_WIDTHS, CompressReport, load_compress
from edgesplit.compress.rate import compress as measure_compression  # `compress` is this module's stage
from edgesplit.errors import EdgesplitError
from edgesplit.model.artifact import SplitRecord, load_split, save_split, verify_split
from edgesplit.model.data import Dataset, input_samples, load_dataset
from edgesplit.model.graph import TracedModel, max_abs_diff, trace
from edgesplit.model.intake import LoadedModel, ModelRef, build_model, data_arguments, load_model, save_weights
from edgesplit.model.train import TrainRecord, TrainSettings, train_classifier
from edgesplit.pipeline.serving import served, write_secret
from edgesplit.plan import Constraints, PlanReport, parse_codecs, parse_objective, plan_model
from edgesplit.plan.hardware import LINKS, PRESETS, parse_link, parse_machine, parse_size
from edgesplit.plan.chain import plan_chain
from edgesplit.plan.leakage import load_leakage
from edgesplit.plan.schema import ChainPlanReport
from edgesplit.plan.topology import DEFAULT_HOP_MS, parse_topology
from edgesplit.privacy.audit import AuditSettings, run_audit
from edgesplit.privacy.schema import AuditReport
from edgesplit.profile import ProfileReport, profile_model
from edgesplit.runtime.client import Client
from edgesplit.runtime.infer import load_inputs, run_inference

__all__ = ["CompressSettings", "InferPass", "PlanSettings", "ProfileSettings", "ServeSettings", "SplitResult", "audit",
           "check_audit", "check_compress", "check_plan", "compress", "load", "plan", "profile", "serve_and_infer",
           "split", "train"]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------- the model


def load(model: str, *, input_shape: str | tuple[int, ...] | None = None,
         weights: str | Path | None = None) -> tuple[LoadedModel, TracedModel]:
    """The model the user named (a zoo name or their own ``module:factory``), with its weights, traced."""
    loaded = load_model(model, input_shape=input_shape, weights=weights)
    return loaded, trace(loaded.module, loaded.example_input)


def train(settings: TrainSettings, model: str, dataset: Dataset, weights: Path, *, seed: int = 0,
          source: str = "the command line", progress: bool = True) -> TrainRecord:
    """Build ``model`` for the data (its factory gets the data's ``in_channels`` and ``num_classes`` where its
    signature names them), train it, write its weights to ``weights``; the record `train --json` writes.

    ``source`` says where the model's name came from (the command line, a run config): the user's own choice, so
    it may be a factory."""
    ref = ModelRef(model, data_arguments(model, dataset.input_shape[0], dataset.num_classes))
    shape = (1, *dataset.input_shape)
    torch.manual_seed(seed)
    network = build_model(ref, trusted_factory=model, input_shapes=[shape], source=source)
    result = train_classifier(network, dataset, epochs=settings.epochs, batch_size=settings.batch_size,
                              lr=settings.lr, seed=seed, progress=progress)
    save_weights(network, weights, ref, shape, {"dataset": dataset.name, "test_accuracy": result.test_accuracy})
    return TrainRecord(model=ref.to_json(), dataset=dataset.name, epochs=settings.epochs,
                       test_accuracy=result.test_accuracy, train_loss=result.train_loss, seconds=result.seconds,
                       weights=str(weights))


# ---------------------------------------------------------------------------------------------- profile


class ProfileSettings(_Settings):
    """How `edgesplit profile` times each cut (a run's ``profile_runs`` is ``runs``)."""

    runs: int = Field(20, ge=1, description="timed samples per measurement (median)")
    warmup: int = Field(3, ge=0, description="untimed calls before timing")
    measure: Literal["calibrate", "all"] = Field(
        "calibrate", description="calibrate: sum node latencies for heads and tails and run a few cuts whole to "
                                 "check them; all: run every cut's head and tail (slow, for studies)")
    measure_cuts: list[str] = Field([], description="also run this cut's head and tail as a whole (index or node "
                                                    "name; repeatable): its latencies are measured, not summed")


def profile(settings: ProfileSettings, traced: TracedModel, name: str, *, progress: bool = True) -> ProfileReport:
    """MACs, bytes crossing, head/tail latency and peak memory at every candidate cut, measured here."""
    return profile_model(traced, name=name, runs=settings.runs, warmup=settings.warmup, progress=progress,
                         measure=settings.measure, measure_cuts=settings.measure_cuts)


# ---------------------------------------------------------------------------------------------- plan


def _presets(role: str) -> str:
    """The preset names of one role, for help texts: a new preset in plan/hardware.py appears here by itself."""
    return ", ".join(name for name, preset in PRESETS.items() if preset.role == role)


class PlanSettings(_Settings):
    """Where `edgesplit plan` may cut and what it may send: machines, link, codecs, objective and constraints."""

    device: str = Field("rpi4", description=f"preset ({_presets('device')}), host, or a device profile PATH.json; "
                                            "/F or *F scales it, @PRESET adds power")
    server: str = Field("edge-gpu", description=f"as --device (server presets: {_presets('server')})")
    link: str = Field("wifi", description=f"{', '.join(LINKS)}, with overrides (lte:up=2,rtt=80), or "
                                          "custom:up=MBPS,down=MBPS,rtt=MS,tx=W,rx=W")
    codecs: list[str] = Field(["fp32"], min_length=1,
                              description="how features cross, repeatable to choose codec and cut together: fp32, "
                                          "fp16, int8, int4+zstd, int2+ans … (default: fp32)")
    objective: str = Field("latency", description="latency, energy, throughput or weighted:L,E")
    samples: str | None = Field(None, description="images to cost sending the input as PNG/JPEG: photos (bundled), a "
                                                  "data set spec, or a folder of images (default: photos for colour "
                                                  "inputs, digits for gray)")
    jpeg_quality: int = Field(90, ge=1, le=95, description="JPEG quality when costing the input sent as JPEG")
    device_memory: str | None = Field(None, description="device memory for the head, e.g. 64MB (default: the "
                                                        "device preset's)")
    max_bytes: str | None = Field(None, description="most bytes sent per inference, e.g. 20KB")
    keep_input: bool = Field(False, description="the raw input never leaves the device: no all-server plans (a "
                                                "privacy policy)")
    leakage: Path | None = Field(None, description="per-cut leakage table (JSON from `edgesplit audit`)")
    max_ssim: float | None = Field(None, description="highest reconstruction SSIM allowed (needs --leakage)")
    max_probe_acc: float | None = Field(None, description="highest label-probe accuracy allowed (needs --leakage)")
    max_dfil: float | None = Field(None, gt=0, description="highest dFIL allowed: Fisher information per input value "
                                                            "under the audit's noise σ (needs --leakage)")
    compress: list[Path] = Field([], description="result of `edgesplit compress` (JSON): its configurations become "
                                                 "plans at its cut")
    max_accuracy_drop: float = Field(0.01, ge=0.0, le=1.0, description="largest accuracy drop allowed for --compress "
                                                                   "configurations (0.01 = 1 point)")
    runs: int = Field(10, ge=1, description="timed runs per node when profiling this host")
    topology: str | None = Field(None, description="a chain of machines and links, 'M0 > L0 > M1 > … > MK' (e.g. "
                                                   "'rpi4 > wifi > host/4 > ethernet > edge-gpu'), or a topology YAML "
                                                   "file; replaces --device/--link/--server")
    hop_ms: float = Field(DEFAULT_HOP_MS, ge=0.0, description="fixed framework cost per hop and message on a "
                                                              "--topology chain, besides the link's RTT")


def check_plan(settings: PlanSettings) -> None:
    """Parse every spec of ``settings`` (machines, link, codecs, objective, sizes): a one-line EdgesplitError."""
    if settings.topology is not None:
        parse_topology(settings.topology, settings.hop_ms)
        unsupported = [name for name, given in (("--compress", settings.compress),
                                                ("several --codec", len(settings.codecs) > 1)) if given]
        if unsupported:
            raise EdgesplitError(f"{unsupported[0]} is not supported with --topology yet; plan the chain with one "
                                 "codec and no compress files")
    parse_machine(settings.device), parse_machine(settings.server), parse_link(settings.link)
    parse_codecs(settings.codecs), parse_objective(settings.objective)
    for size in (settings.device_memory, settings.max_bytes):
        if size is not None:
            parse_size(size)
    if (settings.max_ssim is not None or settings.max_probe_acc is not None
            or settings.max_dfil is not None) and settings.leakage is None:
        raise EdgesplitError("--max-ssim, --max-probe-acc and --max-dfil need the audit's leakage table: add "
                             "--leakage FILE")


def plan(settings: PlanSettings, loaded: LoadedModel, traced: TracedModel, *, progress: bool = True,
         ) -> PlanReport | ChainPlanReport:
    """Cost every cut and codec on the device, link and server; the ranked plans, the chosen one, the switch
    table (the file `edgesplit plan --json` writes). With a topology, the placement on that chain of machines."""
    check_plan(settings)
    table = load_leakage(settings.leakage, traced.fingerprint) if settings.leakage else None
    if settings.topology is not None:
        return plan_chain(traced, parse_topology(settings.topology, settings.hop_ms), codec=settings.codecs[0],
                          objective=settings.objective, name=loaded.ref.name,
                          model_ref={**loaded.ref.to_json(), "weights": loaded.weights}, host_runs=settings.runs,
                          progress=progress, leakage=table, constraints=Constraints(
                              device_memory_bytes=parse_size(settings.device_memory) if settings.device_memory else None,
                              max_uplink_bytes=parse_size(settings.max_bytes) if settings.max_bytes else None,
                              keep_input_on_device=settings.keep_input, max_ssim=settings.max_ssim,
                              max_probe_accuracy=settings.max_probe_acc, max_dfil=settings.max_dfil,
                              leakage_file=str(settings.leakage) if settings.leakage else None))
    reports = [load_compress(path) for path in settings.compress]
    constraints = Constraints(
        device_memory_bytes=parse_size(settings.device_memory) if settings.device_memory else None,
        max_uplink_bytes=parse_size(settings.max_bytes) if settings.max_bytes else None,
        keep_input_on_device=settings.keep_input, max_ssim=settings.max_ssim,
        max_probe_accuracy=settings.max_probe_acc, max_dfil=settings.max_dfil,
        leakage_file=str(settings.leakage) if settings.leakage else None,
        max_accuracy_drop=settings.max_accuracy_drop if reports else None,
        compress_files=[str(path) for path in settings.compress])
    samples = input_samples(tuple(loaded.example_input.shape), settings.samples)
    return plan_model(traced, device=settings.device, server=settings.server, link=settings.link,
                      codec=list(settings.codecs), objective=settings.objective, samples=samples,
                      jpeg_quality=settings.jpeg_quality, constraints=constraints, leakage=table,
                      name=loaded.ref.name, model_ref={**loaded.ref.to_json(), "weights": loaded.weights},
                      host_runs=settings.runs, progress=progress, compressed=reports)


# ---------------------------------------------------------------------------------------------- split


@dataclass
class SplitResult:
    """A split saved and reloaded, and how the reloaded halves compare with the whole model."""

    record: SplitRecord  # split.json
    folder: Path
    images: int  # inputs the reloaded halves were checked on
    max_abs_diff: float  # tail(*head(x)) against model(x)
    agreement: float | None  # share of predictions that agree (checked on held-out images only)


def split(loaded: LoadedModel, traced: TracedModel, cut: int | str, folder: Path, *,
          images: torch.Tensor | None = None) -> SplitResult:
    """Split at ``cut``, save head, tail and split.json in ``folder``, reload them, and check them on ``images``
    (held-out images: predictions compared too) or else on the model's example input. The split has no settings
    beyond its cut."""
    halves = traced.split(cut)
    save_split(halves, traced, loaded.ref, folder,
               max_abs_diff(halves(loaded.example_input), loaded.module(loaded.example_input)))
    reloaded, record = load_split(folder, model=loaded.ref.name)
    inputs = loaded.example_input if images is None else images
    difference = verify_split(reloaded, loaded.module, inputs)
    agreement = None
    if images is not None:
        with torch.no_grad():
            agreement = (reloaded(images).argmax(1) == loaded.module(images).argmax(1)).float().mean().item()
    return SplitResult(record, folder, len(inputs), difference, agreement)


# ---------------------------------------------------------------------------------------------- compress


class CompressSettings(_Settings):
    """What `edgesplit compress` measures at a cut: feature codecs and, optionally, a learned bottleneck."""

    codecs: list[str] = Field(list(DEFAULT_CODECS), min_length=1,
                              description="codec spec, repeatable: fp16, int8, int4+zstd, int2+ans, "
                                          "int8:channel,p99.9+ans … (default: fp32 fp16 int8 int4+zstd int2+ans; "
                                          "at a token cut, B×N×D, the int ones per channel: int8:channel …)")
    bottleneck: int | None = Field(None, ge=1, description="train a learned bottleneck with this many code channels")
    slimmable: bool = Field(False, description="train the bottleneck at 25/50/75/100% width")
    stride: int = Field(2, ge=1, le=4, description="bottleneck spatial reduction")
    bits: int = Field(4, ge=1, le=8, description="bits per bottleneck code value")
    epochs: int = Field(TrainingPlan.feature_epochs, ge=1,
                        description="bottleneck epochs per stage (features, then task)")
    batch_size: int = Field(TrainingPlan.batch_size, ge=1, description="bottleneck training batch size")
    lr: float = Field(TrainingPlan.lr, gt=0, description="bottleneck learning rate")
    train_limit: int | None = Field(None, ge=1, description="train the bottleneck on at most this many images")
    eval_limit: int = Field(2000, ge=1, description="evaluate on at most this many test images")
    max_accuracy_drop: float = Field(PlanSettings.model_fields["max_accuracy_drop"].default, ge=0.0, le=1.0,
                                     description="largest accuracy drop a configuration may cost and still count "
                                                 "(a run replans with it)")


def check_compress(settings: CompressSettings) -> None:
    """Parse every codec spec, and refuse a slimmable bottleneck without channels."""
    for spec in settings.codecs:
        parse_codec(spec)
    if settings.slimmable and settings.bottleneck is None:
        raise EdgesplitError("--slimmable needs --bottleneck CHANNELS (the code channels at full width)")


def compress(settings: CompressSettings, loaded: LoadedModel, traced: TracedModel, dataset: Dataset,
             cut: int | str, *, checkpoint: Path | None = None, seed: int = 0,
             progress: bool = True) -> CompressReport:
    """Bytes against accuracy at ``cut`` on ``dataset``: each codec, the learned bottleneck (trained here,
    checkpointed in ``checkpoint``), and sending the input instead (the file `compress --json` writes)."""
    check_compress(settings)
    bottleneck = None
    if settings.bottleneck is not None:
        bottleneck = BottleneckConfig(0, settings.bottleneck, settings.stride, settings.bits,
                                      SLIMMABLE_WIDTHS if settings.slimmable else (1.0,))
    training = TrainingPlan(settings.epochs, settings.epochs, settings.batch_size, settings.lr,
                            train_limit=settings.train_limit, seed=seed)
    torch.manual_seed(seed)
    return measure_compression(traced, loaded.module, dataset, cut, name=loaded.ref.name,
                               model_ref=loaded.ref.to_json(), codecs=list(settings.codecs), bottleneck=bottleneck,
                               training=training, checkpoint_dir=checkpoint, eval_limit=settings.eval_limit,
                               progress=progress)


# ---------------------------------------------------------------------------------------------- serve and infer


class ServeSettings(_Settings):
    """How `edgesplit run` serves a plan on 127.0.0.1 and runs held-out images through it."""

    target: str | None = Field(None, description="which target's plan (its name); default: the first whose plan "
                                                 "sends anything")
    images: int = Field(200, ge=1, description="held-out images sent")
    batch: int = Field(1, ge=1, le=64, description="images per request")


@dataclass
class InferPass:
    """One pass of the held-out images through the server: `edgesplit infer --json`'s result."""

    name: str  # the file it is written to (NAME.json)
    how: str  # in words: "every image on cut 3 after conv1_2", "adaptive client"
    result: dict  # {"summary": ..., "records": [...]}


def _pinned_route(report: PlanReport) -> str:
    """The route every image takes in the first pass: the switch table's at the plan's link, else the fastest."""
    rows = [row for row in report.switch_table if row.kind != "all-device"]
    at_link = [row for row in rows if row.low_mbps <= report.link.uplink_mbps < row.high_mbps]
    return (at_link or sorted(rows, key=lambda row: -row.high_mbps))[0].label


def serve_and_infer(settings: ServeSettings, report: PlanReport, plan_path: Path, folder: Path, *, model: str,
                    data: str, progress: bool = True, labelled: bool = True,
                    say: Callable[[str], None] = lambda text: None) -> tuple[list[InferPass], float]:
    """Serve the plan at ``plan_path`` (`edgesplit serve` in a subprocess on 127.0.0.1, its token and log in
    ``folder``) and send ``settings.images`` held-out images of ``data`` twice: every image on the plan's route at
    its link, then with the adaptive client. The passes, and the seconds spent outside them (starting and
    stopping the server). ``say`` hears what happens (the server's address, each pass) as it happens.

    ``model`` is passed to the server and the client as the trusted model (the plan names the run's model);
    ``labelled=False`` drops the data's labels, so no accuracy is reported (an untrained model's means nothing)."""
    started = time.perf_counter()
    token = secrets.token_urlsafe(32)
    token_file = write_secret(folder / "token", token + "\n")
    inputs = load_inputs(report.input_shape, data=data, limit=settings.images)
    if not labelled:
        inputs = replace(inputs, labels=None)
    pinned = _pinned_route(report)
    passes = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the server subprocess takes one thread: two spinning thread pools on two cores crawl
    try:
        with served(plan_path, token_file, folder / "server.log", model=model) as url:
            say(f"server ready at {url} (a subprocess, bearer token in {token_file}); routes: "
                + ", ".join(f"{r.label} ({r.low_mbps:g}–{r.high_mbps:g} Mbit/s)" for r in report.switch_table))
            for name, how, route in (("infer_pinned", f"every image on {pinned}", pinned),
                                     ("infer_adaptive", "adaptive client", None)):
                say(how)
                with Client(report, url, token, plan_dir=plan_path.parent, route=route, model=model) as client:
                    passes.append(InferPass(name, how, run_inference(client, inputs, batch=settings.batch,
                                                                     check=True, progress=progress)))
    finally:
        torch.set_num_threads(threads)
    overhead = time.perf_counter() - started - sum(p.result["summary"]["seconds"] for p in passes)
    return passes, overhead


# ---------------------------------------------------------------------------------------------- audit


def check_audit(settings: AuditSettings) -> AuditSettings:
    """The settings with every spec parsed (attacks, defenses, codec): ``settings`` itself when it was built as
    an ``AuditSettings``, which parses them as it is made; a one-line EdgesplitError for a bad one."""
    if type(settings) is AuditSettings:
        return settings
    return AuditSettings.model_validate(settings.model_dump())


def audit(settings: AuditSettings, loaded: LoadedModel, traced: TracedModel, data: Dataset, *, data_spec: str,
          out_dir: Path | None = None, progress: bool = True,
          warn: Callable[[str], None] | None = None) -> AuditReport:
    """Attack what crosses each cut of ``settings.cuts`` under each defense: the victims are ``data``'s test
    split (``data_spec`` names it), the attacker's images ``settings.aux``'s train split, else ``data``'s.
    Grids and plots go to ``out_dir``; ``warn`` hears each warning as soon as it is found."""
    settings = check_audit(settings)
    aux = load_dataset(settings.aux) if settings.aux else data
    torch.manual_seed(settings.seed)
    return run_audit(traced, loaded.module, data, aux, settings=settings, name=loaded.ref.name,
                     model_ref={**loaded.ref.to_json(), "weights": loaded.weights}, data_spec=data_spec,
                     aux_spec=settings.aux or data_spec, out_dir=out_dir, progress=progress, on_warning=warn)
