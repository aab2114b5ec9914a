"""Association rules for bias and flat: setup filter, templates, closest in time, ties."""

import hashlib
import json
import random
from pathlib import Path

import pytest

from musedrp.errors import NoWork
from musedrp.frames import classify_file
from musedrp.messages import WorkOrder
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
    complete = template(56870.70)
    incomplete = template(56871.05, n=3, nexp=4)
    p = plan(complete + incomplete + template(56870.8, keys=FLAT) + science())
    assert chosen(p, "bias") == {Path(f.path).name for f in complete}
    assert not any("DEGRADED:" in d for d in p.decisions)


def test_incomplete_template_used_only_as_degraded(plan, template, science):
    incomplete = template(56870.75, n=3, nexp=4)
    p = plan(incomplete + template(56870.8, keys=FLAT) + science())
    assert chosen(p, "bias") == {Path(f.path).name for f in incomplete}
    assert any("DEGRADED:" in d for d in p.decisions)


def test_prompt_mode_waits_for_a_template_that_may_still_grow(plan, template, science):
    """The planner service plans while frames arrive: 3 of 4 biases taken 10 minutes ago are
    not planned on (nor anything below them) until the fourth comes or an hour has passed;
    after that, and in any plan not in prompt mode, they are used, marked DEGRADED."""
    incomplete = template(56870.75, n=3, nexp=4)
    frames = incomplete + template(56870.8, keys=FLAT) + science()
    last = max(f.mjd for f in incomplete)
    for kw, why in (({"now": last + 10 / 1440}, "its last frame was taken 10 min ago"),
                    ({"now": last + 1, "arriving": True}, "frames are still arriving")):
        p = plan(frames, **kw)
        assert p.orders == [], kw
        assert any(f"waiting for BIAS template {incomplete[0].tpl_start} (3/4 frames" in d
                   and why in d for d in p.decisions), p.decisions
    assert plan(frames, now=last + 10 / 1440).recheck == pytest.approx(last + 1 / 24)
    for kw in ({"now": last + 61 / 1440}, {}):
        p = plan(frames, **kw)
        assert chosen(p, "bias") == {Path(f.path).name for f in incomplete}, kw
        assert any("DEGRADED:" in d for d in p.decisions) and p.recheck is None


def test_prompt_mode_waits_only_for_a_template_that_would_be_chosen(plan, template, science):
    """A growing template farther from the science than a complete one changes nothing; one
    closer makes the cascade wait, though a complete template of the day before exists."""
    flats, sci = template(56870.8, keys=FLAT), science()
    complete, growing = template(56871.05), template(56871.2, n=3, nexp=4)
    now = max(f.mjd for f in growing) + 5 / 1440
    p = plan(complete + growing + flats + sci, now=now)
    assert chosen(p, "bias") == {Path(f.path).name for f in complete}
    day_before = template(56869.9)  # its night, without science, gets its own calibrations
    p = plan(day_before + growing + flats + sci, now=now)
    assert any("waiting for BIAS" in d for d in p.decisions)
    assert chosen(p, "bias") == {Path(f.path).name for f in day_before}
    assert not [o for o in p.orders if o.stage == "scibasic"]


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


def test_nothing_to_reduce_is_no_work(make_frame):
    odd = classify_file(make_frame({"DPR.TYPE": "DARK", "TPL.ID": "MUSE_wfm_cal_dark"}))
    with pytest.raises(NoWork, match="nothing to reduce"):
        plan_night([odd], Path("/out"), "2.8.7")


def test_calibration_only_night_gives_its_masters(plan, template):
    """The observatory reduces every morning's calibrations, with or without science."""
    fast = template(56870.76, keys=FAST)
    p = plan(template(56870.75) + template(56870.8, keys=FLAT) + fast
             + template(56870.95, n=3, keys=SKYFLAT))
    assert sorted({o.stage for o in p.orders}) == ["bias", "flat", "lsf", "twilight",
                                                    "wavecal"]
    assert any("no science frames: the night's calibrations alone" in d for d in p.decisions)
    assert all(o.night == "2014-08-01" for o in p.orders)
    status, why = p.status(fast[0])
    assert status == "rejected" and any("binned read-out" in w for w in why)


