"""Choices that must hold on real nights: the log's memory case (only 5 of the 7 skyflats
fit), planned for the whole night and run through the real muse_twilight, and a night of
calibrations only.

The reductions run into a copy of the session's output (hard links), so the jobs they share
with it are answered from its manifests and only what the choice changes is run again; the
copies are removed after each test.
"""

import json
import re
import shutil
import subprocess
import sys

import pytest

from musedrp.services.scipost.spec import SPEC as SCIPOST
from musedrp.services.twilight.spec import SPEC as TWILIGHT

from .conftest import IFUS

pytestmark = pytest.mark.integration


def calibrations(raw, truth, into, skyflats: bool = False):
    """A raw directory of links: the science-mode biases, the flats the session's science
    used, the arcs (and the skyflats)."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir()
    for f in truth.frames:
        if ((f["kind"] == "bias")
                or (f["kind"] == "flat" and f["readout"] == "SCI1.0"
                    and f["mode"] == "WFM-NOAO-N" and f["tpl_start"].startswith("2014-08-02T10"))
                or f["kind"] == "arc" or (skyflats and f["kind"] == "skyflat")):
            (into / f["file"]).symlink_to(raw / f["file"])
    return into


def test_only_five_of_seven_skyflats_fit_and_the_night_is_still_planned_to_its_cubes(night):
    raw, truth = night
    # the budget of the log: room for 5 skyflats and the ILLUM in muse_twilight, not 6; the
    # largest other job (scipost over 3 IFUs, 3.2 GB) still fits
    budget = 3.25
    assert TWILIGHT.memory.estimate_gb(6, len(IFUS)) <= budget \
        < TWILIGHT.memory.estimate_gb(7, len(IFUS))
    assert SCIPOST.memory.estimate_gb(0, len(IFUS)) <= budget
    proc = subprocess.run([sys.executable, "-m", "musedrp.cli", "plan", str(raw), "--json",
                           "--memory", str(budget)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    (twilight,) = [o for o in plan["orders"] if o["stage"] == "twilight"]
    tags = [i["tag"] for i in twilight["inputs"] if not i["job_key"]]
    assert tags.count("SKYFLAT") == 5 and tags.count("ILLUM") == 1
    assert twilight["memory_gb"] <= budget  # admitted with the estimate it was capped with
    assert any(f"only 5 of 7 skyflats fit the memory budget of {budget:.1f} GB" in d
               for d in plan["decisions"])
    scipost = [o for o in plan["orders"] if o["stage"] == "scipost"]
    assert len(scipost) == sum(1 for f in truth.frames if f["kind"] == "object")
    assert all(o["memory_gb"] <= budget for o in plan["orders"])
    # three exposures of three IFUs (8.14 GB) fit 3.25 GB in 9 wavelength pieces, stitched
    stages = [o["stage"] for o in plan["orders"]]
    assert stages.count("combine") == 9 and stages.count("stitch") == 1
    assert any("in 9 wavelength pieces" in d for d in plan["decisions"])


def test_five_of_seven_skyflats_make_the_twilight_cube(night, workspace, reduce_copy):
    """The capped set through the real muse_twilight, on the calibrations and skyflats alone
    (no science, so no ILLUM: room for 5 skyflats, not 6); the masters come from the
    session's reduction."""
    raw, truth = night
    budget = 3.0
    assert TWILIGHT.memory.estimate_gb(5, len(IFUS)) <= budget \
        < TWILIGHT.memory.estimate_gb(6, len(IFUS))
    sub = calibrations(raw, truth, workspace / "raw-skyflats", skyflats=True)
    code, out, log = reduce_copy("reduced-5-of-7", sub, "--static-dir", str(raw / "static"),
                                 "--memory", str(budget))
    assert code == 0, log
    assert f"only 5 of 7 skyflats fit the memory budget of {budget:.1f} GB" in log
    plan = json.loads((out / "plan.json").read_text())
    (twilight,) = [o for o in plan["orders"] if o["stage"] == "twilight"]
    tags = [i["tag"] for i in twilight["inputs"] if not i["job_key"]]
    assert tags.count("SKYFLAT") == 5 and "ILLUM" not in tags
    assert next(out.glob(f"products/*/twilight/*/{twilight['job_key']}/TWILIGHT_CUBE.fits"))
    # only the twilight ran: bias, flat, wavecal and lsf of every IFU are the session's jobs
    assert re.findall(r"\] succeeded (\w+)", log) == ["twilight"], log
    cached = re.findall(r"\] cached +(\w+)", log)
    assert sorted(cached) == sorted(["bias", "flat", "wavecal", "lsf"] * len(IFUS)), log


def test_a_night_of_calibrations_alone_gives_its_masters(night, workspace, reduce_copy):
    raw, truth = night
    calib = calibrations(raw, truth, workspace / "calibrations-only")
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
