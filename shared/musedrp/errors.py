"""Error classes; each decides the fate of a job (see DESIGN.md, "Errors and their outcome")."""

from typing import Any


class MusedrpError(Exception):
    """Base class; ``metadata`` carries numbers worth logging with the message."""

    def __init__(self, message: str, **metadata: Any) -> None:
        super().__init__(message)
        self.metadata = metadata


class NoWork(MusedrpError):
    """Nothing to do, e.g. fewer valid input frames than the recipe needs."""


class Transient(MusedrpError):
    """Worth retrying: storage or broker hiccup, memory pressure, esorex timeout."""


class DataError(MusedrpError):
    """Retrying will not help: esorex failed, a product is missing, a FITS file is corrupt."""


class BadMessage(MusedrpError):
    """A message that cannot be decoded or validated."""


class ConfigError(MusedrpError):
    """A setting or an installation problem found at start-up."""


class Interrupted(BaseException):  # noqa: N818 - a BaseException so `except Exception` cannot swallow it
    """Shutdown requested while a job was running."""
