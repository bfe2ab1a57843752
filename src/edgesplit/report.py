"""One self-contained HTML page from the JSON files the stages wrote into a run folder.

Every JSON file under the folder is recognised by its ``kind`` (the train result by its keys) and rendered as a
section, in pipeline order. Plots are PNGs embedded as ``data:`` URIs and the CSS is inline, so the page is one
file that opens anywhere without a network. Apart from the generation time the page is deterministic.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from . import __version__
from .errors import EdgesplitError
from .views import crossing_text, human_bytes, human_count

REPORT_KIND, REPORT_VERSION = "edgesplit.report", 1
TRAIN = "train"  # `edgesplit train --json` writes no kind: recognised by its keys
TRAIN_KEYS = frozenset({"model", "dataset", "epochs", "test_accuracy"})
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOP_PLANS = 10

# Pipeline order: train the model, measure it, choose the plan (from compress and audit results), split, serve.
ORDER = (TRAIN, "edgesplit.profile", "edgesplit.plan", "edgesplit.compress", "edgesplit.audit",
         "edgesplit.split", "edgesplit.infer")
TITLES = {TRAIN: "Training", "edgesplit.profile": "Profile", "edgesplit.plan": "Plan",
          "edgesplit.compress": "Compression", "edgesplit.audit": "Privacy audit", "edgesplit.split": "Split",
          "edgesplit.infer": "Split inference run"}


# ---------------------------------------------------------------------------------------------- finding files


@dataclass
class Found:
    """One JSON file of a kind the report renders: the loaded result, or why it could not be loaded."""

    kind: str
    path: Path
    name: str  # relative to the run folder, with forward slashes
    result: Any = None
    error: str | None = None


@dataclass
class RunFiles:
    """Every JSON file under a run folder, sorted: the ones the report renders and the rest."""

    run_dir: Path
    found: list[Found] = field(default_factory=list)
    other: list[tuple[str, str | None]] = field(default_factory=list)  # (name, kind or None)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (name, why)


def detect_kind(data: Any) -> str | None:
    """The kind of a parsed JSON file that the report renders, or None."""
    if not isinstance(data, dict):
        return None
    kind = data.get("kind")
    if kind in ORDER:
        return kind
    summary = data.get("summary")
    if kind is None and isinstance(summary, dict) and summary.get("kind") == "edgesplit.infer":
        return "edgesplit.infer"  # `edgesplit infer --json` nests it: {"summary": {...}, "records": [...]}
    if kind is None and TRAIN_KEYS <= data.keys():
        return TRAIN
    return None


def scan(run_dir: str | Path) -> RunFiles:
    """Find and load every JSON file under ``run_dir``; a user error when it holds no edgesplit result."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise EdgesplitError(f"{run_dir} not found; pass the folder your stages wrote their --json files into")
    if not run_dir.is_dir():
        raise EdgesplitError(f"{run_dir} is not a folder; pass the folder your stages wrote their --json files into")
    files = RunFiles(run_dir)
    paths = sorted((p for p in run_dir.rglob("*.json") if p.is_file()), key=lambda p: p.relative_to(run_dir).parts)
    for path in paths:
        name = path.relative_to(run_dir).as_posix()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            files.unreadable.append((name, f"not readable JSON ({error})"))
            continue
        kind = detect_kind(data)
        if kind is None:
            files.other.append((name, data.get("kind") if isinstance(data, dict) and isinstance(data.get("kind"), str)
                                else None))
            continue
        found = Found(kind, path, name)
        try:
            found.result = LOADERS[kind](path)
        except EdgesplitError as error:
            found.error = str(error)
        files.found.append(found)
    if not files.found:
        what = "is empty" if not any(run_dir.iterdir()) else "holds no edgesplit results"
        raise EdgesplitError(f"{run_dir} {what}; write results into it with `edgesplit profile|plan|compress|audit "
                             "... --json DIR/NAME.json` (and `infer`, `train`), then run `edgesplit report DIR`")
    files.found.sort(key=lambda f: ORDER.index(f.kind))  # stable: files of one kind stay in name order
    return files


