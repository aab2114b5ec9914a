"""Cubes in wavelength pieces (MUSE.md §9), shared by the planner, the combine stage and the
stitch stage.

A cube too large for the memory budget is resampled in pieces of its wavelength range, all
on one grid (``OUTPUT_WCS``), then stitched.  The grid is derived from the whole input, the
same for every piece, and every combined cube uses it (one piece or many), so a stitched
cube can be compared with a one-piece one plane by plane:

- spatially, the union of the exposures' own cube footprints (their IMAGE_FOV, each moved
  by its OFFSET_LIST correction) on the first exposure's tangent plane, one spaxel wider
  on each side;
- spectrally, the pipeline's own rule: the first wavelength of the data (the pixel tables'
  ``LIMITS LAMBDA LOW``) and 1.25 Å planes to the last.

Each piece owns the planes whose wavelength falls into its cut range and resamples
``MARGIN`` more on each side, because drizzle (``ld=1``) and the cosmic-ray statistics reach
two planes beyond a plane; the margin planes are discarded by the stitch.  The piece that
owns the whole cube's central plane is widened to be centred on it: muse_exp_combine
measures its QC (``QC EXPCOMB FWHM``...) on the central plane, so that piece's QC is the
whole cube's.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from musedrp.errors import DataError

STEP = 1.25  # Å per plane, the pipeline's default sampling (kMuseSpectralSamplingA)
MARGIN = 4  # planes resampled beyond a piece's own on each side
# the wavelengths WFM data cover (4650-9300 Å nominal, the blue cut-off filter at ~4750);
# the planner cuts this range into equal pieces
DATA_RANGE = (4600.0, 9400.0)
# what the planner allows for the central piece being widened to centre on the cube's
# middle plane: the data's middle is within this of DATA_RANGE's
CENTRE_SLACK = 150.0
MOST = 15  # pieces at most: each reads every input table again
LLO, LHI = "HIERARCH ESO DRS MUSE PIXTABLE LIMITS LAMBDA LOW", \
    "HIERARCH ESO DRS MUSE PIXTABLE LIMITS LAMBDA HIGH"
# in a piece's cube, 1-based in the whole grid: the plane its first plane is, the first and
# last planes it owns; and the whole grid's plane count
START, FIRST, LAST, PLANES = (f"HIERARCH MUSEDRP PIECE {k}"
                              for k in ("START", "FIRST", "LAST", "PLANES"))


def cuts(lambdamin: float, lambdamax: float, n: int) -> list[tuple[float, float]]:
    """``n`` cut ranges covering [lambdamin, lambdamax], equal over the data's range."""
    lo, hi = max(lambdamin, DATA_RANGE[0]), min(lambdamax, DATA_RANGE[1])
    inner = [lo + (hi - lo) * k / n for k in range(1, n)]
    edges = [lambdamin, *inner, lambdamax]
    return list(zip(edges[:-1], edges[1:], strict=True))


def fraction(n: int) -> float:
    """The largest share of the input rows (over the data's range) one of ``n`` pieces
    loads."""
    if n == 1:
        return 1.0
    lo, hi = DATA_RANGE
    return min(1.0, ((hi - lo) / n + 2 * CENTRE_SLACK + 2 * (MARGIN + 1) * STEP) / (hi - lo))


def count(fits_in, most: int = MOST) -> int | None:
    """The fewest pieces (odd: one is centred on the middle plane) for which ``fits_in(f)``
    holds for the largest piece's share ``f``; None if not even ``most`` do."""
    for n in range(1, most + 1, 2):
        if fits_in(fraction(n)):
            return n
    return None


@dataclass(frozen=True)
class Grid:
    """A cube's pixel grid: the spatial WCS (TAN, CDi_j) and the wavelength planes."""

    crval: tuple[float, float]
    crpix: tuple[float, float]
    cd: tuple[float, float]  # CD1_1 (negative: RA grows to the left), CD2_2
    shape: tuple[int, int]  # NAXIS1, NAXIS2
    lambda0: float  # wavelength of plane 1
    planes: int

    def wavelength(self, plane: int) -> float:
        """The wavelength of 1-based ``plane``."""
        return self.lambda0 + (plane - 1) * STEP

    def header(self) -> fits.Header:
        h = fits.Header()
        h["WCSAXES"] = 3
        for key, value in (("NAXIS1", self.shape[0]), ("NAXIS2", self.shape[1]),
                           ("NAXIS3", self.planes)):
            h[key] = value
        h["CTYPE1"], h["CTYPE2"], h["CTYPE3"] = "RA---TAN", "DEC--TAN", "AWAV"
        h["CUNIT1"], h["CUNIT2"], h["CUNIT3"] = "deg", "deg", "Angstrom"
        h["CRVAL1"], h["CRVAL2"], h["CRVAL3"] = *self.crval, self.lambda0
        h["CRPIX1"], h["CRPIX2"], h["CRPIX3"] = *self.crpix, 1.0
        h["CD1_1"], h["CD2_2"], h["CD3_3"] = *self.cd, STEP
        for key in ("CD1_2", "CD2_1", "CD1_3", "CD3_1", "CD2_3", "CD3_2"):
            h[key] = 0.0
        return h

    def piece(self, first: int, last: int) -> "Grid":
        """The same spatial grid, planes ``first``..``last`` only."""
        return replace(self, lambda0=self.wavelength(first), planes=last - first + 1)


