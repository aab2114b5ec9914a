"""``musedrp report`` on the session's reduction, rendered in headless Chromium: what a person
opening the file sees, checked against the products and the plan."""

import json
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
    # RON plot, 3 bias + 3 flat thumbnails, wavelength RMS, response, 3 cubes, timings
    assert len(images) == 1 + 2 * len(IFUS) + 1 + 1 + 3 + 1, images
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
