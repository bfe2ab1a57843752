"""The privacy audit's PNG figures: reconstruction grids, leakage by cut, privacy against utility.

The audit draws them into its out folder (`edgesplit audit --out DIR`); the HTML report redraws the two plots
from an audit's JSON when their PNGs are missing. matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
import torch

from edgesplit.errors import EdgesplitError
from edgesplit.plots import pyplot
from edgesplit.privacy.schema import AuditReport, AuditRow

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

_GRID_COLUMNS = 8  # images shown per row of a reconstruction grid
_GRID_DPI = 100
_TINY = 64  # images at most this many pixels high and wide are drawn with nearest-neighbour interpolation
_DEFENSE_COLOURS = {"noise": "#4c72b0", "dropout": "#dd8452", "quant": "#55a868", "nopeek": "#c44e52",
                    "bottleneck": "#8172b2"}
_OTHER_COLOURS = ["#937860", "#da8bc3", "#64b5cd", "#8c8c8c", "#ccb974"]
_CUT_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "d", "8", "H"]
_LEGEND_COLUMNS = 5
_ANNOTATE_ALL = 80  # points per panel up to which every defended point is labelled with its strength


def _image_batch(images: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    """A batch of images as float N×C×H×W numpy in [0, 1] (N×H×W counts as one channel)."""
    array = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images, dtype=float)
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[0] == 0:
        raise EdgesplitError(f"{what}: expected a non-empty N×C×H×W image batch, got shape {tuple(array.shape)}; "
                             "pass the images as one tensor")
    return np.clip(np.nan_to_num(array, nan=0.0), 0.0, 1.0)


def _show_image(axis: plt.Axes, image: np.ndarray) -> None:
    """Draw one C×H×W image: one channel in gray, three as RGB, any other count as the channels' mean in gray."""
    height, width = image.shape[1:]
    interpolation = "nearest" if max(height, width) <= _TINY else "antialiased"
    if image.shape[0] == 3:
        axis.imshow(image.transpose(1, 2, 0), interpolation=interpolation)
    else:
        axis.imshow(image.mean(0), cmap="gray", vmin=0.0, vmax=1.0, interpolation=interpolation)


def _wrap_label(label: str, width: int) -> str:
    """A row label on lines of about ``width`` characters, broken at its " · " separators where it can."""
    lines: list[str] = []
    for part in label.split(" · "):
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        else:
            if lines:
                lines[-1] += " ·"
            lines.append(part)
    return "\n".join(textwrap.fill(line, width + 2, break_long_words=True) for line in lines)


