"""muse_exp_combine: the PIXTABLE_REDUCED of two or more exposures of one field + OFFSET_LIST
-> one DATACUBE_FINAL (contract from `esorex --man-page muse_exp_combine`).  One job per
target, setup and night, or one per wavelength piece when the cube does not fit the memory
budget (``compute.py``, ``musedrp.pieces``); the per-exposure cubes stay (crowded-field
extraction uses them)."""

from typing import Annotated, ClassVar, Literal

from pydantic import StringConstraints

from musedrp.stages import Input, MemoryModel, Product, RecipeParams, StageSpec
from musedrp.tags import Tag


class ExpCombineParams(RecipeParams):
    """muse_exp_combine options; defaults from the man page.  ``piece`` is musedrp's own:
    the wavelength range ("min,max" in Å) of the piece this job resamples, empty for the
    whole cube."""

    OWN: ClassVar[tuple[str, ...]] = ("piece",)

    save: str = "cube"
    resample: Literal["nearest", "linear", "quadratic", "renka", "drizzle", "lanczos"] = "drizzle"
    dx: float = 0.0
    dy: float = 0.0
    dlambda: float = 0.0
    crtype: Literal["iraf", "mean", "median"] = "median"
    crsigma: float = 10.0
    rc: float = 1.25
    pixfrac: str = "0.6,0.6"
    ld: int = 1
    format: Literal["Cube", "Euro3D", "xCube", "xEuro3D", "sdpCube"] = "Cube"
    weight: Literal["exptime", "fwhm", "header", "none"] = "exptime"
    filter: str = "white"
    lambdamin: float = 4000.0
    lambdamax: float = 10000.0
    piece: Annotated[str, StringConstraints(pattern=r"^(\d{4,5}(\.\d+)?,\d{4,5}(\.\d+)?)?$")] = ""


SPEC = StageSpec(
    name="combine",
    recipe="muse_exp_combine",
    inputs=(
        Input(Tag.PIXTABLE_REDUCED, raw=True, min_count=2),
        *(Input(t, required=False) for t in (Tag.OFFSET_LIST, Tag.FILTER_LIST, Tag.OUTPUT_WCS)),
        # not the recipe's: the exposures' field images, which the grid is derived from
        Input(Tag.IMAGE_FOV, min_count=2, own=True),
    ),
    products=(Product(Tag.DATACUBE_FINAL, when="save:cube"),
              Product(Tag.IMAGE_FOV, numbered=True, when="save:cube")),
    params=ExpCombineParams,
    per_ifu=False,
    # every exposure's pixel table at once: the model counts IFU-exposures (the planner
    # passes IFUs x exposures, times a piece's share of the range).  Measured: 2.07 + 0.523
    # GB per IFU-exposure on 2 and 3 exposures of 3 IFUs (benchmarks/results/
    # science_memory.md), but 0.65 per IFU-exposure on the 24-IFU night's three pieces
    # (17.15-19.64 GB, docs/measurements.md): the cube grows with the field as well
    memory=MemoryModel(base_gb=2.2, per_frame_gb=0.0, per_ifu_gb=0.66),
    timeout_s=3600.0,
    multicore=True,
    qc={Tag.DATACUBE_FINAL: (r"QC EXPCOMB \w+",)},
)
