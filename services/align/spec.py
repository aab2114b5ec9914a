"""muse_exp_align: the IMAGE_FOV of two or more exposures of one field -> OFFSET_LIST
(contract from `esorex --man-page muse_exp_align`).  One job per target, setup and night.

The recipe only warns when it finds no overlap or no sources, and then writes offsets of
zero (MUSE.md §9): ``compute.py`` checks the list and falls back to the header offsets."""

from musedrp.stages import Input, MemoryModel, Product, RecipeParams, StageSpec
from musedrp.tags import Tag


class ExpAlignParams(RecipeParams):
    """muse_exp_align options; defaults from the man page."""

    rsearch: str = "30.,4.,2.,0.8"
    nbins: int = 60
    weight: bool = True
    fwhm: float = 5.0
    threshold: float = 15.0
    bkgignore: float = 0.05
    bkgfraction: float = 0.1
    step: float = 0.5
    iterations: int = 100000
    srcmin: int = 5
    srcmax: int = 80
    roundmin: float = -1.0
    roundmax: float = 1.0
    sharpmin: float = 0.2
    sharpmax: float = 1.0
    bpixdistance: float = 5.0


SPEC = StageSpec(
    name="align",
    recipe="muse_exp_align",
    inputs=(Input(Tag.IMAGE_FOV, raw=True, min_count=2), Input(Tag.SOURCE_LIST, required=False)),
    # one SOURCE_LIST per exposure: the planner names them all
    products=(Product(Tag.OFFSET_LIST), Product(Tag.PREVIEW_FOV),
              Product(Tag.SOURCE_LIST, numbered=True)),
    params=ExpAlignParams,
    per_ifu=False,
    # images only (300 x 300 floats per exposure at 24 IFUs): small and flat
    memory=MemoryModel(base_gb=0.3, per_frame_gb=0.05),
    timeout_s=900.0,
    qc={Tag.OFFSET_LIST: (r"QC EXPALIGN (NOMATCH|NMATCH MIN|OFFSET (RA|DEC) STDEV)",
                          r"MUSEDRP ALIGN \w+")},
)
