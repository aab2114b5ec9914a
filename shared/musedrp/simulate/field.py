"""The sky side of the simulated instrument: slice geometry, night sky, standard star.

The geometry is the one written into the GEOMETRY_TABLE stand-in (MUSE.md §7.4), so every
frame kind and the static calibrations agree: CCD slice k of an IFU sees sky row
``y = 12 (IFU - 1) + row - 143.5`` and, along the slice, ``x = x_stack + (centre - i)``.
"""

import math

import numpy as np

from musedrp.simulate import detector

# CCD slices 1..12 of a stack see sky slices 9, 8, 1, 10, 7, 2, 11, 6, 3, 12, 5, 4
SKY_ORDER = (9, 8, 1, 10, 7, 2, 11, 6, 3, 12, 5, 4)
SKY_LINES = ((5577.339, 5000.0), (6300.304, 1500.0), (6363.776, 500.0), (8344.602, 800.0),
             (8827.096, 1000.0))  # wavelength [A], peak electrons in a 600 s exposure
STAR_XY = (-37.5, -126.0)  # standard star position in spaxels: centre of IFU 2, stack 2
# the standard star's seeing profile: a Moffat (FWHM 0.75", beta 2.8), the shape muse_standard
# fits by default; a Gaussian star made its smoothed Moffat fit 20-28 % off
STAR_BETA = 2.8
STAR_ALPHA = 3.75 / (2 * math.sqrt(2 ** (1 / STAR_BETA) - 1))  # spaxels
STAR_AREA = math.pi * STAR_ALPHA**2 / (STAR_BETA - 1)  # the profile's sum, peak 1 (spaxels)
STAR_PEAK = 20000.0  # electrons per pixel at the peak of the spectrum, 60 s exposure
STAR_FLUX = 1e-13  # erg/s/cm^2/A at the peak of the spectral shape


def star_shape(lam: np.ndarray) -> np.ndarray:
    """Spectral shape shared by the simulated star and its STD_FLUX_TABLE entry."""
    return np.exp(-0.5 * ((lam - 6000.0) / 3000.0) ** 2)


def slice_sky(ifu: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SliceSky number, sky x and sky y (spaxels) of each CCD slice 1..48."""
    k = np.arange(detector.N_SLICES)
    sky = 12 * (k // 12) + np.array(SKY_ORDER)[k % 12]
    x = ((sky - 1) // 12 - 1.5) * detector.SLICE_WIDTH
    y = 12 * (ifu - 1) + (sky - 1) % 12 - 143.5
    return sky, x, y


def data_centre(ifus) -> tuple[float, float]:
    """Field position (x, y spaxels) of the middle of the IFUs' slices: where muse_scipost
    puts the header's RA/DEC (the centre of the data present, not of the field)."""
    ys = np.concatenate([slice_sky(ifu)[2] for ifu in ifus])
    xs = slice_sky(1)[1]  # the stacks' centres: the same in every IFU
    return float(xs.min() + xs.max()) / 2, float(ys.min() + ys.max()) / 2


def slice_index(ifu: int, biny: int = 1) -> np.ndarray:
    """CCD slice (0-based) that each trimmed pixel belongs to (nearest at the gaps)."""
    rows, cols = detector.TRIMMED[0] // biny, detector.TRIMMED[1]
    y = (np.arange(rows) + 0.5) * biny - 0.5
    u = np.arange(cols)[None, :] - detector.slice_shift(ifu, y)[:, None]
    left = detector.slice_left_edges()
    return np.clip(np.searchsorted(left, u, side="right") - 1, 0, detector.N_SLICES - 1)


def star_image(ifu: int, index: np.ndarray, biny: int = 1) -> np.ndarray | None:
    """Relative brightness of the star on every trimmed pixel, or None if it is far away."""
    _, sx, sy = slice_sky(ifu)
    x0, y0 = STAR_XY
    if np.min(np.abs(sy - y0)) > 40:  # 0.01 % of the peak
        return None
    rows = index.shape[0]
    y = (np.arange(rows) + 0.5) * biny - 0.5
    centre = (detector.slice_left_edges() + detector.SLICE_WIDTH / 2)[index] + \
        detector.slice_shift(ifu, y)[:, None]
    sky_x = sx[index] + (centre - np.arange(index.shape[1])[None, :])
    r2 = (sky_x - x0) ** 2 + (sy[index] - y0) ** 2
    return ((1 + r2 / STAR_ALPHA**2) ** -STAR_BETA).astype(np.float32)


def gaussian_lines(lam: np.ndarray, lines, fwhm: float = 2.5) -> np.ndarray:
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    out = np.zeros_like(lam)
    for wavelength, peak in lines:
        out += peak * np.exp(-0.5 * ((lam - wavelength) / sigma) ** 2)
    return out


def night_sky(lam: np.ndarray, exptime: float) -> np.ndarray:
    """Sky continuum and emission lines, scaled to the exposure time."""
    return (150.0 + gaussian_lines(lam, SKY_LINES)) * exptime / 600.0
