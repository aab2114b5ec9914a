"""The stitch: the wavelength pieces of one cube (``musedrp.pieces``) -> one DATACUBE_FINAL
and its white-light IMAGE_FOV.  musedrp's own step, no recipe: every piece already lies on
the whole cube's grid, so stitching is copying each piece's own planes into place."""

from musedrp.stages import Input, MemoryModel, Product, RecipeParams, StageSpec
from musedrp.tags import Tag


class StitchParams(RecipeParams):
    """No options: what is stitched follows from the pieces' headers."""


SPEC = StageSpec(
    name="stitch",
    recipe="musedrp_stitch",
    # each piece's cube and its IMAGE_FOV (the central piece's gives the image its headers)
    inputs=(Input(Tag.DATACUBE_FINAL, raw=True, min_count=2), Input(Tag.IMAGE_FOV, min_count=2)),
    products=(Product(Tag.DATACUBE_FINAL), Product(Tag.IMAGE_FOV, numbered=True)),
    params=StitchParams,
    per_ifu=False,
    # planes are copied a block at a time, and the white-light sums of one image kept
    memory=MemoryModel(base_gb=0.5, per_frame_gb=0.0),
    timeout_s=3600.0,
    qc={Tag.DATACUBE_FINAL: (r"QC EXPCOMB \w+", r"MUSEDRP PIECES")},
)
