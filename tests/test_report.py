"""`edgesplit report`: one self-contained HTML page from the JSON files real stages wrote into a run folder."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from typer.testing import CliRunner

from edgesplit.cli import app
from edgesplit.errors import EdgesplitError
from edgesplit.graph import trace
from edgesplit.intake import load_model
from edgesplit.plan.schema import load_plan
from edgesplit.privacy.audit import AuditSettings, resolve_cuts, run_audit
from edgesplit.privacy.defenses import parse_defenses
from edgesplit.report import build_report, find_png, write_report
from test_cli import assert_user_error, edgesplit

pytestmark = pytest.mark.usefixtures("one_thread")

TOKEN = "report-test-token-0123456789"
WHEN = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
IMG = re.compile(r"<img\b[^>]*>")
SRC = re.compile(r'\bsrc="([^"]*)"')
TIME = re.compile(r"<time [^>]*>[^<]*</time>")
SECTION_HEADINGS = ["Training", "Profile", "Plan", "Compression", "Privacy audit", "Split", "Split inference run"]


def cli(*args: object) -> None:
    """Run a verb in this process (the stages' real code and JSON, without a subprocess's start-up)."""
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def infer_json(plan_path: Path, out: Path) -> None:
    """A real split inference run against a server on a thread, written as `edgesplit infer --json` writes it."""
    from edgesplit.runtime.client import Client, load_inputs, run_inference
    from edgesplit.runtime.deployment import load_deployment
    from edgesplit.runtime.engine import Engine
    from edgesplit.runtime.server import ServerThread

    plan = load_plan(plan_path)
    with ServerThread(Engine([load_deployment(plan, plan_dir=plan_path.parent)]), token=TOKEN) as server:
        with Client(plan, server.url, TOKEN, plan_dir=plan_path.parent) as client:
            result = run_inference(client, load_inputs(plan.input_shape, data="digits", limit=16), progress=False)
    out.write_text(json.dumps(result, indent=2))


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits) -> Path:
    """Every stage's output for a trained small CNN on digits, as a user's run folder holds them."""
    run = tmp_path_factory.mktemp("run")
    weights = run / "small_cnn.safetensors"
    cli("train", "small_cnn", "--epochs", "2", "--out", weights, "-q", "--json", run / "train.json")
    cli("profile", "small_cnn", "--weights", weights, "--runs", "2", "--warmup", "1", "-q",
        "--json", run / "profile.json", "--save-device", run / "device.json")
    # A device 50× slower than this machine: the plan sends something, so it can be served below.
    cli("plan", "small_cnn", "--weights", weights, "--device", "host/50", "--server", "host", "--link", "wifi:rtt=2",
        "--codec", "fp32", "--codec", "int8", "--runs", "2", "-q", "--json", run / "plan.json")
    cli("compress", "small_cnn", "--weights", weights, "--cut", "3", "--codec", "int8", "--codec", "int2+ans",
        "--eval-limit", "100", "-q", "--json", run / "compress.json")
    cli("split", "small_cnn", "--weights", weights, "--cut", "3", "--out", run / "split")
    loaded = load_model("small_cnn", weights=weights)
    traced = trace(loaded.module, loaded.example_input)
    tiny = AuditSettings(victims=32, aux_limit=200, inversion_epochs=2, optimize_steps=20)
    report = run_audit(traced, loaded.module, digits, digits, cuts=resolve_cuts(traced, "conv1_2,flatten"),
                       defenses=parse_defenses([]), settings=tiny, name="small_cnn",
                       model_ref={**loaded.ref.to_json(), "weights": str(weights)}, data_spec="digits",
                       aux_spec="digits", out_dir=run, progress=False)
    # The JSON in a subfolder, the PNGs in the run folder: the report finds them there.
    (run / "results").mkdir()
    (run / "results" / "audit.json").write_text(report.model_dump_json(indent=2))
    infer_json(run / "plan.json", run / "infer.json")
    (run / "notes.json").write_text(json.dumps({"operator": "me", "room": 4}))
    return run


@pytest.fixture(scope="module")
def page(run) -> str:
    return build_report(run, generated=WHEN)


def images(page: str) -> list[Image.Image]:
    """Every <img> of the page, decoded; each must be an embedded PNG."""
    decoded = []
    for tag in IMG.findall(page):
        src = SRC.search(tag).group(1)
        assert src.startswith("data:image/png;base64,"), src[:80]
        data = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG"
        image.verify()
        decoded.append(Image.open(io.BytesIO(data)))
    return decoded


def headings(page: str) -> list[str]:
    return [re.sub(r" — .*", "", h) for h in re.findall(r"<h2>(.*?)</h2>", page)]


def test_one_self_contained_html_document(page):
    assert page.startswith("<!DOCTYPE html>") and page.count("<html") == page.count("</html>") == 1
    assert page.count("<body>") == 1 and page.count("<style>") == 1
    lowered = page.lower()
    for external in ('src="http', "src='http", 'href="http', "href='http", "<link", "<script", "@import", "url(",
                     "<iframe", "<object"):
        assert external not in lowered, external
    # Every link is to a section of this page.
    ids = set(re.findall(r'<section id="([^"]+)"', page))
    links = re.findall(r'href="([^"]*)"', page)
    assert links and all(link.startswith("#") and link[1:] in ids for link in links)
    assert ids == {link[1:] for link in links}  # the table of contents names every section
    # Profile, plan and compress plots; the audit's 3 grids (2 cuts and the best) and its 2 plots.
    decoded = images(page)
    assert len(decoded) == 8
    assert all(image.width > 200 and image.height > 100 for image in decoded)


def test_sections_in_pipeline_order_with_their_files(page):
    assert headings(page) == [*SECTION_HEADINGS, "Other files"]
    for name in ("train.json", "profile.json", "plan.json", "compress.json", "results/audit.json",
                 "split/split.json", "infer.json"):
        assert f"from <code>{name}</code>" in page
    # Not stage results: listed, not rendered.
    other = page[page.index('<section id="other-files">'):]
    assert "<code>notes.json</code>" in other and "<code>device.json</code> (edgesplit.device-profile)" in other
    assert 'class="note error"' not in page and "grids missing" not in page
    assert "2025-01-02 03:04:05 UTC" in page


def test_sections_show_the_real_figures(page, run):
    train = json.loads((run / "train.json").read_text())
    assert f"{train['test_accuracy']:.2%}" in page
    profile = json.loads((run / "profile.json").read_text())
    assert f"{profile['model']['macs']:,}" in page
    cut = profile["cuts"][7]
    assert f'<td class="num">7</td><td>{cut["after"]}</td>' in page and cut["after"] == "pool1"
    plan = load_plan(run / "plan.json")
    assert f"<strong>{plan.chosen.label}</strong>" in page.replace("&#x27;", "'")
    assert f"{plan.speedup_vs_all_device:.2f}×" in page and plan.switch_table[0].label in page
    compress = json.loads((run / "compress.json").read_text())
    config = next(c for c in compress["configurations"] if c["name"] == "int2+ans")
    assert f'<td>int2+ans</td><td>codec</td><td class="num">{config["bytes_per_inference"]:,.0f}</td>' in page
    audit = json.loads((run / "results" / "audit.json").read_text())
    row = audit["rows"][0]
    white_box = next(a for a in row["attacks"] if a["attack"] == "optimize")
    psnr = white_box["psnr"]
    assert f'{psnr["mean"]:.1f} [{psnr["low"]:.1f}, {psnr["high"]:.1f}]' in page
    assert f'{audit["mean_image"]["ssim"]["mean"]:.2f} [' in page and row["after"] == "conv1_2"
    infer = json.loads((run / "infer.json").read_text())["summary"]
    latency = infer["latency_ms"]
    assert f'{latency["p50"]:.1f} / {latency["p95"]:.1f} / {latency["p99"]:.1f} ms' in page
    assert f'{infer["bytes_sent"]:,} (' in page and f'{infer["agreement"]:.2%}' in page
    split = json.loads((run / "split" / "split.json").read_text())
    assert f'{split["crossing_bytes"]:,} B' in page


def test_the_cli_writes_the_same_page_and_an_index(run, page, tmp_path):
    out, index = tmp_path / "site" / "report.html", tmp_path / "index.json"
    result = CliRunner().invoke(app, ["report", str(run), "-o", str(out), "--json", str(index)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "report written to" in result.output and "notes.json" in result.output
    # Deterministic apart from the generation time.
    assert TIME.sub("", out.read_text()) == TIME.sub("", page)
    written = json.loads(index.read_text())
    assert written["kind"] == "edgesplit.report"
    assert [s["kind"] for s in written["sections"]] == ["train", "edgesplit.profile", "edgesplit.plan",
                                                       "edgesplit.compress", "edgesplit.audit", "edgesplit.split",
                                                       "edgesplit.infer"]


def test_only_the_sections_present_and_text_is_escaped(run, tmp_path):
    shutil.copy(run / "profile.json", tmp_path / "profile.json")
    train = json.loads((run / "train.json").read_text())
    (tmp_path / "train.json").write_text(json.dumps({**train, "dataset": "<script>alert('x')</script> & co"}))
    out = write_report(tmp_path, tmp_path / "report.html", title="Run <7> & 'friends'")
    page = out.read_text()
    assert headings(page) == ["Training", "Profile"]
    for absent in ("Plan", "Compression", "Privacy audit", "Split inference run", "Other files"):
        assert f"<h2>{absent}" not in page
    assert "<title>Run &lt;7&gt; &amp; &#x27;friends&#x27;</title>" in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page and "<script" not in page
    assert len(images(page)) == 1


def test_a_malformed_plan_is_a_red_note_and_the_rest_still_renders(run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    (folder / "plan.json").write_text(json.dumps({"kind": "edgesplit.plan", "version": 1, "model": "small_cnn"}))
    (folder / "broken.json").write_text('{"kind": "edgesplit.compress", ')
    page = build_report(folder)
    assert headings(page) == [*SECTION_HEADINGS, "Other files"]
    plan = page[page.index('<section id="plan">'):page.index('<section id="compress">')]
    assert '<p class="note error">plan.json could not be read: plan ' in plan and "malformed" in plan
    assert "<img" not in plan
    assert '<p class="note error">broken.json: not readable JSON' in page
    assert len(images(page)) == 7  # everything but the plan's plot


def test_missing_audit_grids_are_reported_and_its_plots_redrawn(run, tmp_path):
    shutil.copy(run / "results" / "audit.json", tmp_path / "audit.json")
    page = build_report(tmp_path)
    assert headings(page) == ["Privacy audit"]
    assert "reconstruction grids missing: reconstructions-cut03.png, reconstructions-cut13.png, " \
           "reconstructions.png not found next to audit.json or in the run folder" in page
    assert page.count("(redrawn from the JSON)</figcaption>") == 2 and len(images(page)) == 2


def test_audit_pngs_are_found_next_to_the_json_first(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(png, "PNG")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(png.getvalue())
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"elsewhere")
    (tmp_path / "b.png").write_bytes(png.getvalue())
    (tmp_path / "c.png").write_bytes(b"not a png")
    json_path = tmp_path / "sub" / "audit.json"
    assert find_png("a.png", json_path, tmp_path) == png.getvalue()
    assert find_png("b.png", json_path, tmp_path) == png.getvalue()
    assert find_png("c.png", json_path, tmp_path) is None
    assert find_png("../sub/a.png", json_path, tmp_path) is None
    assert find_png("/etc/hostname", json_path, tmp_path) is None


def test_a_folder_without_results_is_a_user_error(tmp_path):
    (tmp_path / "notes.json").write_text("[1, 2]")
    with pytest.raises(EdgesplitError, match="holds no edgesplit results"):
        build_report(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(edgesplit("report", str(empty), "-o", str(tmp_path / "r.html")), "is empty", "--json")
    assert_user_error(edgesplit("report", str(tmp_path / "missing"), "-o", str(tmp_path / "r.html")), "not found")
    assert not (tmp_path / "r.html").exists()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed")
def test_the_page_renders_in_a_headless_browser(page, tmp_path):
    html_path, shot = tmp_path / "report.html", tmp_path / "shot.png"
    html_path.write_text(page)
    result = subprocess.run([_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                             "--window-size=1280,2400", f"--screenshot={shot}", html_path.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert shot.exists(), result.stderr
    image = Image.open(shot).convert("L")
    assert image.width >= 1000 and ImageStat.Stat(image).stddev[0] > 10  # not a blank page

