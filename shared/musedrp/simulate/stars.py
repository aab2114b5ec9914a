"""A crowded star field, as in the NGC 6397 observations: stars with a luminosity function,
a few stellar spectra and a seeing PSF, seen through the slices at each exposure's pointing.

Positions are offsets from the OB's target in arcsec (east, north).  An exposure points at
the target plus its commanded offset (what the header records) plus a pointing error (what
the header does not know, and ``muse_exp_align`` has to find).  With the position angle 0
of the simulated exposures the field's x grows to the west: a spaxel ``(x, y)`` from the
pointing sees the sky ``0.2" * (-x, y)`` east and north of it (CD1_1 < 0, MUSE.md §7.4).
"""

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from musedrp.simulate import detector, field

SPAXEL = 0.2  # arcsec
N_STARS = 400
FIELD_SIDE = 80.0  # arcsec: the 60" field plus room for the dithers
SEEING = 0.8  # arcsec FWHM of the Gaussian PSF
SIGMA = SEEING / SPAXEL / (2 * math.sqrt(2 * math.log(2)))  # spaxels
BRIGHTEST = 1.5e-14  # erg/s/cm^2/A at 7000 A: ~25 000 e- at the peak pixel in 600 s
MAG_RANGE = 6.0  # the faintest stars are 250 times fainter
# electrons per wavelength row and second for 1 erg/s/cm^2/A, as the simulated standard
# star gives them (the response muse_standard derives turns them back into flux)
ELECTRONS_PER_FLUX = field.STAR_PEAK * field.STAR_AREA / (60 * field.STAR_FLUX)
# stellar types: temperature [K] and absorption lines (wavelength [A], depth)
TYPES = {
    "A": (9000.0, ((4861.3, 0.5), (6562.8, 0.45), (8665.0, 0.2))),
    "G": (5800.0, ((5172.7, 0.35), (5183.6, 0.35), (5889.9, 0.4), (5895.9, 0.4),
                   (6562.8, 0.25), (8542.1, 0.3))),
    "M": (3600.0, ((5889.9, 0.5), (5895.9, 0.5), (7054.0, 0.3), (8498.0, 0.4),
                   (8542.1, 0.5), (8662.1, 0.45))),
}


def stellar_shape(kind: str, lam: np.ndarray) -> np.ndarray:
    """A Planck curve with absorption lines (FWHM 3 A), 1 at 7000 A before the lines."""
    temperature, lines = TYPES[kind]
    planck = lambda w: 1.0 / (w**5 * np.expm1(1.4388e8 / (w * temperature)))  # noqa: E731
    shape = planck(lam) / planck(7000.0)
    for wavelength, depth in lines:
        shape *= 1.0 - depth * np.exp(-0.5 * ((lam - wavelength) / 1.27) ** 2)
    return shape


@dataclass(frozen=True)
class Star:
    east: float  # arcsec from the target
    north: float
    flux: float  # erg/s/cm^2/A at 7000 A (continuum)
    kind: str


@functools.cache
def star_field(seed: int) -> tuple[Star, ...]:
    """Stars uniform over the field, magnitudes from a luminosity function rising by
    10^0.3 per magnitude (many faint, few bright), types 30 % A, 40 % G, 30 % M."""
    rng = np.random.default_rng([seed, 15])
    east, north = rng.uniform(-FIELD_SIDE / 2, FIELD_SIDE / 2, (2, N_STARS))
    # inverse CDF of dN/dm ~ 10^(0.3 m) on [0, MAG_RANGE]
    u = rng.uniform(size=N_STARS)
    a = 0.3 * math.log(10)
    mag = np.log1p(u * np.expm1(a * MAG_RANGE)) / a
    kinds = rng.choice(list(TYPES), N_STARS, p=[0.3, 0.4, 0.3])
    return tuple(Star(round(float(e), 4), round(float(n), 4), float(BRIGHTEST * 10 ** (-0.4 * m)),
                      str(k)) for e, n, m, k in zip(east, north, mag, kinds, strict=True))


