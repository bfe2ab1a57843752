"""The whole job, driven by one config: train, profile, plan, split, compress, serve and run, audit, report.

`edgesplit demo` runs it with the built-in config on the bundled digits; `edgesplit run CONFIG.yaml` runs a
user's. This module decides the order, what to skip and where each file goes; the stages are ``pipeline.stages``'s,
the functions the CLI verbs call, shown as the verbs show them (``pipeline.show``). Every stage writes the JSON
its verb writes (`--json`), so `edgesplit report` reads the run folder like any other, and a stage can be rerun
by hand from the files it left. The run itself is summarised in run.json (``pipeline.summary.RunSummary``).
"""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgesplit.model.data import Dataset, load_dataset
from edgesplit.model.graph import TracedModel
from edgesplit.model.intake import LoadedModel, load_model, save_weights
from edgesplit.pipeline import stages
from edgesplit.pipeline.config import ConfigError, RunConfig, Target, check_config
from edgesplit.pipeline.show import show_audit, show_chain_plan, show_compress, show_plan, show_profile, show_split, show_train
from edgesplit.pipeline.stages import PlanSettings, ProfileSettings
from edgesplit.pipeline.summary import (AuditStage, CompressStage, InferStage, PlanStage, ProfileStage, RunSummary,
                                        SplitStage, StageRecord, TrainStage, stage_result_text)
from edgesplit.plan.schema import ChainPlanReport, PlanEntry, PlanReport
from edgesplit.plots import plot_chain_plan, plot_plan, plot_profile, plot_rate_accuracy
from edgesplit.privacy.audit import summary_line
from edgesplit.profile import device_profile
from edgesplit.report import write_report
from edgesplit.runtime.summary import summary_table
from edgesplit.versioned import write_json

__all__ = ["Run", "run_pipeline"]


class Run:
    """One pipeline run: the folder it writes, the console it talks to, and what each stage left."""

    def __init__(self, config: RunConfig, out_dir: Path, console: Console, progress: bool) -> None:
        self.config, self.out_dir, self.console, self.progress = config, out_dir.resolve(), console, progress
        self.summary = RunSummary(out_dir=str(self.out_dir), config=config)
        self.step = 0

    @cached_property
    def dataset(self) -> Dataset:
        """The config's data set, loaded once for every stage that needs it."""
        return load_dataset(self.config.data, image_size=self.config.image_size)

    def agreement_dataset(self, model: torch.nn.Module) -> Dataset:
        """The data set labelled with ``model``'s own top-1 predictions: for an untrained model, whose labels mean
        nothing, accuracy at a cut then means agreement with the unsplit model."""
        dataset = self.dataset
        with torch.no_grad():
            logits = [model.eval()(chunk) for chunk in torch.cat([dataset.train_images, dataset.test_images]).split(16)]
        predicted = torch.cat(logits).argmax(1)
        train, test = predicted[:len(dataset.train_images)], predicted[len(dataset.train_images):]
        return Dataset(f"{dataset.name}, labelled by the unsplit model", dataset.train_images, train,
                       dataset.test_images, test, [str(i) for i in range(logits[0].shape[1])])

    def stage(self, title: str) -> None:
        self.step += 1
        self.console.rule(f"{self.step}. {escape(title)}")

    def write(self, name: str, result: Any) -> Path:
        """Write ``result`` as JSON to ``name`` inside the run folder; a name that leads outside it is refused."""
        path = (self.out_dir / name).resolve()
        if not path.is_relative_to(self.out_dir):
            raise ConfigError(f"refusing to write {name!r}: it leads outside the run folder {self.out_dir}; use "
                              "names made of letters, digits, '.', '_' and '-'")
        return write_json(path, result)

    def record(self, label: str, record: StageRecord, started: float, seconds: float | None = None) -> None:
        """Keep what the stage ``label`` found, with its wall-clock seconds (since ``started``, unless given)."""
        record.seconds = round(time.perf_counter() - started if seconds is None else seconds, 2)
        self.summary.stages[label] = record


def run_pipeline(config: RunConfig, out_dir: Path, console: Console, progress: bool = True) -> dict:
    """Run every stage the config names into ``out_dir``, finishing with report.html; the run summary (run.json)."""
    check_config(config)
    started = time.perf_counter()
    run = Run(config, out_dir, console, progress)
    run.out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    run.dataset  # noqa: B018 - a data set that cannot be read stops the run now, not after minutes of profiling

    loaded, traced = _train_or_load(run)
    _profile(run, traced)
    plans = _plan(run, loaded, traced)
    served = _served_target(run, plans)
    run.summary.served_target = served
    entry = _chosen_cut(plans[served]) if served is not None else None
    if entry is not None:
        _split(run, loaded, traced, entry)
        if config.compress is not None:
            plans[served] = _compress_and_replan(run, loaded, traced, served, entry)
    if served is not None and config.serve is not None and not _sends(plans[served]):
        run.console.print("[bold yellow]note:[/] replanned with the measured configurations, the served target's "
                          "plan runs the whole model on the device at every bandwidth, so nothing is served")
    elif served is not None and config.serve is not None:
        _serve_and_infer(run, plans[served], run.out_dir / f"plan_{served}.json")
    if config.audit is not None:
        _audit(run, loaded, traced)

    run.stage("report")
    run.summary.seconds = round(time.perf_counter() - started, 1)
    run.write("run.json", run.summary)
    run.summary.report = str(write_report(run.out_dir, run.out_dir / "report.html", config.title))
    run.write("run.json", run.summary)
    console.print(_results_table(run))
    return run.summary.model_dump(mode="json")


