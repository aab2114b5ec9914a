"""The real muse_bias and muse_flat on a simulated night, checked against the truth."""

import re
import subprocess
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from musedrp import cli
from musedrp.esorex import RECIPE_DIR, SofEntry, run_recipe
from musedrp.registry import Registry
from musedrp.simulate.night import schedule, write_exposure
from musedrp.tags import Tag
from musedrp.topology import BY_NAME, STAGES

from .conftest import IFU, manifest, product

MAN = Path(__file__).parent.parent / "data" / "man"


def frames_of(truth, kind, readout, tpl_start=None):
    return {f["file"] for f in truth.frames if f["kind"] == kind and f["readout"] == readout
            and (tpl_start is None or f["tpl_start"] == tpl_start)}


def test_reduce_succeeds(reduced):
    code, out, log = reduced
    assert code == 0, log
    assert re.search(r"Jobs: (\d+) in \d+ s: \1 succeeded", log), log
    assert "11 x BIAS: read-out mode FAST" in log
    assert "muse_flat refuses mixed read-out modes" in log
    # the second instrument mode's flats are closest in time, and refused for their mode
    assert "3 x FLAT: instrument mode WFM-AO-N differs" in log


def test_bias_qc_reproduces_the_simulated_detector(reduced, night):
    _, out, _ = reduced
    ports = night[1].ports[IFU]
    h = fits.getheader(product(out, "bias", f"MASTER_BIAS-{IFU:02d}.fits"))
    for i, port in enumerate(ports, start=1):
        assert h[f"ESO QC BIAS MASTER{i} RON"] == pytest.approx(port["ron"], abs=0.1)
        assert h[f"ESO QC BIAS LEVEL{i} MEAN"] == pytest.approx(port["bias"], abs=1.0)
    assert abs(fits.getdata(product(out, "bias", f"MASTER_BIAS-{IFU:02d}.fits"), "DATA")
               .mean()) < 0.05  # overscan-corrected: no level left


def test_trace_reproduces_the_simulated_slices(reduced, night):
    _, out, _ = reduced
    table = fits.getdata(product(out, "flat", f"TRACE_TABLE-{IFU:02d}.fits"), 1)
    assert len(table) == 48
    y = 2056.0
    centres = np.array([sum(r[f"tc0_{k:02d}"] * y**k for k in range(6)) for r in table])
    np.testing.assert_allclose(centres, night[1].slice_centres_mid[IFU], atol=0.25)
    np.testing.assert_allclose(table["Width"], 75.0, atol=0.5)
    flat = fits.getheader(product(out, "flat", f"MASTER_FLAT-{IFU:02d}.fits"))
    assert flat["ESO QC FLAT MASTER NSATURATED"] == 0


def test_closest_flats_and_science_mode_frames_were_used(reduced, night):
    _, out, _ = reduced
    truth = night[1]
    bias, flat = manifest(out, "bias"), manifest(out, "flat")
    assert {i["name"] for i in bias["inputs"]} == frames_of(truth, "bias", "SCI1.0")
    morning = frames_of(truth, "flat", "SCI1.0", "2014-08-02T10:00:00")
    assert len(morning) == 11
    raw = {i["name"] for i in flat["inputs"] if i["tag"] == "FLAT"}
    assert raw == morning
    (mb,) = [i for i in flat["inputs"] if i["tag"] == "MASTER_BIAS"]
    assert mb["job_key"] == bias["job_key"]
    assert any("closest to the science" in r for r in flat["reasons"])
    # esorex's own provenance names the original frames
    h = fits.getheader(product(out, "flat", f"MASTER_FLAT-{IFU:02d}.fits"))
    named = {v for k, v in h.items() if re.fullmatch(r"ESO PRO REC1 RAW\d+ NAME", k)}
    assert named == morning
    assert h["ESO PRO REC1 CAL1 NAME"] == f"MASTER_BIAS-{IFU:02d}.fits"
    assert h["MUSEDRP JOB KEY"] == flat["job_key"]


def test_manifest_records_inputs_versions_and_cost(reduced):
    _, out, _ = reduced
    m = manifest(out, "bias")
    assert len(m["inputs"]) == 11
    assert all(i["checksum"].startswith("datasum:CHAN01:") for i in m["inputs"])
    run = m["run"]
    assert run["versions"]["muse"] == "2.8.7"
    assert run["versions"]["esorex"] and run["versions"]["cpl"]
    assert len(run["cpus"]) == 1 and run["omp_num_threads"] == 1
    assert run["command"][:3] == ["taskset", "--cpu-list", str(run["cpus"][0])]
    assert f"--nifu={IFU}" in run["command"]
    assert run["returncode"] == 0 and run["wall_s"] > 1 and run["cpu_user_s"] > 1
    assert 1.0e9 < run["peak_rss_bytes"] < 4.0e9  # 11 full-size frames of one IFU
    assert m["parameters"]["combine"] == "sigclip"
    assert m["qc"][f"MASTER_BIAS-{IFU:02d}.fits"]["QC BIAS MASTER1 RON"] > 0
    directory = product(out, "bias", f"MASTER_BIAS-{IFU:02d}.fits").parent
    assert (directory / "esorex.log").exists() and (directory / "input.sof").exists()
    assert m["qc_plots"] == [f"qc-MASTER_BIAS-{IFU:02d}.png"]
    assert (directory / m["qc_plots"][0]).stat().st_size > 10_000


