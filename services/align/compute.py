"""muse_exp_align, then its OFFSET_LIST checked before anything uses it (MUSE.md §9).

The recipe only warns when fields do not overlap or hold too few stars, and then writes an
offset of zero for them; an image with no usable source makes it fail.  Either way the
exposures are combined on their header offsets instead: an OFFSET_LIST of zeros that says
so (``MUSEDRP ALIGN METHOD = 'header'`` and the reason, in the product and the manifest's
QC), never a silent zero offset.
"""

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

from musedrp import runner
from musedrp.errors import DataError
from musedrp.messages import WorkOrder
from musedrp.runner import StageResult
from musedrp.services.align.spec import SPEC
from musedrp.tags import Tag

OFFSET_LIST = "OFFSET_LIST.fits"
# telescope offsets are good to about 1": a larger correction is a false match
MAX_CORRECTION_ARCSEC = 3.0
# the [ERROR] muse_exp_align ends with when an image has no usable source left
NO_SOURCES = "Too few sources left"


def run(order: WorkOrder, workdir: Path, cpus: Sequence[int]) -> StageResult:
    images = [Path(f.path) for f in order.inputs if f.tag == Tag.IMAGE_FOV]
    try:
        result = runner.compute(SPEC, order, workdir, cpus)
    except DataError as err:
        found = err.metadata.get("run")
        if found is None or not found.returncode or found.returncode < 0 or not any(
                NO_SOURCES in line for line in found.errors):
            raise  # a crash, a kill or a bad product: not a question of the data
        return fallback(images, workdir, f"muse_exp_align failed: {err}", found)
    problem = check(result.products[OFFSET_LIST], len(images), result.qc[OFFSET_LIST])
    if problem:
        return fallback(images, workdir, problem, result.run)
    table = fits.getdata(result.products[OFFSET_LIST], 1)
    with fits.open(result.products[OFFSET_LIST], mode="update") as hdus:
        hdus[0].header["HIERARCH MUSEDRP ALIGN METHOD"] = "muse_exp_align"
    qc = result.qc[OFFSET_LIST] | {"MUSEDRP ALIGN METHOD": "muse_exp_align",
                                   "MUSEDRP ALIGN MAX ARCSEC": round(largest(table), 4)}
    return StageResult(result.products, result.qc | {OFFSET_LIST: qc}, result.run)


def largest(table: fits.FITS_rec) -> float:
    """The largest correction in the list, in arcsec on the sky."""
    ra = np.asarray(table["RA_OFFSET"], float) * 3600.0
    dec_off = np.asarray(table["DEC_OFFSET"], float) * 3600.0
    # RA_OFFSET is a plain RA difference; at |dec| < 80 deg cos(dec) only makes it smaller
    return float(np.max(np.hypot(ra, dec_off), initial=0.0))


def check(path: Path, n_images: int, qc: dict) -> str:
    """Why the recipe's list cannot be used, or "" if it can."""
    try:
        table = fits.getdata(path, 1)
        ra, dec = table["RA_OFFSET"], table["DEC_OFFSET"]
    except (OSError, KeyError, IndexError, TypeError) as err:
        return f"the OFFSET_LIST is not readable: {err}"
    if len(table) != n_images:
        return f"the OFFSET_LIST has {len(table)} rows for {n_images} exposures"
    if not all(map(math.isfinite, [*ra, *dec])):
        return "the OFFSET_LIST holds non-finite offsets"
    unmatched = [i for i in range(1, n_images + 1) if qc.get(f"QC EXPALIGN NMATCH{i}") == 0]
    if unmatched or qc.get("QC EXPALIGN NOMATCH", 0):
        which = ", ".join(map(str, unmatched)) or str(qc.get("QC EXPALIGN NOMATCH"))
        return f"muse_exp_align matched no stars for exposure(s) {which}"
    if (big := largest(table)) > MAX_CORRECTION_ARCSEC:
        return (f"a correction of {big:.2f} arcsec, more than the {MAX_CORRECTION_ARCSEC:g} "
                "arcsec a telescope offset gets wrong: a false match")
    return ""


def fallback(images: Sequence[Path], workdir: Path, reason: str, run) -> StageResult:
    """An OFFSET_LIST of zeros (each exposure where its header says) that gives the reason."""
    dates, mjds = [], []
    for image in images:
        try:
            h = fits.getheader(image, 0)
            dates.append(str(h["DATE-OBS"])[:23])
            mjds.append(float(h["MJD-OBS"]))
        except (OSError, KeyError, ValueError) as err:
            raise DataError(f"{image.name}: no DATE-OBS/MJD-OBS for an offset list: {err}",
                            run=run) from err
    primary = fits.PrimaryHDU()
    primary.header["HIERARCH ESO PRO CATG"] = "OFFSET_LIST"
    primary.header["HIERARCH MUSEDRP ALIGN METHOD"] = "header"
    # a card holds no more; the manifest's QC has the reason whole
    primary.header["HIERARCH MUSEDRP ALIGN REASON"] = reason[:40]
    zeros = np.zeros(len(images))
    table = fits.BinTableHDU.from_columns([
        fits.Column("DATE_OBS", "23A", array=dates), fits.Column("MJD_OBS", "D", array=mjds),
        fits.Column("RA_OFFSET", "D", unit="deg", array=zeros),
        fits.Column("DEC_OFFSET", "D", unit="deg", array=zeros)])
    path = workdir / OFFSET_LIST
    fits.HDUList([primary, table]).writeto(path, overwrite=True, checksum=True)
    qc = {"MUSEDRP ALIGN METHOD": "header", "MUSEDRP ALIGN REASON": reason}
    return StageResult({OFFSET_LIST: path}, {OFFSET_LIST: qc}, run)
