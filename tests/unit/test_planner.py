"""Association rules for bias and flat: setup filter, templates, closest in time, ties."""

import random
from pathlib import Path

import pytest

from musedrp.errors import NoWork
from musedrp.frames import classify_file
from musedrp.planner import job_key, plan_night
from musedrp.tags import Tag

from .conftest import ARC, SCIENCE_MJD

FLAT = {"DPR.TYPE": "FLAT,LAMP", "TPL.ID": "MUSE_wfm_cal_specflat"}
FAST = {"DET.READ.CURID": 2, "DET.READ.CURNAME": "FAST", "DET.BINY": 4}
@pytest.fixture
def plan(template, make_frame):
    """plan_night with the arcs and the LINE_CATALOG every cascade needs added."""
    arcs = template(56870.85, keys=ARC, ifus=(1, 2, 3))
    statics = [classify_file(make_frame({"PRO.CATG": t}, ifus=(), name=f"{t.lower()}.fits"))
               for t in ("LINE_CATALOG", "GEOMETRY_TABLE", "EXTINCT_TABLE", "STD_FLUX_TABLE")]

    def run(frames, **kw):
        return plan_night([*frames, *arcs, *statics], Path("/out"), "2.8.7", **kw)
    return run


def chosen(p, stage):
    return {Path(f.path).name for o in p.orders if o.stage == stage
            for f in o.inputs if not f.job_key}


def test_fast_readout_rejected_with_reason(plan, template, science):
    sci_bias, fast_bias = template(56870.75), template(56870.76, keys=FAST)
    frames = sci_bias + fast_bias + template(56870.8, keys=FLAT) + science()
    p = plan(frames)
    assert chosen(p, "bias") == {Path(f.path).name for f in sci_bias}
    for f in fast_bias:
        status, why = p.status(f)
        assert status == "rejected"
        assert "read-out mode FAST (CURID=2, 1x4 binning) differs" in why[0]
        assert "muse_bias refuses mixed read-out modes" in why[0]


def test_closest_flat_template_wins(plan, template, science):
    early = template(56870.80, keys=FLAT)  # 7.2 h before the science
    late = template(56871.35, keys=FLAT)  # 6.0 h after: closer
    p = plan(template(56870.75) + early + late + science())
    assert chosen(p, "flat") == {Path(f.path).name for f in late}
    status, why = p.status(early[0])
    assert status == "rejected" and "closer in time to the science (6.0 h vs 7.2 h)" in why[0]


def test_ties_are_broken_deterministically(plan, template, science):
    before = template(SCIENCE_MJD - 0.3, keys=FLAT)
    after = template(SCIENCE_MJD + 0.3 - 2 / 1440, keys=FLAT)  # same mean distance
    frames = template(56870.75) + before + after + science()
    keys = set()
    for seed in range(5):
        random.Random(seed).shuffle(frames)
        p = plan(frames)
        keys.add(tuple(o.job_key for o in p.orders))
        assert chosen(p, "flat") == {Path(f.path).name for f in before}  # earlier MJD first
    assert len(keys) == 1


def test_complete_template_preferred_over_closer_incomplete_one(plan, template, science):
    complete = template(56870.60)
    incomplete = template(56871.05, n=3, nexp=4)
    p = plan(complete + incomplete + template(56870.8, keys=FLAT) + science())
    assert chosen(p, "bias") == {Path(f.path).name for f in complete}
    assert not any(d.startswith("DEGRADED") for d in p.decisions)


def test_incomplete_template_used_only_as_degraded(plan, template, science):
    incomplete = template(56870.75, n=3, nexp=4)
    p = plan(incomplete + template(56870.8, keys=FLAT) + science())
    assert chosen(p, "bias") == {Path(f.path).name for f in incomplete}
    assert any(d.startswith("DEGRADED") for d in p.decisions)


def test_too_few_frames_means_no_job(plan, template, science):
    two = template(56870.75, n=2)
    p = plan(two + template(56870.8, keys=FLAT) + science())
    assert p.orders == []
    assert "fewer than the 3 frames muse_bias needs" in p.status(two[0])[1][0]
    assert any("no usable BIAS" in d for d in p.decisions)