def test_job_key_depends_on_content_not_order(plan, template, science):
    frames = template(56870.75) + template(56870.8, keys=FLAT) + science()
    a = plan(frames)
    b = plan(list(reversed(frames)))
    assert [o.job_key for o in a.orders] == [o.job_key for o in b.orders]
    c = plan(frames, overrides={"bias": {"combine": "median"}})
    assert c.orders[0].job_key != a.orders[0].job_key
    assert c.orders[0].params["combine"] == "median"
    assert c.orders[1].job_key != a.orders[1].job_key  # the flat's bias changed too
    assert job_key("muse_bias", "2.8.7", 1, "{}", []) != job_key("muse_bias", "2.8.8", 1, "{}", [])


def test_job_key_is_the_hash_of_its_documented_content(plan, template, science):
    """Products on disk and in the bucket are found by their job's key: a faster way of
    computing it must give the same keys, also for names and checksums JSON must escape."""
    frames = template(56870.75) + template(56870.8, keys=FLAT) + science()
    odd = {1: 'quote " backslash \\ é'}
    p = plan([f.model_copy(update={"datasums": odd}) if f.tag == Tag.BIAS else f
              for f in frames])
    for o in p.orders:
        ident = sorted((str(f.tag), f.job_key, f.path.rpartition("/")[2], f.datasum)
                       for f in o.inputs)
        blob = json.dumps([o.recipe, "2.8.7", o.ifu, o.params, ident], sort_keys=True,
                          default=str)
        assert o.job_key == hashlib.sha256(blob.encode()).hexdigest()[:16], o
    assert any(odd[1] in f.datasum for o in p.orders for f in o.inputs)


