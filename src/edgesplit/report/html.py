"""The HTML pieces the report's page is made of: its CSS, escaping, tables, notes, embedded figures, and the
formatting of the numbers in them.

Everything here returns a string of HTML; text is escaped unless it is wrapped in ``Raw``. Figures are PNGs embedded
as ``data:`` URIs, so the page needs no other file.
"""

from __future__ import annotations

import base64
import html
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CSS", "Cell", "Raw", "esc", "facts", "interval_cell", "interval_text", "label_cell", "ms_text", "note",
           "pct_text", "png_figure", "rendered_plot", "seconds_text", "shape_text", "table"]

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


# ---------------------------------------------------------------------------------------------- numbers


def pct_text(value: float | None, digits: int = 2) -> str:
    """A fraction as a percentage ('97.25%'); 'n/a' when unknown."""
    return "n/a" if value is None else f"{value:.{digits}%}"


def ms_text(value: float | None) -> str:
    """Milliseconds (or any cost) with 3 significant digits below 100, else whole with thousands separators."""
    if value is None:
        return "n/a"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def interval_text(score: Any, digits: int, unit: str = "") -> str:
    """'27.3 dB [26.9, 27.8]': a mean with its 95% interval."""
    if score is None:
        return "—"
    return f"{score.mean:.{digits}f}{unit} [{score.low:.{digits}f}, {score.high:.{digits}f}]"


def interval_cell(score: Any, digits: int) -> Cell:
    """A table cell '27.3 [26.9, 27.8]' whose interval, smaller and grey, wraps under the mean when space is short."""
    if score is None:
        return "—"
    return Raw(f'<span class="nw">{score.mean:.{digits}f}</span> '
               f'<span class="ci">[{score.low:.{digits}f}, {score.high:.{digits}f}]</span>'
               + (f' <span class="ci">median {score.median:.{digits}f}</span>'
                  if getattr(score, "median", None) is not None else ""))


def label_cell(label: str) -> Cell:
    """A plan label 'cut 3 after conv1_2 [int8, measured]' that breaks only before its bracket."""
    head, bracket, rest = label.partition(" [")
    if not bracket:
        return Raw(f'<span class="nw">{esc(label)}</span>')
    return Raw(f'<span class="nw">{esc(head)}</span> <span class="nw">{esc("[" + rest)}</span>')


def seconds_text(value: float | None) -> str:
    """A duration in seconds, with fewer decimals as it grows; '—' when unknown."""
    if value is None:
        return "—"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def shape_text(shape: Sequence[int]) -> str:
    """A tensor shape as '1×28×28' ('scalar' for none)."""
    return "×".join(map(str, shape)) or "scalar"
