"""muse_lsf: arcs + MASTER_BIAS, TRACE_TABLE, WAVECAL_TABLE, LINE_CATALOG -> LSF_PROFILE
(contract from `esorex --man-page muse_lsf`)."""

from typing import Literal

from musedrp.stages import Input, MemoryModel, OverscanParams, Product, StageSpec
from musedrp.tags import Tag


class LsfParams(OverscanParams):
    """muse_lsf options beyond OverscanParams; defaults from the man page."""

    save_subtracted: bool = False
    line_quality: int = 3
    lsf_range: float = 7.5
    lsf_size: int = 150
    lambda_size: int = 30
    lsf_regression_window: float = 0.7
    merge: bool = False
    combine: Literal["average", "median", "minmax", "sigclip"] = "sigclip"
    method: Literal["interpolate", "hermit"] = "interpolate"


SPEC = StageSpec(
    name="lsf",
    recipe="muse_lsf",
    inputs=(
        Input(Tag.ARC, raw=True, required=False),
        Input(Tag.ARC_LSF, raw=True, required=False),
        Input(Tag.MASTER_BIAS),
        Input(Tag.MASTER_DARK, required=False),
        Input(Tag.MASTER_FLAT, required=False),
        Input(Tag.TRACE_TABLE),
        Input(Tag.WAVECAL_TABLE),
        Input(Tag.BADPIX_TABLE, required=False),
        Input(Tag.LINE_CATALOG),
    ),
    products=(Product(Tag.LSF_PROFILE), Product(Tag.PIXTABLE_SUBTRACTED, when="save_subtracted")),
    params=LsfParams,
    per_ifu=True,
    # measured (benchmarks/results/memory_models.md): 1.32, 1.32, 1.65 GB with 3, 9, 15 arcs
    # of one IFU (a fixed ~1.3 GB, then the arcs' combination as in wavecal); a line above all
    memory=MemoryModel(base_gb=1.26, per_frame_gb=0.027),
    timeout_s=1800.0,
    qc={Tag.LSF_PROFILE: ()},
)
