"""The QC report on a hand-made output directory: a succeeded, a failed and a skipped job.
(The report of a real reduction, rendered in Chromium: tests/integration/test_report.py.)"""

import json
from pathlib import Path

import pytest

from musedrp import qcreport

from ..conftest import job_key


def order(stage: str, name: str, needs: tuple[str, ...] = ()) -> dict:
    return {"stage": stage, "recipe": f"muse_{stage}", "job_key": job_key(name),
            "night": "2014-08-01", "setup": "WFM", "ifu": 1, "inputs": [], "params": {},
            "memory_gb": 2.5, "timeout_s": 600, "needs": [job_key(n) for n in needs],
            "reasons": [], "products": []}


@pytest.fixture
def out(tmp_path: Path) -> Path:
    orders = [order("bias", "b1"), order("flat", "f1", ("b1",)), order("wavecal", "w1", ("f1",))]
    (tmp_path / "plan.json").write_text(json.dumps({
        "raw_dir": "/raw", "decisions": ["FAST biases left out: read-out mode differs"],
        "orders": orders,
        "frames": [{"name": "MUSE.1.fits", "tag": "BIAS", "night": "2014-08-01",
                    "status": "used", "why": ["b1"]},
                   {"name": "MUSE.2.fits", "tag": "BIAS", "night": "2014-08-01",
                    "status": "rejected", "why": ["read-out mode FAST"]}]}))
    bias = tmp_path / "products/2014-08-01/bias/WFM" / job_key("b1")
    bias.mkdir(parents=True)
    qc = {f"QC BIAS MASTER{p} RON": 2.0 + p / 10 for p in range(1, 5)}
    (bias / "manifest.json").write_text(json.dumps({
        "written": "2014-08-02T10:00:30+00:00", "products": {"MASTER_BIAS-01.fits": "MB"},
        "qc": {"MASTER_BIAS-01.fits": qc}, "qc_plots": [],
        "run": {"wall_s": 30.0, "cpu_user_s": 25.0, "cpu_sys_s": 4.0,
                "peak_rss_bytes": 2_520_000_000, "n_warnings": 0}}))
    flat = tmp_path / "products/2014-08-01/flat/WFM" / job_key("f1")
    flat.mkdir(parents=True)
    (flat / "error.txt").write_text("muse_flat exited with 1: no usable flat field\n")
    (flat / "esorex.log").write_text("line\n" * 20 + "[ ERROR ] muse_flat: the end\n")
    return tmp_path


def test_failures_name_the_job_reason_and_log(out: Path):
    page = qcreport.render(out)
    assert "3 jobs: 1 succeeded, 1 failed, 1 skipped, 0 not run." in page
    assert "flat IFU 01: failed" in page
    assert "muse_flat exited with 1: no usable flat field" in page
    assert "[ ERROR ] muse_flat: the end" in page
    assert "wavecal IFU 01: skipped" in page
    assert "upstream flat IFU 01 did not succeed" in page
    assert "No job failed" not in page


def test_qc_decisions_and_frames_are_shown(out: Path):
    page = qcreport.render(out)
    assert '<td class="num">2.1</td><td class="num">2.2</td>' in page  # RON ports 1, 2
    assert "<li>FAST biases left out: read-out mode differs</li>" in page
    assert "<td>MUSE.2.fits</td><td>BIAS</td><td>rejected</td><td>read-out mode FAST</td>" in page
    assert "No wavelength solution." in page and "No final cube." in page


def test_a_directory_without_a_plan_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="output of `musedrp reduce`"):
        qcreport.render(tmp_path)


def test_eso_score_per_exposure():
    """Arc within 1.5 days (from the ARCFILE times of the wavecal's arcs), twilight flat
    used, SKY present; aligned on stars (from the align job reading the exposure's cube)."""
    def raw(tag: str, when: str) -> dict:
        return {"tag": tag, "path": f"/raw/MUSE.{when}.fits"}

    near_arcs = order("wavecal", "w1") | {"inputs": [raw("ARC", "2014-08-01T20:00:01.500"),
                                                     raw("ARC", "2014-08-01T20:01:16.500")]}
    old_arcs = order("wavecal", "w2") | {"inputs": [raw("ARC", "2014-07-29T20:00:01.500")]}
    first = order("scibasic", "s1", ("w1",)) | {"inputs": [
        raw("OBJECT", "2014-08-02T03:05:01.500"), {"tag": "TWILIGHT_CUBE", "path": "/t.fits"}]}
    second = order("scibasic", "s2", ("w2",)) | {"inputs": [
        raw("OBJECT", "2014-08-02T04:00:01.500")]}
    jobs = [qcreport.Job(o, Path("/x"), "succeeded", {})
            for o in (near_arcs, old_arcs, first, second)]
    page = qcreport.scores(jobs)
    assert page.count("<tr>") == 3  # header and two exposures
    single = "not aligned (single exposure)"
    assert f"<td>yes (0.30 d)</td><td>yes</td><td>NO</td><td>{single}</td>" in page
    assert f"<td>NO (3.33 d)</td><td>NO</td><td>NO</td><td>{single}</td>" in page
    sky = order("scibasic", "s3") | {"inputs": [raw("SKY", "2014-08-02T05:00:01.500")]}
    page = qcreport.scores([*jobs, qcreport.Job(sky, Path("/x"), "succeeded", {})])
    assert page.count(f"<td>yes</td><td>yes</td><td>{single}</td>") == 1
    cubes = [order("scipost", "p1", ("s1",)), order("scipost", "p2", ("s2",))]
    matched = {"qc": {"OFFSET_LIST.fits": {"MUSEDRP ALIGN METHOD": "muse_exp_align",
                                           "QC EXPALIGN NMATCH MIN": 14}}}
    fallback = {"qc": {"OFFSET_LIST.fits": {"MUSEDRP ALIGN METHOD": "header",
                                            "MUSEDRP ALIGN REASON": "no stars"}}}
    for manifest, shown in ((matched, "yes (14+ stars matched)"),
                            (fallback, "NO (header offsets: no stars)")):
        align = qcreport.Job(order("align", "a1", ("p1", "p2")), Path("/x"), "succeeded",
                             manifest)
        page = qcreport.scores([*jobs, *(qcreport.Job(c, Path("/x"), "succeeded", {})
                                         for c in cubes), align])
        assert page.count(f"<td>{shown}</td>") == 2


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"night": "x"}'])
def test_a_truth_file_that_is_not_the_simulators_is_ignored(tmp_path, text):
    (tmp_path / "truth.json").write_text(text)
    scibasic = order("scibasic", "s1") | {"inputs": [
        {"tag": "OBJECT", "path": str(tmp_path / "MUSE.2014-08-02T03:05:01.500.fits")}]}
    assert qcreport._truth([qcreport.Job(scibasic, tmp_path, "succeeded", {})]) is None
