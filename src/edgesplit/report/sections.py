"""The sections of the report's page, one renderer per kind of file: the run, training, profile, plan,
compression, privacy audit, split and split inference run.

Each renderer takes the loaded file (and the ``Found`` it came from) and returns the section's body as HTML; the
page (``report.page``) adds the heading and puts the sections in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from edgesplit.compress.rate import CompressReport
from edgesplit.model.artifact import SplitRecord
from edgesplit.model.train import TrainRecord
from edgesplit.pipeline.summary import (AuditStage, CompressStage, InferStage, PlanStage, ProfileStage, RunSummary,
                                        SplitStage, StageRecord, TrainStage, stage_result_text, stage_subject)
from edgesplit.plan.schema import ChainPlanReport, PlanReport
from edgesplit.plots import plot_chain_plan, plot_plan, plot_profile, plot_rate_accuracy
from edgesplit.privacy.attacks import IMAGE_ATTACKS, attack_label
from edgesplit.privacy.figures import plot_leakage_by_cut, plot_privacy_utility
from edgesplit.privacy.schema import AuditReport
from edgesplit.profile import ProfileReport
from edgesplit.report.html import (Cell, Raw, esc, facts, interval_cell, interval_text, label_cell, ms_text, note,
                                   pct_text, png_figure, rendered_plot, seconds_text, shape_text, table)
from edgesplit.report.scan import TRAIN, Found, find_png
from edgesplit.runtime.summary import InferSummary
from edgesplit.views import crossing_text, human_bytes, human_count

__all__ = ["STAGE_KINDS", "TOP_PLANS", "audit_section", "chain_plan_section", "compress_section", "infer_section", "plan_section",
           "profile_section", "run_section", "split_section", "stage_anchor", "train_section"]

TOP_PLANS = 10  # ranked plans shown in a plan's table (the baselines are added when they rank lower)

# The kind of file each stage's record type stands for (a stage this edgesplit does not know links nowhere).
STAGE_KINDS: dict[type[StageRecord], str] = {
    TrainStage: TRAIN, ProfileStage: "edgesplit.profile", PlanStage: "edgesplit.plan", SplitStage: "edgesplit.split",
    CompressStage: "edgesplit.compress", InferStage: "edgesplit.infer", AuditStage: "edgesplit.audit"}
# The file names `edgesplit run` gives a model's profile and a target's plan: profile_MODEL.json, plan_TARGET.json.
_NAMED = {"edgesplit.profile": "profile_", "edgesplit.plan": "plan_", "edgesplit.chainplan": "plan_"}
_PLAN_KINDS = ("edgesplit.plan", "edgesplit.chainplan")  # a target's plan: two tiers, or a chain


# ---------------------------------------------------------------------------------------------- the run


def stage_anchor(label: str, stage: StageRecord, anchors: dict[str, str], files: Sequence[Found]) -> str | None:
    """The section of the file a run stage wrote: the one file of its record's kind, or among several (profiles,
    plans) the one of the model or target the stage names."""
    return _section_of(STAGE_KINDS.get(type(stage)), stage_subject(label), anchors, files)


def _section_of(kind: str | None, subject: str | None, anchors: dict[str, str],
                files: Sequence[Found]) -> str | None:
    """The section of the one file of ``kind`` (of the model or target ``subject`` where there are several)."""
    kinds = _PLAN_KINDS if kind in _PLAN_KINDS else (kind,)
    candidates = [f for f in files if f.kind in kinds and f.name in anchors]
    if len(candidates) > 1:
        candidates = [f for f in candidates if subject and (
            PurePosixPath(f.name).stem.removeprefix(_NAMED.get(f.kind, "")) == subject.replace(":", "_")
            or (f.kind == "edgesplit.profile" and f.result is not None and f.result.model.name == subject))]
    return anchors[candidates[0].name] if len(candidates) == 1 else None


def _link(text: str, anchor: str | None) -> Cell:
    return Raw(f'<a href="#{esc(anchor)}">{esc(text)}</a>') if anchor else text


def run_section(summary: RunSummary, found: Found, anchors: dict[str, str], files: Sequence[Found]) -> str:
    """The whole run on one screen: each stage in order with its time and result, the total, and the config."""
    stages = summary.stages
    longest = max((s.seconds or 0 for s in stages.values()), default=0) or 1
    plans = [(n, stage_subject(name)) for n, (name, stage) in enumerate(stages.items()) if isinstance(stage, PlanStage)]
    rows, classes = [], []
    for n, (name, stage) in enumerate(stages.items()):
        result = stage_result_text(stage)
        # A plan the run made again for the same target, with the measured configurations:
        replanned = isinstance(stage, PlanStage) and any(later > n and target == stage_subject(name)
                                                         for later, target in plans)
        if replanned:
            result += " — replanned below with the measured configurations"
        share = (stage.seconds or 0) / longest
        anchor = stage_anchor(name, stage, anchors, files)
        label = Raw(f'<a class="nw" href="#{esc(anchor)}">{esc(name)}</a>' if anchor else
                    f'<span class="nw">{esc(name)}</span>')
        rows.append([n + 1, label, seconds_text(stage.seconds),
                     Raw(f'<span class="bar"><span style="width: {share * 100:.0f}%"></span></span>'), result])
        classes.append("dim" if replanned else None)
    total = summary.seconds
    staged = sum(s.seconds or 0 for s in stages.values())
    rows.append(["", "total", f"{total if total is not None else staged:.1f}", "",
                 f"{len(stages)} stage{'s' if len(stages) != 1 else ''}"
                 + (f" ({seconds_text(staged)} s in them; the rest: loading, tracing, plots, the report)"
                    if total is not None and total - staged >= 0.05 else "")])
    classes.append("total")
    parts = ["<h3>Stages</h3>",
             table(["#", "stage", "seconds", "", "result"], rows, numeric=(0, 2), row_classes=classes)]
    if not stages:
        parts.append(note("this run recorded no stages (it stopped before the first one finished)", "warning"))
    parts += ["<h3>Config</h3>", facts(_config_facts(summary, anchors, files)),
              '<p class="meta">To run it again, save the <code>config</code> object of '
              f"<code>{esc(found.name)}</code> as a file and pass it to <code>edgesplit run</code> (JSON is YAML); "
              "each stage can also be rerun by hand from the files it left in the run folder.</p>"]
    return "\n".join(parts)


def _config_facts(summary: RunSummary, anchors: dict[str, str], files: Sequence[Found]) -> list[tuple[str, Cell]]:
    config = summary.config
    train = config.train
    if config.weights:
        model = f"{config.model}, weights {config.weights}"
    elif train is not None:
        model = (f"{config.model}, trained here on {config.data} ({train.epochs} epoch"
                 f"{'' if train.epochs == 1 else 's'}, batch {train.batch_size}, lr {train.lr})")
    elif config.untrained:
        model = f"{config.model}, untrained (random weights): compress's accuracy is agreement with the whole model"
    else:
        model = config.model
    targets = []
    for target in config.targets:
        anchor = _section_of("edgesplit.plan", target.slug, anchors, files)
        if target.topology is not None:
            targets.append(f"{esc(_link(target.slug, anchor))}: chain <code>{esc(target.topology)}</code>")
        else:
            targets.append(f"{esc(_link(target.slug, anchor))}: device <code>{esc(target.device)}</code> → link "
                           f"<code>{esc(target.link)}</code> → server <code>{esc(target.server)}</code>")
    compress, serve, audit = config.compress, config.serve, config.audit
    compress_text = "not run" if compress is None else "; ".join([
        f"codecs {', '.join(compress.codecs)}",
        (f"learned bottleneck of {compress.bottleneck} channels (stride {compress.stride}, {compress.bits} bits, "
         f"{compress.epochs}+{compress.epochs} epochs)" if compress.bottleneck else "no learned bottleneck"),
        f"evaluated on up to {compress.eval_limit} images",
        f"plans may use them if accuracy drops at most {compress.max_accuracy_drop * 100:g} point(s)"])
    served = serve.target if serve is not None else None
    if serve is not None and not served:
        first = summary.served_target  # the pipeline records which one it chose
        served = f"{first} (the first target whose plan sends anything)" if first else \
            "the first target whose plan sends anything (none did)"
    serve_text = "not run" if serve is None else (
        f"{serve.images} held-out images, batch {serve.batch}, through a server subprocess on 127.0.0.1, with the "
        f"plan of {served}")
    audit_text = "not run" if audit is None else "; ".join([
        f"cuts {audit.cuts}", f"attacks {','.join(audit.attacks)}",
        f"defenses {', '.join(audit.defenses) or 'none'}",
        f"{audit.victims} victims, {audit.aux_limit} attacker's images"])
    return [
        ("title", config.title), ("model", model), ("data", config.data),
        ("compared with", f"{', '.join(config.compare)} (profiled untrained)" if config.compare else None),
        ("targets", Raw("<br>".join(targets)) if targets else "none"),
        ("codecs the planner may use", ", ".join(config.codecs) or None),
        ("objective", config.objective),
        ("keep input on the device", "yes: the raw input never leaves the device, so no all-server plans"
                                     if config.keep_input else "no"),
        ("compress", compress_text), ("serve", serve_text), ("audit", audit_text),
        ("seed", config.seed)]


# ---------------------------------------------------------------------------------------------- training


def train_section(result: TrainRecord, found: Found) -> str:
    """The training run: model, data set, epochs, test accuracy, loss per epoch."""
    losses = ", ".join(f"{loss:.4f}" for loss in result.train_loss)
    return facts([
        ("model", _model_text(result.model)),
        ("data set", result.dataset), ("epochs", result.epochs), ("test accuracy", pct_text(result.test_accuracy)),
        ("train loss per epoch", losses or None),
        ("time", None if result.seconds is None else f"{result.seconds:.1f} s"),
        ("weights", result.weights)])


def _model_text(ref: dict[str, Any] | str | None) -> str:
    """A model reference ({"name": ..., "kwargs": {...}}) as 'small_cnn (in_channels=1, num_classes=10)'."""
    if not isinstance(ref, dict):
        return str(ref)
    kwargs = ref.get("kwargs") or {}
    arguments = ", ".join(f"{k}={v}" for k, v in kwargs.items()) if isinstance(kwargs, dict) else str(kwargs)
    return str(ref.get("name", "?")) + (f" ({arguments})" if arguments else "")


# ---------------------------------------------------------------------------------------------- profile and plan


def profile_section(report: ProfileReport, found: Found) -> str:
    """Model summary, one row per candidate cut, and the bytes/latency plot."""
    model, machine = report.model, report.machine
    parts = [facts([
        ("model", model.name), ("input", ", ".join(shape_text(s) for s in model.input_shapes)),
        ("MACs", f"{human_count(model.macs)} ({model.macs:,})"),
        ("parameters", f"{human_count(model.params)} ({human_bytes(model.weight_bytes)} of weights)"),
        ("graph", f"{model.nodes} nodes, {model.cuts} candidate cuts, traced with torch.{model.tracer}"
                  + (f" (fx failed: {model.fallback_reason})" if model.fallback_reason else "")),
        ("fingerprint", model.fingerprint),
        ("whole model", f"{report.model_ms:.3f} ms (median of {report.runs} runs)"),
        ("machine", f"{machine.cpu_model}, {machine.cores} cores, {machine.threads} torch threads"
                    + (f", {machine.memory_gb_s:.1f} GB/s copy" if machine.memory_gb_s else "")),
        ("software", f"{machine.platform}; Python {machine.python_version}; torch {machine.torch_version}"),
        ("host", machine.hostname)])]
    if report.uncounted_ops:
        parts.append(note("MACs not counted for ops without a formula: " + "; ".join(
            f"{op} ({', '.join(nodes)})" for op, nodes in sorted(report.uncounted_ops.items())), "warning"))
    interior = [c.crossing_bytes for c in report.cuts if 0 < c.position < model.nodes]
    smallest = min(interior, default=None)
    rows, classes = [], []
    for cut in report.cuts:
        rows.append([cut.index, cut.after, human_count(cut.head_macs), human_count(cut.tail_macs),
                     crossing_text([t.shape for t in cut.crossing]), human_bytes(cut.crossing_bytes),
                     f"{cut.head_ms:.3f}", f"{cut.tail_ms:.3f}", human_bytes(cut.head_peak_bytes)])
        classes.append("chosen" if cut.crossing_bytes == smallest and 0 < cut.position < model.nodes else None)
    parts.append("<h3>Candidate cuts</h3>")
    parts.append('<p class="meta">Head = every node up to the cut; highlighted: the interior cuts with the fewest '
                 "bytes crossing (float32).</p>")
    parts.append(table(["cut", "after", "head MACs", "tail MACs", "crossing", "crossing bytes", "head ms", "tail ms",
                        "head peak memory"], rows, numeric=(0, 2, 3, 5, 6, 7, 8), row_classes=classes))
    parts.append(rendered_plot(lambda path: plot_profile(report, path),
                               "bytes crossing and head latency at each cut"))
    return "\n".join(parts)


def _machine_row(machine: Any) -> list[Cell]:
    power = "—" if machine.active_w is None else f"{machine.active_w:g} / {machine.idle_w or 0:g} W"
    memory = "—" if machine.memory_bytes is None else human_bytes(machine.memory_bytes)
    return [machine.spec, machine.kind, f"{machine.model_ms:.3g}", memory, power, machine.source]


def plan_section(report: PlanReport, found: Found) -> str:
    """Device, server and link; the chosen plan with its speed-ups; ranked plans; switch table; latency plot."""
    link, chosen, costs = report.link, report.chosen, report.chosen.costs
    parts = ["<h3>Machines and link</h3>",
             table(["role", "spec", "kind", "whole model ms", "memory", "power active / idle", "source"],
                   [["device", *_machine_row(report.device)], ["server", *_machine_row(report.server)]],
                   numeric=(3,)),
             table(["link", "uplink Mbit/s", "downlink Mbit/s", "RTT ms", "radio tx / rx W", "source"],
                   [[link.spec, f"{link.uplink_mbps:g}", f"{link.downlink_mbps:g}", f"{link.rtt_ms:g}",
                     f"{link.tx_w:g} / {link.rx_w:g}", link.source]], numeric=(1, 2, 3, 4))]
    constraints = [_constraint_text(k, v) for k, v in report.constraints.model_dump().items()
                   if v not in (None, [], False)]
    parts += ["<h3>Chosen plan</h3>", facts([
        ("model", f"{report.model} (input {shape_text(report.input_shape)}, graph {report.fingerprint})"),
        ("weights", (report.model_ref or {}).get("weights")),
        ("chosen", Raw(f"<strong>{esc(chosen.label)}</strong>")),
        ("latency", f"{ms_text(costs.latency_ms)} ms per inference"),
        ("energy on the device", None if costs.energy_mj is None else f"{ms_text(costs.energy_mj)} mJ"),
        ("sent per inference", f"{human_bytes(costs.uplink_bytes)} ({costs.uplink_bytes:,} B)"),
        ("speed-up vs all on device", f"{report.speedup_vs_all_device:.2f}× "
                                      f"({ms_text(report.all_device.costs.latency_ms)} ms"
                                      f"{_not_allowed(report.all_device)})"),
        ("speed-up vs all on server", f"{report.speedup_vs_all_server:.2f}× ({report.all_server.label}, "
                                      f"{ms_text(report.all_server.costs.latency_ms)} ms"
                                      f"{_not_allowed(report.all_server)})"),
        ("objective / codecs", f"{report.objective}; codecs {report.codec}"),
        ("constraints", "; ".join(constraints) or None),
        ("planner", f"{report.candidates} plans costed in {report.planner_ms:.0f} ms; min-cut "
                    f"{'agrees with' if report.min_cut_agrees else 'DISAGREES with'} the scan")])]
    if not report.min_cut_agrees:
        parts.append(note("the min-cut's best head does not cost what the best scanned plan costs", "warning"))
    shown = report.ranked[:TOP_PLANS]
    for extra in (report.all_device, report.all_server):
        if all(entry.label != extra.label for entry in shown):
            shown.append(extra)
    rank = {entry.label: i + 1 for i, entry in enumerate(report.ranked)}
    rows, classes = [], []
    for entry in shown:
        c = entry.costs
        status = "chosen" if entry.label == chosen.label else ("ok" if entry.feasible else "; ".join(entry.violations))
        rows.append([rank.get(entry.label, "—"), label_cell(entry.label), ms_text(c.device_ms),
                     ms_text(c.encode_ms + c.decode_ms), ms_text(c.uplink_ms), ms_text(c.rtt_ms), ms_text(c.server_ms),
                     ms_text(c.downlink_ms), ms_text(c.latency_ms),
                     "—" if c.energy_mj is None else ms_text(c.energy_mj), human_bytes(c.uplink_bytes),
                     f"{report.all_device.costs.latency_ms / c.latency_ms:.2f}×",
                     f"{report.all_server.costs.latency_ms / c.latency_ms:.2f}×", status])
        classes.append("chosen" if entry.label == chosen.label else (None if entry.feasible else "dim"))
    parts += [f"<h3>Ranked plans (top {min(TOP_PLANS, len(report.ranked))} of {len(report.ranked)})</h3>",
              '<p class="meta">Predicted per inference at the link\'s uplink rate. <em>vs device</em>, <em>vs '
              "server</em>: the speed-up over running the whole model on the device, or over sending the input to "
              "the server (above 1× is faster). Grey rows break a constraint.</p>",
              table(["#", "plan", "device ms", "codec ms", "uplink ms", "RTT ms", "server ms", "down ms",
                     "latency ms", "energy mJ", "sent", "vs device", "vs server", "status"],
                    rows, numeric=[0, *range(2, 13)], row_classes=classes, css="plans"),
              "<h3>Switch table</h3>",
              '<p class="meta">The best plan for each uplink bandwidth range: what the runtime switches on.</p>',
              table(["from Mbit/s", "to Mbit/s", "best plan"],
                    [[f"{s.low_mbps:g}", f"{s.high_mbps:g}", s.label] for s in report.switch_table], numeric=(0, 1))]
    if report.pareto:
        parts.append(f'<p class="meta">Pareto front (latency, device energy, bytes sent): '
                     f"{esc('; '.join(report.pareto))}</p>")
    parts.append(rendered_plot(lambda path: plot_plan(report, path), "end-to-end latency against uplink bandwidth"))
    return "\n".join(parts)


def chain_plan_section(report: ChainPlanReport, found: Found) -> str:
    """The chain's machines and links; the chosen placement; every placement compared; switch table; the figure."""
    chosen = report.chosen
    parts = ["<h3>Machines and links</h3>",
             table(["tier", "spec", "kind", "whole model ms", "memory", "power active / idle", "source"],
                   [[t, *_machine_row(m)] for t, m in enumerate(report.machines)], numeric=(0, 3)),
             table(["link", "spec", "uplink Mbit/s", "downlink Mbit/s", "RTT ms", "radio tx / rx W", "source"],
                   [[f"{t} → {t + 1}", link.spec, f"{link.uplink_mbps:g}", f"{link.downlink_mbps:g}",
                     f"{link.rtt_ms:g}", f"{link.tx_w:g} / {link.rx_w:g}", link.source]
                    for t, link in enumerate(report.links)], numeric=(2, 3, 4))]
    where = "; ".join(f"tier {s.tier} ({s.machine}): {s.nodes} nodes" + (f", {s.first} … {s.last}" if s.nodes else
                                                                          ", relays")
                      for s in chosen.stages)
    constraints = [_constraint_text(k, v) for k, v in report.constraints.model_dump().items()
                   if v not in (None, [], False)]
    parts += ["<h3>Chosen placement</h3>", facts([
        ("model", f"{report.model} (input {shape_text(report.input_shape)}, graph {report.fingerprint})"),
        ("chosen", Raw(f"<strong>{esc(chosen.label)}</strong> ({chosen.method})")),
        ("where each part runs", where),
        ("latency", f"{ms_text(chosen.latency_ms)} ms per inference"),
        ("throughput", f"{chosen.throughput_fps:.3g} inferences/s pipelined (bottleneck: {chosen.bottleneck})"),
        ("energy on the device", None if chosen.energy_mj is None else f"{ms_text(chosen.energy_mj)} mJ"),
        ("objective / codec", f"{report.objective}; codec {report.codec} on every hop; {report.hop_ms:g} ms "
                              "framework cost per hop"),
        ("constraints", "; ".join(constraints) or None),
        ("planner", f"{len(report.baselines)} placements compared in {report.planner_ms:.0f} ms; layered min-cut "
                    f"{'exact' if report.min_cut_exact else 'NOT EXACT'} (its value equals its placement's cost)")])]
    rows, classes = [], []
    entries = [chosen, *[e for e in report.baselines if e.assignment != chosen.assignment
                         or e.last_tier != chosen.last_tier]]
    for entry in sorted(entries, key=lambda e: (e is not chosen, not e.feasible, e.objective)):
        tiers = ", ".join(f"{s.nodes}" if s.nodes else "relay" for s in entry.stages)
        sent = " + ".join(human_bytes(h.payload_bytes) for h in entry.hops) or "—"
        status = "chosen" if entry is chosen else ("ok" if entry.feasible else "; ".join(entry.violations))
        rows.append([label_cell(entry.label), tiers, sent, ms_text(entry.latency_ms), f"{entry.throughput_fps:.3g}",
                     "—" if entry.energy_mj is None else ms_text(entry.energy_mj), status])
        classes.append("chosen" if entry is chosen else (None if entry.feasible else "dim"))
    parts += ["<h3>Placements compared</h3>",
              '<p class="meta">Nodes per tier (relay: it only forwards), bytes on each link, predicted latency, '
              "pipelined throughput and device energy. Grey rows break a constraint.</p>",
              table(["placement", "nodes per tier", "bytes per link", "latency ms", "inferences/s", "energy mJ",
                     "status"], rows, numeric=(3, 4, 5), row_classes=classes, css="plans"),
              "<h3>Switch table</h3>",
              f'<p class="meta">The best placement for each bandwidth of the first link ({esc(report.links[0].spec)}), '
              "the later links as planned.</p>",
              table(["from Mbit/s", "to Mbit/s", "best placement"],
                    [[f"{s.low_mbps:g}", f"{s.high_mbps:g}", s.label] for s in report.switch_table], numeric=(0, 1)),
              rendered_plot(lambda path: plot_chain_plan(report, path),
                            "time per stage of each placement, and where the chosen one runs each node")]
    return "\n".join(parts)


