"""Arc lines shared by the simulated arcs and the simulated LINE_CATALOG.

Approximate air wavelengths of bright Ne, Xe and Hg/Cd lines in the MUSE range; what
matters for the simulation is that arcs and catalogue agree, and that the catalogue
follows what ``muse_wavecal`` needs (MUSE.md §7.3): ``flux`` on the scale of the measured
line areas, ``quality`` 5 for isolated lines, 3 otherwise, 2 for same-lamp lines closer
than 8 Angstrom, rows sorted by wavelength, ``VERSION = 3``.
"""

import math
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

PEAK_ELECTRONS = 30000.0  # peak of a strength-1 line in one pixel of one arc
FWHM_A = 2.5  # line width in Angstrom (2.0 pixels at 1.25 A/px)

# (wavelength [A], ion, relative strength)
LINES: tuple[tuple[float, str, float], ...] = (
    (4678.149, "CdI", 0.5), (4799.912, "CdI", 0.6), (5085.822, "CdI", 0.8),
    (5460.735, "HgI", 1.0), (5769.598, "HgI", 0.6), (5790.663, "HgI", 0.6),
    (6438.470, "CdI", 0.9), (7346.508, "CdI", 0.3), (8200.306, "CdI", 0.25),
    (9011.500, "HgI", 0.2),
    (5400.562, "NeI", 0.3), (5852.488, "NeI", 0.8), (5881.895, "NeI", 0.5),
    (5944.834, "NeI", 0.6), (5975.534, "NeI", 0.3), (6029.997, "NeI", 0.4),
    (6074.338, "NeI", 0.6), (6096.163, "NeI", 0.6), (6143.063, "NeI", 0.9),
    (6163.594, "NeI", 0.5), (6217.281, "NeI", 0.5), (6266.495, "NeI", 0.7),
    (6304.789, "NeI", 0.4), (6334.428, "NeI", 0.8), (6382.991, "NeI", 0.8),
    (6402.246, "NeI", 1.0), (6506.528, "NeI", 0.8), (6532.882, "NeI", 0.5),
    (6598.953, "NeI", 0.7), (6678.276, "NeI", 0.7), (6717.043, "NeI", 0.5),
    (6929.467, "NeI", 0.7), (7032.413, "NeI", 0.8), (7173.938, "NeI", 0.4),
    (7245.167, "NeI", 0.7), (7438.898, "NeI", 0.4), (7488.871, "NeI", 0.5),
    (7535.774, "NeI", 0.5), (8082.458, "NeI", 0.3), (8136.406, "NeI", 0.4),
    (8300.326, "NeI", 0.5), (8377.607, "NeI", 0.8), (8418.427, "NeI", 0.5),
    (8495.360, "NeI", 0.6), (8591.259, "NeI", 0.4), (8634.648, "NeI", 0.5),
    (8654.383, "NeI", 0.7), (8780.621, "NeI", 0.5), (8853.867, "NeI", 0.4),
    (9148.672, "NeI", 0.4), (9201.759, "NeI", 0.3),
    (4671.226, "XeI", 0.4), (4807.019, "XeI", 0.3), (4843.294, "XeI", 0.3),
    (4916.508, "XeI", 0.3), (5028.279, "XeI", 0.3), (7119.598, "XeI", 0.4),
    (7642.025, "XeI", 0.6), (7887.393, "XeI", 0.4), (7967.342, "XeI", 0.5),
    (8061.339, "XeI", 0.4), (8231.634, "XeI", 0.9), (8280.116, "XeI", 0.8),
    (8346.821, "XeI", 0.6), (8409.189, "XeI", 0.5), (8819.410, "XeI", 1.0),
    (8952.251, "XeI", 0.5), (9045.446, "XeI", 0.3), (9162.652, "XeI", 0.6),
)

LAMP_OF_ION = {"Ne": "Ne", "Xe": "Xe", "Hg": "HgCd", "Cd": "HgCd"}


@dataclass(frozen=True)
class Line:
    wavelength: float
    ion: str
    strength: float

    @property
    def lamp(self) -> str:
        return LAMP_OF_ION[self.ion[:2]]


def lines(lamp: str | None = None) -> list[Line]:
    return sorted((Line(*row) for row in LINES if lamp is None or LAMP_OF_ION[row[1][:2]] == lamp),
                  key=lambda ln: ln.wavelength)


def arc_spectrum(lamp: str, wavelengths: np.ndarray, dispersion: float) -> np.ndarray:
    """Electrons per pixel row of one lamp's arc, each line a pixel-integrated Gaussian."""
    sigma = FWHM_A / (2 * math.sqrt(2 * math.log(2)))
    half = dispersion / 2
    out = np.zeros_like(wavelengths, dtype=np.float64)
    for ln in lines(lamp):
        near = np.abs(wavelengths - ln.wavelength) < 8 * sigma
        lo = (wavelengths[near] - half - ln.wavelength) / (sigma * math.sqrt(2))
        hi = (wavelengths[near] + half - ln.wavelength) / (sigma * math.sqrt(2))
        area = PEAK_ELECTRONS * ln.strength * sigma / dispersion * math.sqrt(2 * math.pi)
        out[near] += area * 0.5 * (_erf(hi) - _erf(lo))
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x)


def quality(ln: Line, all_lines: list[Line]) -> int:
    others = [o for o in all_lines if o is not ln]
    nearest = min(abs(o.wavelength - ln.wavelength) for o in others)
    same_lamp = min((abs(o.wavelength - ln.wavelength) for o in others if o.lamp == ln.lamp),
                    default=math.inf)
    if same_lamp < 8.0:
        return 2
    return 5 if nearest > 15.0 else 3


def line_catalog(dispersion: float) -> fits.HDUList:
    """LINE_CATALOG: flux = the line's area in electrons as muse_wavecal measures it."""
    all_lines = lines()
    sigma_pix = FWHM_A / dispersion / (2 * math.sqrt(2 * math.log(2)))
    # twice the expected area: lines fainter than 1.15 x the faintest measured area of their
    # lamp are dropped, and slice throughputs scatter by 10 % (MUSE.md §7.3: larger is harmless)
    flux = [2 * PEAK_ELECTRONS * ln.strength * sigma_pix * math.sqrt(2 * math.pi)
            for ln in all_lines]
    cols = fits.ColDefs([
        fits.Column("lambda", "E", unit="Angstrom", array=[ln.wavelength for ln in all_lines]),
        fits.Column("flux", "E", array=flux),
        fits.Column("ion", "8A", array=[ln.ion for ln in all_lines]),
        fits.Column("quality", "J", array=[quality(ln, all_lines) for ln in all_lines]),
    ])
    table = fits.BinTableHDU.from_columns(cols)
    primary = fits.PrimaryHDU()
    primary.header["HIERARCH ESO PRO CATG"] = "LINE_CATALOG"
    for h in (primary.header, table.header):  # the recipe reads it from the primary header
        h["VERSION"] = 3
    return fits.HDUList([primary, table])
