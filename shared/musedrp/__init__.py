"""musedrp: automatic reduction of raw MUSE data with the real ESO pipeline."""

__version__ = "0.1.0"