def _not_allowed(entry: Any) -> str:
    """'; not allowed: WHY' for a baseline plan that breaks a constraint (its speed-up is then only a reference)."""
    return "" if entry.feasible else f"; not allowed here: {'; '.join(entry.violations)}"


def _constraint_text(name: str, value: Any) -> str:
    """A plan constraint in words ('raw input kept on the device', 'max accuracy drop 1 point')."""
    if name == "keep_input_on_device":
        return "raw input kept on the device (no all-server plans)"
    if name == "max_accuracy_drop" and isinstance(value, (int, float)):
        points = value * 100
        return f"max accuracy drop {points:g} point{'' if points == 1 else 's'} (measured configurations)"
    if name == "compress_files":
        return "measured configurations from " + ", ".join(map(str, value))
    words = name.replace("_", " ")
    if name.endswith("_bytes") and isinstance(value, (int, float)):
        return f"{words.removesuffix(' bytes')} {human_bytes(value)}"
    if isinstance(value, list):
        return f"{words} {', '.join(map(str, value))}"
    return f"{words} {value:g}" if isinstance(value, float) else f"{words} {value}"


# ---------------------------------------------------------------------------------------------- compression


def compress_section(report: CompressReport, found: Found) -> str:
    """Every configuration's bytes, compression, accuracy and codec time, and the rate–accuracy curve."""
    crossing = " + ".join(shape_text(t.shape) for t in report.crossing)
    pairs: list[tuple[str, Cell]] = [
        ("model / data", f"{report.model} on {report.data}"),
        ("cut", f"{report.cut_index} (after {report.after}): {crossing}"),
        ("float32 features", f"{human_bytes(report.float32_bytes)} per image (input: "
                             f"{human_bytes(report.input_bytes)})"),
        ("baseline accuracy", f"{pct_text(report.baseline_accuracy)} on {report.eval_images} images"),
        ("time", f"{report.seconds:.1f} s")]
    if report.bottleneck is not None:
        b = report.bottleneck
        pairs.append(("learned bottleneck", f"{b.channels} channels, stride {b.stride}, {b.bits} bits, widths "
                      f"{', '.join(f'{w:g}' for w in b.widths)}; {b.feature_epochs}+{b.task_epochs} epochs on "
                      f"{b.train_images} images ({b.seconds:.0f} s)"))
    best = [c for c in report.at_most(0.01) if c.kind != "input"]
    if best:
        pairs.append(("fewest bytes within 1 point", Raw(
            f"<strong>{esc(best[0].name)}</strong>: {esc(f'{best[0].bytes_per_inference:,.0f}')} B, "
            f"{esc(f'{best[0].compression:.1f}')}× smaller than float32")))
    rows = [[c.name, c.kind, f"{c.bytes_per_inference:,.0f}", f"{c.compression:.1f}×", pct_text(c.accuracy),
             f"{c.accuracy_drop * 100:+.2f} pt", f"{c.encode_ms:.3f}", f"{c.decode_ms:.3f}"]
            for c in report.configurations]
    classes = ["dim" if c.kind == "input" else None for c in report.configurations]
    return "\n".join([facts(pairs), "<h3>Configurations</h3>",
                      table(["configuration", "kind", "bytes / inference", "vs float32", "accuracy", "drop",
                             "encode ms", "decode ms"], rows, numeric=range(2, 8), row_classes=classes),
                      rendered_plot(lambda path: plot_rate_accuracy(report, path),
                                    "accuracy against bytes per inference")])



