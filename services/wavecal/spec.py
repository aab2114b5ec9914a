"""muse_wavecal: arcs + MASTER_BIAS, TRACE_TABLE, LINE_CATALOG -> WAVECAL_TABLE
(contract from `esorex --man-page muse_wavecal`)."""

from typing import Literal

from musedrp.stages import Input, MemoryModel, OverscanParams, Product, StageSpec
from musedrp.tags import Tag


class WavecalParams(OverscanParams):
    """muse_wavecal options beyond OverscanParams; defaults from the man page."""

    combine: Literal["average", "median", "minmax", "sigclip"] = "sigclip"
    sigma: float = 1.0
    dres: float = 0.05
    tolerance: float = 0.1
    xorder: int = 2
    yorder: int = 6
    linesigma: float = -1.0
    residuals: bool = False
    fitsigma: float = -1.0
    fitweighting: Literal["uniform", "cerr", "scatter", "cerrscatter"] = "cerrscatter"
    saveimages: bool = False
    merge: bool = False


SPEC = StageSpec(
    name="wavecal",
    recipe="muse_wavecal",
    inputs=(
        Input(Tag.ARC, raw=True, min_count=1),
        Input(Tag.MASTER_BIAS),
        Input(Tag.MASTER_DARK, required=False),
        Input(Tag.MASTER_FLAT, required=False),
        Input(Tag.TRACE_TABLE),
        Input(Tag.LINE_CATALOG),
        Input(Tag.BADPIX_TABLE, required=False),
    ),
    products=(Product(Tag.WAVECAL_TABLE), Product(Tag.WAVECAL_RESIDUALS, when="residuals"),
              Product(Tag.ARC_RED_LAMP, when="saveimages")),
    params=WavecalParams,
    per_ifu=True,
    # measured (benchmarks/results/memory_models.md): 0.84, 1.24, 1.65 GB with 3, 9, 15 arcs
    # of one IFU; the line is 0.638 + 0.0674 x arcs, declared a little above it
    memory=MemoryModel(base_gb=0.66, per_frame_gb=0.068),
    # a healthy run takes about a minute; a catalogue that does not match the arcs makes
    # the recipe loop forever (MUSE.md §7.3): the timeout turns that into a failure
    timeout_s=900.0,
    qc={Tag.WAVECAL_TABLE: (r"QC WAVECAL SLICE1 FIT RMS", r"QC WAVECAL SLICE1 RESOL",
                            r"QC WAVECAL SLICE1 LINES NID")},
)
