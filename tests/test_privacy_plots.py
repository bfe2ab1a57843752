"""Tests for the privacy audit's figures: reconstruction grids, leakage by cut, privacy–utility curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgesplit.errors import EdgesplitError
from edgesplit.privacy.figures import plot_leakage_by_cut, plot_privacy_utility, plot_reconstructions
from edgesplit.plan.leakage import CutLeakage, LeakageTable
from edgesplit.privacy.schema import AttackScore, AuditReport, AuditRow, ProbeScore, Score

DEFENSES = {"noise": ["0.1", "0.5", "1.0"], "dropout": ["0.2", "0.5"], "quant": ["8", "4", "2"],
            "nopeek": ["0.5"], "bottleneck": ["16", "4"]}
# Per defense kind: how much of the leakage each step of strength removes, and how much accuracy it costs.
EFFECT = {"noise": (0.35, 0.06), "dropout": (0.2, 0.03), "quant": (0.08, 0.01), "nopeek": (0.5, 0.04),
          "bottleneck": (0.3, 0.02)}


def score(mean: float, spread: float = 0.04) -> Score:
    return Score(mean=mean, low=mean - spread, high=mean + spread)


def make_row(position: int, defense: str, *, cuts: int = 6, probes: bool = True) -> AuditRow:
    """A row whose leakage falls with depth and with the defense's strength."""
    kind, _, value = defense.partition(":")
    step = DEFENSES[kind].index(value) + 1 if kind in DEFENSES else 0
    hide, cost = EFFECT.get(kind, (0.2, 0.02))
    keep = (1 - hide) ** step
    depth = position / max(cuts - 1, 1)
    ssim = (0.05 + 0.85 * (1 - depth) ** 1.5) * keep - 0.04 * depth  # SSIM can dip below 0 at deep cuts
    return AuditRow(
        position=position, after="input" if position == 0 else f"layer{position}.conv", defense=defense,
        crossing=[[8, 4, 4]], task_accuracy=0.95 - cost * step - 0.01 * depth * step,
        attacks=[AttackScore(attack="inversion", psnr=score(12 + 15 * ssim, 1.5), ssim=score(ssim), seconds=1.0),
                 AttackScore(attack="optimize", psnr=score(10 + 10 * ssim, 1.5), ssim=score(ssim * 0.8), seconds=2.0)]
        if position > 0 else [],  # an attack may be missing at a cut
        probes=[ProbeScore(kind="linear", accuracy=score(0.1 + (0.8 - 0.3 * depth) * keep), chance=0.1),
                ProbeScore(kind="mlp", accuracy=score(0.1 + (0.85 - 0.2 * depth) * keep), chance=0.1)] if probes else [],
        distance_correlation=score(0.2 + 0.7 * keep * (1 - 0.6 * depth)),
    )


def make_report(cuts: int = 6, *, defenses: bool = True) -> AuditReport:
    rows = []
    for position in range(cuts):
        rows.append(make_row(position, "none", cuts=cuts))
        if defenses:
            for kind, values in DEFENSES.items():
                for value in values:
                    rows.append(make_row(position, f"{kind}:{value}", cuts=cuts, probes=kind != "nopeek"))
    table = LeakageTable(model="tinycnn", fingerprint="abc123", cuts=[
        CutLeakage(position=r.position, after=r.after, ssim=r.best_attack() and r.best_attack().ssim.mean,
                   probe_accuracy=r.best_probe() and r.best_probe().accuracy.mean) for r in rows if r.defense == "none"])
    return AuditReport(model="tinycnn", fingerprint="abc123", model_ref={"zoo": "tinycnn"}, data="digits", aux="digits",
                       victims=64, aux_images=512, overlap=0, attacks=["inversion", "optimize", "probe"],
                       defenses=["none"] + [f"{k}:{v}" for k, vs in DEFENSES.items() for v in vs] if defenses else [],
                       model_accuracy=0.95, chance=0.1,
                       mean_image=AttackScore(attack="inversion", psnr=score(11.0, 0.5), ssim=score(0.12, 0.01),
                                              seconds=0.0),
                       rows=rows, leakage=table, settings={"seed": 0}, seconds=12.0)


def gray_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.int16)


def bands(mask_rows: np.ndarray) -> list[tuple[int, int]]:
    """Runs of consecutive True pixel rows as (first, last)."""
    runs, start = [], None
    for y, on in enumerate(mask_rows.tolist() + [False]):
        if on and start is None:
            start = y
        elif not on and start is not None:
            runs.append((start, y - 1))
            start = None
    return runs


def test_grid_rows_follow_the_originals_in_order(tmp_path: Path) -> None:
    originals = torch.full((8, 1, 8, 8), 0.5)
    path = plot_reconstructions(originals, [("conv1 · learned · 6.0 dB / 0.01", torch.zeros(8, 1, 8, 8)),
                                            ("conv2 · learned · 9.0 dB / 0.02", torch.ones(8, 1, 8, 8))],
                                tmp_path / "grid.png", "tinycnn on digits")
    pixels = gray_png(path)
    gray = bands((np.abs(pixels - 128) < 6).mean(1) > 0.5)  # pixel rows mostly covered by mid-gray originals
    dark = bands((pixels < 20).mean(1) > 0.5)  # ... and by the black reconstructions
    assert len(gray) == 1 and len(dark) == 1
    assert gray[0][1] < dark[0][0]  # originals on top, then the rows in the order given
    height = gray[0][1] - gray[0][0] + 1
    assert height >= 85 and abs(height - (dark[0][1] - dark[0][0] + 1)) <= 2  # cells ≥ 0.9 in at 100 dpi, equal


