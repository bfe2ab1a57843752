"""One self-contained HTML page from the JSON files the stages wrote into a run folder.

Every JSON file under the folder is recognised by its ``kind`` (the train result by its keys) and rendered as a
section, in pipeline order; the summary that `edgesplit run` and `edgesplit demo` write (run.json) opens the page.
Plots are PNGs embedded as ``data:`` URIs and the CSS is inline, so the page is one file that opens anywhere
without a network. Apart from the generation time the page is deterministic.
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

from edgesplit import __version__
from edgesplit.errors import EdgesplitError
from edgesplit.views import crossing_text, human_bytes, human_count

REPORT_KIND, REPORT_VERSION = "edgesplit.report", 1
RUN = "edgesplit.run"  # `edgesplit run`/`demo`: the config and what each stage left (the pipeline writes it)
RUN_VERSION = 1
TRAIN = "train"  # `edgesplit train --json` writes no kind: recognised by its keys
TRAIN_KEYS = frozenset({"model", "dataset", "epochs", "test_accuracy"})
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOP_PLANS = 10

# The run's summary first (the whole story), then pipeline order: train the model, measure it, choose the plan
# (from compress and audit results), split, serve.
ORDER = (RUN, TRAIN, "edgesplit.profile", "edgesplit.plan", "edgesplit.compress", "edgesplit.audit",
         "edgesplit.split", "edgesplit.infer")
TITLES = {RUN: "Run", TRAIN: "Training", "edgesplit.profile": "Profile", "edgesplit.plan": "Plan",
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
    summary = run_summary(files)
    if summary is not None:  # files of one kind in the run's order: its model's profile first, targets as listed
        files.found.sort(key=lambda f: (ORDER.index(f.kind), _run_rank(f, summary)))
    return files


def run_summary(files: RunFiles) -> RunSummary | None:
    """The first readable run summary (run.json) of a run folder, if it has one."""
    return next((f.result for f in files.found if f.kind == RUN and f.result is not None), None)


def _run_rank(found: Found, summary: RunSummary) -> int:
    """Where a file comes among the files of its kind in the order the run's config names them (last: unnamed)."""
    config, result, last = summary.config, found.result, 10**6
    if result is None:
        return last
    if found.kind == "edgesplit.profile":
        models = [config.model, *config.compare]
        return models.index(result.model.name) if result.model.name in models else last
    if found.kind == "edgesplit.plan":
        slugs = [t.slug for t in config.targets]
        stem = PurePosixPath(found.name).stem.removeprefix("plan_")
        return slugs.index(stem) if stem in slugs else last
    return 0


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


class RunTarget(BaseModel):
    """One deployment a run planned for (the run config's `targets`)."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    device: str
    server: str = "edge-gpu"
    link: str

    @property
    def slug(self) -> str:
        """What names the target's files (plan_SLUG.json), as the pipeline derives it."""
        from edgesplit.pipeline.run import target_slug

        return target_slug(self.name, self.device, self.link)


class RunConfigView(BaseModel):
    """What the report reads of the config a run was made with (sections it does not know are kept, not shown)."""

    model_config = ConfigDict(extra="allow")

    title: str | None = None
    model: str
    weights: str | None = None
    data: str = "digits"
    train: dict[str, Any] | None = None
    compare: list[str] = []
    targets: list[RunTarget] = []
    codecs: list[str] = []
    objective: str | None = None
    keep_input: bool = False
    compress: dict[str, Any] | None = None
    serve: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    seed: int | None = None


