"""muse_flat: raw lamp flats + MASTER_BIAS -> MASTER_FLAT, TRACE_TABLE
(contract from `esorex --man-page muse_flat`)."""

from musedrp.stages import CcdParams, Input, MemoryModel, Product, StageSpec
from musedrp.tags import Tag


class FlatParams(CcdParams):
    """muse_flat options beyond CcdParams; defaults from `esorex --man-page muse_flat`."""

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
    # measured (benchmarks/results/memory_models.md): as muse_bias, 0.91 GB for 3 frames plus
    # the master bias ... 2.52 GB for 11
    memory=MemoryModel(base_gb=0.32, per_frame_gb=0.203),
    timeout_s=1800.0,
    qc={Tag.MASTER_FLAT: (r"QC FLAT MASTER (MEDIAN|INTFLUX)",),
        Tag.TRACE_TABLE: (r"QC TRACE WIDTHS (MEDIAN|MIN|MAX)", r"QC TRACE GAPS MEDIAN")},
)
