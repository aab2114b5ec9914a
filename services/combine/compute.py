"""muse_exp_combine on a grid derived from the exposures (``musedrp.pieces``): the whole
wavelength range, or one piece of it when the planner split the cube to fit the memory
budget (``piece`` = the cut range in Å; the stitch stage joins the pieces)."""

from collections.abc import Sequence
from pathlib import Path

from astropy.io import fits

from musedrp import pieces, runner
from musedrp.messages import InputFile, WorkOrder
from musedrp.runner import StageResult
from musedrp.services.combine.spec import SPEC
from musedrp.tags import Tag

CUBE = "DATACUBE_FINAL.fits"


def run(order: WorkOrder, workdir: Path, cpus: Sequence[int]) -> StageResult:
    params = SPEC.params(**order.params)
    paths = {tag: [Path(f.path) for f in order.inputs if f.tag == tag]
             for tag in (Tag.IMAGE_FOV, Tag.PIXTABLE_REDUCED, Tag.OFFSET_LIST)}
    grid = pieces.derive(paths[Tag.IMAGE_FOV], paths[Tag.PIXTABLE_REDUCED],
                         next(iter(paths[Tag.OFFSET_LIST]), None), params.lambdamin,
                         params.lambdamax)
    cut = tuple(map(float, params.piece.split(","))) if params.piece else \
        (params.lambdamin, params.lambdamax)
    own_first, own_last, first, last = pieces.planes(grid, cut)
    # the rows that land on the piece's planes (the pipeline rounds to the nearest plane)
    lambdamin = grid.wavelength(first) - pieces.STEP / 2
    lambdamax = grid.wavelength(last) + pieces.STEP / 2
    wcs = pieces.write_output_wcs(grid.piece(first, last), workdir / "OUTPUT_WCS.fits")
    recipe_order = order.model_copy(update={
        "inputs": (*order.inputs, InputFile(path=str(wcs), tag=Tag.OUTPUT_WCS)),
        "params": params.model_dump() | {"lambdamin": lambdamin, "lambdamax": lambdamax,
                                         "piece": ""}})
    result = runner.compute(SPEC, recipe_order, workdir, cpus)
    marks = {pieces.START: first, pieces.FIRST: own_first, pieces.LAST: own_last,
             pieces.PLANES: grid.planes}
    with fits.open(result.products[CUBE], mode="update") as hdus:
        for key, value in marks.items():
            hdus[0].header[key] = value
    qc = result.qc | {CUBE: result.qc[CUBE] | {k.removeprefix("HIERARCH "): v
                                               for k, v in marks.items()}}
    return StageResult(result.products, qc, result.run)