def test_grid_difference_lies_in_the_changed_row(tmp_path: Path) -> None:
    originals = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    black, white = torch.zeros(6, 1, 8, 8), torch.ones(6, 1, 8, 8)
    a = gray_png(plot_reconstructions(originals, [("a", black), ("b", black)], tmp_path / "a.png", "t"))
    b = gray_png(plot_reconstructions(originals, [("a", black), ("b", white)], tmp_path / "b.png", "t"))
    assert a.shape == b.shape
    dark = bands((a < 20).mean(1) > 0.4)
    assert len(dark) == 2
    changed = np.flatnonzero(np.abs(a - b).max(1) > 0)
    assert changed.size and dark[1][0] - 2 <= changed.min() and changed.max() <= dark[1][1] + 2
    region = slice(dark[1][0], dark[1][1] + 1)
    assert b[region].mean() > a[region].mean() + 100


def test_grid_tiny_gray_images_stay_sharp_and_colour_stays_colour(tmp_path: Path) -> None:
    checker = torch.zeros(3, 1, 8, 8)
    checker[:, :, ::2, ::2] = checker[:, :, 1::2, 1::2] = 1.0
    pixels = gray_png(plot_reconstructions(checker, [("same", checker)], tmp_path / "g.png", "8×8 gray"))
    cells = pixels[(pixels < 5).mean(1) > 0.1]  # pixel rows crossing the checkerboards
    assert len(cells) > 2 * 85
    # Nearest interpolation: a checkerboard's pixels are black or white, hardly any blurred gray in between.
    mid = ((cells > 40) & (cells < 215)).mean()
    assert mid < 0.03, mid

    red, green = torch.zeros(4, 3, 32, 32), torch.zeros(4, 3, 32, 32)
    red[:, 0], green[:, 1] = 1.0, 1.0
    path = plot_reconstructions(red, [("green", green)], tmp_path / "c.png", "32×32 colour")
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    is_red = (rgb[..., 0] > 200) & (rgb[..., 1] < 50) & (rgb[..., 2] < 50)
    is_green = (rgb[..., 1] > 200) & (rgb[..., 0] < 50) & (rgb[..., 2] < 50)
    red_rows, green_rows = np.flatnonzero(is_red.mean(1) > 0.3), np.flatnonzero(is_green.mean(1) > 0.3)
    assert red_rows.size > 80 and green_rows.size > 80 and red_rows.max() < green_rows.min()


def test_grid_with_many_rows_keeps_every_row(tmp_path: Path) -> None:
    originals = torch.full((10, 3, 16, 16), 0.5)
    rows = [(f"layer{i}.conv · learned · {10 + i:.1f} dB / 0.{i:02d}", torch.zeros(10, 3, 16, 16)) for i in range(18)]
    path = plot_reconstructions(originals, rows, tmp_path / "many.png", "a cut-all audit " * 8)
    pixels = gray_png(path)
    assert pixels.shape[1] >= 8 * 85  # 8 columns (of 10 images), each ≥ 0.9 in
    dark = bands((pixels < 20).mean(1) > 0.4)
    assert len(dark) == 18 and all(last - first >= 85 for first, last in dark)
    assert pixels.shape[0] < 19 * 130  # cells shrink for many rows rather than growing past ~1 in


def test_grid_fewer_reconstructions_and_bad_input(tmp_path: Path) -> None:
    path = plot_reconstructions(torch.rand(4, 8, 8), [("two only", torch.rand(2, 8, 8))], tmp_path / "x.png", "t")
    with Image.open(path) as img:
        assert img.format == "PNG"
    with pytest.raises(EdgesplitError, match="N×C×H×W"):
        plot_reconstructions(torch.rand(0, 1, 8, 8), [], tmp_path / "y.png", "t")


@pytest.mark.parametrize("defenses", [True, False])
def test_leakage_by_cut(tmp_path: Path, defenses: bool) -> None:
    path = plot_leakage_by_cut(make_report(17, defenses=defenses), tmp_path / "leak" / "by-cut.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= 1000 and img.height >= 600
        rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    assert (np.abs(rgb - np.array([0xC4, 0x4E, 0x52])).max(2) < 12).sum() > 500  # the SSIM line and its band


def test_leakage_by_cut_without_undefended_rows(tmp_path: Path) -> None:
    report = make_report(3)
    report.rows = [r for r in report.rows if r.defense != "none"]
    with Image.open(plot_leakage_by_cut(report, tmp_path / "none.png")) as img:
        assert img.format == "PNG"


def colour_pixels(path: Path, colour: str) -> int:
    target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    return int((np.abs(rgb - target).max(2) < 10).sum())


def test_privacy_utility(tmp_path: Path) -> None:
    defended = plot_privacy_utility(make_report(4), tmp_path / "pu.png")
    bare = plot_privacy_utility(make_report(4, defenses=False), tmp_path / "pu-none.png")
    for path in (defended, bare):
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width >= 1200 and img.height >= 600
    # Defense curves in their kinds' colours; without defense rows only the undefended stars (black) remain.
    for colour in ("#4c72b0", "#dd8452", "#55a868"):  # noise, dropout, quant (others share baseline colours)
        assert colour_pixels(defended, colour) > 200 and colour_pixels(bare, colour) < 20
    assert colour_pixels(bare, "#000000") > 200


def test_privacy_utility_missing_values(tmp_path: Path) -> None:
    report = make_report(3)
    for row in report.rows:
        row.probes = []  # no probe anywhere: the right panel says so
        if row.defense.startswith("quant:4"):
            row.task_accuracy = None
    report.rows.append(make_row(1, "mystery:x"))  # an unknown kind, a non-numeric strength
    report.chance = None
    with Image.open(plot_privacy_utility(report, tmp_path / "gaps.png")) as img:
        assert img.format == "PNG"