# ---------------------------------------------------------------------------------------------- loading


class InferSummary(BaseModel):
    """What the report reads of `edgesplit infer --json`'s summary (the rest is kept, not shown)."""

    model_config = ConfigDict(extra="allow")

    kind: str
    version: int
    model: str
    model_id: str | None = None
    server: str
    source: str
    images: int
    requests: int
    batch: int
    seconds: float
    throughput_ips: float | None
    latency_ms: dict[str, float | None]
    bytes_sent: int
    bytes_per_image: float
    switch_count: int
    switches: list[dict[str, Any]]
    routes: dict[str, int]
    server_results: int = 0
    device_results: int = 0
    fallbacks: int
    outages: int
    recoveries: int
    retries: int
    probes: int = 0
    final_route: str | None = None
    final_mbps: float | None = None
    final_mbps_is_lower_bound: bool = False
    rtt_floor_ms: float | None = None
    accuracy: float | None = None
    agreement: float | None = None
    max_abs_diff: float | None = None


class TrainResult(BaseModel):
    """`edgesplit train --json`."""

    model_config = ConfigDict(extra="allow")

    model: dict[str, Any] | str
    dataset: str
    epochs: int
    test_accuracy: float
    train_loss: list[float] = []
    seconds: float | None = None
    weights: str | None = None


def _load_profile(path: Path) -> Any:
    from .profile import PROFILE_VERSION, ProfileReport
    from .versioned import read_versioned

    return read_versioned(path, ProfileReport, kind="edgesplit.profile", version=PROFILE_VERSION, what="profile",
                          make="`edgesplit profile MODEL --json FILE`", again="profile again")


def _load_plan(path: Path) -> Any:
    from .plan.schema import load_plan

    return load_plan(path)


def _load_compress(path: Path) -> Any:
    from .compress import load_compress

    return load_compress(path)


def _load_audit(path: Path) -> Any:
    from .privacy.report import load_audit

    return load_audit(path)


def _load_split(path: Path) -> Any:
    from .artifact import SPLIT_VERSION, SplitRecord
    from .versioned import read_versioned

    return read_versioned(path, SplitRecord, kind="edgesplit.split", version=SPLIT_VERSION, what="split record",
                          make="`edgesplit split MODEL --cut CUT --out DIR`", again="split again")


def _load_infer(path: Path) -> InferSummary:
    from .versioned import read_versioned

    return read_versioned(path, InferSummary, kind="edgesplit.infer", version=1, what="inference run",
                          make="`edgesplit infer PLAN --server URL --json FILE`", again="run it again",
                          unwrap=lambda d: d.get("summary", d) if isinstance(d, dict) else d)


def _load_train(path: Path) -> TrainResult:
    try:
        return TrainResult.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError) as error:  # ValidationError is a ValueError
        count = f"{error.error_count()} errors, first at {error.errors()[0]['loc']}" \
            if isinstance(error, ValidationError) else str(error)
        raise EdgesplitError(f"training result {path} is malformed ({count}); train again with --json") from None


LOADERS: dict[str, Callable[[Path], Any]] = {
    TRAIN: _load_train, "edgesplit.profile": _load_profile, "edgesplit.plan": _load_plan,
    "edgesplit.compress": _load_compress, "edgesplit.audit": _load_audit, "edgesplit.split": _load_split,
    "edgesplit.infer": _load_infer}


# ---------------------------------------------------------------------------------------------- HTML pieces

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --stripe: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.45;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 20px 60px; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.35em; margin: 40px 0 4px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05em; margin: 22px 0 6px; }
a { color: var(--accent); }
code { font: 0.9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--stripe);
       padding: 1px 4px; border-radius: 4px; }
.meta, .source, figcaption { color: var(--muted); font-size: 0.9em; }
.source { margin: 0 0 12px; }
nav.toc { background: var(--stripe); border: 1px solid var(--line); border-radius: 6px; padding: 8px 16px;
          margin: 16px 0; }
