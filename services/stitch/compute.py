"""Stitch a cube's wavelength pieces: check that their own planes tile the whole grid, copy
them in order into one DATACUBE_FINAL (DATA and STAT, a block of planes at a time), and
compute its white-light image over the whole range as the pipeline does (the mean of the
finite values of the planes inside the built-in "white" filter, 4650-9300 Å).  The header
and QC are those of the piece centred on the cube's middle plane, where muse_exp_combine
measures its QC (``musedrp.pieces``)."""

import resource
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

from musedrp import esorex, pieces
from musedrp.errors import DataError
from musedrp.messages import WorkOrder
from musedrp.runner import StageResult
from musedrp.services.stitch.spec import SPEC
from musedrp.tags import Tag

CUBE, IMAGE = "DATACUBE_FINAL.fits", "IMAGE_FOV_0001.fits"
WHITE = (4650.0, 9300.0)  # the pipeline's built-in white filter (kMuseNominalLambdaMin/Max)
BLOCK = 64  # planes copied at a time
MARKS = (pieces.START, pieces.FIRST, pieces.LAST, pieces.PLANES)


def run(order: WorkOrder, workdir: Path, cpus: Sequence[int]) -> StageResult:
    started, cpu0 = time.monotonic(), time.process_time()
    cubes = {Path(f.path): f.job_key for f in order.inputs if f.tag == Tag.DATACUBE_FINAL}
    images = {f.job_key: Path(f.path) for f in order.inputs if f.tag == Tag.IMAGE_FOV}
    paths = list(cubes)
    heads = [fits.getheader(p, 0) for p in paths]
    tiles = layout(paths, heads)
    total = tiles[0][1][pieces.PLANES]
    central = next(p for p, m in tiles if m[pieces.FIRST] <= total // 2 + 1 <= m[pieces.LAST])
    if cubes[central] not in images:
        raise DataError(f"no IMAGE_FOV of the central piece {cubes[central]}")
    primary = heads[paths.index(central)].copy()
    for key in MARKS:
        del primary[key]
    primary["HIERARCH MUSEDRP PIECES"] = (len(paths), "wavelength pieces stitched")
    cube = workdir / CUBE
    fits.PrimaryHDU(header=primary).writeto(cube)
    white = None
    for ext in ("DATA", "STAT"):
        with fits.open(tiles[0][0], memmap=True) as first:
            header = first[ext].header.copy()
        start = tiles[0][1][pieces.START]
        header["NAXIS3"] = total
        header["CRVAL3"] = header["CRVAL3"] - (start - 1) * header["CD3_3"]
        stream = fits.StreamingHDU(str(cube), header)
        sums = None
        for path, h in tiles:
            with fits.open(path, memmap=True) as hdus:
                data = hdus[ext].section
                for a in range(h[pieces.FIRST], h[pieces.LAST] + 1, BLOCK):
                    b = min(a + BLOCK, h[pieces.LAST] + 1)
                    block = np.asarray(data[a - h[pieces.START]:b - h[pieces.START]], ">f4")
                    stream.write(block)
                    if ext == "DATA":
                        sums = accumulate(sums, block, header, a)
        stream.close()
        if ext == "DATA":
            white = sums
    image = write_image(workdir / IMAGE, images[cubes[central]], white)
    qc = {CUBE: esorex.qc_keywords(cube) | {"MUSEDRP PIECES": len(paths)}, IMAGE: {}}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    run_record = esorex.RecipeRun(
        recipe=SPEC.recipe, command=["musedrp", "stitch", *map(str, paths)], returncode=0,
        wall_s=time.monotonic() - started, cpu_user_s=time.process_time() - cpu0,
        cpu_sys_s=0.0, peak_rss_bytes=usage.ru_maxrss * 1024, cpus=list(cpus),
        omp_num_threads=1, timed_out=False, versions={"musedrp_stitch": "1"},
        products=[cube, image])
    return StageResult({CUBE: cube, IMAGE: image}, qc, run_record)


def layout(paths: Sequence[Path], heads: Sequence[fits.Header]) -> list[tuple[Path, fits.Header]]:
    """The pieces in wavelength order, checked to tile the whole grid exactly once, each
    owning planes its cube holds."""
    try:
        marks = [{k: int(h[k]) for k in MARKS} for h in heads]
        planes = [int(fits.getval(p, "NAXIS3", "DATA")) for p in paths]
    except (KeyError, ValueError, TypeError, OSError) as err:
        raise DataError(f"a cube that is not a wavelength piece: {err}") from err
    tiles = sorted(zip(paths, marks, planes, strict=True), key=lambda t: t[1][pieces.FIRST])
    totals = {m[pieces.PLANES] for _, m, _ in tiles}
    if len(totals) != 1:
        raise DataError(f"pieces of different cubes: {sorted(totals)} planes")
    (total,) = totals
    expected = 1
    for path, m, n in tiles:
        if m[pieces.FIRST] != expected:
            raise DataError(f"the pieces leave planes {expected}-{m[pieces.FIRST] - 1} uncovered"
                            if m[pieces.FIRST] > expected else
                            f"the pieces overlap at plane {m[pieces.FIRST]}")
        if not m[pieces.START] <= m[pieces.FIRST] <= m[pieces.LAST] < m[pieces.START] + n:
            raise DataError(f"{path.name}: planes {m[pieces.FIRST]}-{m[pieces.LAST]} are not "
                            f"among the {n} it holds from plane {m[pieces.START]}")
        expected = m[pieces.LAST] + 1
    if expected != total + 1:
        raise DataError(f"the pieces stop at plane {expected - 1} of {total}")
    return [(path, m) for path, m, _ in tiles]


def accumulate(sums, block: np.ndarray, header: fits.Header, first: int):
    """Add the planes of ``block`` (1-based whole-cube planes from ``first``) inside the white
    filter to (sum, count) per spaxel, in double as the pipeline sums."""
    if sums is None:
        sums = (np.zeros(block.shape[1:]), np.zeros(block.shape[1:], np.int64))
    lam = header["CRVAL3"] + (np.arange(first, first + len(block)) - header["CRPIX3"]) \
        * header["CD3_3"]
    inside = (lam >= WHITE[0]) & (lam <= WHITE[1])
    for plane in block[inside]:
        good = np.isfinite(plane)
        sums[0][good] += plane[good]
        sums[1][good] += 1
    return sums


def write_image(path: Path, source: Path, sums) -> Path:
    """The white-light image, with the headers of the central piece's own IMAGE_FOV."""
    with fits.open(source) as hdus:
        total, n = sums
        with np.errstate(invalid="ignore", divide="ignore"):
            image = np.where(n > 0, total / np.maximum(n, 1), np.nan).astype(np.float32)
        hdus["DATA"].data = image
        hdus.writeto(path, output_verify="silentfix")
    return path