def test_flat_must_match_instrument_mode_but_bias_need_not(plan, template, science):
    ao = {"INS.MODE": "WFM-AO-N"}
    bias_ao = template(56870.75, keys=ao)
    flat_ao = template(56870.8, keys={**FLAT, **ao})
    flat_noao = template(56870.5, keys=FLAT)
    p = plan(bias_ao + flat_ao + flat_noao + science())
    assert chosen(p, "bias") == {Path(f.path).name for f in bias_ao}
    assert chosen(p, "flat") == {Path(f.path).name for f in flat_noao}
    assert "instrument mode WFM-AO-N differs" in p.status(flat_ao[0])[1][0]


def test_flat_needs_the_bias_of_its_ifu(plan, template, science):
    ifus = (1, 2, 3)
    p = plan(template(56870.75, ifus=ifus) + template(56870.8, keys=FLAT, ifus=ifus)
             + science(ifus=ifus), ifus=[1, 3])
    bias = {o.ifu: o for o in p.orders if o.stage == "bias"}
    assert sorted(bias) == [1, 3]
    for o in p.orders:
        if o.stage == "flat":
            (mb,) = [f for f in o.inputs if f.tag == Tag.MASTER_BIAS]
            assert mb.job_key == bias[o.ifu].job_key
            assert mb.path.endswith(f"{bias[o.ifu].product_dir}/MASTER_BIAS-{o.ifu:02d}.fits")
            assert o.needs == (bias[o.ifu].job_key,)


def test_missing_ifu_is_reported(plan, template, science):
    p = plan(template(56870.75, ifus=(1, 2)) + template(56870.8, keys=FLAT, ifus=(1,))
             + science(ifus=(1, 2)), ifus=[1, 2])
    assert {o.ifu for o in p.orders} == {1}
    assert any("IFU(s) [2] requested but not present" in d for d in p.decisions)


def test_no_science_is_no_work(plan, template):
    with pytest.raises(NoWork, match="no science frames"):
        plan(template(56870.75) + template(56870.8, keys=FLAT))


def test_job_key_depends_on_content_not_order(plan, template, science):
    frames = template(56870.75) + template(56870.8, keys=FLAT) + science()
    a = plan(frames)
    b = plan(list(reversed(frames)))
    assert [o.job_key for o in a.orders] == [o.job_key for o in b.orders]
    c = plan(frames, overrides={"bias": {"combine": "median"}})
    assert c.orders[0].job_key != a.orders[0].job_key
    assert c.orders[0].params["combine"] == "median"
    assert c.orders[1].job_key != a.orders[1].job_key  # the flat's bias changed too
    assert job_key("muse_bias", "2.8.7", 1, {}, []) != job_key("muse_bias", "2.8.8", 1, {}, [])


def test_unknown_parameter_is_an_error(plan, template, science):
    frames = template(56870.75) + template(56870.8, keys=FLAT) + science()
    with pytest.raises(ValueError, match="nosuchoption"):
        plan(frames, overrides={"bias": {"nosuchoption": 1}})


def test_job_key_follows_content_of_same_named_frames(plan, template, science):
    """Two simulations with different seeds share file names but not DATASUMs."""
    frames = template(56870.75) + template(56870.8, keys=FLAT) + science()
    other = [f.model_copy(update={"datasums": {1: "12345"}}) if f.tag == Tag.BIAS else f
             for f in frames]
    a, b = plan(frames), plan(other)
    assert a.orders[0].job_key != b.orders[0].job_key
    assert {f.datasum for f in b.orders[0].inputs} == {"12345"}


SKYFLAT = {"DPR.TYPE": "FLAT,SKY", "TPL.ID": "MUSE_wfm_cal_skyflat"}
STD = {"DPR.TYPE": "STD", "TPL.ID": "MUSE_wfm_cal_specphot"}


def orders(p, stage):
    return [o for o in p.orders if o.stage == stage]


def test_arc_with_two_lamps_is_rejected(plan, template, science, make_frame):
    two = classify_file(make_frame({**ARC, "MJD-OBS": 56870.86, "INS.LAMP4.NAME": "CU-LAMP4",
                                    "INS.LAMP4.ST": True, "INS.SHUT4.ST": True,
                                    "TPL.START": "two"}, ifus=(1, 2, 3)))
    p = plan([*template(56870.75), *template(56870.8, keys=FLAT), two, *science()])
    assert two.lamps == ("Ne", "Xe")
    assert "2 arc lamps on (Ne, Xe): muse_wavecal needs exactly one lamp" in p.status(two)[1][0]
    (wavecal,) = orders(p, "wavecal")
    assert two.path not in {f.path for f in wavecal.inputs}
    assert {f.tag for f in wavecal.inputs} == {Tag.ARC, Tag.MASTER_BIAS, Tag.TRACE_TABLE,
                                               Tag.LINE_CATALOG}


