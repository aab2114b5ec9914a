"""Frames for planning tests: calibration templates and science exposures."""

import pytest

from musedrp.frames import classify_file

SCIENCE_MJD = 56871.10


@pytest.fixture
def template(make_frame):
    """A template of ``n`` frames (of ``nexp`` announced) starting at ``mjd``."""
    def make(mjd: float, n: int = 3, nexp: int | None = None, keys=None, ifus=(1,)):
        start = f"T{mjd:.4f}"
        return [classify_file(make_frame({**(keys or {}), "MJD-OBS": mjd + i / 1440,
                                          "TPL.START": start, "TPL.NEXP": nexp or n,
                                          "TPL.EXPNO": i + 1}, ifus=ifus))
                for i in range(n)]
    return make


@pytest.fixture
def science(make_frame):
    def make(mjd: float = SCIENCE_MJD, ifus=(1,), keys=None):
        return [classify_file(make_frame({"DPR.CATG": "SCIENCE", "DPR.TYPE": "OBJECT",
                                          "TPL.ID": "MUSE_wfm_obs_genericoffset",
                                          "TPL.START": "sci", "MJD-OBS": mjd, **(keys or {})},
                                         ifus=ifus))]
    return make


ARC = {"DPR.TYPE": "WAVE", "TPL.ID": "MUSE_wfm_cal_arc", "INS.LAMPNUM": 6,
       "INS.LAMP3.NAME": "CU-LAMP3", "INS.LAMP3.ST": True, "INS.SHUT3.ST": True}