def plot_reconstructions(originals: torch.Tensor, rows: list[tuple[str, torch.Tensor]], path: str | Path,
                         title: str) -> Path:
    """A PNG grid: the original images on top, then one labelled row per set of reconstructions of the same images."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batches = [("original", _image_batch(originals, "original images"))]
    batches += [(label, _image_batch(images, f"reconstructions '{label}'")) for label, images in rows]
    columns = min(_GRID_COLUMNS, batches[0][1].shape[0])
    count = len(batches)
    # Inches: cells shrink as rows are added (so an all-cuts audit stays one screenful wide) but never below
    # 0.9 in, where an 8×8 digit is still legible; the labels keep one font size.
    cell = max(0.9, min(1.3, 15.0 / count))
    gap = 0.06
    wrapped = [_wrap_label(label, 28) for label, _ in batches]
    longest = max(len(line) for text in wrapped for line in text.splitlines())
    label_width = min(max(0.068 * longest + 0.25, 0.9), 2.3)
    title_lines = textwrap.fill(title, max(40, int((label_width + columns * (cell + gap)) * 13))).splitlines()
    top = 0.25 + 0.2 * len(title_lines)
    width = label_width + columns * (cell + gap) + 0.15
    height = top + count * (cell + gap) + 0.1
    plt = pyplot()
    figure = plt.figure(figsize=(width, height), dpi=_GRID_DPI)
    for r, ((_, batch), label) in enumerate(zip(batches, wrapped)):
        bottom = height - top - (r + 1) * (cell + gap) + gap
        figure.text((label_width - 0.12) / width, (bottom + cell / 2) / height, label, ha="right", va="center",
                    fontsize=8, fontweight="bold" if r == 0 else "normal")
        for c in range(columns):
            axis = figure.add_axes(((label_width + c * (cell + gap)) / width, bottom / height, cell / width,
                                    cell / height))
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_color("#b0b0b0")
                spine.set_linewidth(0.5)
            if c < batch.shape[0]:
                _show_image(axis, batch[c])
            else:
                axis.set_axis_off()
    figure.text(0.5, 1 - 0.12 / height, "\n".join(title_lines), ha="center", va="top", fontsize=10)
    figure.savefig(path)
    plt.close(figure)
    return path


def _value(score: object) -> float:
    return math.nan if score is None else score.mean  # type: ignore[attr-defined]


def _band(score: object) -> tuple[float, float]:
    return (math.nan, math.nan) if score is None else (score.low, score.high)  # type: ignore[attr-defined]


def plot_leakage_by_cut(report: AuditReport, path: str | Path) -> Path:
    """Leakage of the undefended cuts: best-attack SSIM (with its CI) and PSNR, probe accuracy, distance
    correlation and task accuracy against cut position, with the mean-image and chance baselines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted((r for r in report.rows if r.defense == "none"), key=lambda r: r.position)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(max(9.0, 4.0 + 0.45 * len(rows)), 6.0), dpi=120)
    x = [r.position for r in rows]
    attacks = [r.best_attack() for r in rows]
    probes = [r.best_probe() for r in rows]
    task = [math.nan if r.task_accuracy is None else r.task_accuracy for r in rows]
    if any(not math.isnan(t) for t in task):  # drawn first and wide, so lines that coincide with it stay visible
        axis.plot(x, task, color="#55a868", marker="D", markersize=4, linewidth=3.2, alpha=0.8, label="task accuracy")
    series = [
        ("reconstruction SSIM, best attack (95% CI)", "#c44e52", "o", [a and a.ssim for a in attacks]),
        ("label probe accuracy, best probe (95% CI)", "#8172b2", "s", [p and p.accuracy for p in probes]),
        ("distance correlation, input vs features (95% CI)", "#937860", "^", [r.distance_correlation for r in rows]),
    ]
    for label, colour, marker, scores in series:
        if all(s is None for s in scores):
            continue
        axis.plot(x, [_value(s) for s in scores], color=colour, marker=marker, markersize=4, linewidth=1.8,
                  label=label)
        low, high = zip(*(_band(s) for s in scores)) if scores else ((), ())
        axis.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0)
    if report.mean_image is not None:
        axis.axhline(report.mean_image.ssim.mean, color="#c44e52", linestyle="--", linewidth=1.2,
                     label=f"SSIM of the mean auxiliary image (no information): {report.mean_image.ssim.mean:.2f}")
    chance = report.chance if report.chance is not None else next((p.chance for p in probes if p), None)
    if chance is not None:
        axis.axhline(chance, color="#8172b2", linestyle=":", linewidth=1.4, label=f"chance (most frequent label): "
                     f"{chance:.2f}")
    lowest = min([s.low for _, _, _, scores in series for s in scores if s is not None], default=0.0)
    axis.set_ylim(min(lowest, 0.0) - 0.02, 1.02)  # SSIM can fall below 0 (anti-correlated structure)
    axis.set_ylabel("SSIM · accuracy · distance correlation (0–1)")
    axis.set_xlabel("cut position (head = nodes up to and including the named one)")
    axis.grid(True, alpha=0.3)
    handles, labels = axis.get_legend_handles_labels()
    psnr = [math.nan if a is None else a.psnr.mean for a in attacks]
    median = [math.nan if a is None or a.psnr.median is None else a.psnr.median for a in attacks]
    bound = [math.nan if r.fisher is None or r.fisher.psnr_bound is None else r.fisher.psnr_bound for r in rows]
    if any(not math.isnan(v) for v in psnr + bound):
        psnr_axis = axis.twinx()
        if any(not math.isnan(v) for v in psnr):
            psnr_axis.plot(x, psnr, color="#dd8452", linestyle="--", marker=".", linewidth=1.2,
                           label="PSNR of the best attack, mean (dB, right axis)")
        if any(not math.isnan(v) for v in median):  # capped values (100 dB) inflate the mean
            psnr_axis.plot(x, median, color="#dd8452", linestyle=":", marker="x", markersize=4, linewidth=1.2,
                           label="PSNR of the best attack, median (dB, right axis)")
        if any(not math.isnan(v) for v in bound):
            sigmas = sorted({r.fisher.sigma for r in rows if r.fisher is not None})
            psnr_axis.plot(x, bound, color="#dd8452", linestyle="none", marker="v", markersize=6,
                           markerfacecolor="none", label="PSNR bound from dFIL: an unbiased attacker, were Gaussian noise of σ = "
                           f"{'/'.join(f'{s:g}' for s in sigmas)} × feature std added (dB, right axis)")
        psnr_axis.set_ylabel("reconstruction PSNR (dB)", color="#dd8452")
        more = psnr_axis.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if rows:
        step = max(1, math.ceil(len(rows) / 40))  # at most ~40 tick labels
        axis.set_xticks(x[::step], [r.after for r in rows][::step], rotation=45, ha="right", fontsize=7)
        axis.set_xlim(min(x) - 0.5, max(x) + 0.5)
    else:
        axis.text(0.5, 0.5, "no undefended cuts in this audit", ha="center", va="center", transform=axis.transAxes)
    if handles:
        axis.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8,
                    frameon=False)
    codec = f", codec {report.codec}" if report.codec else ""
    axis.set_title(f"{report.model} on {report.data}: what each cut's features reveal ({report.victims} victims, "
                   f"{report.aux_images} auxiliary images{codec})", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _defense_parts(defense: str) -> tuple[str, str, tuple[int, float, str]]:
    """A defense spec "kind:value" as (kind, value text, sort key: numbers by value, then text)."""
    kind, _, value = defense.partition(":")
    try:
        key = (0, float(value), value)
    except ValueError:
        key = (1, 0.0, value)
    return kind.strip(), value.strip(), key


def plot_privacy_utility(report: AuditReport, path: str | Path) -> Path:
    """Task accuracy against the best attack's SSIM (left) and the best probe's accuracy (right): one line per
    defense kind and cut through its strengths, the undefended cut as a star."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    positions = sorted({r.position for r in report.rows})
    # Past the distinct markers, cuts reuse them hollow.
    markers = {p: (_CUT_MARKERS[i % len(_CUT_MARKERS)], "full" if i < len(_CUT_MARKERS) else "none")
               for i, p in enumerate(positions)}
    after = {r.position: r.after for r in report.rows}
    lines: dict[tuple[str, int], list[tuple[tuple[int, float, str], str, AuditRow]]] = {}
    undefended = []
    for row in report.rows:
        if row.defense == "none":
            undefended.append(row)
            continue
        kind, value, key = _defense_parts(row.defense)
        lines.setdefault((kind, row.position), []).append((key, value, row))
    known = list(_DEFENSE_COLOURS)
    kinds = sorted({kind for kind, _ in lines}, key=lambda k: (known.index(k) if k in known else len(known), k))
    colours = {k: _DEFENSE_COLOURS.get(k) or _OTHER_COLOURS[i % len(_OTHER_COLOURS)] for i, k in enumerate(kinds)}
    defended = [p for p in positions if any(pos == p for _, pos in lines)]
    legend_rows = math.ceil((len(kinds) + len(defended) + 4) / _LEGEND_COLUMNS)
    legend_height = 0.35 + 0.19 * legend_rows  # inches
    plt = pyplot()
    from matplotlib.lines import Line2D  # with pyplot, on first use (see edgesplit.plots.pyplot)

    figure, (ssim_axis, probe_axis) = plt.subplots(1, 2, figsize=(13, 5.2 + legend_height), dpi=120, sharey=True)

    panels = [(ssim_axis, lambda r: _value(r.best_attack() and r.best_attack().ssim), "no inversion attack results"),
              (probe_axis, lambda r: _value(r.best_probe() and r.best_probe().accuracy), "no label probe results")]
    for axis, measure, empty in panels:
        drawn = 0
        points = [(m, r) for m, r in ((measure(r), r) for r in report.rows)
                  if not math.isnan(m) and r.task_accuracy is not None]
        label_all = len(points) <= _ANNOTATE_ALL
        for (kind, position), entries in sorted(lines.items(), key=lambda item: (kinds.index(item[0][0]), item[0][1])):
            entries = sorted(entries, key=lambda e: e[0])
            xy = [(measure(r), r.task_accuracy, value) for _, value, r in entries
                  if r.task_accuracy is not None and not math.isnan(measure(r))]
            if not xy:
                continue
            marker, fill = markers[position]
            axis.plot([p[0] for p in xy], [p[1] for p in xy], color=colours[kind], marker=marker, fillstyle=fill,
                      markersize=5, linewidth=1.3)
            drawn += len(xy)
            for i, (px, py, value) in enumerate(xy):
                if label_all or i in (0, len(xy) - 1):
                    axis.annotate(value, (px, py), fontsize=6.5, xytext=(3, 3), textcoords="offset points",
                                  color=colours[kind])
        stars = sorted((measure(r), r.task_accuracy, r.position) for r in undefended
                       if r.task_accuracy is not None and not math.isnan(measure(r)))
        if stars:
            axis.scatter([s[0] for s in stars], [s[1] for s in stars], marker="*", s=140, color="black", zorder=4)
            drawn += len(stars)
        # Name the stars' cuts, skipping any that would print over the previous name.
        spread = max((m for m, _ in points), default=1.0) - min((m for m, _ in points), default=0.0) or 1.0
        named = None
        for m, accuracy, position in stars:
            if named is None or m - named[0] > 0.06 * spread or abs(accuracy - named[1]) > 0.01:
                axis.annotate(f"cut {position}", (m, accuracy), fontsize=6.5, xytext=(5, -9), textcoords="offset points")
                named = (m, accuracy)
        if not drawn:
            axis.text(0.5, 0.5, empty, ha="center", va="center", transform=axis.transAxes, color="#8c8c8c")
        axis.grid(True, alpha=0.3)
        if report.model_accuracy is not None:
            axis.axhline(report.model_accuracy, color="black", linestyle="--", linewidth=0.9)

    if report.mean_image is not None:
        ssim_axis.axvline(report.mean_image.ssim.mean, color="#c44e52", linestyle="--", linewidth=1)
    chance = report.chance if report.chance is not None else next(
        (p.chance for r in report.rows if (p := r.best_probe()) is not None), None)
    if chance is not None:
        probe_axis.axvline(chance, color="#8172b2", linestyle=":", linewidth=1.2)
    ssim_axis.set_xlabel("reconstruction SSIM of the best attack (lower = more private)")
    probe_axis.set_xlabel("label accuracy of the best probe (lower = more private)")
    ssim_axis.set_ylabel("task accuracy")

    handles = [Line2D([], [], color=colours[k], linewidth=2, label=f"defense: {k}") for k in kinds]
    handles.append(Line2D([], [], color="black", marker="*", markersize=10, linestyle="none",
                          label="undefended (none)"))
    handles += [Line2D([], [], color="#595959", marker=markers[p][0], fillstyle=markers[p][1], linestyle="none",
                       label=f"cut {p} ({after[p]})") for p in defended]
    if report.model_accuracy is not None:
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=0.9,
                              label=f"whole model {report.model_accuracy:.2%}"))
    if report.mean_image is not None:
        handles.append(Line2D([], [], color="#c44e52", linestyle="--", linewidth=1,
                              label=f"mean-image SSIM {report.mean_image.ssim.mean:.2f}"))
    if chance is not None:
        handles.append(Line2D([], [], color="#8172b2", linestyle=":", linewidth=1.2, label=f"chance {chance:.2f}"))
    figure.legend(handles=handles, loc="lower center", ncol=_LEGEND_COLUMNS, fontsize=7.5, frameon=False)
    figure.suptitle(f"{report.model} on {report.data}: privacy against utility per defense "
                    f"({report.victims} victims; labels on points are defense strengths)", fontsize=10)
    figure.tight_layout(rect=(0, legend_height / figure.get_figheight(), 1, 0.97))
    figure.savefig(path)
    plt.close(figure)
    return path


__all__ = ["plot_leakage_by_cut", "plot_privacy_utility", "plot_reconstructions"]