def test_planned_orders_are_valid_work_orders(plan, template, science):
    """Orders are built without validation (every value is the plan's own): what a worker
    decodes must be the same order."""
    p = plan(template(56870.75) + template(56870.8, keys=FLAT) + science())
    for o in p.orders:
        assert WorkOrder.model_validate_json(o.model_dump_json()) == o


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
    other = classify_file(make_frame({**STD, "MJD-OBS": 56871.70, "TPL.START": "s2",
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


def test_prompt_mode_waits_for_skyflats_that_may_still_arrive(plan, template, science):
    """4 of 6 skyflats, the last taken 5 minutes ago: neither the twilight cube of 4 nor the
    science without it is planned (each would be work the complete set replaces)."""
    skyflats = template(56870.95, n=4, nexp=6, keys=SKYFLAT)
    sci = science()
    frames = [*template(56870.75), *template(56870.8, keys=FLAT), *skyflats, *sci]
    now = max(f.mjd for f in skyflats) + 5 / 1440
    p = plan(frames, now=now)
    assert {o.stage for o in p.orders} == {"bias", "flat", "wavecal", "lsf"}
    assert any(f"waiting for SKYFLAT template {skyflats[0].tpl_start} (4/6 frames" in d
               and "5 min ago" in d for d in p.decisions), p.decisions
    assert "skyflats may still arrive" in p.status(sci[0])[1][0]
    for kw in ({"now": now + 1 / 24}, {}):  # stopped growing; not in prompt mode
        (twilight,) = orders(plan(frames, **kw), "twilight")
        assert [f.path for f in twilight.inputs if f.tag == Tag.SKYFLAT] == [
            f.path for f in skyflats]


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


ILLUM = {"DPR.TYPE": "FLAT,LAMP,ILLUM", "TPL.ID": "MUSE_wfm_cal_illum", "INS.TEMP7.VAL": 11.2}


def illum(make_frame, mjd, **keys):
    return classify_file(make_frame({**ILLUM, "MJD-OBS": mjd, "TPL.START": f"i{mjd}",
                                     "TPL.NEXP": 1, **keys}))


def test_twilight_cap_counts_the_illum_frame(plan, template, science, make_frame):
    """The log's case: the budget fits 5 of the 7 skyflats, with the ILLUM beside them."""
    skyflats = template(56870.95, n=7, keys=SKYFLAT)
    spec = __import__("musedrp.services.twilight.spec", fromlist=["SPEC"]).SPEC
    budget = spec.memory.estimate_gb(6, 1) + 0.05  # 5 skyflats + the ILLUM
    il = illum(make_frame, SCIENCE_MJD - 0.02)
    p = plan([*template(56870.75), *template(56870.8, keys=FLAT), *skyflats, il,
              *science(keys={"INS.TEMP7.VAL": 11.0})], memory_gb=budget)
    (twilight,) = orders(p, "twilight")
    raw = [f.tag for f in twilight.inputs if not f.job_key and f.tag in (Tag.SKYFLAT, Tag.ILLUM)]
    assert raw.count(Tag.SKYFLAT) == 5 and raw.count(Tag.ILLUM) == 1
    assert twilight.memory_gb <= budget  # what the executor admits is what was capped
    assert any("only 5 of 7 skyflats" in d and "with the ILLUM frame" in d for d in p.decisions)


def test_illum_within_two_hours_and_one_degree(plan, template, science, make_frame):
    near = illum(make_frame, SCIENCE_MJD - 0.05)  # 1.2 h before
    far = illum(make_frame, SCIENCE_MJD - 0.1)  # 2.4 h before
    warm = illum(make_frame, SCIENCE_MJD - 0.01, **{"INS.TEMP7.VAL": 13.0})  # closest, warm
    p = plan([*template(56870.75), *template(56870.8, keys=FLAT), near, far, warm,
              *science(keys={"INS.TEMP7.VAL": 11.0})])
    (sci,) = orders(p, "scibasic")
    assert [f.path for f in sci.inputs if f.tag == Tag.ILLUM] == [near.path]
    assert "more than 1 C apart" in p.status(warm)[1][0]
    assert p.status(far)[0] == "unused"


def test_calibrations_from_another_night_are_degraded_with_distance(plan, template, science):
    bias = template(SCIENCE_MJD - 3.2)  # 3 nights before: within the 7-day window
    p = plan([*bias, *template(56870.8, keys=FLAT), *science()])
    assert chosen(p, "bias") == {Path(f.path).name for f in bias}
    assert any(d.startswith(f"night 2014-08-01, {'WFM-NOAO-N_SCI1.0'}: DEGRADED: BIAS")
               and "3.2 d from the science" in d for d in p.decisions)


def test_nothing_beyond_the_widest_window(plan, template, science):
    old = template(SCIENCE_MJD - 40)  # 40 days: no bias window is that wide
    p = plan([*old, *template(56870.8, keys=FLAT), *science()])
    assert [o.night for o in orders(p, "bias")] == ["2014-06-22"]  # only its own night's
    assert any(d.startswith("night 2014-08-01") and "no usable BIAS template" in d
               for d in p.decisions)


def test_science_night_wins_over_a_closer_template_of_the_next_night(plan, template, science):
    sci_mjd = 56871.625  # 15:00 UT: still night 2014-08-01 (ESO's night ends 16:00 UT)
    same = template(56870.70, keys=FLAT)  # 16:48 UT on the 1st: same night, 22 h before
    next_night = template(56871.70, keys=FLAT)  # 16:48 UT on the 2nd: 1.8 h after
    p = plan([*template(56870.75), *same, *next_night, *science(mjd=sci_mjd)])
    (flat,) = [o for o in orders(p, "flat") if o.night == "2014-08-01"]
    assert {Path(f.path).name for f in flat.inputs if f.tag == Tag.FLAT} == \
        {Path(f.path).name for f in same}
    assert "is of the science night" in p.notes[next_night[0].path][0]


def test_standard_needs_adjacent_ifus(template, science, make_frame):
    ifus = (1, 12, 24)
    std = classify_file(make_frame({**STD, "MJD-OBS": 56871.2, "TPL.START": "s"}, ifus=ifus))
    statics = [classify_file(make_frame({"PRO.CATG": t}, ifus=(), name=f"{t.lower()}.fits"))
               for t in ("LINE_CATALOG", "GEOMETRY_TABLE", "EXTINCT_TABLE", "STD_FLUX_TABLE")]
    p = plan_night([*template(56870.75, ifus=ifus), *template(56870.8, keys=FLAT, ifus=ifus),
                    *template(56870.85, keys=ARC, ifus=ifus), std, *science(ifus=ifus),
                    *statics], Path("/out"), "2.8.7")
    assert len(orders(p, "scibasic")) == 6 and orders(p, "standard") == []
    assert any("at least 3 adjacent IFUs" in d and "[1, 12, 24]" in d for d in p.decisions)


def test_lsf_matches_the_instrument_mode(plan, template, science):
    ao = {"INS.MODE": "WFM-AO-N", "INS.OPTI1.NAME": "Blue-Na2"}
    p = plan([*template(56870.75), *template(56870.8, keys={**FLAT, **ao}), *science(keys=ao)])
    assert orders(p, "wavecal") and not orders(p, "lsf")  # the arcs are WFM-NOAO-N
    assert any("no ARC template of WFM-AO-N, so no LSF_PROFILE" in d for d in p.decisions)


def test_vignetting_mask_by_each_frame_mjd(template, science, make_frame):
    def statics(*tags):
        return [classify_file(make_frame({"PRO.CATG": t}, ifus=(), name=f"{t.lower()}.fits"))
                for t in tags]

    base = statics("LINE_CATALOG", "GEOMETRY_TABLE", "VIGNETTING_MASK")
    for mjd, expected in ((57822.9, True), (57823.05, False)):
        frames = [*template(mjd - 0.3), *template(mjd - 0.25, keys=FLAT),
                  *template(mjd - 0.2, keys=ARC), *template(mjd - 0.05, keys=SKYFLAT),
                  *science(mjd=mjd + 0.1), *base]
        p = plan_night(frames, Path("/out"), "2.8.7")
        (twilight,) = orders(p, "twilight")
        assert (Tag.VIGNETTING_MASK in {f.tag for f in twilight.inputs}) is expected


def test_static_calibrations_are_known_by_content(template, science, make_frame):
    """A new kit with the same file names gives new jobs; an unchanged one re-uses them."""
    frames = [*template(56870.75), *template(56870.8, keys=FLAT), *science(),
              *template(56870.85, keys=ARC)]
    catalog = classify_file(make_frame({"PRO.CATG": "LINE_CATALOG"}, ifus=(),
                                       name="line_catalog.fits"))
    assert len(catalog.checksum) == 64

    def keys(static):
        p = plan_night([*frames, static], Path("/out"), "2.8.7")
        return {o.stage: o.job_key for o in p.orders}

    same, changed = keys(catalog), keys(catalog.model_copy(update={"checksum": "0" * 64}))
    assert same == keys(catalog.model_copy())
    assert same["bias"] == changed["bias"] and same["wavecal"] != changed["wavecal"]


def test_planning_cost_does_not_grow_with_other_nights(plan, template, science):
    """Frames of far-away nights are never looked at (the index finds candidates by time)."""
    far = [f for d in range(30, 400, 20) for f in template(56870.75 + d, keys=FLAT)]
    p = plan([*template(56870.75), *template(56870.8, keys=FLAT), *science(), *far])
    assert not any(p.status(f)[1] and "not chosen" in p.status(f)[1][0] for f in far)


def test_planning_some_nights_gives_the_same_orders_as_planning_all(plan, template, science):
    nights = [0, 1, 2, 9]  # days after the first night
    frames = [f for d in nights
              for f in (*template(56870.75 + d), *template(56870.8 + d, keys=FLAT),
                        *science(mjd=SCIENCE_MJD + d))]
    everything = plan(frames)
    one = plan(frames, nights=["2014-08-02"])
    arcs = ("wavecal", "lsf")  # the arcs are 2014-08-01's: their jobs write there
    assert {o.night for o in one.orders if o.stage not in arcs} == {"2014-08-02"}
    assert {o.night for o in one.orders if o.stage in arcs} == {"2014-08-01"}
    by_key = {o.job_key: o for o in everything.orders}
    assert all(by_key[o.job_key] == o for o in one.orders)


def test_planning_every_night_at_once_equals_planning_each_night_alone(plan, template, science):
    """What a year's plan is made of: each night's orders and decisions are those of that
    night planned alone, and every frame is used by the same jobs (inputs shared between
    orders are built once, and that changes nothing)."""
    days = [0, 1, 2, 9]  # science on 0, 2 and 9; night 1 has calibrations only
    frames = [f for d in days
              for f in (*template(56870.75 + d), *template(56870.8 + d, keys=FLAT),
                        *(science(mjd=SCIENCE_MJD + d) if d != 1 else ()))]
    everything = plan(frames)
    nights = sorted({o.night for o in everything.orders})
    assert len(nights) == len(days)
    alone = [plan(frames, nights=[night]) for night in nights]
    by_key = {o.job_key: o for o in everything.orders}
    for night, p in zip(nights, alone, strict=True):
        assert all(by_key[o.job_key] == o for o in p.orders)  # a shared job: one place
        assert p.decisions == [d for d in everything.decisions if d.startswith(f"night {night}")]
    assert {o.job_key for p in alone for o in p.orders} == set(by_key)
    for f in frames:
        assert everything.used.get(f.path, set()) == set().union(
            *(p.used.get(f.path, set()) for p in alone)), f.name


def test_a_standard_is_science_only_on_a_night_of_its_own_calibrations(template, make_frame):
    """Throughput monitoring: a night of calibrations and a standard star gives a response;
    a standard alone (as a calibration package brings one) is not reduced."""
    ifus = (1, 2, 3)
    statics = [classify_file(make_frame({"PRO.CATG": t}, ifus=(), name=f"{t.lower()}.fits"))
               for t in ("LINE_CATALOG", "GEOMETRY_TABLE", "EXTINCT_TABLE", "STD_FLUX_TABLE")]
    std = classify_file(make_frame({**STD, "MJD-OBS": 56871.2, "TPL.START": "s"}, ifus=ifus))
    lonely = classify_file(make_frame({**STD, "MJD-OBS": 56868.2, "TPL.START": "o"}, ifus=ifus))
    frames = [*template(56870.75, ifus=ifus), *template(56870.8, keys=FLAT, ifus=ifus),
              *template(56870.85, keys=ARC, ifus=ifus), std, lonely, *statics]
    p = plan_night(frames, Path("/out"), "2.8.7")
    (standard,) = orders(p, "standard")
    assert standard.night == "2014-08-01" and p.status(lonely)[0] != "used"
    assert plan_night(frames, Path("/out"), "2.8.7", nights=["2014-08-01"]).orders == p.orders


def test_a_job_shared_by_two_setups_is_read_where_it_is_written(plan, template):
    """A calibration-only night with flats of two instrument modes: one bias template serves
    both cascades, so both plan the same bias job (one key).  The plan keeps one order, and
    every reader must name the directory that order writes, not the one its own setup would
    have given."""
    ao = {"INS.MODE": "WFM-AO-N"}
    p = plan(template(56870.75) + template(56870.8, keys=FLAT)
             + template(56870.81, keys={**FLAT, **ao}))
    flats = [o for o in p.orders if o.stage == "flat"]
    assert len({o.setup for o in flats}) == 2
    written = {o.job_key: o.product_dir for o in p.orders}
    for o in p.orders:
        for f in o.inputs:
            if f.job_key:
                assert Path(f.path).parent == Path("/out") / written[f.job_key], (o, f.path)


def test_a_job_writes_where_its_own_frames_belong_whichever_night_plans_it(plan, template,
                                                                           science):
    """Night 2014-08-01 borrows the biases of 2014-07-29.  Planned with that night or alone,
    the bias job has one key and so must have one place: the services plan nights apart,
    and a reader planned later must find what the job wrote when planned first."""
    bias = template(SCIENCE_MJD - 3.2)
    borrowed = plan([*bias, *template(56870.8, keys=FLAT), *science()], nights=["2014-08-01"])
    own = plan(bias, nights=["2014-07-29"])
    (b1,), (b2,) = orders(borrowed, "bias"), orders(own, "bias")
    assert b1.job_key == b2.job_key
    assert b1.product_dir == b2.product_dir