def _train_or_load(run: Run) -> tuple[LoadedModel, TracedModel]:
    config = run.config
    if config.weights is not None:
        run.stage(f"load {config.model} from {config.weights}")
        return stages.load(config.model, weights=config.weights)
    if config.untrained:
        run.stage(f"build {config.model} with random weights (untrained: not trained, no accuracy measured)")
        loaded = load_model(config.model, input_shape=(1, *run.dataset.input_shape))  # shaped for the data
        # Saved like trained weights, so the server and the client of `serve` rebuild these same random weights.
        weights = run.out_dir / f"{config.model.replace(':', '_')}_untrained.safetensors"
        save_weights(loaded.module, weights, loaded.ref, tuple(loaded.example_input.shape), {"untrained": True})
        return stages.load(config.model, weights=weights)
    run.stage(f"train {config.model} on {config.data}")
    started = time.perf_counter()
    weights = run.out_dir / f"{config.model.replace(':', '_')}.safetensors"
    # The run config is the user's own choice, so its model may be a factory.
    record = stages.train(config.train, config.model, run.dataset, weights, seed=config.seed,
                          source="the run config", progress=run.progress)
    run.write("train.json", record)
    show_train(run.console, record)
    run.record("train", TrainStage.of(record), started)
    return stages.load(config.model, weights=weights)


def _profile(run: Run, traced: TracedModel) -> None:
    settings = ProfileSettings(runs=run.config.profile_runs)
    for name in [run.config.model, *run.config.compare]:
        run.stage(f"profile {name} on this machine")
        started = time.perf_counter()
        graph = traced if name == run.config.model else stages.load(name)[1]
        report = stages.profile(settings, graph, name, progress=run.progress)
        show_profile(run.console, report)
        slug = name.replace(":", "_")
        run.write(f"profile_{slug}.json", report)
        plot_profile(report, run.out_dir / f"profile_{slug}.png")
        if name == run.config.model:
            run.write("device_this_machine.json", device_profile(report, "this_machine"))
        run.record(f"profile {name}", ProfileStage.of(report), started)


def _plan(run: Run, loaded: LoadedModel, traced: TracedModel) -> dict[str, PlanReport | ChainPlanReport]:
    plans = {}
    for target in run.config.targets:
        run.stage(f"plan {run.config.model} for {target.text}")
        plans[target.slug] = _plan_target(run, loaded, traced, target, f"plan {target.slug}",
                                          run.config.plan_settings(target))
    return plans


def _plan_target(run: Run, loaded: LoadedModel, traced: TracedModel, target: Target, label: str,
                 settings: PlanSettings) -> PlanReport | ChainPlanReport:
    """Plan one target, write plan_SLUG.json and its plot, show it, and record the stage."""
    started = time.perf_counter()
    report = stages.plan(settings, loaded, traced, progress=run.progress)
    run.write(f"plan_{target.slug}.json", report)
    if isinstance(report, ChainPlanReport):
        plot_chain_plan(report, run.out_dir / f"plan_{target.slug}.png")
        show_chain_plan(run.console, report)
        run.record(label, PlanStage.of(report), started)
        return report
    plot_plan(report, run.out_dir / f"plan_{target.slug}.png")
    show_plan(run.console, report)
    run.record(label, PlanStage.of(report), started)
    return report


def _sends(report: PlanReport | ChainPlanReport) -> bool:
    """Whether a two-tier plan sends anything at some bandwidth (a chain plan is served with `serve --tier`, not
    by the run)."""
    return isinstance(report, PlanReport) and any(row.kind != "all-device" for row in report.switch_table)


def _served_target(run: Run, plans: dict[str, PlanReport]) -> str | None:
    """The target whose plan is compressed and served: the config's, else the first that sends anything."""
    wanted = run.config.serve.target if run.config.serve else None
    if wanted and isinstance(plans[wanted], ChainPlanReport):
        run.console.print(f"[bold yellow]note:[/] serve.target {escape(wanted)} is a chain of machines; a run serves "
                          "two-tier targets (serve a chain with `edgesplit serve PLAN --tier K`); name another target")
        return None
    if wanted and not _sends(plans[wanted]):
        run.console.print(f"[bold yellow]note:[/] the plan of serve.target {escape(wanted)} runs the whole model on "
                          "the device at every bandwidth, so nothing is compressed or served; name another target")
        return None
    if wanted:
        return wanted
    served = next((slug for slug, report in plans.items() if _sends(report)), None)
    if served is None:
        run.console.print("[bold yellow]note:[/] every target's plan runs the whole model on the device at every "
                          "bandwidth, so nothing is compressed or served; add a slower device or a faster link")
    return served


