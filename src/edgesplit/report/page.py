"""One self-contained HTML page from the JSON files the stages wrote into a run folder.

Every JSON file under the folder is recognised by its ``kind`` (the train result by its keys) and rendered as a
section, in pipeline order; the summary that `edgesplit run` and `edgesplit demo` write (run.json) opens the page.
Plots are PNGs embedded as ``data:`` URIs and the CSS is inline, so the page is one file that opens anywhere
without a network. Apart from the generation time the page is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from edgesplit import __version__
from edgesplit.errors import EdgesplitError
from edgesplit.pipeline.summary import RunSummary
from edgesplit.report.html import CSS, esc, note
from edgesplit.report.scan import RUN, TRAIN, Found, RunFiles, run_summary, scan
from edgesplit.report.sections import (audit_section, chain_plan_section, compress_section, infer_section, plan_section, profile_section,
                                       run_section, split_section, train_section)

__all__ = ["REPORT_KIND", "REPORT_VERSION", "SECTIONS", "TITLES", "build_report", "other_files_section",
           "render_section", "report_index", "write_report"]

REPORT_KIND, REPORT_VERSION = "edgesplit.report", 1  # `edgesplit report --json`: what the page holds

TITLES = {RUN: "Run", TRAIN: "Training", "edgesplit.profile": "Profile", "edgesplit.plan": "Plan",
          "edgesplit.chainplan": "Plan on a chain",
          "edgesplit.compress": "Compression", "edgesplit.audit": "Privacy audit", "edgesplit.split": "Split",
          "edgesplit.infer": "Split inference run"}

# Each kind's renderer, called with the file, the run folder, the section id of every file (by name) and every
# file: the run summary links to the sections of its stages, the audit finds its PNGs in the run folder.
Renderer = Callable[[Found, Path, dict[str, str], Sequence[Found]], str]
SECTIONS: dict[str, Renderer] = {
    RUN: lambda found, run_dir, anchors, files: run_section(found.result, found, anchors, files),
    TRAIN: lambda found, *_: train_section(found.result, found),
    "edgesplit.profile": lambda found, *_: profile_section(found.result, found),
    "edgesplit.plan": lambda found, *_: plan_section(found.result, found),
    "edgesplit.chainplan": lambda found, *_: chain_plan_section(found.result, found),
    "edgesplit.compress": lambda found, *_: compress_section(found.result, found),
    "edgesplit.audit": lambda found, run_dir, *_: audit_section(found.result, found, run_dir),
    "edgesplit.split": lambda found, *_: split_section(found.result, found),
    "edgesplit.infer": lambda found, *_: infer_section(found.result, found)}


# ---------------------------------------------------------------------------------------------- sections


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
    elif found.kind == "edgesplit.chainplan":
        return f"{model}: {result.topology}"
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
        try:
            body = SECTIONS[found.kind](found, run_dir, anchors or {}, files)
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
        raise EdgesplitError(f"cannot write {out_path} ({error.strerror}); choose a writable path") from error
    return out_path


def report_index(files: RunFiles, out_path: str | Path) -> dict:
    """What the page holds, for `edgesplit report --json`: each file with its kind and whether it was read."""
    return {"kind": REPORT_KIND, "version": REPORT_VERSION, "run_dir": str(files.run_dir), "html": str(out_path),
            "sections": [{"kind": f.kind, "file": f.name, "error": f.error} for f in files.found],
            "other_files": [{"file": name, "kind": kind} for name, kind in files.other],
            "unreadable": [{"file": name, "error": why} for name, why in files.unreadable]}
