"""Planning the science product: the sky choice per exposure, alignment and combination per
target, and the stated outcome of every case that cannot be combined."""

from pathlib import Path

import pytest

from musedrp.frames import classify_file
from musedrp.planner import plan_night

from .conftest import ARC, SCIENCE_MJD
from .test_planner import FLAT, STD

IFUS = (1, 2, 3)
RA, DEC = 265.1754, -53.6743
OBJECT = {"DPR.CATG": "SCIENCE", "DPR.TYPE": "OBJECT", "TPL.ID": "MUSE_wfm_obs_genericoffset",
          "TPL.START": "ob", "OBS.TARG.NAME": "NGC6397", "EXPTIME": 600.0}
SKY = {**OBJECT, "DPR.TYPE": "SKY"}


@pytest.fixture
def night(template, make_frame):
    """Calibrations of three IFUs, a standard star and the static files of a science night;
    ``run(exposures, statics=...)`` plans them with the given exposures."""
    def frame(keys, **kw):
        return classify_file(make_frame(keys, **kw))

    cal = [*template(56870.75, ifus=IFUS), *template(56870.8, keys=FLAT, ifus=IFUS),
           *template(56870.85, keys=ARC, ifus=IFUS),
           frame({**STD, "MJD-OBS": 56871.2, "TPL.START": "s", "TPL.NEXP": 1}, ifus=IFUS)]

    def run(exposures, statics=("SKY_LINES", "FILTER_LIST"), overrides=None, memory_gb=None):
        files = [frame({"PRO.CATG": t}, ifus=(), name=f"{t.lower()}.fits") for t in (
            "LINE_CATALOG", "GEOMETRY_TABLE", "EXTINCT_TABLE", "STD_FLUX_TABLE", *statics)]
        return plan_night([*cal, *exposures, *files], Path("/out"), "2.8.7",
                          overrides=overrides, memory_gb=memory_gb)

    def exposure(offset=(0.0, 0.0), minutes=0.0, keys=OBJECT, **more):
        east, north = offset
        return frame({**keys, "MJD-OBS": SCIENCE_MJD + minutes / 1440,
                      "RA": RA + east / 3600 / 0.5934, "DEC": DEC + north / 3600, **more},
                     ifus=IFUS)
    run.exposure = exposure
    return run


def orders(p, stage):
    return [o for o in p.orders if o.stage == stage]


def test_dithered_exposures_are_aligned_and_combined_with_the_sky_exposure_model(night):
    objects = [night.exposure((0, 0), 0), night.exposure((1.6, 1.0), 12),
               night.exposure((-1.2, 2.0), 36)]
    sky = night.exposure((400, 300), 24, keys=SKY)
    p = night([*objects, sky])
    (model,) = orders(p, "sky")
    assert {f.tag for f in model.inputs} >= {"PIXTABLE_SKY", "STD_RESPONSE", "SKY_LINES",
                                             "LSF_PROFILE"}
    posts = orders(p, "scipost")
    assert len(posts) == 3
    for o in posts:
        assert o.params["skymethod"] == "subtract-model"
        assert o.memory_gb == pytest.approx(0.15 + 0.65 * 3)  # no sky cube to build
        assert model.job_key in o.needs
        assert any(r.startswith("sky: subtract-model, the model of SKY exposure")
                   for r in o.reasons)
    (align,) = orders(p, "align")
    assert sorted(f.job_key for f in align.inputs) == sorted(o.job_key for o in posts)
    assert len([n for n in align.products if n.startswith("SOURCE_LIST_")]) == 3
    (combine,) = orders(p, "combine")
    assert [f.tag for f in combine.inputs].count("PIXTABLE_REDUCED") == 3
    assert align.job_key in combine.needs
    assert combine.memory_gb == pytest.approx(2.2 + 0.66 * 3 * 3)
    assert any("NGC6397: 3 exposures aligned" in d for d in p.decisions)


def test_without_a_sky_exposure_the_sky_is_modelled_from_the_field(night):
    p = night([night.exposure((0, 0), 0), night.exposure((1.0, 1.0), 12)])
    assert orders(p, "sky") == []
    assert {o.params["skymethod"] for o in orders(p, "scipost")} == {"model"}
    assert all(any(f.tag == "SKY_LINES" and not f.job_key for f in o.inputs)
               for o in orders(p, "scipost"))
    assert [o.memory_gb for o in orders(p, "scipost")] == pytest.approx([0.2 + 1.0 * 3] * 2)
    assert any("no SKY exposure of this setup" in d for d in p.decisions)


def test_without_sky_lines_the_sky_is_simple_and_says_why(night):
    p = night([night.exposure((0, 0), 0), night.exposure((1.0, 1.0), 12),
               night.exposure((0, 0), 24, keys=SKY)], statics=())
    assert orders(p, "sky") == []
    assert {o.params["skymethod"] for o in orders(p, "scipost")} == {"simple"}
    assert any("sky: simple (the darkest part of the field): a sky model needs a SKY_LINES "
               "list" in d for d in p.decisions)