# ---------------------------------------------------------------------------------------------- privacy audit


def audit_section(report: AuditReport, found: Found, run_dir: Path) -> str:
    """Per cut and defense: task accuracy, attack PSNR/SSIM, probes, dCor; the audit's plots and grids."""
    baseline = report.mean_image
    settings = report.settings
    parts = [facts([
        ("model", f"{report.model} (graph {report.fingerprint})"),
        ("weights", report.model_ref.get("weights") or "none (an untrained model)"),
        ("victims", f"{report.victims} test images of {report.data}"),
        ("attacker's images", f"{report.aux_images} train images of {report.aux}"
                              + (f"; {report.overlap} also among the victims" if report.overlap else "")),
        ("codec", report.codec or "fp32"), ("attacks", ", ".join(report.attacks)),
        ("defenses", ", ".join(report.defenses) or "none"),
        ("whole model accuracy", pct_text(report.model_accuracy, 1)),
        ("chance (most frequent label)", pct_text(report.chance, 1)),
        ("mean-image baseline", None if baseline is None else
         f"PSNR {interval_text(baseline.psnr, 1, ' dB')}, SSIM {interval_text(baseline.ssim, 2)} — what an attacker "
         "gets with no information"),
        ("settings", ", ".join(f"{k} {', '.join(map(str, v)) if isinstance(v, list) else v}"
                               for k, v in settings.items() if v is not None and not isinstance(v, dict)
                               and k != "attacks")),
        ("time", f"{report.seconds:.1f} s")])]
    parts += [note(warning, "warning") for warning in report.warnings]
    attacks = [a for a in IMAGE_ATTACKS if a in report.attacks]
    probe_kinds = sorted({p.kind for r in report.rows for p in r.probes}, key=lambda k: (k != "linear", k))
    # Without defenses every row has the defense "none" and the whole model's accuracy: columns that say nothing.
    defended = any(r.defense != "none" for r in report.rows)
    accuracies = {r.task_accuracy for r in report.rows}
    show_accuracy = defended or len(accuracies) > 1
    headers = ["cut", "after", *(["defense"] if defended else []), "crossing",
               *(["task acc"] if show_accuracy else [])]
    first_score = len(headers)
    for attack in attacks:
        name = attack_label(attack)
        headers += [f"{name} PSNR dB", f"{name} SSIM"]
    headers += [f"{kind} probe acc" for kind in probe_kinds] + ["dCor"]
    bounded = any(row.fisher is not None for row in report.rows)
    headers += ["dFIL (σ)", "PSNR bound dB"] if bounded else []
    rows = []
    for row in report.rows:
        scores = {a.attack: a for a in row.attacks}
        probes = {p.kind: p for p in row.probes}
        cells: list[Cell] = [row.position, row.after, *([row.defense] if defended else []),
                             crossing_text(row.crossing), *([pct_text(row.task_accuracy, 1)] if show_accuracy else [])]
        for attack in attacks:
            score = scores.get(attack)
            cells += [interval_cell(score and score.psnr, 1), interval_cell(score and score.ssim, 2)]
        cells += [interval_cell(probes.get(kind) and probes[kind].accuracy, 2) for kind in probe_kinds]
        cells.append(interval_cell(row.distance_correlation, 2))
        if bounded:
            fisher = row.fisher
            cells += (["—", "—"] if fisher is None else
                      [f"{fisher.dfil.mean:.3g} ({fisher.sigma:g})",
                       "—" if fisher.psnr_bound is None else f"≤ {fisher.psnr_bound:.1f}"])
        rows.append(cells)
    same_accuracy = "" if show_accuracy or not accuracies or None in accuracies else (
        f" With no defense the tail sees exactly what the model computes: task accuracy "
        f"{pct_text(next(iter(accuracies)), 1)} at every cut.")
    parts += ["<h3>Leakage per cut" + (" and defense" if defended else "") + "</h3>",
              '<p class="meta">Each score: the mean over the victims and its 95% bootstrap interval. Higher '
              "PSNR/SSIM (attacks rebuilding the input), probe accuracy (attacks guessing the label) and distance "
              "correlation (dCor) mean the server learns more about the private input; compare SSIM with the "
              f"mean-image baseline and probes with chance.{esc(same_accuracy)}"
              + (" dFIL: the Fisher information what crosses carries about the input under Gaussian noise of σ "
                 "(in units of each crossing tensor's std); its PSNR bound is the best an unbiased attacker can "
                 "expect (an attacker with a prior, like the learned decoder, may beat it; see the threat model)."
                 if bounded else "") + "</p>",
              table(headers, rows, numeric=[0, *range(first_score - (1 if show_accuracy else 0), len(headers))],
                    wrap=range(first_score, len(headers)))]

    grids = {key: find_png(name, found.path, run_dir) for key, name in report.grids.items()}
    plots = {key: find_png(name, found.path, run_dir) for key, name in report.plots.items()}
    present_grids = {k: v for k, v in grids.items() if v is not None}
    missing_grids = sorted((report.grids[k] for k, v in grids.items() if v is None))
    parts.append("<h3>Plots</h3>")
    captions = {"leakage": "leakage by cut (undefended)", "privacy_utility": "privacy against utility per defense"
                + ("" if defended else " (no defense audited: every point is an undefended cut; audit with "
                   "--defense to compare defenses)")}
    draw = {"leakage": lambda path: plot_leakage_by_cut(report, path),
            "privacy_utility": lambda path: plot_privacy_utility(report, path)}
    wanted = ["privacy_utility"]
    if any(r.defense == "none" for r in report.rows):
        wanted.insert(0, "leakage")
    for key in [*wanted, *sorted(k for k in plots if k not in wanted)]:
        caption = captions.get(key, key.replace("_", " "))
        if plots.get(key) is not None:
            parts.append(png_figure(plots[key], caption))
        elif key in draw:
            parts.append(rendered_plot(draw[key], caption + " (redrawn from the JSON)"))
    if not report.grids:
        parts.append(note("reconstruction grids missing: this audit was run without --out; run `edgesplit audit "
                          "... --out DIR --json DIR/audit.json` to keep them", "warning"))
    elif missing_grids:
        parts.append(note(f"reconstruction grids missing: {', '.join(missing_grids)} not found next to "
                          f"{found.name} or in the run folder; copy them there or audit again with --out", "warning"))
    if present_grids:
        parts.append("<h3>Reconstructions</h3>")
        keys = sorted(present_grids, key=_grid_order)
        if "best" in present_grids:
            parts.append(png_figure(present_grids["best"], "the strongest attack at each cut (top row: the victims; "
                                    "each row: cut, attack, SSIM)", css="grid"))
        per_cut = [key for key in keys if key != "best"]
        if per_cut:
            figures = []
            for key in per_cut:
                row = report.row(int(key)) if key.isdigit() else None
                caption = f"cut {key}" + (f" (after {row.after})" if row else "") + ": each defense and attack"
                figures.append(png_figure(present_grids[key], caption))
            parts.append(f"<details><summary>Reconstructions at each cut ({len(per_cut)} grid"
                         f"{'s' if len(per_cut) != 1 else ''}: every defense and attack)</summary>"
                         f'{"".join(figures)}</details>')
    return "\n".join(parts)


