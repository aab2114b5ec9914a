"""A combined cube made in wavelength pieces equals the one made at once.

The session's night is reduced again, into a copy of its output, with a memory budget (7 GB)
below the combination's estimate (8.14 GB for 3 exposures x 3 IFUs): every other job comes
from the cache, the combination is planned as three pieces on the grid derived from the
exposures, and the stitch joins them.  muse_exp_combine subtracts no sky, so the two cubes
must agree to float32 rounding, plane by plane, and carry the same QC."""

import json
import re

import numpy as np
import pytest
from astropy.io import fits

from .conftest import combined_product, product, reduce_into_copy

BUDGET_GB = 7.0


@pytest.fixture(scope="module")
def pieced(reduced, night, workspace):
    assert reduced[0] == 0
    code, out, log = reduce_into_copy(reduced, workspace, "reduced-pieces", night[0],
                                      "--memory", str(BUDGET_GB))
    assert code == 0, log[-3000:]
    return out, log


def test_the_plan_cuts_the_combination_into_three_pieces_and_stitches_them(pieced):
    out, output = pieced
    plan = json.loads((out / "plan.json").read_text())
    assert any("in 3 wavelength pieces of at most" in d for d in plan["decisions"])
    stages = re.findall(r"\] succeeded (\w+)", output)
    assert stages.count("combine") == 3 and stages.count("stitch") == 1, output
    assert "scipost" not in stages  # everything upstream came from the cache


def test_the_stitched_cube_equals_the_cube_made_at_once(pieced):
    out, _ = pieced  # the one-piece cube came from the session's output, hard-linked
    whole = combined_product(out, "DATACUBE_FINAL.fits")
    stitched = product(out, "stitch", "DATACUBE_FINAL.fits")
    with fits.open(whole) as a, fits.open(stitched) as b:
        assert b[0].header["MUSEDRP PIECES"] == 3
        qc = {k: v for k, v in a[0].header.items() if k.startswith("ESO QC")}
        assert qc and qc == {k: v for k, v in b[0].header.items() if k.startswith("ESO QC")}
        for ext in ("DATA", "STAT"):
            ha, hb = a[ext].header, b[ext].header
            for key in ("NAXIS1", "NAXIS2", "NAXIS3", "CRPIX1", "CRPIX2", "CD1_1", "CD2_2"):
                assert ha[key] == hb[key], key
            for key in ("CRVAL1", "CRVAL2", "CRVAL3", "CD3_3"):
                assert hb[key] == pytest.approx(ha[key], rel=1e-12, abs=1e-9), key
            for z in range(0, ha["NAXIS3"], 256):
                x, y = a[ext].section[z:z + 256], b[ext].section[z:z + 256]
                assert (np.isnan(x) == np.isnan(y)).all(), (ext, z)
                np.testing.assert_allclose(y, x, rtol=2e-7, atol=0, equal_nan=True,
                                           err_msg=f"{ext} planes {z}-{z + 255}")


def test_the_white_light_image_is_recomputed_over_the_whole_range(pieced):
    out, _ = pieced
    whole = fits.getdata(combined_product(out, "IMAGE_FOV_0001.fits"), "DATA")
    stitched = fits.getdata(product(out, "stitch", "IMAGE_FOV_0001.fits"), "DATA")
    assert (np.isnan(whole) == np.isnan(stitched)).all()
    np.testing.assert_allclose(stitched, whole, rtol=2e-7, equal_nan=True)
