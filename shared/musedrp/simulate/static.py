"""Stand-ins for ESO's static calibrations, consistent with the simulated instrument.

Formats as the 2.8.7 recipes accept them (MUSE.md §6.2, §7.4).  Real users point
``--static-dir`` at ESO's MUSE calibration kit instead.
"""

from pathlib import Path

import numpy as np
from astropy.io import fits

from musedrp.simulate import detector, field, lines, stars

STANDARD_STARS = {"SIMSTD1": (0.0, -30.0), "SIMSTD2": (30.0, -20.0)}  # RA, DEC [deg]


def extinction(lam: np.ndarray) -> np.ndarray:
    """mag/airmass of the stand-in EXTINCT_TABLE."""
    return 0.012 + 0.12 * (5000.0 / lam) ** 4


def _primary(tag: str, field: str = "") -> fits.PrimaryHDU:
    """``field``: the WFM/NFM mode a geometry or astrometry file is made for (muse.oca)."""
    h = fits.PrimaryHDU()
    h.header["INSTRUME"] = "MUSE"
    h.header["HIERARCH ESO PRO CATG"] = tag
    if field:
        h.header["HIERARCH ESO INS OPTI2 NAME"] = field
    h.header["HIERARCH MUSEDRP STANDIN"] = (True, "simulated stand-in, not an ESO file")
    return h


def _table(columns: list[fits.Column], name: str | None = None) -> fits.BinTableHDU:
    table = fits.BinTableHDU.from_columns(columns)
    if name:  # set the card itself: astropy's ``name`` would upper-case it, and the
        table.header["EXTNAME"] = name  # pipeline looks filters up by exact EXTNAME
    return table


def geometry_table() -> fits.HDUList:
    rows = []
    for ifu in range(1, 25):
        sky, x, y = field.slice_sky(ifu)
        rows += [(ifu, k + 1, int(sky[k]), float(x[k]), float(y[k])) for k in range(48)]
    sub, ccd, sky, x, y = (np.array(c) for c in zip(*rows, strict=True))
    zeros = np.zeros(len(rows))
    return fits.HDUList([_primary("GEOMETRY_TABLE", "WFM"), _table([
        fits.Column("SubField", "J", array=sub), fits.Column("SliceCCD", "J", array=ccd),
        fits.Column("SliceSky", "J", array=sky),
        fits.Column("x", "D", unit="pix", array=x), fits.Column("y", "D", unit="pix", array=y),
        fits.Column("angle", "D", unit="deg", array=zeros),
        fits.Column("width", "D", unit="pix", array=zeros + detector.SLICE_WIDTH),
    ])])


def extinct_table() -> fits.HDUList:
    lam = np.arange(3000.0, 11000.1, 10.0)
    return fits.HDUList([_primary("EXTINCT_TABLE"), _table([
        fits.Column("lambda", "D", unit="Angstrom", array=lam),
        fits.Column("extinction", "D", unit="mag/airmass", array=extinction(lam)),
    ])])


def std_flux_table() -> fits.HDUList:
    lam = np.arange(3000.0, 11000.1, 2.0)
    flux = field.STAR_FLUX * field.star_shape(lam)
    hdus: list = [_primary("STD_FLUX_TABLE")]
    for name, (ra, dec) in STANDARD_STARS.items():
        t = _table([fits.Column("lambda", "D", unit="Angstrom", array=lam),
                    fits.Column("flux", "D", unit="erg/s/cm**2/Angstrom", array=flux),
                    fits.Column("fluxerr", "D", unit="erg/s/cm**2/Angstrom", array=0.01 * flux)],
                   name=name)
        t.header["RA"], t.header["DEC"] = ra, dec
        hdus.append(t)
    return fits.HDUList(hdus)


def filter_list() -> fits.HDUList:
    """Trapezoids standing in for Johnson V, Cousins R and I (zero points need these names)."""
    hdus: list = [_primary("FILTER_LIST")]
    for name, (lo, hi) in {"Johnson_V": (4800, 6400), "Cousins_R": (5600, 8000),
                           "Cousins_I": (7000, 9200)}.items():
        lam = np.arange(lo - 100.0, hi + 100.1, 10.0)
        through = np.clip(np.minimum(lam - (lo - 100), hi + 100 - lam) / 200.0, 0, 1)
        hdus.append(_table([fits.Column("lambda", "D", unit="Angstrom", array=lam),
                            fits.Column("throughput", "D", array=through)], name=name))
    return fits.HDUList(hdus)


def astrometry_wcs() -> fits.HDUList:
    p = _primary("ASTROMETRY_WCS", "WFM")
    h = p.header
    h["WCSAXES"] = 2
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["CD1_1"], h["CD2_2"] = -0.2 / 3600, 0.2 / 3600
    h["CD1_2"], h["CD2_1"] = 0.0, 0.0
    h["CRPIX1"], h["CRPIX2"] = 0.0, 0.0
    h["CRVAL1"], h["CRVAL2"] = 0.0, 0.0
    return fits.HDUList([p])


def sky_lines() -> fits.HDUList:
    """The simulated night's sky lines, one group each, with first-guess fluxes in
    10**(-20)*erg/(s cm^2 arcsec^2) (muse_create_sky and ``--skymethod=model`` fit them)."""
    lam = np.array([w for w, _ in field.SKY_LINES])
    peak = np.array([p for _, p in field.SKY_LINES])
    # electrons of a line in 600 s (Gaussian, FWHM 2.5 A over 1.25 A rows) -> flux per arcsec^2
    electrons = peak * np.sqrt(2 * np.pi) * 2.5 / 2.3548 / detector.DISPERSION
    flux = electrons / 600.0 * detector.DISPERSION / stars.ELECTRONS_PER_FLUX \
        / stars.SPAXEL**2 * 1e20
    n = len(lam)
    return fits.HDUList([_primary("SKY_LINES"), _table([
        fits.Column("name", "8A", array=[f"L{w:.0f}" for w in lam]),
        fits.Column("group", "J", array=np.arange(n)),
        fits.Column("lambda", "D", unit="Angstrom", array=lam),
        fits.Column("flux", "D", unit="10**(-20)*erg/(s cm^2 arcsec^2)", array=flux),
        fits.Column("dq", "J", array=np.zeros(n, int)),
    ], name="LINES")])


STANDINS = {
    "line_catalog.fits": lambda: lines.line_catalog(detector.DISPERSION),
    "geometry_table_wfm.fits": geometry_table,
    "extinct_table.fits": extinct_table,
    "std_flux_table.fits": std_flux_table,
    "filter_list.fits": filter_list,
    "astrometry_wcs_wfm.fits": astrometry_wcs,
    "sky_lines.fits": sky_lines,
}


def write_static(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in STANDINS.items():
        make().writeto(out / name, overwrite=True, checksum=True)
        paths.append(out / name)
    return paths