class RunStage(BaseModel):
    """One stage of a run: its wall-clock seconds and the facts it recorded (any keys)."""

    model_config = ConfigDict(extra="allow")

    seconds: float | None = None

    @property
    def facts(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RunSummary(BaseModel):
    """run.json, written by `edgesplit run CONFIG` and `edgesplit demo`: the config and each stage in order."""

    model_config = ConfigDict(extra="allow")

    kind: str
    version: int
    out_dir: str | None = None
    config: RunConfigView
    stages: dict[str, RunStage] = {}  # in the order the stages ran
    seconds: float | None = None  # the whole run, wall clock
    report: str | None = None
    served_target: str | None = None  # the target whose plan was compressed and served (None: none sent anything)


def _load_run(path: Path) -> RunSummary:
    from edgesplit.versioned import read_versioned

    return read_versioned(path, RunSummary, kind=RUN, version=RUN_VERSION, what="run summary",
                          make="`edgesplit run CONFIG.yaml --out DIR` or `edgesplit demo --out DIR`",
                          again="run it again")


def _load_profile(path: Path) -> Any:
    from edgesplit.profile import PROFILE_VERSION, ProfileReport
    from edgesplit.versioned import read_versioned

    return read_versioned(path, ProfileReport, kind="edgesplit.profile", version=PROFILE_VERSION, what="profile",
                          make="`edgesplit profile MODEL --json FILE`", again="profile again")


def _load_plan(path: Path) -> Any:
    from edgesplit.plan.schema import load_plan

    return load_plan(path)


def _load_compress(path: Path) -> Any:
    from edgesplit.compress.rate import load_compress

    return load_compress(path)


def _load_audit(path: Path) -> Any:
    from edgesplit.privacy.schema import load_audit

    return load_audit(path)


def _load_split(path: Path) -> Any:
    from edgesplit.model.artifact import SPLIT_VERSION, SplitRecord
    from edgesplit.versioned import read_versioned

    return read_versioned(path, SplitRecord, kind="edgesplit.split", version=SPLIT_VERSION, what="split record",
                          make="`edgesplit split MODEL --cut CUT --out DIR`", again="split again")


def _load_infer(path: Path) -> InferSummary:
    from edgesplit.versioned import read_versioned

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
    RUN: _load_run, TRAIN: _load_train, "edgesplit.profile": _load_profile, "edgesplit.plan": _load_plan,
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
nav.toc ol { margin: 6px 0; padding-left: 22px; columns: 2 22em; column-gap: 32px; }
nav.toc li { break-inside: avoid; }
.scroll { overflow-x: auto; margin: 8px 0 14px; }
table { border-collapse: collapse; font-size: 0.88em; }
th, td { padding: 4px 9px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #eef1f4; vertical-align: bottom; }
tbody tr:nth-child(even) td { background: var(--stripe); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
td.num.wrap { white-space: normal; }
.nw { white-space: nowrap; }
.ci { color: var(--muted); font-size: 0.86em; white-space: nowrap; }
tr.chosen td { font-weight: 600; background: #dafbe1 !important; }
tr.dim td { color: var(--muted); }
tr.total td { font-weight: 600; border-top: 2px solid var(--line); background: none !important; }
table.facts th { background: none; width: 15em; font-weight: 600; vertical-align: top; }
table.plans td:last-child { min-width: 13em; }
.bar { display: inline-block; width: 90px; height: 0.7em; background: var(--stripe); border: 1px solid var(--line);
       border-radius: 2px; vertical-align: middle; }
.bar > span { display: block; height: 100%; background: var(--accent); opacity: 0.6; }
figure { margin: 14px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figure.grid img { max-width: min(100%, 800px); }
details { margin: 10px 0; }
details > summary { cursor: pointer; color: var(--accent); font-weight: 600; }
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
          row_classes: Sequence[str | None] | None = None, wrap: Iterable[int] = (), css: str | None = None) -> str:
    """A striped table; the ``numeric`` columns are right-aligned and kept on one line unless also in ``wrap``."""
    numeric, wrap = set(numeric), set(wrap)
    th = lambda i: ' class="num"' if i in numeric else ""  # noqa: E731
    td = lambda i: (' class="num wrap"' if i in wrap else ' class="num"') if i in numeric else ""  # noqa: E731
    head = "".join(f"<th{th(i)}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = []
    for n, row in enumerate(rows):
        row_class = row_classes[n] if row_classes and n < len(row_classes) else None
        attr = f' class="{esc(row_class)}"' if row_class else ""
        body.append(f"<tr{attr}>" + "".join(f"<td{td(i)}>{esc(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    table_attr = f' class="{esc(css)}"' if css else ""
    return (f'<div class="scroll"><table{table_attr}><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(body)
            + "\n</tbody></table></div>")


def facts(pairs: Iterable[tuple[str, Cell]]) -> str:
    """A two-column table of labelled values (pairs whose value is None are left out)."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs if v is not None)
    return f'<div class="scroll"><table class="facts"><tbody>{rows}</tbody></table></div>'


def note(text: str, level: str = "info") -> str:
    """A coloured note: ``error`` (red), ``warning`` (yellow) or ``info``."""
    return f'<p class="note {esc(level)}">{esc(text)}</p>'


def png_figure(data: bytes, caption: str, css: str | None = None) -> str:
    """A PNG embedded as a data: URI, with its caption."""
    encoded = base64.b64encode(data).decode("ascii")
    attr = f' class="{esc(css)}"' if css else ""
    return (f'<figure{attr}><img src="data:image/png;base64,{encoded}" alt="{esc(caption)}">'
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


def _interval_cell(score: Any, digits: int) -> Cell:
    """A table cell '27.3 [26.9, 27.8]' whose interval, smaller and grey, wraps under the mean when space is short."""
    if score is None:
        return "—"
    return Raw(f'<span class="nw">{score.mean:.{digits}f}</span> '
               f'<span class="ci">[{score.low:.{digits}f}, {score.high:.{digits}f}]</span>')


def _label_cell(label: str) -> Cell:
    """A plan label 'cut 3 after conv1_2 [int8, measured]' that breaks only before its bracket."""
    head, bracket, rest = label.partition(" [")
    if not bracket:
        return Raw(f'<span class="nw">{esc(label)}</span>')
    return Raw(f'<span class="nw">{esc(head)}</span> <span class="nw">{esc("[" + rest)}</span>')


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


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


STAGE_KINDS = {"train": TRAIN, "profile": "edgesplit.profile", "plan": "edgesplit.plan", "split": "edgesplit.split",
               "compress": "edgesplit.compress", "serve": "edgesplit.infer", "infer": "edgesplit.infer",
               "audit": "edgesplit.audit"}


def stage_anchor(stage: str, anchors: dict[str, str], files: Sequence[Found]) -> str | None:
    """The section a run stage ('plan mcu-ethernet with compress') wrote: by kind, then by the name it names."""
    verb, _, rest = stage.partition(" ")
    kind = STAGE_KINDS.get(verb)
    candidates = [f for f in files if f.kind == kind and f.name in anchors]
    if len(candidates) > 1:
        subject = rest.removesuffix(" with compress").strip()
        by_subject = [f for f in candidates if subject and (
            PurePosixPath(f.name).stem.removeprefix(f"{verb}_") == subject.replace(":", "_")
            or (kind == "edgesplit.profile" and f.result is not None and f.result.model.name == subject))]
        candidates = by_subject
    return anchors[candidates[0].name] if len(candidates) == 1 else None


def _stage_result(stage: str, facts: dict[str, Any]) -> str:
    """The key result a run stage recorded, in words; its raw facts where the stage is not one this report knows."""
    try:
        text = _known_stage_result(stage.partition(" ")[0], facts)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        text = None
    return text or _plain_facts(facts)


def _known_stage_result(verb: str, facts: dict[str, Any]) -> str | None:
    if verb == "train":
        return f"test accuracy {_pct(facts['test_accuracy'])}"
    if verb == "profile":
        return (f"{human_count(facts['macs'])} MACs, {facts['cuts']} candidate cuts; whole model "
                f"{_ms(facts['model_ms'])} ms on this machine")
    if verb == "plan":
        routes = facts.get("switch_table") or []
        by_bandwidth = f"; by bandwidth: {' → '.join(routes)}" if len(routes) > 1 else ""
        return f"chosen: {facts['chosen']} ({_ms(facts['latency_ms'])} ms per inference){by_bandwidth}"
    if verb == "split":
        checked = (f"; {facts['images']} held-out images agree {_pct(facts['agreement'])}, max abs diff "
                   f"{facts['max_abs_diff']:.1e}" if "images" in facts else "")
        return (f"cut {facts['cut']} after {facts['after']}: {human_bytes(facts['crossing_bytes'])} of float32 "
                f"cross per inference{checked}")
    if verb == "compress":
        configurations = facts["configurations"]
        name, best = min(configurations.items(), key=lambda kv: kv[1]["bytes"])
        fp32 = configurations.get("fp32")
        reference = f" (fp32: {fp32['bytes']:,.0f} B)" if fp32 and name != "fp32" else ""
        return (f"{len(configurations)} configurations at cut {facts['cut']}; fewest bytes: {name}, "
                f"{best['bytes']:,.0f} B at {_pct(best['accuracy'])} accuracy{reference}")
    if verb == "serve":
        routes = ", ".join(f"{label} ×{n}" for label, n in (facts.get("routes") or {}).items())
        latency = facts.get("latency_ms") or {}
        agreement = facts.get("agreement")
        return (f"{facts['images']} images ({routes}); latency p50 {_ms(latency.get('p50'))} ms; "
                f"accuracy {_pct(facts.get('accuracy'))}; agreement with the whole model {_pct(agreement)}; "
                f"{facts['bytes_per_image']:,.0f} B per image")
    if verb == "audit":
        return str(facts.get("summary") or f"{facts['rows']} rows")
    return None


def _plain_facts(facts: dict[str, Any]) -> str:
    """Facts of a stage this report does not know: 'key value' pairs, nested values as JSON."""
    def text(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
    return "; ".join(f"{key.replace('_', ' ')} {text(value)}" for key, value in facts.items()) or "—"


def _link(text: str, anchor: str | None) -> Cell:
    return Raw(f'<a href="#{esc(anchor)}">{esc(text)}</a>') if anchor else text


def run_section(summary: RunSummary, found: Found, anchors: dict[str, str], files: Sequence[Found]) -> str:
    """The whole run on one screen: each stage in order with its time and result, the total, and the config."""
    stages = summary.stages
    longest = max((s.seconds or 0 for s in stages.values()), default=0) or 1
    names = list(stages)
    rows, classes = [], []
    for n, (name, stage) in enumerate(stages.items()):
        result = _stage_result(name, stage.facts)
        replanned = name.startswith("plan ") and f"{name} with compress" in names[n + 1:]
        if replanned:
            result += " — replanned below with the measured configurations"
        share = (stage.seconds or 0) / longest
        anchor = stage_anchor(name, anchors, files)
        label = Raw(f'<a class="nw" href="#{esc(anchor)}">{esc(name)}</a>' if anchor else
                    f'<span class="nw">{esc(name)}</span>')
        rows.append([n + 1, label, _seconds(stage.seconds),
                     Raw(f'<span class="bar"><span style="width: {share * 100:.0f}%"></span></span>'), result])
        classes.append("dim" if replanned else None)
    total = summary.seconds
    staged = sum(s.seconds or 0 for s in stages.values())
    rows.append(["", "total", f"{total if total is not None else staged:.1f}", "",
                 f"{len(stages)} stage{'s' if len(stages) != 1 else ''}"
                 + (f" ({_seconds(staged)} s in them; the rest: loading, tracing, plots, the report)"
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
    train = config.train or {}
    if config.weights:
        model = f"{config.model}, weights {config.weights}"
    elif config.train is not None:
        epochs = train.get("epochs", "?")
        model = (f"{config.model}, trained here on {config.data} ({epochs} epoch{'' if epochs == 1 else 's'}, batch "
                 f"{train.get('batch_size', '?')}, lr {train.get('lr', '?')})")
    else:
        model = config.model
    targets = []
    for target in config.targets:
        anchor = stage_anchor(f"plan {target.slug}", anchors, files)
        targets.append(f"{esc(_link(target.slug, anchor))}: device <code>{esc(target.device)}</code> → link "
                       f"<code>{esc(target.link)}</code> → server <code>{esc(target.server)}</code>")
    compress, serve, audit = config.compress, config.serve, config.audit

    def listed(value: Any) -> str:
        return ", ".join(map(str, value)) if isinstance(value, list) else str(value)

    compress_text = "not run" if compress is None else "; ".join(filter(None, [
        f"codecs {listed(compress.get('codecs', []))}",
        (f"learned bottleneck of {compress['bottleneck']} channels (stride {compress.get('stride', '?')}, "
         f"{compress.get('bits', '?')} bits, {compress.get('epochs', '?')}+{compress.get('epochs', '?')} epochs)"
         if compress.get("bottleneck") else "no learned bottleneck"),
        f"evaluated on up to {compress['eval_limit']} images" if "eval_limit" in compress else None,
        (f"plans may use them if accuracy drops at most {compress['max_accuracy_drop'] * 100:g} point(s)"
         if isinstance(compress.get("max_accuracy_drop"), (int, float)) else None)]))
    served = serve.get("target") if serve is not None else None
    if serve is not None and not served:
        first = summary.served_target  # the pipeline records which one it chose
        served = f"{first} (the first target whose plan sends anything)" if first else \
            "the first target whose plan sends anything (none did)"
    serve_text = "not run" if serve is None else (
        f"{serve.get('images', '?')} held-out images, batch {serve.get('batch', 1)}, through a server subprocess on "
        f"127.0.0.1, with the plan of {served}")
    audit_text = "not run" if audit is None else "; ".join([
        f"cuts {audit.get('cuts', 'all')}", f"attacks {audit.get('attacks', '?')}",
        f"defenses {listed(audit.get('defenses') or []) or 'none'}",
        f"{audit.get('victims', '?')} victims, {audit.get('aux_limit', '?')} attacker's images"])
    return [
        ("title", config.title), ("model", model), ("data", config.data),
        ("compared with", f"{', '.join(config.compare)} (profiled untrained)" if config.compare else None),
        ("targets", Raw("<br>".join(targets)) if targets else "none"),
        ("codecs the planner may use", listed(config.codecs) or None),
        ("objective", config.objective),
        ("keep input on the device", "yes: the raw input never leaves the device, so no all-server plans"
                                     if config.keep_input else "no"),
        ("compress", compress_text), ("serve", serve_text), ("audit", audit_text),
        ("seed", config.seed)]


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
    from edgesplit.plots import plot_profile

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
    from edgesplit.plots import plot_plan

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
        ("model", f"{report.model} (input {_shape(report.input_shape)}, graph {report.fingerprint})"),
        ("weights", (report.model_ref or {}).get("weights")),
        ("chosen", Raw(f"<strong>{esc(chosen.label)}</strong>")),
        ("latency", f"{_ms(costs.latency_ms)} ms per inference"),
        ("energy on the device", None if costs.energy_mj is None else f"{_ms(costs.energy_mj)} mJ"),
        ("sent per inference", f"{human_bytes(costs.uplink_bytes)} ({costs.uplink_bytes:,} B)"),
        ("speed-up vs all on device", f"{report.speedup_vs_all_device:.2f}× ({_ms(report.all_device.costs.latency_ms)}"
                                      f" ms{_not_allowed(report.all_device)})"),
        ("speed-up vs all on server", f"{report.speedup_vs_all_server:.2f}× ({report.all_server.label}, "
                                      f"{_ms(report.all_server.costs.latency_ms)} ms"
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
        rows.append([rank.get(entry.label, "—"), _label_cell(entry.label), _ms(c.device_ms),
                     _ms(c.encode_ms + c.decode_ms), _ms(c.uplink_ms), _ms(c.rtt_ms), _ms(c.server_ms),
                     _ms(c.downlink_ms), _ms(c.latency_ms),
                     "—" if c.energy_mj is None else _ms(c.energy_mj), human_bytes(c.uplink_bytes),
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


def compress_section(report: Any, found: Found) -> str:
    """Every configuration's bytes, compression, accuracy and codec time, and the rate–accuracy curve."""
    from edgesplit.plots import plot_rate_accuracy

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
    """Per cut and defense: task accuracy, attack PSNR/SSIM, probes, dCor; the audit's plots and grids."""
    from edgesplit.plots import plot_leakage_by_cut, plot_privacy_utility

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
        ("settings", ", ".join(f"{k} {', '.join(map(str, v)) if isinstance(v, list) else v}"
                               for k, v in settings.items() if v is not None and not isinstance(v, dict)
                               and k != "attacks")),
        ("time", f"{report.seconds:.1f} s")])]
    parts += [note(warning, "warning") for warning in report.warnings]
    attacks = [a for a in ("inversion", "optimize") if a in report.attacks]
    probe_kinds = sorted({p.kind for r in report.rows for p in r.probes}, key=lambda k: (k != "linear", k))
    # Without defenses every row has the defense "none" and the whole model's accuracy: columns that say nothing.
    defended = any(r.defense != "none" for r in report.rows)
    accuracies = {r.task_accuracy for r in report.rows}
    show_accuracy = defended or len(accuracies) > 1
    headers = ["cut", "after", *(["defense"] if defended else []), "crossing",
               *(["task acc"] if show_accuracy else [])]
    first_score = len(headers)
    for attack in attacks:
        name = "learned" if attack == "inversion" else "white-box"
        headers += [f"{name} PSNR dB", f"{name} SSIM"]
    headers += [f"{kind} probe acc" for kind in probe_kinds] + ["dCor"]
    rows = []
    for row in report.rows:
        scores = {a.attack: a for a in row.attacks}
        probes = {p.kind: p for p in row.probes}
        cells: list[Cell] = [row.position, row.after, *([row.defense] if defended else []),
                             crossing_text(row.crossing), *([_pct(row.task_accuracy, 1)] if show_accuracy else [])]
        for attack in attacks:
            score = scores.get(attack)
            cells += [_interval_cell(score and score.psnr, 1), _interval_cell(score and score.ssim, 2)]
        cells += [_interval_cell(probes.get(kind) and probes[kind].accuracy, 2) for kind in probe_kinds]
        cells.append(_interval_cell(row.distance_correlation, 2))
        rows.append(cells)
    same_accuracy = "" if show_accuracy or not accuracies or None in accuracies else (
        f" With no defense the tail sees exactly what the model computes: task accuracy "
        f"{_pct(next(iter(accuracies)), 1)} at every cut.")
    parts += ["<h3>Leakage per cut" + (" and defense" if defended else "") + "</h3>",
              '<p class="meta">Each score: the mean over the victims and its 95% bootstrap interval. Higher '
              "PSNR/SSIM (attacks rebuilding the input), probe accuracy (attacks guessing the label) and distance "
              "correlation (dCor) mean the server learns more about the private input; compare SSIM with the "
              f"mean-image baseline and probes with chance.{esc(same_accuracy)}</p>",
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


def _subject(found: Found, summary: RunSummary | None = None) -> str:
    """What a section is about (its model; a plan's machines and link), for the heading."""
    result = found.result
    if result is None:
        return ""
    model = getattr(result, "model", None)
    if found.kind == RUN:
        return result.config.model
    if found.kind == "edgesplit.profile":
        model = result.model.name
        if summary is not None and model in summary.config.compare and model != summary.config.model:
            return f"{model} (compared, untrained)"
    elif found.kind == "edgesplit.plan":
        return f"{model}: {result.device.spec} → {result.link.spec} → {result.server.spec}"
    elif isinstance(model, dict):
        model = model.get("name")
    return str(model) if model else ""


def render_section(found: Found, anchor: str, run_dir: Path, anchors: dict[str, str] | None = None,
                   files: Sequence[Found] = ()) -> tuple[str, str]:
    """(the table-of-contents title, the section's HTML) for one file; ``anchors`` (file name → section id) and
    ``files`` let the run summary link to the sections of its stages."""
    summary = next((f.result for f in files if f.kind == RUN and f.result is not None), None)
    subject = _subject(found, summary)
    title = TITLES[found.kind] + (f" — {subject}" if subject else "")
    body: str
    if found.error is not None:
        body = note(f"{found.name} could not be read: {found.error}", "error")
    else:
        renderers: dict[str, Callable[[], str]] = {
            RUN: lambda: run_section(found.result, found, anchors or {}, files),
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
    summary = run_summary(files)
    title = title or (summary.config.title if summary and summary.config.title else None) \
        or f"edgesplit report: {run_dir.resolve().name}"
    anchors: dict[str, str] = {}
    counts: dict[str, int] = {}
    for found in files.found:
        slug = "train" if found.kind == TRAIN else found.kind.removeprefix("edgesplit.")
        counts[slug] = counts.get(slug, 0) + 1
        anchors[found.name] = slug if counts[slug] == 1 else f"{slug}-{counts[slug]}"
    toc, sections = [], []
    for found in files.found:
        anchor = anchors[found.name]
        heading, section = render_section(found, anchor, run_dir, anchors, files.found)
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
