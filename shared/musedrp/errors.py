"""Error classes; each decides the fate of a job (see DESIGN.md, "Errors and their outcome").

``broker.fate`` is the one place that maps them to a message's outcome:

==============  =============================================  ===========================
raised          e.g.                                           outcome
==============  =============================================  ===========================
NoWork          fewer than 3 usable biases                     ``skipped``: ack
Transient       S3 5xx/429/SlowDown, connection lost, timeout  ``retried`` via a delay
                                                               queue; past the last,
                                                               ``failed``
DataError       esorex failed, S3 400, no such key, checksum   ``failed``: dead letter,
                                                               ``job.finished`` failed
ConfigError     S3 403 (AccessDenied, SignatureDoesNotMatch,   start-up: exit 1; while
                InvalidAccessKeyId), NoSuchBucket, no esorex   handling: ``stopped``, the
                                                               message requeued, exit 1
Interrupted     second SIGTERM while esorex runs               ``interrupted``: requeued
BadMessage      undecodable or invalid body                    ``rejected``: dead letter
other           a bug                                          ``failed``, with traceback
==============  =============================================  ===========================

Storage failures are classified once, where they happen (``storage.s3_error``).
"""

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


class NotFound(DataError):
    """No such object or file; callers asking whether one exists catch this, and only this."""


class BadMessage(MusedrpError):
    """A message that cannot be decoded or validated."""


class ConfigError(MusedrpError):
    """A setting or an installation problem: found at start-up, or met while handling a
    message (the same for every message, so the service stops rather than fail them all)."""


class Interrupted(BaseException):  # noqa: N818 - a BaseException so `except Exception` cannot swallow it
    """Shutdown requested while a job was running."""
