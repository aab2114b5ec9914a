"""muse_bias: raw biases -> MASTER_BIAS (contract from `esorex --man-page muse_bias`)."""

from typing import Literal

from musedrp.stages import Input, MemoryModel, Product, RecipeParams, StageSpec
from musedrp.tags import Tag


class BiasParams(RecipeParams):
    """muse_bias options; defaults as printed by `esorex --man-page muse_bias`."""

    overscan: Literal["none", "offset", "vpoly"] = "vpoly"
    ovscreject: Literal["none", "dcr", "fit"] = "dcr"
    ovscsigma: float = 30.0
    ovscignore: int = 3
    combine: Literal["average", "median", "minmax", "sigclip"] = "sigclip"
    nlow: int = 1
    nhigh: int = 1
    nkeep: int = 1
    lsigma: float = 3.0
    hsigma: float = 3.0
    losigmabadpix: float = 30.0
    hisigmabadpix: float = 3.0
    merge: bool = False


SPEC = StageSpec(
    name="bias",
    recipe="muse_bias",
    inputs=(Input(Tag.BIAS, raw=True, min_count=3), Input(Tag.BADPIX_TABLE, required=False)),
    products=(Product(Tag.MASTER_BIAS),),
    params=BiasParams,
    per_ifu=True,
    # measured: 2.47 GB peak for 11 full-size frames of one IFU (benchmarks/)
    memory=MemoryModel(base_gb=0.2, per_frame_gb=0.21),
    timeout_s=1200.0,
    qc={Tag.MASTER_BIAS: (r"QC BIAS MASTER\d RON", r"QC BIAS LEVEL\d MEAN",
                          r"QC BIAS MASTER NBADPIX")},
)
