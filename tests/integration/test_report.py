"""``musedrp report`` on the session's reduction, rendered in headless Chromium: what a person
opening the file sees, checked against the products and the plan."""

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
from astropy.io import fits
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from .conftest import IFUS, products

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("chromium and chromedriver are needed: run `make setup`")
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def page(reduced, browser, workspace):
    code, out, log = reduced
    assert code == 0, log
    html = workspace / "report.html"
    proc = subprocess.run([sys.executable, "-m", "musedrp.cli", "report", str(out), "--html",
                           str(html)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    browser.get(html.as_uri())
    browser.save_screenshot(str(workspace / "report.png"))
    return browser, out


def section(browser, anchor: str):
    return browser.find_element(By.ID, anchor)


def test_every_image_is_embedded_and_decoded(page):
    browser, _ = page
    images = browser.execute_script(
        "return [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, "
        "i.src.slice(0, 21)])")
    # RON plot, 3 bias + 3 flat thumbnails, wavelength RMS, response, 3 cubes, the combined
    # cube, the sky spectrum, timings
    assert len(images) == 1 + 2 * len(IFUS) + 1 + 1 + 3 + 1 + 1 + 1, images
    for alt, complete, width, src in images:
        assert complete and width > 0, alt
        assert src == "data:image/png;base64", alt  # self-contained: nothing fetched
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0


def test_outcome_and_failures(page):
    browser, out = page
    plan = json.loads((out / "plan.json").read_text())
    n = len(plan["orders"])
    assert browser.find_element(By.ID, "outcome").text.startswith(
        f"{n} jobs: {n} succeeded, 0 failed")
    assert section(browser, "no-failures").text == "No job failed."


def test_read_noise_table_matches_the_master_biases(page):
    browser, out = page
    rows = section(browser, "detectors-read-noise-and-bias-level").find_elements(
        By.CSS_SELECTOR, "table.detectors tr")[1:]
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows] == [
        f"{i:02d}" for i in IFUS]
    masters = sorted(products(out, "bias", "MASTER_BIAS-*.fits"), key=lambda p: p.name)
    for row, path in zip(rows, masters, strict=True):
        shown = [float(c.text) for c in row.find_elements(By.TAG_NAME, "td")[1:5]]
        header = fits.getheader(path)
        assert shown == pytest.approx([header[f"ESO QC BIAS MASTER{p} RON"]
                                       for p in range(1, 5)], rel=1e-3)


def test_each_exposure_gets_its_eso_score(page):
    browser, out = page
    rows = section(browser, "exposures-eso-score").find_elements(By.CSS_SELECTOR,
                                                                 "table.scores tr")[1:]
    cells = [[c.text for c in r.find_elements(By.TAG_NAME, "td")] for r in rows]
    plan = json.loads((out / "plan.json").read_text())
    assert sorted(c[0] for c in cells) == sorted(
        f["name"] for f in plan["frames"] if f["tag"] == "OBJECT" and f["status"] == "used")
    for name, arc, *rest in cells:
        assert arc.startswith("yes (") and float(arc[5:].split()[0]) < 1.5, (name, arc)
        assert rest[:2] == ["yes", "yes"]  # twilight used; a SKY exposure
        assert re.fullmatch(r"yes \((\d+)\+ stars matched\)", rest[2]), rest


def test_alignment_against_the_simulated_offsets(page):
    """The offsets table shows each exposure's measured and simulated offsets: the error
    column is what test_science checks (0.05 arcsec)."""
    browser, _ = page
    rows = section(browser, "alignment-of-the-exposures").find_elements(
        By.CSS_SELECTOR, "table.offsets tr")[1:]
    assert len(rows) == 3
    for r in rows:
        cells = [c.text for c in r.find_elements(By.TAG_NAME, "td")]
        assert float(cells[-1]) < 0.05, cells


def test_a_single_night_has_no_trend_yet(page):
    browser, _ = page
    trends = section(browser, "qc-over-nights")
    assert "nothing to compare yet" in trends.text
    assert trends.find_elements(By.TAG_NAME, "img") == []


def test_wavelength_rms_is_shown_per_ifu(page):
    browser, _ = page
    rows = section(browser, "wavelength-solution").find_elements(
        By.CSS_SELECTOR, "table.wavecal tr")[1:]
    assert len(rows) == len(IFUS)
    for row in rows:
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert cells[1] == "48"  # slices
        assert 0 < float(cells[3]) < 10  # max fit RMS in mÅ (test_cascade: < 0.01 Å)


def test_decisions_and_frames_are_listed(page):
    browser, out = page
    plan = json.loads((out / "plan.json").read_text())
    items = section(browser, "association-decisions").find_elements(By.CSS_SELECTOR,
                                                                     "#decisions li")
    assert [i.text for i in items] == plan["decisions"]
    assert any("standard star SIMSTD1" in i.text and "same night" in i.text for i in items)
    frames = section(browser, "association-decisions").find_elements(
        By.CSS_SELECTOR, "table.frames tr")[1:]
    assert len(frames) == len(plan["frames"])
    fast = [r for r in frames if "read-out mode FAST" in r.text]
    assert len(fast) == 22 and all(" rejected " in r.text for r in fast)  # biases and flats


def test_job_table_has_every_job_with_its_memory(page):
    browser, out = page
    rows = section(browser, "job-timings-and-memory").find_elements(
        By.CSS_SELECTOR, "table.jobs tr")[1:]
    manifests = list(out.glob("products/*/*/*/*/manifest.json"))
    assert len(rows) == len(manifests)
    peak = max(json.loads(m.read_text())["run"]["peak_rss_bytes"] for m in manifests) / 1e9
    shown = max(float(r.find_elements(By.TAG_NAME, "td")[5].text) for r in rows)
    assert shown == pytest.approx(peak, rel=1e-3)


@pytest.fixture(scope="module")
def history_page(history, browser, workspace):
    """The report of the monitoring history (conftest ``history``: ten nights, two drifts)."""
    html = workspace / "history-report.html"
    proc = subprocess.run([sys.executable, "-m", "musedrp.cli", "report", str(history),
                           "--html", str(html)], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    browser.get(html.as_uri())
    qc = subprocess.run([sys.executable, "-m", "musedrp.cli", "qc", str(history), "--night",
                         "2014-08-01:2014-08-10", "--json"], capture_output=True, text=True,
                        timeout=300, check=True)
    return browser, json.loads(qc.stdout)


def test_trend_page_plots_every_headline_key_and_every_plot_decodes(history_page):
    browser, _ = history_page
    trends = section(browser, "qc-over-nights")
    titles = [h.text for h in trends.find_elements(By.TAG_NAME, "h3")]
    images = browser.execute_script(
        "return [...document.querySelectorAll('#qc-over-nights img')].map(i => [i.complete, "
        "i.naturalWidth, i.src.slice(0, 21)])")
    assert len(images) == len(titles) > 0
    assert all(c and w > 0 and src == "data:image/png;base64" for c, w, src in images)
    assert {"bias: QC BIAS MASTER3 RON", "flat: QC FLAT MASTER INTFLUX",
            "flat: QC TRACE WIDTHS MEDIAN"} <= set(titles)
    every = browser.execute_script(
        "return [...document.images].map(i => i.complete && i.naturalWidth > 0)")
    assert all(every)


def test_trend_page_flags_what_musedrp_qc_flags(history_page):
    browser, qc = history_page
    rows = section(browser, "qc-over-nights").find_elements(By.CSS_SELECTOR,
                                                             "table.flagged tr")[1:]
    shown = {tuple(c.text for c in r.find_elements(By.TAG_NAME, "td")[:5]) for r in rows}
    groups: dict[tuple, int] = {}
    for v in qc["flagged"]:
        g = (v["night"], v["stage"], f"{v['ifu']:02d}", str(v["port"] or ""))
        groups[g] = groups.get(g, 0) + 1
    assert shown == {(*g, str(n)) for g, n in groups.items()}


def test_night_tables_mark_the_flagged_values(history_page):
    browser, _ = history_page
    rows = section(browser, "detectors-read-noise-and-bias-level").find_elements(
        By.CSS_SELECTOR, "table.detectors tr")[1:]
    marked = {(r.find_elements(By.TAG_NAME, "td")[-1].text, i)
              for r in rows for i, c in enumerate(r.find_elements(By.TAG_NAME, "td"))
              if "flagged" in c.get_attribute("class")}
    nights = [f"2014-08-{d:02d}" for d in range(1, 11)]
    assert marked == ({(n, 3) for n in nights[6:]}  # RON of port 3 from the 7th night
                      | {(n, 9) for n in nights[7:]})  # flat median from the 8th
