"""`edgesplit report`: one self-contained HTML page from the JSON files real stages wrote into a run folder."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from rich.console import Console
from typer.testing import CliRunner

from edgesplit.cli import app
from edgesplit.errors import EdgesplitError
from edgesplit.model.graph import trace
from edgesplit.model.intake import load_model
from edgesplit.plan.schema import load_plan
from edgesplit.privacy.audit import AuditSettings, resolve_cuts, run_audit
from edgesplit.privacy.defenses import parse_defenses
from edgesplit.pipeline import RunConfig, run_pipeline
from edgesplit.report import build_report, find_png, write_report
from test_cli import assert_user_error, edgesplit

pytestmark = pytest.mark.usefixtures("one_thread")

TOKEN = "report-test-token-0123456789"
WHEN = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
IMG = re.compile(r"<img\b[^>]*>")
SRC = re.compile(r'\bsrc="([^"]*)"')
TIME = re.compile(r"<time [^>]*>[^<]*</time>")
SECTION_HEADINGS = ["Training", "Profile", "Plan", "Compression", "Privacy audit", "Split", "Split inference run"]
# A pipeline run small enough for a test: every stage but serving and the audit, two targets in the config's order.
TINY_RUN = RunConfig.model_validate({
    "title": "tiny <run> & co", "model": "small_cnn", "data": "digits", "train": {"epochs": 1},
    "targets": [{"name": "rpi4-lte", "device": "rpi4", "link": "lte"},
                {"name": "mcu-ethernet", "device": "mcu", "link": "ethernet:up=100,down=100"}],
    "codecs": ["fp32", "int8"], "keep_input": True, "profile_runs": 2,
    "compress": {"codecs": ["int8"], "bottleneck": None, "eval_limit": 100}, "serve": None, "audit": None})


def cli(*args: object) -> None:
    """Run a verb in this process (the stages' real code and JSON, without a subprocess's start-up)."""
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def infer_json(plan_path: Path, out: Path) -> None:
    """A real split inference run against a server on a thread, written as `edgesplit infer --json` writes it."""
    from edgesplit.runtime.client import Client
    from edgesplit.runtime.infer import load_inputs, run_inference
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


@pytest.fixture(scope="module")
def piped(tmp_path_factory) -> Path:
    """A real `edgesplit run` of TINY_RUN: its run.json, the stages' files and the report.html it wrote."""
    out = tmp_path_factory.mktemp("piped")
    run_pipeline(TINY_RUN, out, Console(file=io.StringIO(), width=160), progress=False)
    return out


@pytest.fixture(scope="module")
def piped_page(piped) -> str:
    return build_report(piped, generated=WHEN)


def section(page: str, anchor: str) -> str:
    """One <section> of the page, by its id."""
    start = page.index(f'<section id="{anchor}">')
    return page[start:page.index("</section>", start)]


