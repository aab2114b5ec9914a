"""Wavelength pieces: the cuts, the planes each piece owns and resamples, the grid derived
from the exposures, the OUTPUT_WCS file, and the stitch's checks and white-light image."""

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from musedrp import pieces
from musedrp.errors import DataError
from musedrp.services.combine.spec import SPEC, ExpCombineParams
from musedrp.services.stitch import compute as stitch

GRID = pieces.Grid(crval=(265.17, -53.67), crpix=(151.0, 20.0), cd=(-0.2 / 3600, 0.2 / 3600),
                   shape=(301, 40), lambda0=4749.5, planes=3681)


def test_cuts_are_equal_over_the_data_and_reach_the_requested_range():
    assert pieces.cuts(4000, 10000, 1) == [(4000, 10000)]
    assert pieces.cuts(4000, 10000, 3) == [(4000, 6200), (6200, 7800), (7800, 10000)]
    assert pieces.cuts(6000, 7000, 2) == [(6000, 6500), (6500, 7000)]


def test_the_fewest_odd_count_that_fits_and_none_when_nothing_does():
    assert pieces.count(lambda f: True) == 1
    assert pieces.count(lambda f: f < 0.5) == 3
    assert pieces.count(lambda f: False) is None
    assert pieces.fraction(1) == 1.0 and pieces.fraction(5) < pieces.fraction(3) < 1.0


@pytest.mark.parametrize("n", [1, 3, 5, 7])
def test_pieces_own_every_plane_once_and_the_central_one_is_centred(n):
    owned, middle = [], GRID.planes // 2 + 1
    for cut in pieces.cuts(4000, 10000, n):
        own_first, own_last, first, last = pieces.planes(GRID, cut)
        assert first <= own_first - min(pieces.MARGIN, own_first - 1)
        assert last >= own_last + min(pieces.MARGIN, GRID.planes - own_last)
        owned += range(own_first, own_last + 1)
        if own_first <= middle <= own_last:  # cpl measures QC on plane (size // 2), 0-based
            assert first + (last - first + 1) // 2 == middle
            assert last - first + 1 < GRID.planes or n == 1
    assert owned == list(range(1, GRID.planes + 1))


# The 24-IFU night's combination of 3 exposures (72 IFU-exposures) in three pieces, measured
# (docs/measurements.md, 2026-12-05): each piece's cut and peak RSS in GB.  GRID's wavelengths
# are that night's.
MEASURED_PIECES = {(4000, 6200): 17.15, (6200, 7800): 19.64, (7800, 10000): 17.84}


def test_the_combinations_memory_model_covers_the_measured_full_size_pieces():
    """Applied to the planes a piece resamples, the model is within 3 % of each measured
    peak; applied to the planner's upper bound of a piece's share, it is above every one."""
    model = SPEC.memory
    for cut, peak in MEASURED_PIECES.items():
        *_, first, last = pieces.planes(GRID, cut)
        share = (last - first + 1) / GRID.planes
        assert model.estimate_gb(0, 72 * share) == pytest.approx(peak, rel=0.03)
        assert model.estimate_gb(0, 72 * pieces.fraction(3)) >= peak


def test_a_piece_without_planes_is_an_error_and_a_malformed_one_is_refused():
    with pytest.raises(DataError, match="holds no plane"):
        pieces.planes(GRID, (2000.0, 3000.0))
    with pytest.raises(ValueError, match="piece"):
        ExpCombineParams(piece="4000,../../etc")
    assert ExpCombineParams(piece="4000,6200.5").piece == "4000,6200.5"


def test_output_wcs_carries_the_grid_without_data(tmp_path):
    path = pieces.write_output_wcs(GRID.piece(101, 200), tmp_path / "OUTPUT_WCS.fits")
    assert path.stat().st_size % 2880 == 0
    header = fits.Header.fromfile(path)  # as CPL reads it: every card, NAXISn included
    assert header["NAXIS"] == 0 and header["WCSAXES"] == 3
    assert (header["NAXIS1"], header["NAXIS2"], header["NAXIS3"]) == (301, 40, 100)
    assert header["CRVAL3"] == pytest.approx(4749.5 + 100 * 1.25)
    assert header["CTYPE3"] == "AWAV" and "PC1_1" not in header


def fov(path: Path, crval: tuple[float, float], date: str, shape=(30, 20)) -> Path:
    w = WCS(naxis=2)
    w.wcs.ctype, w.wcs.crval = ["RA---TAN", "DEC--TAN"], crval
    w.wcs.crpix, w.wcs.cd = [(shape[0] + 1) / 2, (shape[1] + 1) / 2], np.diag(GRID.cd)
    h = w.to_header()
    h["DATE-OBS"] = date
    fits.HDUList([fits.PrimaryHDU(header=h),
                  fits.ImageHDU(np.zeros(shape[::-1], np.float32), h, name="DATA")]).writeto(path)
    return path


def table(path: Path, low: float, high: float) -> Path:
    h = fits.Header()
    h[pieces.LLO], h[pieces.LHI] = low, high
    fits.PrimaryHDU(header=h).writeto(path)
    return path


def offsets(path: Path, rows) -> Path:
    fits.BinTableHDU.from_columns([
        fits.Column("DATE_OBS", "23A", array=[r[0] for r in rows]),
        fits.Column("RA_OFFSET", "D", array=[r[1] for r in rows]),
        fits.Column("DEC_OFFSET", "D", array=[r[2] for r in rows])]).writeto(path)
    return path


