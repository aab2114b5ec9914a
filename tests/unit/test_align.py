"""The check of muse_exp_align's OFFSET_LIST and the fallback to header offsets: the recipe
only warns where it found nothing, so a zero offset is never taken on trust."""

import numpy as np
import pytest
from astropy.io import fits

from musedrp import esorex
from musedrp.errors import DataError
from musedrp.messages import InputFile, WorkOrder
from musedrp.services.align import compute
from musedrp.tags import Tag

DATES = ["2014-08-02T03:05:01.500", "2014-08-02T03:16:41.500", "2014-08-02T03:40:01.500"]


def offset_list(tmp_path, ra_arcsec, dec_arcsec):
    path = tmp_path / "OFFSET_LIST.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([
        fits.Column("DATE_OBS", "23A", array=DATES[:len(ra_arcsec)]),
        fits.Column("RA_OFFSET", "D", array=np.array(ra_arcsec) / 3600),
        fits.Column("DEC_OFFSET", "D", array=np.array(dec_arcsec) / 3600)])]).writeto(path)
    return path


def test_a_list_with_every_exposure_matched_is_used(tmp_path):
    path = offset_list(tmp_path, [0, 0.2, -0.5], [0, 0.1, 0.3])
    qc = {"QC EXPALIGN NMATCH1": 12, "QC EXPALIGN NMATCH2": 11, "QC EXPALIGN NMATCH3": 9,
          "QC EXPALIGN NOMATCH": 0}
    assert compute.check(path, 3, qc) == ""


@pytest.mark.parametrize(("ra", "dec", "qc", "why"), [
    ([0, 0.2, 0.0], [0, 0.1, 0.0], {"QC EXPALIGN NMATCH3": 0, "QC EXPALIGN NOMATCH": 1},
     "matched no stars for exposure(s) 3"),
    ([0, 0.2], [0, 0.1], {}, "2 rows for 3 exposures"),
    ([0, 4.0, 0.1], [0, 0.1, 0.1], {}, "a correction of 4.00 arcsec"),
    ([0, np.nan, 0.1], [0, 0.1, 0.1], {}, "non-finite"),
])
def test_a_list_that_cannot_be_trusted_says_why(tmp_path, ra, dec, qc, why):
    assert why in compute.check(offset_list(tmp_path, ra, dec), 3, qc)


def fov(tmp_path, i, date=True):
    path = tmp_path / f"{i}" / "IMAGE_FOV_0001.fits"
    path.parent.mkdir()
    h = fits.Header({"MJD-OBS": 56871.1 + i / 100})
    if date:
        h["DATE-OBS"] = DATES[i]
    fits.PrimaryHDU(header=h).writeto(path)
    return path


def test_the_fallback_is_every_exposure_at_its_header_position_with_the_reason(tmp_path):
    images = [fov(tmp_path, i) for i in range(3)]
    result = compute.fallback(images, tmp_path, "muse_exp_align matched no stars", run=None)
    path = result.products["OFFSET_LIST.fits"]
    table = fits.getdata(path, 1)
    assert list(table["DATE_OBS"]) == DATES
    assert np.all(table["RA_OFFSET"] == 0) and np.all(table["DEC_OFFSET"] == 0)
    header = fits.getheader(path, 0)
    assert header["ESO PRO CATG"] == "OFFSET_LIST" and header["MUSEDRP ALIGN METHOD"] == "header"
    assert result.qc["OFFSET_LIST.fits"] == {"MUSEDRP ALIGN METHOD": "header",
                                             "MUSEDRP ALIGN REASON": "muse_exp_align matched "
                                                                     "no stars"}


def test_an_image_without_a_date_cannot_be_placed(tmp_path):
    with pytest.raises(DataError, match="no DATE-OBS/MJD-OBS"):
        compute.fallback([fov(tmp_path, 0), fov(tmp_path, 1, date=False)], tmp_path, "x", None)


def failing_run(returncode: int, errors: list[str]):
    return esorex.RecipeRun("muse_exp_align", [], returncode, 1.0, 1.0, 0.0, 10**8, [0], 1,
                            False, errors=errors)


@pytest.mark.parametrize(("returncode", "errors", "falls_back"), [
    (1, ["Too few sources left after filtering detected sources of image 2"], True),
    (-9, ["Too few sources left after filtering detected sources of image 2"], False),
    (1, ["Segmentation fault"], False),
])
def test_only_a_recipe_that_found_no_source_falls_back(tmp_path, monkeypatch, returncode,
                                                       errors, falls_back):
    """Out of sources is a fact about the data: header offsets.  A kill, a crash: the job
    fails as any other (retried or dead-lettered), never a silent zero offset."""
    run = failing_run(returncode, errors)

    def fail(*_):
        raise DataError("muse_exp_align exited", run=run)
    monkeypatch.setattr(compute.runner, "compute", fail)
    images = [fov(tmp_path, i) for i in range(2)]
    order = WorkOrder(stage="align", recipe="muse_exp_align", job_key="00000000000a11a9",
                      night="2014-08-01", setup="WFM-NOAO-N_SCI1.0", ifu=None,
                      inputs=tuple(InputFile(tag=Tag.IMAGE_FOV, path=str(p)) for p in images),
                      params={}, memory_gb=0.3, timeout_s=60)
    if not falls_back:
        with pytest.raises(DataError, match="exited"):
            compute.run(order, tmp_path, [0])
        return
    result = compute.run(order, tmp_path, [0])
    assert result.qc["OFFSET_LIST.fits"]["MUSEDRP ALIGN REASON"].startswith(
        "muse_exp_align failed: muse_exp_align exited")
