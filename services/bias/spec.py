"""muse_bias: raw biases -> MASTER_BIAS (contract from `esorex --man-page muse_bias`)."""

from musedrp.stages import CcdParams, Input, MemoryModel, Product, StageSpec
from musedrp.tags import Tag


class BiasParams(CcdParams):
    """muse_bias options beyond CcdParams; defaults from `esorex --man-page muse_bias`."""

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
    # measured (benchmarks/results/memory_models.md): 0.91 GB for 3 frames ... 2.52 GB for 11;
    # the least-squares line is 0.301 + 0.2022 x frames, declared a little above it
    memory=MemoryModel(base_gb=0.32, per_frame_gb=0.203),
    timeout_s=1200.0,
    qc={Tag.MASTER_BIAS: (r"QC BIAS MASTER\d RON", r"QC BIAS LEVEL\d MEAN",
                          r"QC BIAS MASTER NBADPIX")},
)
