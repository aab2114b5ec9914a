"""A full scratch disk met during an S3 transfer is not an S3 failure: ``s3_error`` leaves it to
the worker (which retries it as a full scratch), found by tests/integration/test_worker_faults.py
(a download into a 64 MB tmpfs raised ``TypeError`` from ``s3_error`` and was dead-lettered)."""

import errno

import pytest

from musedrp.storage import s3_error


@pytest.mark.parametrize("err", [OSError(errno.ENOSPC, "No space left on device"),
                                 OSError(errno.EDQUOT, "Disk quota exceeded"),
                                 ValueError("a bug")])
def test_an_error_that_is_not_s3s_is_left_to_the_caller(err):
    assert s3_error(err, "download raw/n/a.fits") is None