def test_a_sky_frame_of_another_setup_is_refused_with_its_reason(night):
    other = night.exposure((400, 300), 24, keys=SKY, **{"INS.MODE": "WFM-AO-N"})
    p = night([night.exposure((0, 0), 0), night.exposure((1.0, 1.0), 12), other])
    assert orders(p, "sky") == []
    status, why = p.status(other)
    assert status == "rejected" and "instrument mode WFM-AO-N differs" in why[0]
    assert {o.params["skymethod"] for o in orders(p, "scipost")} == {"model"}


def test_a_template_of_one_exposure_is_not_combined(night):
    p = night([night.exposure()])
    assert len(orders(p, "scipost")) == 1
    assert orders(p, "align") == orders(p, "combine") == []
    assert any("NGC6397: 1 exposure(s) to combine: no alignment" in d for d in p.decisions)


def test_an_exposure_too_far_from_the_others_stays_single(night):
    near = [night.exposure((0, 0), 0), night.exposure((2.0, 0), 12)]
    far = night.exposure((90.0, 0), 24)
    p = night([*near, far])
    (combine,) = orders(p, "combine")
    assert [f.tag for f in combine.inputs].count("PIXTABLE_REDUCED") == 2
    assert len(orders(p, "scipost")) == 3  # its own cube is still made
    assert any(d.endswith(f"{far.name} not combined: its field centre is 88 arcsec from the "
                          "nearest other exposure of NGC6397, more than the 30 arcsec at which "
                          "fields still overlap") for d in p.decisions)


def test_the_users_sky_method_wins_over_the_planners(night):
    p = night([night.exposure((0, 0), 0), night.exposure((1.0, 1.0), 12)],
              overrides={"scipost": {"skymethod": "none"}})
    assert {o.params["skymethod"] for o in orders(p, "scipost")} == {"none"}


def test_a_combination_beyond_the_memory_budget_is_cut_into_wavelength_pieces(night):
    """The whole needs 2.2 + 0.66 x 6 = 6.2 GB: three pieces of at most 3.8 GB each (the
    fewest odd count that fits 4 GB), all of the same inputs, and a stitch of their cubes."""
    p = night([night.exposure((0, 0), 0), night.exposure((1.0, 1.0), 12)], memory_gb=4.0)
    (align,) = orders(p, "align")
    parts = orders(p, "combine")
    assert [o.params["piece"] for o in parts] == ["4000,6200", "6200,7800", "7800,10000"]
    assert all(o.memory_gb <= 4.0 for o in parts)
    assert len({tuple(o.inputs) for o in parts}) == 1 and len({o.job_key for o in parts}) == 3
    assert [f.tag for f in parts[0].inputs].count("IMAGE_FOV") == 2
    (stitch,) = orders(p, "stitch")
    assert set(stitch.needs) == {o.job_key for o in parts}
    assert sorted(f.tag for f in stitch.inputs) == ["DATACUBE_FINAL"] * 3 + ["IMAGE_FOV"] * 3
    assert any(d.endswith("NGC6397: 2 exposures aligned (muse_exp_align) and combined "
                          "(muse_exp_combine) in 3 wavelength pieces of at most 3.8 GB, "
                          "stitched into one cube: the whole range at once needs 6.2 GB, more "
                          "than the memory budget of 4.0 GB") for d in p.decisions)


def test_a_combination_no_piece_count_fits_is_decided_not_refused(night):
    """Aligned all the same (images only); the combination left out with its estimate."""
    p = night([night.exposure((0, 0), 0), night.exposure((1.0, 1.0), 12)], memory_gb=2.5)
    assert len(orders(p, "align")) == 1 and orders(p, "combine") == orders(p, "stitch") == []
    assert any(d.endswith("NGC6397: 2 exposures not combined: even in 15 wavelength pieces "
                          "muse_exp_combine of 6 IFU-exposures needs 2.7 GB, more than the "
                          "memory budget of 2.5 GB; the exposure cubes are the product")
               for d in p.decisions)


def test_each_order_is_ranked_by_the_jobs_below_it(night):
    """The rank the shared pool of ``serve`` starts jobs by: every job that needs an order's
    products, directly or not (counted here by walking down the plan)."""
    p = night([night.exposure((0, 0), 0), night.exposure((1.0, 1.0), 12)])
    children = {o.job_key: [c.job_key for c in p.orders if o.job_key in c.needs]
                for o in p.orders}

    def below(key):
        found, todo = set(), list(children[key])
        while todo:
            if (k := todo.pop()) not in found:
                found.add(k)
                todo += children[k]
        return found

    assert {o.job_key: o.rank for o in p.orders} == {k: len(below(k)) for k in children}
    (combine,) = orders(p, "combine")
    assert combine.rank == 0 < min(o.rank for o in orders(p, "bias"))
    assert max(o.rank for o in p.orders) == max(o.rank for o in orders(p, "bias"))