def _chosen_cut(report: PlanReport) -> PlanEntry | None:
    """The plan's chosen split, else its best allowed split: where compression is measured."""
    splits = [e for e in report.ranked if e.kind == "split" and e.feasible and e.cut_index is not None]
    return splits[0] if splits else None


def _split(run: Run, loaded: LoadedModel, traced: TracedModel, entry: PlanEntry) -> None:
    run.stage(f"split at cut {entry.cut_index} (after {entry.after}), save, reload, check on held-out images")
    started = time.perf_counter()
    dataset = run.dataset
    fits = tuple(dataset.input_shape) == tuple(loaded.example_input.shape[1:])
    result = stages.split(loaded, traced, entry.cut_index, run.out_dir / "split",
                          images=dataset.test_images if fits else None)
    show_split(run.console, result)
    run.record("split", SplitStage.of(result), started)


def _compress_and_replan(run: Run, loaded: LoadedModel, traced: TracedModel, slug: str,
                         entry: PlanEntry) -> PlanReport:
    settings = run.config.compress
    if "fp32" not in settings.codecs:  # every configuration is compared with sending float32
        settings = settings.model_copy(update={"codecs": ["fp32", *settings.codecs]})
    learned = " and a learned bottleneck" if settings.bottleneck else ""
    run.stage(f"compress at cut {entry.cut_index} (after {entry.after}): codecs{learned}")
    started = time.perf_counter()
    if run.config.untrained:
        run.console.print("[bold yellow]note:[/] untrained model: 'accuracy' below is top-1 agreement with the "
                          "unsplit model on the same images, not accuracy")
    dataset = run.agreement_dataset(loaded.module) if run.config.untrained else run.dataset
    result = stages.compress(settings, loaded, traced, dataset, entry.cut_index,
                             checkpoint=run.out_dir / "bottleneck", seed=run.config.seed, progress=run.progress)
    compress_path = run.write("compress.json", result)
    plot_rate_accuracy(result, run.out_dir / "compress.png")
    show_compress(run.console, result, settings.max_accuracy_drop)
    run.record("compress", CompressStage.of(result), started)
    target = next(t for t in run.config.targets if t.slug == slug)
    run.stage(f"plan {slug} again with the measured configurations")
    replan = run.config.plan_settings(target).model_copy(
        update={"compress": [compress_path], "max_accuracy_drop": settings.max_accuracy_drop})
    # Rewrites plan_SLUG.json: what is served is the first plan with the measured configurations added.
    return _plan_target(run, loaded, traced, target, f"plan {slug} with compress", replan)


def _serve_and_infer(run: Run, report: PlanReport, plan_path: Path) -> None:
    """Serve the plan and send held-out images twice: on the plan's chosen route, then with the adaptive client."""
    run.stage(f"serve the {report.device.spec} → {report.link.spec} plan on 127.0.0.1 and run held-out images")
    passes, overhead = stages.serve_and_infer(run.config.serve, report, plan_path, run.out_dir,
                                              model=run.config.model, data=run.config.data, progress=run.progress,
                                              labelled=not run.config.untrained,
                                              say=lambda text: run.console.print(escape(text)))
    for index, done in enumerate(passes):
        run.write(f"{done.name}.json", done.result)
        summary = done.result["summary"]
        run.console.print(summary_table(summary))
        # The first pass also pays for starting and stopping the server.
        seconds = summary["seconds"] + (overhead if index == 0 else 0.0)
        run.record(f"serve and infer, {done.how}", InferStage.of(summary), 0.0, seconds)


def _audit(run: Run, loaded: LoadedModel, traced: TracedModel) -> None:
    settings = run.config.audit_settings()
    run.stage(f"audit what crosses {'every cut' if settings.cuts == 'all' else 'cuts ' + settings.cuts}")
    started = time.perf_counter()
    report = stages.audit(settings, loaded, traced, run.dataset, data_spec=run.config.data,
                          out_dir=run.out_dir / "audit", progress=run.progress,
                          warn=lambda text: run.console.print(f"[bold yellow]warning:[/] {escape(text)}"))
    run.write("audit/audit.json", report)
    show_audit(run.console, report)
    run.record("audit", AuditStage.of(report, summary_line(report)), started)


def _results_table(run: Run) -> Table:
    table = Table(title=f"results in {run.out_dir}/ ({run.summary.seconds:.0f} s)", show_header=True)
    table.add_column("stage")
    table.add_column("s", justify="right")
    table.add_column("result")
    for label, record in run.summary.stages.items():
        table.add_row(escape(label), f"{record.seconds:.1f}", escape(stage_result_text(record)))
    table.add_row("report", "", escape(run.summary.report or ""))
    return table
