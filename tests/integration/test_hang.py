"""A line catalogue whose fluxes are far below the measured line areas makes muse_wavecal
loop forever (MUSE.md §7.3).  The runner's wall-clock limit must end it as a failure."""

import os
import time
from pathlib import Path

import pytest
from astropy.io import fits

from musedrp.errors import Transient
from musedrp.frames import classify_dir
from musedrp.messages import InputFile, WorkOrder
from musedrp.runner import compute
from musedrp.services.wavecal.spec import SPEC
from musedrp.tags import Tag

from .conftest import IFU, product

TIMEOUT_S = 120.0  # a healthy wavecal of one IFU takes about 50 s here


def esorex_processes() -> set[int]:
    pids = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if b"muse_wavecal" in (p / "cmdline").read_bytes():
                    pids.add(int(p.name))
            except OSError:
                pass
    return pids


def test_hanging_catalogue_is_killed_at_the_timeout(night, workspace, reduced):
    raw, _ = night
    out = reduced[1]
    catalog = workspace / "hang" / "line_catalog.fits"
    catalog.parent.mkdir()
    with fits.open(raw / "static" / "line_catalog.fits") as hdul:
        hdul[1].data["flux"] *= 1e-3  # a few hundred: every line is dropped before matching
        hdul.writeto(catalog)
    frames, _ = classify_dir(raw)
    arcs = [f for f in frames if f.tag == Tag.ARC]
    bias = product(out, "bias", f"MASTER_BIAS-{IFU:02d}.fits")
    trace = product(out, "flat", f"TRACE_TABLE-{IFU:02d}.fits")
    inputs = [InputFile(tag=Tag.ARC, path=f.path, ifu=IFU) for f in arcs] + [
        InputFile(tag=Tag.MASTER_BIAS, path=str(bias)),
        InputFile(tag=Tag.TRACE_TABLE, path=str(trace)),
        InputFile(tag=Tag.LINE_CATALOG, path=str(catalog)),
    ]
    order = WorkOrder(stage="wavecal", recipe="muse_wavecal", job_key="00000000000000aa",
                      night="2014-08-01", setup="x", ifu=IFU, inputs=tuple(inputs), params={},
                      memory_gb=2, timeout_s=TIMEOUT_S)
    before = esorex_processes()
    t0 = time.monotonic()
    with pytest.raises(Transient, match="exceeded its 120 s wall-clock limit") as err:
        compute(SPEC, order, workspace / "hang" / "work", sorted(os.sched_getaffinity(0))[:1])
    assert TIMEOUT_S <= time.monotonic() - t0 < TIMEOUT_S + 30
    run = err.value.metadata["run"]
    assert run.timed_out and run.products == []
    time.sleep(1)
    assert esorex_processes() - before == set(), "the recipe survived its timeout"
