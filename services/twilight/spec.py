"""muse_twilight: skyflats (+ ILLUM) and the calibrations of every IFU -> TWILIGHT_CUBE
(contract from `esorex --man-page muse_twilight`).  Merges all IFUs: one job, no --nifu."""

from typing import Literal

from musedrp.stages import CcdParams, Input, MemoryModel, Product, StageSpec
from musedrp.tags import Tag


class TwilightParams(CcdParams):
    """muse_twilight options beyond CcdParams; defaults from the man page."""

    scale: bool = False
    resample: Literal["nearest", "linear", "quadratic", "renka", "drizzle", "lanczos"] = "drizzle"
    crtype: Literal["iraf", "mean", "median"] = "median"
    crsigma: float = 50.0
    lambdamin: float = 5000.0
    lambdamax: float = 9000.0
    dlambda: float = 250.0
    xorder: int = 2
    yorder: int = 2


SPEC = StageSpec(
    name="twilight",
    recipe="muse_twilight",
    inputs=(
        Input(Tag.SKYFLAT, raw=True, min_count=3),
        Input(Tag.ILLUM, raw=True, required=False),
        Input(Tag.MASTER_BIAS),
        Input(Tag.MASTER_DARK, required=False),
        Input(Tag.MASTER_FLAT),
        Input(Tag.BADPIX_TABLE, required=False),
        Input(Tag.TRACE_TABLE),
        Input(Tag.WAVECAL_TABLE),
        Input(Tag.GEOMETRY_TABLE),
        Input(Tag.VIGNETTING_MASK, required=False),
    ),
    products=(Product(Tag.DATACUBE_SKYFLAT), Product(Tag.TWILIGHT_CUBE)),
    params=TwilightParams,
    per_ifu=False,
    # memory grows with skyflats x IFUs (benchmarks/twilight_memory.md)
    memory=MemoryModel(base_gb=0.5, per_frame_gb=0.2, per_ifu_gb=0.2),
    timeout_s=3600.0,
    qc={Tag.TWILIGHT_CUBE: (r"QC TWILIGHT\d? INT FLUX",)},
)
