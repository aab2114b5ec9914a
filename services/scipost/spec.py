"""muse_scipost: PIXTABLE_OBJECT of every IFU + STD_RESPONSE and friends -> DATACUBE_FINAL
(contract from `esorex --man-page muse_scipost`).  Merges all IFUs: one job per exposure."""

from typing import Literal

from musedrp.stages import Input, MemoryModel, Product, RecipeParams, StageSpec
from musedrp.tags import Tag


class ScipostParams(RecipeParams):
    """muse_scipost options; defaults from the man page, except ``save`` (the cube, and the
    reduced pixel table muse_exp_combine combines) and ``skymethod``: the planner chooses it
    per exposure as ESO's automatic mode does (``subtract-model`` with a SKY exposure's model,
    ``model`` with a SKY_LINES list, MUSE.md §10); ``simple``, the darkest part of the field,
    when neither exists."""

    save: str = "cube,individual"
    resample: Literal["nearest", "linear", "quadratic", "renka", "drizzle", "lanczos"] = "drizzle"
    dx: float = 0.0
    dy: float = 0.0
    dlambda: float = 0.0
    crtype: Literal["iraf", "mean", "median"] = "median"
    crsigma: float = 15.0
    rc: float = 1.25
    pixfrac: str = "0.8,0.8"
    ld: int = 1
    format: Literal["Cube", "Euro3D", "xCube", "xEuro3D", "sdpCube"] = "Cube"
    weight: Literal["exptime", "fwhm", "none"] = "exptime"
    filter: str = "white"
    autocalib: Literal["none", "deepfield", "user"] = "none"
    skymethod: Literal["none", "subtract-model", "model", "simple"] = "simple"
    lambdamin: float = 4000.0
    lambdamax: float = 10000.0
    lambdaref: float = 7000.0
    darcheck: Literal["none", "check", "correct"] = "none"
    skymodel_fraction: float = 0.1
    skymodel_ignore: float = 0.05
    rvcorr: Literal["bary", "helio", "geo", "none"] = "bary"
    astrometry: bool = True


SUBTRACTED = MemoryModel(base_gb=0.15, per_frame_gb=0.0, per_ifu_gb=0.65)

SPEC = StageSpec(
    name="scipost",
    recipe="muse_scipost",
    inputs=(
        Input(Tag.PIXTABLE_OBJECT, raw=True),
        Input(Tag.EXTINCT_TABLE),
        Input(Tag.STD_RESPONSE),
        *(Input(t, required=False) for t in (
            Tag.STD_TELLURIC, Tag.ASTROMETRY_WCS, Tag.OFFSET_LIST, Tag.FILTER_LIST,
            Tag.OUTPUT_WCS, Tag.AUTOCAL_FACTORS, Tag.RAMAN_LINES, Tag.SKY_LINES,
            Tag.SKY_CONTINUUM, Tag.LSF_PROFILE, Tag.SKY_MASK)),
    ),
    products=(Product(Tag.DATACUBE_FINAL), Product(Tag.IMAGE_FOV, numbered=True),
              Product(Tag.PIXTABLE_REDUCED, numbered=True, when="save:individual")),
    params=ScipostParams,
    per_ifu=False,
    # measured with skymethod=simple on 1-6 IFUs: 0.14 + 1.000 GB per IFU, linear to 1 %
    # (benchmarks/results/scipost_memory.md; 1.88 GB for 3 IFUs with none, MUSE.md); half
    # the wavelength range takes half the memory.  Subtracting a given sky model (or none)
    # builds no sky cube: 0.11 + 0.63 GB per IFU on 1-3 (results/science_memory.md)
    memory=MemoryModel(base_gb=0.2, per_frame_gb=0.0, per_ifu_gb=1.0),
    memory_when=tuple((("skymethod", method), SUBTRACTED)
                      for method in ("subtract-model", "none")),
    timeout_s=3600.0,
    multicore=True,
    qc={Tag.DATACUBE_FINAL: (r"QC SCIPOST \w+",)},
    deviations=("save", "skymethod"),
)
