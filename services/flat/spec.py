"""muse_flat: raw lamp flats + MASTER_BIAS -> MASTER_FLAT, TRACE_TABLE
(contract from `esorex --man-page muse_flat`)."""

from typing import Literal

from musedrp.stages import Input, MemoryModel, Product, RecipeParams, StageSpec
from musedrp.tags import Tag


class FlatParams(RecipeParams):
    """muse_flat options; defaults as printed by `esorex --man-page muse_flat`."""

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
    trace: bool = True
    nsum: int = 32
    order: int = 5
    edgefrac: float = 0.5
    losigmabadpix: float = 5.0
    hisigmabadpix: float = 5.0
    samples: bool = False
    merge: bool = False


SPEC = StageSpec(
    name="flat",
    recipe="muse_flat",
    inputs=(
        Input(Tag.FLAT, raw=True, min_count=3),
        Input(Tag.MASTER_BIAS),
        Input(Tag.MASTER_DARK, required=False),
        Input(Tag.BADPIX_TABLE, required=False),
    ),
    products=(Product(Tag.MASTER_FLAT), Product(Tag.TRACE_TABLE),
              Product(Tag.TRACE_SAMPLES, when="samples")),
    params=FlatParams,
    per_ifu=True,
    # measured: 2.46 GB peak for 11 full-size frames of one IFU plus the master bias
    memory=MemoryModel(base_gb=0.2, per_frame_gb=0.21),
    timeout_s=1800.0,
    qc={Tag.MASTER_FLAT: (r"QC FLAT MASTER (MEDIAN|INTFLUX)",),
        Tag.TRACE_TABLE: (r"QC TRACE WIDTHS (MEDIAN|MIN|MAX)", r"QC TRACE GAPS MEDIAN")},
)
