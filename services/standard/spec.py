"""muse_standard: PIXTABLE_STD of every IFU + EXTINCT_TABLE, STD_FLUX_TABLE -> STD_RESPONSE,
STD_TELLURIC (contract from `esorex --man-page muse_standard`).  Merges all IFUs."""

from typing import Literal

from musedrp.stages import Input, MemoryModel, Product, RecipeParams, StageSpec
from musedrp.tags import Tag


class StandardParams(RecipeParams):
    """muse_standard options; defaults from the man page, except ``filter``, which adds the
    Johnson and Cousins filters to get zero-point QC (as ESO's on-line pipeline does)."""

    profile: Literal["gaussian", "moffat", "smoffat", "circle", "square", "auto"] = "auto"
    select: Literal["flux", "distance"] = "distance"
    smooth: Literal["none", "median", "ppoly"] = "ppoly"
    lambdamin: float = 4000.0
    lambdamax: float = 10000.0
    lambdaref: float = 7000.0
    darcheck: Literal["none", "check", "correct"] = "none"
    filter: str = "white,Johnson_V,Cousins_R,Cousins_I"


SPEC = StageSpec(
    name="standard",
    recipe="muse_standard",
    inputs=(
        Input(Tag.PIXTABLE_STD, raw=True),
        Input(Tag.EXTINCT_TABLE),
        Input(Tag.STD_FLUX_TABLE),
        Input(Tag.TELLURIC_REGIONS, required=False),
        Input(Tag.FILTER_LIST, required=False),
    ),
    products=tuple(Product(t, numbered=True) for t in (
        Tag.DATACUBE_STD, Tag.STD_FLUXES, Tag.STD_RESPONSE, Tag.STD_TELLURIC)),
    params=StandardParams,
    per_ifu=False,
    # measured: 0.66 GB for 1 IFU (MUSE.md §7.4), 1.93 GB for 3, 15.33 GB for 24
    # (benchmarks/results/cascade_costs_ifus1-24.md); the model is above all three
    memory=MemoryModel(base_gb=0.1, per_frame_gb=0.0, per_ifu_gb=0.64),
    timeout_s=3600.0,
    multicore=True,
    qc={Tag.STD_RESPONSE: (r"QC STANDARD THRU\d+",), Tag.STD_FLUXES: ()},
    deviations=("filter",),
)