def test_same_night_standard_wins_over_a_closer_one_of_another_night(plan, template, science,
                                                                     make_frame):
    sci_mjd = 56871.45  # 10:48 UT: still night 2014-08-01
    same = classify_file(make_frame({**STD, "MJD-OBS": 56871.0, "TPL.START": "s1",
                                     "OBS.TARG.NAME": "SAME"}, ifus=(1, 2, 3)))
    other = classify_file(make_frame({**STD, "MJD-OBS": 56871.52, "TPL.START": "s2",
                                      "OBS.TARG.NAME": "NEXT"}, ifus=(1, 2, 3)))
    assert (same.night, other.night) == ("2014-08-01", "2014-08-02")
    p = plan([*template(56870.75, ifus=(1, 2, 3)), *template(56870.8, keys=FLAT, ifus=(1, 2, 3)),
              same, other, *science(mjd=sci_mjd, ifus=(1, 2, 3))])
    (standard,) = orders(p, "standard")
    pixtables = {f.job_key for f in standard.inputs if f.tag == Tag.PIXTABLE_STD}
    std_jobs = {o.job_key for o in orders(p, "scibasic")
                if same.path in {f.path for f in o.inputs}}
    assert pixtables == std_jobs and len(std_jobs) == 3
    assert "was taken on the science night 2014-08-01" in p.status(other)[1][0]
    assert any("standard star SAME" in d and "same night" in d for d in p.decisions)


def test_skyflats_closest_in_time_that_fit_the_memory_budget(plan, template, science):
    skyflats = template(56870.95, n=7, keys=SKYFLAT)
    spec = __import__("musedrp.services.twilight.spec", fromlist=["SPEC"]).SPEC
    budget = spec.memory.estimate_gb(5, 1) + 0.05  # room for 5 of the 7
    p = plan([*template(56870.75), *template(56870.8, keys=FLAT), *skyflats, *science()],
             memory_gb=budget)
    (twilight,) = orders(p, "twilight")
    used = [f.path for f in twilight.inputs if f.tag == Tag.SKYFLAT]
    assert used == [f.path for f in skyflats[2:]]  # the last five are closest to the science
    assert twilight.memory_gb <= budget
    for f in skyflats[:2]:
        assert "only 5 of 7 skyflats fit the memory budget" in p.status(f)[1][0]
    assert any("left out: " in r and skyflats[0].name in r for r in twilight.reasons)


def test_twilight_needs_ifu_1(plan, template, science):
    ifus = (2, 3)
    p = plan([*template(56870.75, ifus=ifus), *template(56870.8, keys=FLAT, ifus=ifus),
              *template(56870.95, keys=SKYFLAT, ifus=ifus), *science(ifus=ifus)])
    assert orders(p, "twilight") == []
    assert any("muse_twilight needs IFU 1" in d for d in p.decisions)
    assert all(Tag.TWILIGHT_CUBE not in {f.tag for f in o.inputs} for o in orders(p, "scibasic"))


def test_standard_needs_three_ifus(plan, template, science, make_frame):
    std = classify_file(make_frame({**STD, "MJD-OBS": 56871.2, "TPL.START": "s"}))
    p = plan([*template(56870.75), *template(56870.8, keys=FLAT), std, *science()])
    assert orders(p, "standard") == [] and orders(p, "scipost") == []
    assert len(orders(p, "scibasic")) == 2  # the object and the standard, IFU 1
    assert any("at least 3 adjacent IFUs" in d for d in p.decisions)


def test_without_arcs_bias_and_flat_are_still_planned(template, science, make_frame):
    line_catalog = classify_file(make_frame({"PRO.CATG": "LINE_CATALOG"}, ifus=(),
                                            name="line_catalog.fits"))
    sci = science()
    p = plan_night([*template(56870.75), *template(56870.8, keys=FLAT), *sci, line_catalog],
                   Path("/out"), "2.8.7")
    assert sorted(o.stage for o in p.orders) == ["bias", "flat"]
    assert any("no usable ARC template: only bias, flat planned" in d for d in p.decisions)
    assert p.status(sci[0]) == ("rejected", [
        "not reduced: no wavelength calibration for it (see the decisions)"])
