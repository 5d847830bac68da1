"""The Snakemake report of a tiny simulated night, opened in a real headless browser (Chromium).

The workflow runs once on a 320x240 night of 5 lights; ``snakemake --report`` writes the
self-contained HTML report; Chromium renders it (it is a React page: nothing shows without
JavaScript). A copy of the report with a small driver script appended clicks through the page as a
person would (category, then the result's view and info buttons), and the rendered DOM and a
screenshot are checked.
"""

import base64
import json
import re
import subprocess

import numpy as np
import pytest
import yaml
from conftest import ROOT, benchmarked_rules, debian_package, snakemake
from PIL import Image

pytestmark = pytest.mark.integration
TARGET = "simulated-night"
TINY = {
    "simulate": {"width": 320, "height": 240, "n_lights": 5, "n_darks": 2, "n_flats": 2, "n_bias": 2}
}
# Jobs of the tiny night that write a benchmark file: simulate_night, 11 ingest_frame, 3 masters,
# 5 calibrate_light, register, 5 warp, stack, background, deconvolve, starless.
BENCHMARKED_JOBS = 1 + 11 + 3 + 5 + 1 + 5 + 1 + 1 + 1 + 1
# Rendering waits for virtual time (timers, React), not wall-clock time; then Chromium exits.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
    "--window-size=1400,900",
]
# Clicks as a person would: the category in the menu, then the result's view (eye) button, then
# its info button (which shows the caption). Target: location.hash = "#category|result path".
DRIVER = """
window.addEventListener("load", () => {
  const [category, path] = decodeURIComponent(location.hash.slice(1)).split("|");
  const click = (el) => el.dispatchEvent(new MouseEvent("click", {bubbles: true, cancelable: true}));
  setTimeout(() => {
    click([...document.querySelectorAll("nav a")].find((a) => a.textContent.trim() === category));
    setTimeout(() => {
      const row = [...document.querySelectorAll("nav tr")].find((tr) => tr.textContent.includes(path));
      const [view, info] = row.querySelectorAll("a");
      click(view);
      setTimeout(() => click(info), 200);
    }, 200);
  }, 200);
});
"""


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    tiny = base / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(TINY))
    work = base / "work"
    configs = ("--configfile", str(ROOT / "config.yaml"), str(tiny))
    snakemake(work, "--cores", "2", *configs)
    report = snakemake(work, "--report", "report.html", *configs)
    (base / "report.log").write_text(report.stdout)
    return work


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium, installed with apt-get when missing on a root Debian machine."""
    return debian_package("chromium", "chromium", "fonts-liberation")


def report_results(work):
    """The report's embedded results: path -> entry (name, caption, mime type, data URI...)."""
    page = (work / "report.html").read_text()
    match = re.search(r"^\s*var results = (\{.*\});\s*$", page, flags=re.M)
    return json.loads(match.group(1))


def data_uri_bytes(uri):
    header, _, payload = uri.partition(",")
    assert header.endswith(";base64"), header
    return base64.b64decode(payload)


