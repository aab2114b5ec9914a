"""ESO frame tags (SOF column 2; ``DO.CATG`` for raw frames, ``PRO.CATG`` for products)."""

from enum import StrEnum


class Tag(StrEnum):
    # raw frames (muse.oca)
    BIAS = "BIAS"
    DARK = "DARK"
    FLAT = "FLAT"
    ILLUM = "ILLUM"
    SKYFLAT = "SKYFLAT"
    ARC = "ARC"
    ARC_LSF = "ARC_LSF"
    MASK = "MASK"
    STD = "STD"
    ASTROMETRY = "ASTROMETRY"
    SKY = "SKY"
    OBJECT = "OBJECT"
    # products and static calibrations
    MASTER_BIAS = "MASTER_BIAS"
    MASTER_DARK = "MASTER_DARK"
    MASTER_FLAT = "MASTER_FLAT"
    TRACE_TABLE = "TRACE_TABLE"
    TRACE_SAMPLES = "TRACE_SAMPLES"
    BADPIX_TABLE = "BADPIX_TABLE"
