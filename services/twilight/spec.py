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
    # fit to 1 and 3 IFUs with 3, 5, 7 skyflats (benchmarks/results/twilight_memory.md):
    # -0.21 + 0.49/IFU + 0.22/frame; base raised by 0.5 GB, as the ILLUM frame (counted as a
    # frame) cost 0.26 GB more than the fit in the 3-IFU reduction (3.30 GB)
    memory=MemoryModel(base_gb=0.3, per_frame_gb=0.22, per_ifu_gb=0.49),
    timeout_s=3600.0,
    qc={Tag.TWILIGHT_CUBE: (r"QC TWILIGHT\d? INT FLUX",)},
)