def render(chromium, page, tmp_path, *extra, fragment=""):
    """Run headless Chromium on a page with a fresh profile; returns its stdout."""
    proc = subprocess.run(
        [
            chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *extra,
            page.as_uri() + fragment,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def driven_page(work, tmp_path):
    """A copy of the report with the driver script appended."""
    page = tmp_path / "driven.html"
    report = (work / "report.html").read_text()
    end = report.rindex("</body>")
    page.write_text(report[:end] + f"<script>{DRIVER}</script>" + report[end:])
    return page


def app_markup(dom):
    """The rendered #app element of a dumped DOM, without the embedded scripts."""
    app = dom[dom.index('<div id="app">'):]
    return re.sub(r"<script.*?</script>", "", app, flags=re.S)


def visible_text(markup):
    return " ".join(re.sub(r"<[^>]+>", " ", markup).split())


def test_runtimes_cover_every_benchmarked_rule(night):
    table = (night / "results" / "runtimes.tsv").read_text().splitlines()
    rows = [dict(zip(table[0].split("\t"), line.split("\t"))) for line in table[1:]]
    assert len(rows) == BENCHMARKED_JOBS
    # sky_flat runs only for targets without flat frames; this night has them. drizzle runs only
    # with drizzle.enabled (tests/test_workflow_drizzle.py)
    assert {row["rule"] for row in rows} == benchmarked_rules() - {"sky_flat", "drizzle"}
    assert all(float(row["s"]) > 0 and float(row["cpu_time"]) >= 0 for row in rows)
    assert {row["job"] for row in rows if row["rule"] == "stack"} == {TARGET}


def test_effective_config_holds_the_overrides_and_the_defaults(night):
    config = yaml.safe_load((night / "results" / "config.yaml").read_text())
    assert config["simulate"] == {**config["simulate"], **TINY["simulate"]}
    assert list(config["targets"]) == [TARGET]
    defaults = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert config["stacking"] == defaults["stacking"]
    assert "width: 320" in (night / "results" / "config.html").read_text()


def test_report_embeds_the_images_the_config_and_the_runtimes(night):
    results = report_results(night)
    expected = {
        f"results/{TARGET}/stack.png": "image/png",
        f"results/{TARGET}/rejection.png": "image/png",
        f"results/{TARGET}/rejection_low.png": "image/png",
        f"results/{TARGET}/rejection_high.png": "image/png",
        f"results/{TARGET}/quality.png": "image/png",
        f"results/{TARGET}/corrected.png": "image/png",
        f"results/{TARGET}/deconvolved.png": "image/png",
        f"results/{TARGET}/deconvolution.png": "image/png",
        f"results/{TARGET}/starless.png": "image/png",
        f"results/{TARGET}/stars.png": "image/png",
        f"results/{TARGET}/starless_crops.png": "image/png",
        f"results/{TARGET}/frames.csv": "text/csv",
        "results/runtimes.png": "image/png",
        "results/runtimes.tsv": "text/tab-separated-values",
        "results/config.html": "text/html",
    }
    assert {path: entry["mime_type"] for path, entry in results.items()} == expected
    for path, entry in results.items():
        assert data_uri_bytes(entry["data_uri"]) == (night / path).read_bytes(), path
        assert entry["caption"].strip(), f"{path} has no caption"
    assert "FWHM" in results[f"results/{TARGET}/quality.png"]["caption"]
    # docutils reports caption problems (and clashes with the report's own link names) this way
    assert "(WARNING/" not in (night.parent / "report.log").read_text()


def test_report_renders_in_chromium(night, chromium, tmp_path):
    dom = render(chromium, night / "report.html", tmp_path, "--dump-dom")
    text = visible_text(app_markup(dom))
    # the menu lists both categories; the landing page shows the workflow description
    assert re.search(rf"Results\s+run\s+{TARGET}", text), text[:2000]
    assert "the quality of every light through the night" in text


@pytest.mark.parametrize(
    "category,path",
    [
        (TARGET, f"results/{TARGET}/stack.png"),
        (TARGET, f"results/{TARGET}/rejection.png"),
        (TARGET, f"results/{TARGET}/quality.png"),
        (TARGET, f"results/{TARGET}/starless.png"),
        (TARGET, f"results/{TARGET}/deconvolution.png"),
        ("run", "results/runtimes.png"),
        ("run", "results/config.html"),
    ],
)
def test_clicking_a_result_shows_it_with_its_caption(night, chromium, tmp_path, category, path):
    page = driven_page(night, tmp_path)
    markup = app_markup(
        render(chromium, page, tmp_path, "--dump-dom", fragment=f"#{category}|{path}")
    )
    entry = report_results(night)[path]
    element = "iframe" if entry["mime_type"] == "text/html" else "img"
    shown = re.findall(rf'<{element}[^>]*\bsrc="([^"]+)"', markup)
    assert entry["data_uri"] in shown, f"{path} is not displayed ({len(shown)} {element}s)"
    caption = visible_text(entry["caption"])
    assert caption[:60] in visible_text(markup)


def test_screenshot_of_the_quality_plot_is_not_blank(night, chromium, tmp_path):
    page = driven_page(night, tmp_path)
    shot = tmp_path / "quality-in-report.png"
    render(
        chromium, page, tmp_path, f"--screenshot={shot}",
        fragment=f"#{TARGET}|results/{TARGET}/quality.png",
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (900, 1400, 3)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    # the menu on the left is the report's dark slate; the plot on the right has its red marks
    menu, plot = pixels[:, :400], pixels[:, 600:]
    assert (menu.sum(axis=2) < 400).mean() > 0.5, "the report's menu did not render"
    assert (plot.sum(axis=2) < 600).mean() > 0.01, "the plot area is empty"
    rejected_marks = (red > 180) & (green < 80) & (blue < 80)
    assert rejected_marks[:, 600:].sum() > 50, "the rejected frames' red marks are not visible"
    print(f"screenshot: {shot}")