def test_registry_knows_frames_jobs_and_products(reduced):
    _, out, _ = reduced
    reg = Registry.for_output(out)
    assert {j.state for j in reg.jobs()} == {"succeeded"}
    tags = {p.tag for p in reg.products()}
    assert {"MASTER_BIAS", "MASTER_FLAT", "TRACE_TABLE", "WAVECAL_TABLE", "LSF_PROFILE",
            "TWILIGHT_CUBE", "PIXTABLE_OBJECT", "PIXTABLE_STD", "STD_RESPONSE", "STD_TELLURIC",
            "DATACUBE_FINAL"} <= tags
    status = {f.name: f.status for f in reg.frames()}
    assert list(status.values()).count("used") > 22
    assert status["MUSE.2014-07-30T23:50:01.500.fits"] == "rejected"  # the older standard
    reg.close()


def test_rerun_recomputes_nothing(reduced, night):
    _, out, _ = reduced
    before = {p: p.stat().st_mtime_ns for p in out.glob("products/**/*") if p.is_file()}
    code = cli.main(["reduce", str(night[0]), "-o", str(out)])
    assert code == 0
    after = {p: p.stat().st_mtime_ns for p in out.glob("products/**/*") if p.is_file()}
    assert after == before


def test_compressed_raw_frames_give_the_same_master_bias(tmp_path):
    """Rice tile-compressed raw files (``musedrp simulate --compress``: how the 24-IFU night
    fits on disk) go to esorex as they are, and the master bias is the same to the bit."""
    biases = [e for e in schedule(date(2014, 8, 1))
              if e.kind == "bias" and e.readout[0] == "SCI1.0"][:3]
    args = [f"--nifu={IFU}", *BY_NAME["bias"].spec.params().to_esorex_args()]
    masters = []
    for compress in (False, True):
        d = tmp_path / str(compress)
        d.mkdir()
        paths = [write_exposure(e, [IFU], 7, d, compress) for e in biases]
        assert all(p.name.endswith(".fz") == compress for p in paths)
        run = run_recipe("muse_bias", [SofEntry(p, Tag.BIAS) for p in paths], args,
                         d / "work", [0], timeout_s=600)
        assert run.returncode == 0, run.errors
        masters.append(d / "work" / "products" / f"MASTER_BIAS-{IFU:02d}.fits")
    for ext in ("DATA", "STAT", "DQ"):
        assert np.array_equal(*(fits.getdata(m, ext) for m in masters))


def test_plan_explains_without_running(night, workspace, capsys):
    raw, truth = night
    # a copy of the night with a broken file beside it
    mixed = workspace / "mixed"
    mixed.mkdir()
    for f in raw.glob("*.fits"):
        (mixed / f.name).symlink_to(f)
    first = sorted(raw.glob("*.fits"))[0]
    (mixed / "MUSE.broken.fits").write_bytes(first.read_bytes()[:100_000])
    out = workspace / "planned"
    assert cli.main(["plan", str(mixed), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "FLAT template 2014-08-02T10:00:00 (11/11 frames, WFM-NOAO-N_SCI1.0) chosen" in text
    assert text.count("read-out mode FAST (CURID=2, 1x4 binning) differs") == 22
    assert re.search(r"MUSE.broken.fits\s+\?\s+unclassified\s+truncated", text)
    assert "astrometric fields are not reduced" in text
    assert not out.exists()


@pytest.mark.parametrize("stage", [s for s in STAGES if not s.spec.own], ids=lambda s: s.name)
def test_committed_man_pages_match_the_installed_pipeline(stage, tmp_path):
    """A pipeline upgrade that changes a recipe's contract fails here, not in a night."""
    recipe = stage.spec.recipe
    text = subprocess.run(["esorex", f"--recipe-dir={RECIPE_DIR}", "--man-page", recipe],
                          cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    body = lambda t: t[t.index("NAME"):]  # noqa: E731 - drop the banner and warnings
    assert body(text) == body((MAN / f"{recipe}.txt").read_text())