def text(fragment: str) -> str:
    """What a fragment of HTML reads as: tags dropped, entities decoded, white space collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", fragment)))


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
    assert (f'<span class="nw">{psnr["mean"]:.1f}</span> <span class="ci">[{psnr["low"]:.1f}, '
            f'{psnr["high"]:.1f}]</span>') in page
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


def test_plan_labels_keep_their_brackets(page, run):
    plan = load_plan(run / "plan.json")
    shown = text(section(page, "plan"))
    assert f"Plan — small_cnn: {plan.device.spec} → {plan.link.spec} → {plan.server.spec}" in text(page)
    bracketed = [e.label for e in plan.ranked[:10] if "[" in e.label]
    assert bracketed and all(label in shown for label in bracketed)  # e.g. "cut 3 after conv1_2 [int8]"
    # The label breaks only before its bracket, never inside "cut 3 after conv1_2".
    head, _, codec = bracketed[0].partition(" [")
    assert f'<span class="nw">{html.escape(head)}</span> <span class="nw">[{html.escape(codec)}</span>' in page


def stage_rows(page: str) -> list[str]:
    """The rows of the Run section's stage table, as text."""
    stages = section(page, "run")
    stages = stages[:stages.index("</table>")]
    return [text(row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", stages)][1:]


@pytest.mark.slow
def test_the_run_section_opens_the_page_with_the_whole_run(piped, piped_page):
    summary = json.loads((piped / "run.json").read_text())
    page = piped_page
    assert headings(page) == ["Run", "Training", "Profile", "Plan", "Plan", "Compression", "Split", "Other files"]
    assert 'class="note error"' not in page and "<code>run.json</code>" not in section(page, "other-files")
    # The page `edgesplit run` wrote is this one: the Run section included.
    assert TIME.sub("", (piped / "report.html").read_text()) == TIME.sub("", page)
    assert "<title>tiny &lt;run&gt; &amp; co</title>" in page  # the run's title, escaped
    # Plans in the order the config lists its targets, not in file-name order.
    assert 'from <code>plan_rpi4-lte.json</code>' in section(page, "plan")
    assert 'from <code>plan_mcu-ethernet.json</code>' in section(page, "plan-2")
    stages = summary["stages"]
    assert list(stages) == ["train", "profile small_cnn", "plan rpi4-lte", "plan mcu-ethernet", "split", "compress",
                            "plan mcu-ethernet with compress"]
    rows = stage_rows(page)
    assert len(rows) == len(stages) + 1
    for n, (row, (name, facts)) in enumerate(zip(rows, stages.items())):
        assert row.startswith(f"{n + 1}{name}{facts['seconds']:.2f}"), row
    assert rows[-1].startswith(f"total{summary['seconds']:.1f}") and f"{len(stages)} stages" in rows[-1]
    assert f"test accuracy {stages['train']['test_accuracy']:.2%}" in rows[0]
    assert f"{stages['profile small_cnn']['cuts']} candidate cuts" in rows[1]
    for n in (2, 3, 6):
        assert f"chosen: {stages[list(stages)[n]]['chosen']} (" in rows[n]
    assert "replanned below with the measured configurations" in rows[3]
    split = stages["split"]
    assert f"cut {split['cut']} after {split['after']}" in rows[4] and f"agree {split['agreement']:.2%}" in rows[4]
    assert "fewest bytes: " in rows[5] and "int8" in section(page, "run")
    # Each stage links to the section of the file it wrote; every link lands on a section.
    run_links = re.findall(r'<a class="nw" href="#([^"]+)">([^<]+)</a>', section(page, "run"))
    assert run_links == [("train", "train"), ("profile", "profile small_cnn"), ("plan", "plan rpi4-lte"),
                         ("plan-2", "plan mcu-ethernet"), ("split", "split"), ("compress", "compress"),
                         ("plan-2", "plan mcu-ethernet with compress")]
    config = dict(re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", section(page, "run")))
    config = {text(label): text(value) for label, value in config.items()}
    assert config["model"] == "small_cnn, trained here on digits (1 epoch, batch 64, lr 0.001)"
    assert config["targets"] == ("rpi4-lte: device rpi4 → link lte → server edge-gpu"
                                 "mcu-ethernet: device mcu → link ethernet:up=100,down=100 → server edge-gpu")
    assert config["codecs the planner may use"] == "fp32, int8" and config["title"] == "tiny <run> & co"
    assert config["keep input on the device"].startswith("yes: the raw input never leaves the device")
    assert config["serve"] == config["audit"] == "not run"
    assert config["compress"].startswith("codecs int8; no learned bottleneck; evaluated on up to 100 images")


def test_the_run_summary_tolerates_what_it_does_not_know(tmp_path):
    summary = {"kind": "edgesplit.run", "version": 1, "host": "lab-3", "out_dir": str(tmp_path),
               "config": {"model": "small_cnn", "future_section": {"x": 1},
                          "targets": [{"device": "rpi4", "link": "lte", "antenna": "big"}]},
               "stages": {"train": {"seconds": 1.0},  # without the facts the report knows it by
                          "quantise <all>": {"bits": 4, "layers": ["a", "b"], "ratio": 0.123456, "seconds": 0.5}},
               "seconds": 2.0}
    (tmp_path / "run.json").write_text(json.dumps(summary))
    page = build_report(tmp_path)
    assert headings(page) == ["Run"] and 'class="note error"' not in page
    assert "<title>edgesplit report: " in page
    rows = stage_rows(page)
    assert rows[0] == "1train1.00—" and rows[2].startswith("total2.0")
    assert rows[1] == '2quantise <all>0.50bits 4; layers ["a", "b"]; ratio 0.1235'
    assert "<h2>Run — small_cnn</h2>" in page and "rpi4-lte: device rpi4 → link lte" in text(page)
    # Sections the config leaves out are the stages' own defaults (RunConfig), the attacks listed as a spec.
    config = {text(label): text(value) for label, value in
              re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", section(page, "run"))}
    assert config["audit"].startswith(f"cuts all; attacks {','.join(AuditSettings().attacks)}; defenses none; ")
    # Another version: a red note, as for any other unreadable result.
    (tmp_path / "run.json").write_text(json.dumps({**summary, "version": 2}))
    assert "run summary " in section(build_report(tmp_path), "run") and "has version 2" in build_report(tmp_path)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# Headless, and quiet on the network: without the background-networking flags a sandboxed chromium tries to reach
# Google's services and, with no network, refuses connections; a fresh profile each run keeps runs independent.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1")
WIDTH = 1280
# Appended to a copy of the page (the report itself has no script): after load, what the browser made of it.
PROBE = """<script>
addEventListener("load", () => {
  const box = e => { const r = e.getBoundingClientRect();
                     return [r.left + scrollX, r.top + scrollY, r.width, r.height].map(Math.round); };
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    images: [...document.images].map(i => ({decoded: i.complete && i.naturalWidth > 0, box: box(i),
                                             hidden: i.closest("details:not([open])") !== null})),
    overflowing: [...document.querySelectorAll(".scroll")].filter(d => d.scrollWidth > d.clientWidth + 1)
                   .map(d => d.closest("section").id),
    headings: [...document.querySelectorAll("h2")].map(h => h.textContent),
    text: document.body.innerText,
    width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight});
  document.body.append(probe);
});
</script>"""


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(dir=tmp_path) as profile:
        result = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (Debian: apt-get install chromium); the "
                                                "page is checked in a real browser only where there is one")
@pytest.mark.parametrize("folder, built", [("run", "page"), ("piped", "piped_page")])
def test_the_page_renders_in_a_headless_browser(folder, built, request, tmp_path):
    """Chromium lays the page out: every plot decodes and is painted, no table overflows, every section shows."""
    run_dir, page = request.getfixturevalue(folder), request.getfixturevalue(built)
    probe_path, html_path, shot = tmp_path / "probe.html", tmp_path / "report.html", tmp_path / "shot.png"
    probe_path.write_text(page.replace("</body>", PROBE + "</body>"))
    html_path.write_text(page)
    dom = chromium(tmp_path, f"--window-size={WIDTH},1000", "--dump-dom", probe_path.as_uri()).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    seen = json.loads(html.unescape(found.group(1)))
    assert [re.sub(r" — .*", "", h) for h in seen["headings"]] == headings(page)
    assert len(seen["images"]) == len(IMG.findall(page)) >= 4
    assert all(image["decoded"] for image in seen["images"])  # every embedded PNG decoded to a real picture
    assert seen["overflowing"] == [] and seen["width"] <= WIDTH  # no table wider than the page at 1280 px
    shown = [image for image in seen["images"] if not image["hidden"]]  # per-cut grids fold away in <details>
    assert shown and all(image["box"][2] > 200 and image["box"][3] > 100 for image in shown)
    if folder == "run":
        plan = load_plan(run_dir / "plan.json")
        assert all(e.label in seen["text"] for e in plan.ranked[:10])  # brackets and all, as rendered text
        assert len(shown) == len(seen["images"]) - 2  # the audit's two per-cut grids are folded
    else:
        assert seen["text"].index("Stages") < seen["text"].rindex("Training — ")  # the run opens the page

    # The whole page in one screenshot: the requested size, not blank, and each plot painted where it was laid out.
    height = min(seen["height"], 16000)
    chromium(tmp_path, f"--window-size={WIDTH},{height}", f"--screenshot={shot}", html_path.as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.size == (WIDTH, height)
    grey = image.convert("L")
    assert ImageStat.Stat(grey).stddev[0] > 10 and len(image.getcolors(1 << 24)) > 500
    inked = sum(grey.histogram()[:128]) / (image.width * image.height)
    assert 0.01 < inked < 0.5  # text and plots, on a white page
    for placed in shown:
        x, y, w, h = placed["box"]
        if y + h <= height:
            # A real picture there, top and bottom: not an empty box, nor a PNG that decoded only in part.
            for top, bottom in ((y + 2, y + h // 2), (y + h // 2, y + h - 2)):
                assert ImageStat.Stat(grey.crop((x + 2, top, x + w - 2, bottom))).stddev[0] > 10, placed
