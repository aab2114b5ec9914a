"""muse_scibasic: one OBJECT/STD/SKY exposure + calibrations -> PIXTABLE_<type>
(contract from `esorex --man-page muse_scibasic`).  One job per exposure and IFU, as ESO's
on-line pipeline triggers it."""

from typing import Literal

from musedrp.stages import Input, MemoryModel, OverscanParams, Product, StageSpec
from musedrp.tags import Tag


class ScibasicParams(OverscanParams):
    """muse_scibasic options beyond OverscanParams; defaults from the man page, except
    ``saveimage`` (off, as ESO's on-line pipeline runs it: the image is 202 MB per IFU and
    exposure and nothing downstream reads it)."""

    crop: bool = True
    cr: Literal["none", "dcr"] = "none"
    xbox: int = 15
    ybox: int = 40
    passes: int = 2
    thres: float = 5.8
    saveimage: bool = False
    skylines: str = "5577.339,6300.304"
    skyhalfwidth: float = 5.0
    skybinsize: float = 0.1
    skyreject: str = "15.,15.,1"
    resample: bool = False
    dlambda: float = 1.25
    merge: bool = False


RAW = (Tag.OBJECT, Tag.STD, Tag.SKY, Tag.ASTROMETRY)
SPEC = StageSpec(
    name="scibasic",
    recipe="muse_scibasic",
    inputs=(
        *(Input(t, raw=True, required=False) for t in RAW),
        Input(Tag.ILLUM, raw=True, required=False),
        Input(Tag.MASTER_BIAS),
        Input(Tag.MASTER_DARK, required=False),
        Input(Tag.MASTER_FLAT),
        Input(Tag.TRACE_TABLE),
        Input(Tag.WAVECAL_TABLE),
        Input(Tag.GEOMETRY_TABLE),
        Input(Tag.TWILIGHT_CUBE, required=False),
        Input(Tag.BADPIX_TABLE, required=False),
    ),
    # products depend on the raw tag; the planner picks PIXTABLE_<tag> (see pixtable())
    products=tuple(p for t in RAW for p in (
        Product(Tag(f"{t}_RED"), when="saveimage", numbered=True),
        Product(Tag(f"{t}_RESAMPLED"), when="resample", numbered=True),
        Product(Tag(f"PIXTABLE_{t}"), numbered=True))),
    params=ScibasicParams,
    per_ifu=True,
    # measured: 1.40-1.45 GB, 12 s for one exposure of one IFU (with TWILIGHT_CUBE and ILLUM)
    memory=MemoryModel(base_gb=1.5, per_frame_gb=0.0),
    timeout_s=1200.0,
    qc={},
    deviations=("saveimage",),
)

