"""muse_create_sky: PIXTABLE_SKY of every IFU of one SKY exposure + flux calibration, sky lines
and LSF -> SKY_LINES, SKY_CONTINUUM (contract from `esorex --man-page muse_create_sky`).
Merges all IFUs: one job per SKY exposure; its model is what ``--skymethod=subtract-model``
takes off the object exposures (ESO's automatic mode with SKY exposures, MUSE.md §10)."""

from musedrp.stages import Input, MemoryModel, Product, RecipeParams, StageSpec
from musedrp.tags import Tag


class CreateSkyParams(RecipeParams):
    """muse_create_sky options; defaults from the man page."""

    fraction: float = 0.75
    ignore: float = 0.05
    lambdamin: float = 4000.0
    lambdamax: float = 10000.0
    lambdaref: float = 7000.0


SPEC = StageSpec(
    name="sky",
    recipe="muse_create_sky",
    inputs=(
        Input(Tag.PIXTABLE_SKY, raw=True),
        Input(Tag.EXTINCT_TABLE),
        Input(Tag.STD_RESPONSE),
        Input(Tag.STD_TELLURIC, required=False),
        Input(Tag.SKY_LINES),
        Input(Tag.SKY_CONTINUUM, required=False),
        Input(Tag.LSF_PROFILE),
        Input(Tag.SKY_MASK, required=False),
    ),
    products=tuple(Product(t) for t in (Tag.SKY_MASK, Tag.SKY_IMAGE, Tag.SKY_SPECTRUM,
                                         Tag.SKY_LINES, Tag.SKY_CONTINUUM)),
    params=CreateSkyParams,
    per_ifu=False,
    # every IFU's pixel table and a white-light image: 0.12 + 0.625 GB per IFU measured on
    # 1-3 IFUs (benchmarks/results/science_memory.md), ~15 GB at 24
    memory=MemoryModel(base_gb=0.15, per_frame_gb=0.0, per_ifu_gb=0.65),
    timeout_s=3600.0,
    multicore=True,
    qc={Tag.SKY_LINES: (r"QC SKY LINE\d+ \w+",), Tag.SKY_CONTINUUM: (r"QC SKY CONT \w+",)},
)