def write_output_wcs(grid: Grid, path: Path) -> Path:
    """An OUTPUT_WCS file: a data-less primary header carrying the grid.

    The pipeline reads the cube's size from the NAXISn cards of the header (CPL's
    cpl_wcs_new_from_propertylist) and no data are needed, so the cards are written beside
    ``NAXIS = 0``, by hand: astropy would drop them from a header without data."""
    cards = fits.Header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0), ("EXTEND", True),
                         ("HIERARCH ESO PRO CATG", "OUTPUT_WCS")])
    cards.extend(grid.header())
    path.write_bytes(cards.tostring(padding=True).encode("ascii"))
    return path


def derive(images: Sequence[Path], tables: Sequence[Path], offsets: Path | None,
           lambdamin: float, lambdamax: float) -> Grid:
    """The grid of a combined cube, from its inputs' headers (see the module's docstring)."""
    try:
        heads = [_image_header(p) for p in images]
        limits = [fits.getheader(p, 0) for p in tables]
        lows, highs = [float(h[LLO]) for h in limits], [float(h[LHI]) for h in limits]
        shifts = _offsets(offsets, [str(h["DATE-OBS"])[:23] for h in heads])
        walls = [WCS(h, naxis=2) for h in heads]
    except (OSError, KeyError, ValueError, IndexError) as err:
        raise DataError(f"cannot derive the cube's grid from its inputs: {err}") from err
    first = min(range(len(heads)), key=lambda i: str(heads[i]["DATE-OBS"]))
    ref = walls[first]
    scale = ref.pixel_scale_matrix  # CDi_j, however the header spells it
    cd = (float(scale[0, 0]), float(scale[1, 1]))
    crval = (float(ref.wcs.crval[0]) - shifts[first][0], float(ref.wcs.crval[1]) - shifts[first][1])
    frame = WCS(naxis=2)
    frame.wcs.ctype, frame.wcs.crval, frame.wcs.crpix = ["RA---TAN", "DEC--TAN"], crval, [0, 0]
    frame.wcs.cd = np.diag(cd)
    xs, ys = [], []
    for h, w, (dra, ddec) in zip(heads, walls, shifts, strict=True):
        nx, ny = h["NAXIS1"], h["NAXIS2"]
        px = np.array([0.5, nx + 0.5, nx + 0.5, 0.5])
        py = np.array([0.5, 0.5, ny + 0.5, ny + 0.5])
        ra, dec = w.all_pix2world(px, py, 1)
        x, y = frame.all_world2pix(ra - dra, dec - ddec, 1)
        xs += list(x)
        ys += list(y)
    x0, x1 = math.floor(min(xs) + 0.5) - 1, math.ceil(max(xs) - 0.5) + 1
    y0, y1 = math.floor(min(ys) + 0.5) - 1, math.ceil(max(ys) - 0.5) + 1
    lo, hi = max(min(lows), lambdamin), min(max(highs), lambdamax)
    if not lo < hi:
        raise DataError(f"no data between {lambdamin:g} and {lambdamax:g} Å "
                        f"(the tables cover {min(lows):g}-{max(highs):g} Å)")
    lo32 = float(np.float32(lo))  # the pipeline keeps the limits as floats
    return Grid(crval=crval, crpix=(1.0 - x0, 1.0 - y0), cd=cd, shape=(x1 - x0 + 1, y1 - y0 + 1),
                lambda0=lo32, planes=math.ceil((float(np.float32(hi)) - lo32) / STEP) + 1)


def _image_header(path: Path) -> fits.Header:
    """An IMAGE_FOV's WCS (its DATA extension) with the exposure's DATE-OBS (primary)."""
    header = fits.getheader(path, 1).copy()
    header["DATE-OBS"] = fits.getval(path, "DATE-OBS", 0)
    return header


def _offsets(path: Path | None, dates: Sequence[str]) -> list[tuple[float, float]]:
    """Each exposure's (RA, DEC) correction in degrees from the OFFSET_LIST; none: zeros."""
    if path is None:
        return [(0.0, 0.0)] * len(dates)
    table = fits.getdata(path, 1)
    by_date = {str(d)[:23]: (float(ra), float(dec)) for d, ra, dec in
               zip(table["DATE_OBS"], table["RA_OFFSET"], table["DEC_OFFSET"], strict=True)}
    return [by_date.get(d, (0.0, 0.0)) for d in dates]


def planes(grid: Grid, cut: tuple[float, float]) -> tuple[int, int, int, int]:
    """A piece's own planes, those with a wavelength in [cut), and the planes it resamples:
    (own first, own last, first, last), 1-based in the whole grid.  The last piece owns the
    cube's last plane, which may lie a fraction of a plane beyond lambdamax; the piece
    owning the central plane is centred on it."""
    own_first = max(1, math.ceil((cut[0] - grid.lambda0) / STEP) + 1)
    own_last = (grid.planes if cut[1] > grid.wavelength(grid.planes) - STEP
                else min(grid.planes, math.ceil((cut[1] - grid.lambda0) / STEP)))
    if own_first > own_last:
        raise DataError(f"the piece {cut[0]:g}-{cut[1]:g} Å holds no plane of the cube")
    first, last = max(1, own_first - MARGIN), min(grid.planes, own_last + MARGIN)
    middle = grid.planes // 2 + 1  # cpl's central plane: index planes / 2, counted from 0
    if own_first <= middle <= own_last:
        half = max(middle - first, last - middle)
        first, last = max(1, middle - half), min(grid.planes, middle + half)
        if middle - first != last - middle:  # too near an edge to centre: the whole range
            first, last = 1, grid.planes
    return own_first, own_last, first, last
