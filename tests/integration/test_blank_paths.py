"""The real esorex in scratch and output directories whose paths have blanks: esorex splits
SOF lines on blanks, so the SOF must name the inputs relative to the directory it runs in."""

import functools
from datetime import date

import pytest
from astropy.io import fits

from musedrp import esorex, runner
from musedrp.frames import classify_file
from musedrp.messages import InputFile, WorkOrder
from musedrp.simulate.night import schedule, write_exposure
from musedrp.tags import Tag
from musedrp.topology import BY_NAME

from .conftest import IFU


@pytest.mark.integration
def test_muse_bias_runs_in_directories_with_blanks(tmp_path):
    spec = BY_NAME["bias"].spec
    raw_dir, scratch, out = (tmp_path / d for d in ("raw frames", "scratch dir", "out dir"))
    for d in (raw_dir, scratch):
        d.mkdir()
    biases = [e for e in schedule(date(2014, 8, 1))
              if e.kind == "bias" and e.readout[0] == "SCI1.0"][:3]
    frames = [classify_file(write_exposure(e, [IFU], 7, raw_dir)) for e in biases]
    order = WorkOrder(
        stage="bias", recipe=spec.recipe, job_key="0123456789abcdef", night=frames[0].night,
        setup=frames[0].setup.key, ifu=IFU, params=spec.params().model_dump(), memory_gb=1.0,
        timeout_s=600, inputs=tuple(InputFile(tag=Tag.BIAS, path=f.path, ifu=IFU,
                                              datasum=f.datasums[IFU]) for f in frames))
    result = runner.execute(order, spec, functools.partial(runner.compute, spec), out, [0],
                            scratch)
    assert result.outcome == "succeeded", result.reason
    assert result.directory == out / order.product_dir
    sof = (result.directory / esorex.SOF_FILE).read_text().splitlines()
    assert sorted(sof) == sorted(f"inputs/{f.name} BIAS" for f in frames)
    product = result.directory / f"MASTER_BIAS-{IFU:02d}.fits"
    header = fits.getheader(product)
    assert header["ESO PRO CATG"] == "MASTER_BIAS"
    assert {v for k, v in header.items() if k.startswith("ESO PRO REC1 RAW")
            and k.endswith("NAME")} == {f.name for f in frames}
    assert list(scratch.iterdir()) == []  # the recipe's work directory is gone
