"""Association rules for bias and flat: setup filter, templates, closest in time, ties."""

import random
from pathlib import Path

import pytest

from musedrp.errors import NoWork
from musedrp.frames import classify_file
from musedrp.planner import job_key, plan_night
from musedrp.tags import Tag

FLAT = {"DPR.TYPE": "FLAT,LAMP", "TPL.ID": "MUSE_wfm_cal_specflat"}
FAST = {"DET.READ.CURID": 2, "DET.READ.CURNAME": "FAST", "DET.BINY": 4}
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


def plan(frames, **kw):
    return plan_night(frames, Path("/out"), "2.8.7", **kw)


def chosen(p, stage):
    return {Path(f.path).name for o in p.orders if o.stage == stage
            for f in o.inputs if not f.job_key}


def test_fast_readout_rejected_with_reason(template, science):
    sci_bias, fast_bias = template(56870.75), template(56870.76, keys=FAST)
    frames = sci_bias + fast_bias + template(56870.8, keys=FLAT) + science()
    p = plan(frames)
    assert chosen(p, "bias") == {Path(f.path).name for f in sci_bias}
    for f in fast_bias:
        status, why = p.status(f)
        assert status == "rejected"
        assert "read-out mode FAST (CURID=2, 1x4 binning) differs" in why[0]
        assert "muse_bias refuses mixed read-out modes" in why[0]


def test_closest_flat_template_wins(template, science):
    early = template(56870.80, keys=FLAT)  # 7.2 h before the science
    late = template(56871.35, keys=FLAT)  # 6.0 h after: closer
    p = plan(template(56870.75) + early + late + science())
    assert chosen(p, "flat") == {Path(f.path).name for f in late}
    status, why = p.status(early[0])
    assert status == "rejected" and "closer in time to the science (6.0 h vs 7.2 h)" in why[0]


def test_ties_are_broken_deterministically(template, science):
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


def test_complete_template_preferred_over_closer_incomplete_one(template, science):
    complete = template(56870.60)
    incomplete = template(56871.05, n=3, nexp=4)
    p = plan(complete + incomplete + template(56870.8, keys=FLAT) + science())
    assert chosen(p, "bias") == {Path(f.path).name for f in complete}
    assert not any(d.startswith("DEGRADED") for d in p.decisions)


def test_incomplete_template_used_only_as_degraded(template, science):
    incomplete = template(56870.75, n=3, nexp=4)
    p = plan(incomplete + template(56870.8, keys=FLAT) + science())
    assert chosen(p, "bias") == {Path(f.path).name for f in incomplete}
    assert any(d.startswith("DEGRADED") for d in p.decisions)


def test_too_few_frames_means_no_job(template, science):
    two = template(56870.75, n=2)
    p = plan(two + template(56870.8, keys=FLAT) + science())
    assert p.orders == []
    assert "fewer than the 3 frames muse_bias needs" in p.status(two[0])[1][0]
    assert any("no usable BIAS" in d for d in p.decisions)


def test_flat_must_match_instrument_mode_but_bias_need_not(template, science):
    ao = {"INS.MODE": "WFM-AO-N"}
    bias_ao = template(56870.75, keys=ao)
    flat_ao = template(56870.8, keys={**FLAT, **ao})
    flat_noao = template(56870.5, keys=FLAT)
    p = plan(bias_ao + flat_ao + flat_noao + science())
    assert chosen(p, "bias") == {Path(f.path).name for f in bias_ao}
    assert chosen(p, "flat") == {Path(f.path).name for f in flat_noao}
    assert "instrument mode WFM-AO-N differs" in p.status(flat_ao[0])[1][0]


def test_flat_needs_the_bias_of_its_ifu(template, science):
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


def test_missing_ifu_is_reported(template, science):
    p = plan(template(56870.75, ifus=(1, 2)) + template(56870.8, keys=FLAT, ifus=(1,))
             + science(ifus=(1, 2)), ifus=[1, 2])
    assert {o.ifu for o in p.orders} == {1}
    assert any("IFU(s) [2] requested but not present" in d for d in p.decisions)


def test_no_science_is_no_work(template):
    with pytest.raises(NoWork, match="no science frames"):
        plan(template(56870.75) + template(56870.8, keys=FLAT))


def test_job_key_depends_on_content_not_order(template, science):
    frames = template(56870.75) + template(56870.8, keys=FLAT) + science()
    a = plan(frames)
    b = plan(list(reversed(frames)))
    assert [o.job_key for o in a.orders] == [o.job_key for o in b.orders]
    c = plan(frames, overrides={"bias": {"combine": "median"}})
    assert c.orders[0].job_key != a.orders[0].job_key
    assert c.orders[0].params["combine"] == "median"
    assert c.orders[1].job_key != a.orders[1].job_key  # the flat's bias changed too
    assert job_key("muse_bias", "2.8.7", 1, {}, []) != job_key("muse_bias", "2.8.8", 1, {}, [])


def test_unknown_parameter_is_an_error(template, science):
    frames = template(56870.75) + template(56870.8, keys=FLAT) + science()
    with pytest.raises(ValueError, match="nosuchoption"):
        plan(frames, overrides={"bias": {"nosuchoption": 1}})


def test_job_key_follows_content_of_same_named_frames(template, science):
    """Two simulations with different seeds share file names but not DATASUMs."""
    frames = template(56870.75) + template(56870.8, keys=FLAT) + science()
    other = [f.model_copy(update={"datasums": {1: "12345"}}) if f.tag == Tag.BIAS else f
             for f in frames]
    a, b = plan(frames), plan(other)
    assert a.orders[0].job_key != b.orders[0].job_key
    assert {f.datasum for f in b.orders[0].inputs} == {"12345"}