def _grid_order(key: str) -> tuple[int, int, str]:
    return (0, 0, key) if key == "best" else ((1, int(key), key) if key.isdigit() else (2, 0, key))


# ---------------------------------------------------------------------------------------------- split and inference


def split_section(record: SplitRecord, found: Found) -> str:
    """A saved split: the model, the cut, the tensors that cross, the check of the halves."""
    return "\n".join([facts([
        ("model", _model_text(record.model)),
        ("input", ", ".join(shape_text(s) for s in record.input_shapes)),
        ("cut", f"{record.cut.index} (position {record.cut.position}, after {record.cut.after})"),
        ("graph", f"traced with torch.{record.tracer}, fingerprint {record.fingerprint}"),
        ("crossing", f"{human_bytes(record.crossing_bytes)} per inference ({record.crossing_bytes:,} B)"),
        ("files", ", ".join(f"{k}: {v}" for k, v in sorted(record.files.items()))),
        ("tail(*head(x)) vs model(x)", f"max abs diff {record.max_abs_diff:.2e}")]),
        table(["tensor", "shape", "dtype", "bytes"],
              [[t.name, shape_text(t.shape), t.dtype, f"{t.nbytes:,}"] for t in record.crossing], numeric=(3,))])


def infer_section(summary: InferSummary, found: Found) -> str:
    """A split inference run: throughput, latency percentiles, bytes, routes, switches, fallbacks, accuracy."""
    latency = summary.latency_ms
    p = [latency.p50, latency.p95, latency.p99]
    switches = "; ".join(f"#{s.request} {s.from_label} → {s.to_label} at {s.mbps:.3g} Mbit/s" for s in summary.switches)
    mbps = summary.final_mbps
    return facts([
        ("model", summary.model + (f" (served as {summary.model_id})" if summary.model_id not in (None, summary.model)
                                   else "")),
        ("server", summary.server), ("inputs", summary.source),
        ("images / requests", f"{summary.images} / {summary.requests} (batch {summary.batch})"),
        ("throughput", f"{summary.throughput_ips or 0:.1f} images/s over {summary.seconds:.2f} s"),
        ("latency p50 / p95 / p99", "n/a" if None in p else " / ".join(f"{v:.1f}" for v in p) + " ms"),
        ("latency mean / max", None if latency.mean is None or latency.max is None else
         f"{latency.mean:.1f} / {latency.max:.1f} ms"),
        ("bytes sent", f"{summary.bytes_sent:,} ({summary.bytes_per_image:,.0f} per image)"),
        ("routes", ", ".join(f"{label} ×{n}" for label, n in summary.routes.items()) or "—"),
        ("switches", f"{summary.switch_count}" + (f": {switches}" if switches else "")),
        ("fallbacks", f"{summary.fallbacks} result(s) on the device, {summary.outages} outage(s), "
                      f"{summary.recoveries} recovery(ies), {summary.retries} retry(ies), {summary.probes} probe(s)"),
        ("uplink estimate", None if mbps is None else
         f"{'≥ ' if summary.final_mbps_is_lower_bound else ''}{mbps:.3g} Mbit/s at the end (route "
         f"{summary.final_route}; fixed cost {'n/a' if summary.fixed_cost_ms is None else summary.fixed_cost_ms} ms "
         "per request)"),
        ("accuracy", None if summary.accuracy is None else pct_text(summary.accuracy)),
        ("agreement with the model run here", None if summary.agreement is None else
         f"{pct_text(summary.agreement)} (max abs diff {summary.max_abs_diff:.2e})" if summary.max_abs_diff is not None
         else pct_text(summary.agreement))])