def test_the_grid_covers_every_exposure_where_its_offset_puts_it(tmp_path):
    """Two 30 x 20 spaxel fields 3" (15 spaxels) apart in RA, the second moved 1" farther by
    its correction: 30 + 20 spaxels wide, at most one more for the grids' phase, plus one on
    each side; every corner inside with a spaxel to spare."""
    a = fov(tmp_path / "a.fits", (10.0, 0.0), "2014-08-01T01:00:00.000")
    b = fov(tmp_path / "b.fits", (10.0 + 3 / 3600, 0.0), "2014-08-01T01:10:00.000")
    t = [table(tmp_path / "t1.fits", 4749.5, 9351.0), table(tmp_path / "t2.fits", 4750.0, 9350.0)]
    o = offsets(tmp_path / "o.fits", [("2014-08-01T01:00:00.000", 0.0, 0.0),
                                       ("2014-08-01T01:10:00.000", -1 / 3600, 0.0)])
    grid = pieces.derive([b, a], t, o, 4000.0, 10000.0)
    assert grid.crval == pytest.approx((10.0, 0.0))  # the first exposure's, corrected
    assert 52 <= grid.shape[0] <= 53 and 22 <= grid.shape[1] <= 23
    assert grid.lambda0 == 4749.5 and grid.planes == int(np.ceil((9351 - 4749.5) / 1.25)) + 1
    w = WCS(fits.Header(grid.header()), naxis=2)
    spaxel = 0.2 / 3600
    east, north = np.array([-1, 1, 1, -1]) * 15 * spaxel, np.array([-1, -1, 1, 1]) * 10 * spaxel
    for ra, dec in ((10.0 + east, north), (10.0 + 4 / 3600 + east, north)):  # b moved by 1"
        x, y = w.all_world2pix(ra, dec, 1)
        assert (x >= 1.5).all() and (x <= grid.shape[0] - 0.5).all(), x
        assert (y >= 1.5).all() and (y <= grid.shape[1] - 0.5).all(), y
    assert pieces.derive([a, b], t, None, 6000.0, 7000.0).lambda0 == 6000.0


def test_a_grid_from_unreadable_inputs_is_a_data_error(tmp_path):
    bad = tmp_path / "bad.fits"
    bad.write_bytes(b"not FITS")
    with pytest.raises(DataError, match="cannot derive the cube's grid"):
        pieces.derive([bad], [bad], None, 4000.0, 10000.0)


def piece(tmp_path: Path, k: int, start: int, first: int, last: int, total: int,
          planes: int | None = None) -> tuple[Path, fits.Header]:
    """A piece cube of ``planes`` planes (enough for the ones it owns unless given)."""
    data = np.zeros((planes or last - start + 1, 2, 2), np.float32)
    h = fits.Header()
    h[pieces.START], h[pieces.FIRST], h[pieces.LAST], h[pieces.PLANES] = start, first, last, total
    path = tmp_path / f"piece{k}.fits"
    ext = fits.Header({"CRVAL3": 4600.0 + (start - 1) * 1.25, "CRPIX3": 1.0, "CD3_3": 1.25})
    fits.HDUList([fits.PrimaryHDU(header=h), fits.ImageHDU(data, ext, name="DATA"),
                  fits.ImageHDU(data, ext, name="STAT")]).writeto(path)
    return path, h


def test_the_stitch_refuses_gaps_overlaps_and_foreign_cubes(tmp_path):
    cube = np.zeros((10, 2, 2), np.float32)
    a = piece(tmp_path, 1, 1, 1, 8, 20)
    b = piece(tmp_path, 2, 5, 9, 20, 20)
    assert [p for p, _ in stitch.layout(*zip(b, a, strict=True))] == [a[0], b[0]]
    gap = piece(tmp_path, 3, 6, 10, 20, 20)
    with pytest.raises(DataError, match="planes 9-9 uncovered"):
        stitch.layout(*zip(a, gap, strict=True))
    with pytest.raises(DataError, match="overlap at plane 8"):
        stitch.layout(*zip(a, piece(tmp_path, 4, 4, 8, 20, 20), strict=True))
    with pytest.raises(DataError, match="different cubes"):
        stitch.layout(*zip(a, piece(tmp_path, 5, 5, 9, 21, 21), strict=True))
    with pytest.raises(DataError, match="stop at plane 8 of 20"):
        stitch.layout([a[0]], [a[1]])
    beyond = piece(tmp_path, 6, 9, 9, 20, 20, planes=10)  # from plane 9, they end at 18
    with pytest.raises(DataError, match="planes 9-20 are not among the 10 it holds"):
        stitch.layout(*zip(a, beyond, strict=True))
    plain = tmp_path / "plain.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(cube, name="DATA")]).writeto(plain)
    with pytest.raises(DataError, match="not a wavelength piece"):
        stitch.layout([plain], [fits.getheader(plain)])
    hostile = fits.getheader(a[0])
    hostile[pieces.FIRST] = "1; rm -rf /"
    with pytest.raises(DataError, match="not a wavelength piece"):
        stitch.layout([a[0]], [hostile])


def test_white_light_is_the_mean_of_finite_values_inside_the_filter():
    header = fits.Header({"CRVAL3": 4648.75, "CRPIX3": 1.0, "CD3_3": 1.25})
    block = np.ones((4, 1, 2), np.float32)
    block[:, 0, 0] = [100.0, 2.0, 4.0, np.nan]  # 4648.75 Å is outside the filter
    total, n = stitch.accumulate(None, block, header, 1)
    assert total[0, 0] / n[0, 0] == 3.0 and n.tolist() == [[2, 3]]
