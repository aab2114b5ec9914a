"""Choices that must hold on real nights, run through the real recipes: the log's memory case
(only 5 of the 7 skyflats fit) reduced to the cubes, and a night of calibrations only.

Both reduce into a copy of the session's output (hard links), so the jobs they share with it
are answered from its manifests and only what the choice changes is run again; the copies
are removed after each test.
"""

import json
import shutil

import pytest

from musedrp.services.scipost.spec import SPEC as SCIPOST
from musedrp.services.twilight.spec import SPEC as TWILIGHT

from .conftest import IFUS

pytestmark = pytest.mark.integration



def test_only_five_of_seven_skyflats_fit_and_the_night_still_ends_in_cubes(night, reduce_copy):
    raw, truth = night
    # the budget of the log: room for 5 skyflats and the ILLUM in muse_twilight, not 6; the
    # largest other job (scipost over 3 IFUs, 3.2 GB) still fits
    budget = 3.25
    assert TWILIGHT.memory.estimate_gb(6, len(IFUS)) <= budget \
        < TWILIGHT.memory.estimate_gb(7, len(IFUS))
    assert SCIPOST.memory.estimate_gb(0, len(IFUS)) <= budget
    code, out, log = reduce_copy("reduced-5-of-7", raw, "--memory", str(budget))
    assert code == 0, log
    assert f"only 5 of 7 skyflats fit the memory budget of {budget:.1f} GB" in log
    assert "memory budget 3.2 GB (--memory)" in (out / "plan.txt").read_text()
    plan = json.loads((out / "plan.json").read_text())
    (twilight,) = [o for o in plan["orders"] if o["stage"] == "twilight"]
    tags = [i["tag"] for i in twilight["inputs"] if not i["job_key"]]
    assert tags.count("SKYFLAT") == 5 and tags.count("ILLUM") == 1
    assert twilight["memory_gb"] <= budget  # admitted with the estimate it was capped with
    scipost = [o for o in plan["orders"] if o["stage"] == "scipost"]
    assert len(scipost) == sum(1 for f in truth.frames if f["kind"] == "object")
    # three exposures of three IFUs (8.14 GB) fit 3.25 GB in 9 wavelength pieces, stitched
    stages = [o["stage"] for o in plan["orders"]]
    assert stages.count("combine") == 9 and stages.count("stitch") == 1
    assert any("in 9 wavelength pieces" in d for d in plan["decisions"])
    for o in scipost:
        cube = next(out.glob(f"products/*/scipost/*/{o['job_key']}/DATACUBE_FINAL.fits"))
        assert cube.stat().st_size > 0
    assert " cached " in log  # bias, flat, wavecal, lsf: the session's own jobs


def test_a_night_of_calibrations_alone_gives_its_masters(night, workspace, reduce_copy):
    raw, truth = night
    calib = workspace / "calibrations-only"
    shutil.rmtree(calib, ignore_errors=True)
    calib.mkdir()
    wanted = [f["file"] for f in truth.frames
              if (f["kind"] == "bias")
              or (f["kind"] == "flat" and f["readout"] == "SCI1.0" and f["mode"] == "WFM-NOAO-N"
                  and f["tpl_start"].startswith("2014-08-02T10"))
              or f["kind"] == "arc"]
    for name in wanted:
        (calib / name).symlink_to(raw / name)
    code, out, log = reduce_copy("reduced-calibrations", calib, "--ifus", "1", "--static-dir",
                                 str(raw / "static"))
    assert code == 0, log
    plan = json.loads((out / "plan.json").read_text())
    assert sorted(o["stage"] for o in plan["orders"]) == ["bias", "flat", "lsf", "wavecal"]
    assert any("no science frames: the night's calibrations alone" in d
               for d in plan["decisions"])
    fast = [f for f in plan["frames"] if f["status"] == "rejected"]
    assert len(fast) == 11 and all(any("binned read-out" in w for w in f["why"]) for f in fast)
    for stage, name in (("bias", "MASTER_BIAS-01.fits"), ("flat", "MASTER_FLAT-01.fits"),
                        ("wavecal", "WAVECAL_TABLE-01.fits"), ("lsf", "LSF_PROFILE-01.fits")):
        (o,) = [o for o in plan["orders"] if o["stage"] == stage]
        directory = next(out.glob(f"products/*/{stage}/*/{o['job_key']}"))
        assert (directory / name).exists()
        qc = json.loads((directory / "manifest.json").read_text())["qc"]
        if stage == "bias":  # the health figures the observatory watches
            assert any("QC BIAS MASTER1 RON" in k for k in qc[name])
