"""Shared fixtures: tiny synthetic FITS files for unit tests, a PostgreSQL database."""

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import create_engine, text

PG_ADMIN_URL = os.environ.get("MUSEDRP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

BASE_KEYS = {  # dotted short form for ESO keywords, as in MUSE.md
    "INSTRUME": "MUSE",
    "DPR.CATG": "CALIB",
    "DPR.TYPE": "BIAS",
    "DPR.TECH": "IFU",
    "TPL.ID": "MUSE_wfm_cal_bias",
    "TPL.START": "2014-08-01T18:00:00",
    "TPL.NEXP": 3,
    "TPL.EXPNO": 1,
    "INS.MODE": "WFM-NOAO-N",
    "INS.OPTI1.NAME": "Blue",
    "INS.OPTI2.NAME": "WFM",
    "DET.READ.CURID": 1,
    "DET.READ.CURNAME": "SCI1.0",
    "DET.BINX": 1,
    "DET.BINY": 1,
    "MJD-OBS": 56870.75,
    "EXPTIME": 0.0,
}


def job_key(name: str) -> str:
    """A valid job key (16 hex digits) spelling ``name`` (up to 8 ASCII characters), so that
    tests keep readable job names: ``job_key("b1") == "0000000000006231"``."""
    return name.encode().hex().rjust(16, "0")


def job_name(key: str) -> str:
    """The name ``job_key`` spelled."""
    return bytes.fromhex(key).lstrip(b"\0").decode()


def card(key: str) -> str:
    """``DPR.TYPE`` -> ``HIERARCH ESO DPR TYPE``; plain FITS keys stay as they are."""
    return "HIERARCH ESO " + key.replace(".", " ") if "." in key else key


@pytest.fixture
def make_frame(tmp_path: Path) -> Callable[..., Path]:
    """Write a tiny MUSE-like file: the keywords a classifier reads and small CHAN extensions."""
    counter = iter(range(10**6))

    def make(keys: dict | None = None, ifus=(1,), drop=(), name: str | None = None) -> Path:
        h = fits.Header()
        for k, v in {**BASE_KEYS, **(keys or {})}.items():
            if k not in drop:
                h[card(k)] = v
        h["ARCFILE"] = name or f"MUSE.{float(h.get('MJD-OBS', 0)):.6f}.{next(counter):04d}.fits"
        hdus = [fits.PrimaryHDU(header=h)]
        hdus += [fits.ImageHDU(np.zeros((4, 4), np.uint16), name=f"CHAN{i:02d}") for i in ifus]
        path = tmp_path / h["ARCFILE"]
        fits.HDUList(hdus).writeto(path)
        return path

    return make


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> Iterator[str]:
    """A fresh registry database: an SQLite file, or a new database on the local PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.sqlite'}"
        return
    name = f"musedrp_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