def as_dicts(stars: Sequence[Star]) -> list[dict]:
    return [asdict(s) for s in stars]


def spaxels(stars: Sequence[Star], pointing: tuple[float, float]) -> np.ndarray:
    """(N, 2) field positions (x, y) in spaxels of the stars for an exposure whose field
    centre points ``pointing`` = (east, north) arcsec from the target."""
    east = np.array([s.east for s in stars]) - pointing[0]
    north = np.array([s.north for s in stars]) - pointing[1]
    return np.column_stack([-east / SPAXEL, north / SPAXEL])


def erf(x: np.ndarray) -> np.ndarray:
    """erf to 1.5e-7 (Abramowitz & Stegun 7.1.26): numpy has none, and this is all the
    simulator needs of scipy."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                        + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def cell(lo: np.ndarray, hi: np.ndarray, sigma: float = SIGMA) -> np.ndarray:
    """Fraction of a unit Gaussian of width ``sigma`` between ``lo`` and ``hi`` (spaxels)."""
    s = sigma * math.sqrt(2)
    return 0.5 * (erf(hi / s) - erf(lo / s))


def light(ifu: int, index: np.ndarray, lam: np.ndarray, xy: np.ndarray, stars: Sequence[Star],
          exptime: float, biny: int = 1) -> np.ndarray | None:
    """Electrons per trimmed pixel from the stars at field positions ``xy``, or None if no
    star is near the IFU.  Each pixel collects the PSF over its spaxel (1 x 1)."""
    _, sx, sy = field.slice_sky(ifu)
    reach = 6 * SIGMA
    near = [i for i in range(len(stars))
            if np.min(np.abs(sy - xy[i, 1])) < reach and abs(xy[i, 0]) < 160 + reach]
    if not near:
        return None
    rows = index.shape[0]
    y = (np.arange(rows) + 0.5) * biny - 0.5
    shift = detector.slice_shift(ifu, y)  # of every slice at each row: the tilt
    centre = detector.slice_left_edges() + detector.SLICE_WIDTH / 2
    out = np.zeros(index.shape, np.float32)
    for i in near:
        star = stars[i]
        spectrum = (star.flux * ELECTRONS_PER_FLUX * exptime * biny
                    * stellar_shape(star.kind, lam)).astype(np.float32)
        x0, y0 = xy[i]
        for k in np.flatnonzero(np.abs(sy - y0) < reach):
            wy = cell(sy[k] - y0 - 0.5, sy[k] - y0 + 0.5)
            # columns of slice k whose sky x is within reach: x = sx + (centre - column)
            mid = centre[k] + shift[rows // 2] + sx[k] - x0
            cols = np.arange(max(0, int(mid - reach - 3)),
                             min(index.shape[1], int(mid + reach + 4)))
            if cols.size == 0:
                continue
            sky_x = sx[k] + (centre[k] + shift[:, None] - cols[None, :])
            wx = cell(sky_x - x0 - 0.5, sky_x - x0 + 0.5)
            mine = index[:, cols] == k
            out[:, cols] += np.where(mine, wx * wy * spectrum[:, None], 0.0)
    return out


def apparent(stars: Sequence[Star], error: tuple[float, float], centre: tuple[float, float],
             target: tuple[float, float]) -> np.ndarray:
    """(N, 2) RA, DEC (deg) at which an exposure whose pointing was off by ``error`` (east,
    north arcsec) places the stars, when the pipeline ties the header pointing to field
    position ``centre`` (spaxels): the frame of the first exposure, which alignment keeps.

    A star at offset E from the target sits at x = -(E - offset - error) / 0.2 in the field;
    the pipeline gives field position x the offset ``offset - 0.2 (x - centre_x)``."""
    east = np.array([s.east for s in stars]) - error[0] + SPAXEL * centre[0]
    north = np.array([s.north for s in stars]) - error[1] - SPAXEL * centre[1]
    ra0, dec0 = target
    return np.column_stack([ra0 + east / 3600 / np.cos(np.radians(dec0)), dec0 + north / 3600])