nav.toc ol { margin: 6px 0; padding-left: 22px; }
.scroll { overflow-x: auto; margin: 8px 0 14px; }
table { border-collapse: collapse; font-size: 0.88em; }
th, td { padding: 4px 9px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #eef1f4; position: sticky; top: 0; }
tbody tr:nth-child(even) td { background: var(--stripe); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.chosen td { font-weight: 600; background: #dafbe1 !important; }
tr.dim td { color: var(--muted); }
table.facts th { background: none; position: static; width: 15em; font-weight: 600; }
figure { margin: 14px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
.note { padding: 8px 12px; border-radius: 6px; margin: 10px 0; border: 1px solid; }
.note.error { color: #82071e; background: #ffebe9; border-color: #ff8182; }
.note.warning { color: #6f4e00; background: #fff8c5; border-color: #d4a72c; }
.note.info { color: var(--fg); background: var(--stripe); border-color: var(--line); }
"""

Cell = Any  # str (escaped here), Raw (already HTML), or a number formatted by the caller


@dataclass(frozen=True)
class Raw:
    """HTML that is already escaped."""

    html: str


def esc(value: Any) -> str:
    """Text made safe for HTML (quotes too, for attributes)."""
    return value.html if isinstance(value, Raw) else html.escape(str(value), quote=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[Cell]], numeric: Iterable[int] = (),
          row_classes: Sequence[str | None] | None = None) -> str:
    """A striped table; the ``numeric`` columns are right-aligned."""
    numeric = set(numeric)
    cls = lambda i: ' class="num"' if i in numeric else ""  # noqa: E731
    head = "".join(f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = []
    for n, row in enumerate(rows):
        row_class = row_classes[n] if row_classes and n < len(row_classes) else None
        attr = f' class="{esc(row_class)}"' if row_class else ""
        body.append(f"<tr{attr}>" + "".join(f"<td{cls(i)}>{esc(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(body)
            + "\n</tbody></table></div>")


def facts(pairs: Iterable[tuple[str, Cell]]) -> str:
    """A two-column table of labelled values (pairs whose value is None are left out)."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs if v is not None)
    return f'<div class="scroll"><table class="facts"><tbody>{rows}</tbody></table></div>'


def note(text: str, level: str = "info") -> str:
    """A coloured note: ``error`` (red), ``warning`` (yellow) or ``info``."""
    return f'<p class="note {esc(level)}">{esc(text)}</p>'


def png_figure(data: bytes, caption: str) -> str:
    """A PNG embedded as a data: URI, with its caption."""
    encoded = base64.b64encode(data).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{encoded}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def rendered_plot(draw: Callable[[Path], Any], caption: str) -> str:
    """Draw a plot into a temporary PNG and embed it; a red note when the plot cannot be drawn."""
    with tempfile.TemporaryDirectory(prefix="edgesplit-report-") as folder:
        path = Path(folder) / "plot.png"
        try:
            draw(path)
            return png_figure(path.read_bytes(), caption)
        except Exception as error:  # noqa: BLE001 - one broken plot must not lose the rest of the page
            return note(f"the plot '{caption}' could not be drawn: {type(error).__name__}: {error}", "error")


def _pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}%}"


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def _interval(score: Any, digits: int, unit: str = "") -> str:
    """'27.3 dB [26.9, 27.8]': a mean with its 95% interval."""
    if score is None:
        return "—"
    return f"{score.mean:.{digits}f}{unit} [{score.low:.{digits}f}, {score.high:.{digits}f}]"


def _shape(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape)) or "scalar"


# ---------------------------------------------------------------------------------------------- sections


def _model_text(ref: dict[str, Any] | str | None) -> str:
    """A model reference ({"name": ..., "kwargs": {...}}) as 'small_cnn (in_channels=1, num_classes=10)'."""
    if not isinstance(ref, dict):
        return str(ref)
    kwargs = ref.get("kwargs") or {}
    arguments = ", ".join(f"{k}={v}" for k, v in kwargs.items()) if isinstance(kwargs, dict) else str(kwargs)
    return str(ref.get("name", "?")) + (f" ({arguments})" if arguments else "")


def train_section(result: TrainResult, found: Found) -> str:
    """The training run: model, data set, epochs, test accuracy, loss per epoch."""
    losses = ", ".join(f"{loss:.4f}" for loss in result.train_loss)
    return facts([
        ("model", _model_text(result.model)),
        ("data set", result.dataset), ("epochs", result.epochs), ("test accuracy", _pct(result.test_accuracy)),
        ("train loss per epoch", losses or None),
        ("time", None if result.seconds is None else f"{result.seconds:.1f} s"),
        ("weights", result.weights)])


def profile_section(report: Any, found: Found) -> str:
    """Model summary, one row per candidate cut, and the bytes/latency plot."""
    from .plots import plot_profile

    model, machine = report.model, report.machine
    parts = [facts([
        ("model", model.name), ("input", ", ".join(_shape(s) for s in model.input_shapes)),
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


def plan_section(report: Any, found: Found) -> str:
    """Device, server and link; the chosen plan with its speed-ups; ranked plans; switch table; latency plot."""
    from .plots import plot_plan

    link, chosen, costs = report.link, report.chosen, report.chosen.costs
    parts = ["<h3>Machines and link</h3>",
             table(["role", "spec", "kind", "whole model ms", "memory", "power active / idle", "source"],
                   [["device", *_machine_row(report.device)], ["server", *_machine_row(report.server)]],
                   numeric=(3,)),
             table(["link", "uplink Mbit/s", "downlink Mbit/s", "RTT ms", "radio tx / rx W", "source"],
                   [[link.spec, f"{link.uplink_mbps:g}", f"{link.downlink_mbps:g}", f"{link.rtt_ms:g}",
                     f"{link.tx_w:g} / {link.rx_w:g}", link.source]], numeric=(1, 2, 3, 4))]
    constraints = {k: v for k, v in report.constraints.model_dump().items() if v not in (None, [])}
    parts += ["<h3>Chosen plan</h3>", facts([
        ("model", f"{report.model} (input {_shape(report.input_shape)}, graph {report.fingerprint})"),
        ("weights", (report.model_ref or {}).get("weights")),
        ("chosen", Raw(f"<strong>{esc(chosen.label)}</strong>")),
        ("latency", f"{_ms(costs.latency_ms)} ms per inference"),
        ("energy on the device", None if costs.energy_mj is None else f"{_ms(costs.energy_mj)} mJ"),
        ("sent per inference", f"{human_bytes(costs.uplink_bytes)} ({costs.uplink_bytes:,} B)"),
        ("speed-up vs all on device", f"{report.speedup_vs_all_device:.2f}× "
                                      f"({_ms(report.all_device.costs.latency_ms)} ms)"),
        ("speed-up vs all on server", f"{report.speedup_vs_all_server:.2f}× ({report.all_server.label}, "
                                      f"{_ms(report.all_server.costs.latency_ms)} ms)"),
        ("objective / codec", f"{report.objective}; codec {report.codec}"),
        ("constraints", "; ".join(f"{k} {v}" for k, v in constraints.items()) or None),
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
        rows.append([rank.get(entry.label, "—"), entry.label, _ms(c.device_ms), _ms(c.encode_ms + c.decode_ms),
                     _ms(c.uplink_ms), _ms(c.rtt_ms), _ms(c.server_ms), _ms(c.downlink_ms), _ms(c.latency_ms),
                     "—" if c.energy_mj is None else _ms(c.energy_mj), human_bytes(c.uplink_bytes),
                     f"{report.all_device.costs.latency_ms / c.latency_ms:.2f}×",
                     f"{report.all_server.costs.latency_ms / c.latency_ms:.2f}×", status])
        classes.append("chosen" if entry.label == chosen.label else (None if entry.feasible else "dim"))
    parts += [f"<h3>Ranked plans (top {min(TOP_PLANS, len(report.ranked))} of {len(report.ranked)})</h3>",
              table(["#", "plan", "device ms", "codec ms", "uplink ms", "RTT ms", "server ms", "down ms",
                     "latency ms", "energy mJ", "sent", "×device", "×server", "status"], rows,
                    numeric=[0, *range(2, 13)], row_classes=classes),
              "<h3>Switch table</h3>",
              '<p class="meta">The best plan for each uplink bandwidth range: what the runtime switches on.</p>',
              table(["from Mbit/s", "to Mbit/s", "best plan"],
                    [[f"{s.low_mbps:g}", f"{s.high_mbps:g}", s.label] for s in report.switch_table], numeric=(0, 1))]
    if report.pareto:
        parts.append(f'<p class="meta">Pareto front (latency, device energy, bytes sent): '
                     f"{esc('; '.join(report.pareto))}</p>")
    parts.append(rendered_plot(lambda path: plot_plan(report, path), "end-to-end latency against uplink bandwidth"))
    return "\n".join(parts)


def compress_section(report: Any, found: Found) -> str:
    """Every configuration's bytes, compression, accuracy and codec time, and the rate–accuracy curve."""
    from .plots import plot_rate_accuracy

    crossing = " + ".join(_shape(t.get("shape", [])) for t in report.crossing)
    pairs: list[tuple[str, Cell]] = [
        ("model / data", f"{report.model} on {report.data}"),
        ("cut", f"{report.cut_index} (after {report.after}): {crossing}"),
        ("float32 features", f"{human_bytes(report.float32_bytes)} per image (input: "
                             f"{human_bytes(report.input_bytes)})"),
        ("baseline accuracy", f"{_pct(report.baseline_accuracy)} on {report.eval_images} images"),
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
    rows = [[c.name, c.kind, f"{c.bytes_per_inference:,.0f}", f"{c.compression:.1f}×", _pct(c.accuracy),
             f"{c.accuracy_drop * 100:+.2f} pt", f"{c.encode_ms:.3f}", f"{c.decode_ms:.3f}"]
            for c in report.configurations]
    classes = ["dim" if c.kind == "input" else None for c in report.configurations]
    return "\n".join([facts(pairs), "<h3>Configurations</h3>",
                      table(["configuration", "kind", "bytes / inference", "vs float32", "accuracy", "drop",
                             "encode ms", "decode ms"], rows, numeric=range(2, 8), row_classes=classes),
                      rendered_plot(lambda path: plot_rate_accuracy(report, path),
                                    "accuracy against bytes per inference")])


def _safe_relative(name: str) -> bool:
    """A relative path inside its folder (what `edgesplit audit` writes), not an absolute or ../ path."""
    pure = PurePosixPath(name.replace("\\", "/"))
    return bool(name) and not pure.is_absolute() and ".." not in pure.parts


def find_png(name: str, json_path: Path, run_dir: Path) -> bytes | None:
    """The PNG an audit named: next to its JSON file first, then in the run folder; None when neither has it."""
    if not _safe_relative(name):
        return None
    for folder in (json_path.parent, run_dir):
        path = folder / name
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if data.startswith(PNG_MAGIC):
            return data
    return None


def _grid_order(key: str) -> tuple[int, int, str]:
    return (0, 0, key) if key == "best" else ((1, int(key), key) if key.isdigit() else (2, 0, key))


def audit_section(report: Any, found: Found, run_dir: Path) -> str:
    """Per cut and defense: task accuracy, attack PSNR/SSIM, probes, dCor; the audit's grids and plots."""
    from .plots import plot_leakage_by_cut, plot_privacy_utility

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
        ("whole model accuracy", _pct(report.model_accuracy, 1)),
        ("chance (most frequent label)", _pct(report.chance, 1)),
        ("mean-image baseline", None if baseline is None else
         f"PSNR {_interval(baseline.psnr, 1, ' dB')}, SSIM {_interval(baseline.ssim, 2)} — what an attacker "
         "gets with no information"),
        ("settings", ", ".join(f"{k} {v}" for k, v in settings.items() if not isinstance(v, (list, dict)))),
        ("time", f"{report.seconds:.1f} s")])]
    parts += [note(warning, "warning") for warning in report.warnings]
    attacks = [a for a in ("inversion", "optimize") if a in report.attacks]
    probe_kinds = sorted({p.kind for r in report.rows for p in r.probes}, key=lambda k: (k != "linear", k))
    headers = ["cut", "after", "defense", "crossing", "task acc"]
    for attack in attacks:
        name = "learned" if attack == "inversion" else "white-box"
        headers += [f"{name} PSNR dB [95% CI]", f"{name} SSIM [95% CI]"]
    headers += [f"{kind} probe acc [95% CI]" for kind in probe_kinds] + ["dCor [95% CI]"]
    rows = []
    for row in report.rows:
        scores = {a.attack: a for a in row.attacks}
        probes = {p.kind: p for p in row.probes}
        cells: list[Cell] = [row.position, row.after, row.defense, crossing_text(row.crossing),
                             _pct(row.task_accuracy, 1)]
        for attack in attacks:
            score = scores.get(attack)
            cells += [_interval(score and score.psnr, 1), _interval(score and score.ssim, 2)]
        cells += [_interval(probes.get(kind) and probes[kind].accuracy, 2) for kind in probe_kinds]
        cells.append(_interval(row.distance_correlation, 2))
        rows.append(cells)
    parts += ["<h3>Leakage per cut and defense</h3>",
              '<p class="meta">Higher PSNR/SSIM, probe accuracy and distance correlation mean the server learns more '
              "about the private input; compare SSIM with the mean-image baseline and probes with chance.</p>",
              table(headers, rows, numeric=[0, 4, *range(5, len(headers))])]

    grids = {key: find_png(name, found.path, run_dir) for key, name in report.grids.items()}
    plots = {key: find_png(name, found.path, run_dir) for key, name in report.plots.items()}
    present_grids = {k: v for k, v in grids.items() if v is not None}
    missing_grids = sorted((report.grids[k] for k, v in grids.items() if v is None))
    if not report.grids:
        parts.append(note("reconstruction grids missing: this audit was run without --out; run `edgesplit audit "
                          "... --out DIR --json DIR/audit.json` to keep them", "warning"))
    elif missing_grids:
        parts.append(note(f"reconstruction grids missing: {', '.join(missing_grids)} not found next to "
                          f"{found.name} or in the run folder; copy them there or audit again with --out", "warning"))
    if present_grids:
        parts.append("<h3>Reconstructions</h3>")
        for key in sorted(present_grids, key=_grid_order):
            row = report.row(int(key)) if key.isdigit() else None
            caption = ("the strongest attack at each cut (top row: the victims)" if key == "best" else
                       f"cut {key}" + (f" (after {row.after})" if row else "") + ": each defense and attack")
            parts.append(png_figure(present_grids[key], caption))
    parts.append("<h3>Plots</h3>")
    captions = {"leakage": "leakage by cut (undefended)", "privacy_utility": "privacy against utility per defense"}
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
    return "\n".join(parts)


def split_section(record: Any, found: Found) -> str:
    """A saved split: the model, the cut, the tensors that cross, the check of the halves."""
    return "\n".join([facts([
        ("model", _model_text(record.model)),
        ("input", ", ".join(_shape(s) for s in record.input_shapes)),
        ("cut", f"{record.cut.index} (position {record.cut.position}, after {record.cut.after})"),
        ("graph", f"traced with torch.{record.tracer}, fingerprint {record.fingerprint}"),
        ("crossing", f"{human_bytes(record.crossing_bytes)} per inference ({record.crossing_bytes:,} B)"),
        ("files", ", ".join(f"{k}: {v}" for k, v in sorted(record.files.items()))),
        ("tail(*head(x)) vs model(x)", f"max abs diff {record.max_abs_diff:.2e}")]),
        table(["tensor", "shape", "dtype", "bytes"],
              [[t.name, _shape(t.shape), t.dtype, f"{t.nbytes:,}"] for t in record.crossing], numeric=(3,))])


def infer_section(summary: InferSummary, found: Found) -> str:
    """A split inference run: throughput, latency percentiles, bytes, routes, switches, fallbacks, accuracy."""
    latency = summary.latency_ms
    p = [latency.get(k) for k in ("p50", "p95", "p99")]
    switches = "; ".join(f"#{s.get('request')} {s.get('from')} → {s.get('to')} at {s.get('mbps') or 0:.3g} Mbit/s"
                         for s in summary.switches)
    mbps = summary.final_mbps
    return facts([
        ("model", summary.model + (f" (served as {summary.model_id})" if summary.model_id not in (None, summary.model)
                                   else "")),
        ("server", summary.server), ("inputs", summary.source),
        ("images / requests", f"{summary.images} / {summary.requests} (batch {summary.batch})"),
        ("throughput", f"{summary.throughput_ips or 0:.1f} images/s over {summary.seconds:.2f} s"),
        ("latency p50 / p95 / p99", "n/a" if None in p else " / ".join(f"{v:.1f}" for v in p) + " ms"),
        ("latency mean / max", None if latency.get("mean") is None or latency.get("max") is None else
         f"{latency['mean']:.1f} / {latency['max']:.1f} ms"),
        ("bytes sent", f"{summary.bytes_sent:,} ({summary.bytes_per_image:,.0f} per image)"),
        ("routes", ", ".join(f"{label} ×{n}" for label, n in summary.routes.items()) or "—"),
        ("switches", f"{summary.switch_count}" + (f": {switches}" if switches else "")),
        ("fallbacks", f"{summary.fallbacks} result(s) on the device, {summary.outages} outage(s), "
                      f"{summary.recoveries} recovery(ies), {summary.retries} retry(ies), {summary.probes} probe(s)"),
        ("uplink estimate", None if mbps is None else
         f"{'≥ ' if summary.final_mbps_is_lower_bound else ''}{mbps:.3g} Mbit/s at the end (route "
         f"{summary.final_route}; RTT floor {summary.rtt_floor_ms if summary.rtt_floor_ms is not None else 'n/a'} ms)"),
        ("accuracy", None if summary.accuracy is None else _pct(summary.accuracy)),
        ("agreement with the model run here", None if summary.agreement is None else
         f"{_pct(summary.agreement)} (max abs diff {summary.max_abs_diff:.2e})" if summary.max_abs_diff is not None
         else _pct(summary.agreement))])


def _subject(found: Found) -> str:
    """What a section is about (its model), for the heading."""
    result = found.result
    if result is None:
        return ""
    model = getattr(result, "model", None)
    if found.kind == "edgesplit.profile":
        model = result.model.name
    elif isinstance(model, dict):
        model = model.get("name")
    return str(model) if model else ""


def render_section(found: Found, anchor: str, run_dir: Path) -> tuple[str, str]:
    """(the table-of-contents title, the section's HTML) for one file."""
    subject = _subject(found)
    title = TITLES[found.kind] + (f" — {subject}" if subject else "")
    body: str
    if found.error is not None:
        body = note(f"{found.name} could not be read: {found.error}", "error")
    else:
        renderers: dict[str, Callable[[], str]] = {
            TRAIN: lambda: train_section(found.result, found),
            "edgesplit.profile": lambda: profile_section(found.result, found),
            "edgesplit.plan": lambda: plan_section(found.result, found),
            "edgesplit.compress": lambda: compress_section(found.result, found),
            "edgesplit.audit": lambda: audit_section(found.result, found, run_dir),
            "edgesplit.split": lambda: split_section(found.result, found),
            "edgesplit.infer": lambda: infer_section(found.result, found)}
        try:
            body = renderers[found.kind]()
        except Exception as error:  # noqa: BLE001 - a file the schema accepts but that breaks a view: say so, go on
            body = note(f"{found.name} could not be shown: {type(error).__name__}: {error}", "error")
    html_text = (f'<section id="{anchor}">\n<h2>{esc(title)}</h2>\n'
                 f'<p class="source">from <code>{esc(found.name)}</code></p>\n{body}\n</section>')
    return title, html_text


def other_files_section(files: RunFiles) -> str:
    """JSON files the report does not render, and ones that are not JSON at all."""
    parts = []
    if files.unreadable:
        parts += [note(f"{name}: {why}", "error") for name, why in files.unreadable]
    if files.other:
        items = "".join(f"<li><code>{esc(name)}</code>" + (f" ({esc(kind)})" if kind else "") + "</li>"
                        for name, kind in files.other)
        parts.append('<p class="note info">Not shown in this report (not a stage result it reads):</p>'
                     f"<ul>{items}</ul>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- the page


def build_report(run_dir: str | Path, title: str | None = None, *, generated: datetime | None = None,
                 files: RunFiles | None = None) -> str:
    """The HTML page for every stage result under ``run_dir``."""
    run_dir = Path(run_dir)
    files = files or scan(run_dir)
    generated = generated or datetime.now(timezone.utc)
    title = title or f"edgesplit report: {run_dir.resolve().name}"
    toc, sections, counts = [], [], {}
    for found in files.found:
        slug = "train" if found.kind == TRAIN else found.kind.removeprefix("edgesplit.")
        counts[slug] = counts.get(slug, 0) + 1
        anchor = slug if counts[slug] == 1 else f"{slug}-{counts[slug]}"
        heading, section = render_section(found, anchor, run_dir)
        toc.append((anchor, heading, found.name))
        sections.append(section)
    other = other_files_section(files)
    if other:
        toc.append(("other-files", "Other files", ""))
        sections.append(f'<section id="other-files">\n<h2>Other files</h2>\n{other}\n</section>')
    toc_items = "".join(f'<li><a href="#{a}">{esc(h)}</a>' + (f' <span class="meta">{esc(n)}</span>' if n else "")
                        + "</li>" for a, h, n in toc)
    stamp = generated.astimezone(timezone.utc)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>", "<main>",
        f"<header><h1>{esc(title)}</h1>",
        f'<p class="meta">Generated <time datetime="{stamp.isoformat(timespec="seconds")}">'
        f'{stamp.strftime("%Y-%m-%d %H:%M:%S UTC")}</time> by edgesplit {esc(__version__)} from '
        f"<code>{esc(run_dir)}</code> ({len(files.found)} result file{'s' if len(files.found) != 1 else ''})</p>"
        "</header>",
        f'<nav class="toc"><strong>Contents</strong><ol>{toc_items}</ol></nav>',
        *sections, "</main>", "</body>", "</html>", ""])


def write_report(run_dir: str | Path, out_path: str | Path, title: str | None = None, *,
                 files: RunFiles | None = None) -> Path:
    """Write the HTML page for ``run_dir`` to ``out_path`` (parent folders created)."""
    out_path = Path(out_path)
    page = build_report(run_dir, title, files=files)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(page, encoding="utf-8")
    except OSError as error:
        raise EdgesplitError(f"cannot write {out_path} ({error.strerror}); choose a writable path") from None
    return out_path


def report_index(files: RunFiles, out_path: str | Path) -> dict:
    """What the page holds, for `edgesplit report --json`: each file with its kind and whether it was read."""
    return {"kind": REPORT_KIND, "version": REPORT_VERSION, "run_dir": str(files.run_dir), "html": str(out_path),
            "sections": [{"kind": f.kind, "file": f.name, "error": f.error} for f in files.found],
            "other_files": [{"file": name, "kind": kind} for name, kind in files.other],
            "unreadable": [{"file": name, "error": why} for name, why in files.unreadable]}
