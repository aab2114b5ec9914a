"""A raw frame cut to one IFU by ranged reads: the extents recorded at classification, the
file written from them, and every way the ranges or the object can be wrong ending in a
stated DataError."""

import numpy as np
import pytest
from astropy.io import fits
from moto import mock_aws

from musedrp.errors import DataError
from musedrp.frames import classify_file
from musedrp.ifuslice import fetch, ones_complement_sum
from musedrp.messages import InputFile
from musedrp.planner import ifu_ranges
from musedrp.storage import LocalStore, S3Store

IFUS = (1, 2, 3)


@pytest.fixture
def raw(make_frame):
    """A frame of three IFUs with distinct pixels and DATASUM cards, as ESO writes them."""
    path = make_frame(ifus=IFUS)
    with fits.open(path) as hdul:
        for ifu, ext in zip(IFUS, hdul[1:], strict=True):
            ext.data = np.random.default_rng(ifu).integers(0, 2**16, (50, 40), dtype=np.uint16)
        hdul.writeto(path, overwrite=True, checksum=True)
    return path


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    with mock_aws():
        s3 = S3Store("https://s3.amazonaws.com", "bucket", "key", "secret")
        s3.create_bucket()
        yield s3


def order_input(path, ifu: int, **update) -> InputFile:
    frame = classify_file(path)
    f = InputFile(tag=frame.tag, path="raw/n/f.fits", ifu=ifu, datasum=frame.datasums[ifu],
                  ranges=ifu_ranges(frame, ifu))
    return f.model_copy(update=update)


def test_extents_are_recorded_at_classification(raw):
    frame = classify_file(raw)
    with fits.open(raw) as hdul:
        info = {h.name: (h.fileinfo()["hdrLoc"], h.fileinfo()["datLoc"] + h.fileinfo()["datSpan"])
                for h in hdul}
    assert frame.primary_size == info["PRIMARY"][1]
    assert frame.extents == {i: (info[f"CHAN{i:02d}"][0],
                                 info[f"CHAN{i:02d}"][1] - info[f"CHAN{i:02d}"][0])
                             for i in IFUS}
    assert ifu_ranges(frame, 2) == ((0, frame.primary_size), frame.extents[2])
    assert ifu_ranges(frame, None) == ()  # a job of all IFUs reads the whole file


@pytest.mark.parametrize("ifu", IFUS)
def test_a_slice_is_the_primary_hdu_and_one_extension_byte_for_byte(raw, store, tmp_path, ifu):
    store.put_file(raw, "raw/n/f.fits")
    f = order_input(raw, ifu)
    n = fetch(store, "raw/n/f.fits", f, tmp_path / "slice.fits")
    whole = raw.read_bytes()
    (_, first), (offset, length) = f.ranges
    assert (tmp_path / "slice.fits").read_bytes() == whole[:first] + whole[offset:offset + length]
    assert n == first + length < len(whole) / 2
    with fits.open(tmp_path / "slice.fits", checksum=True) as got, fits.open(raw) as ref:
        assert [h.name for h in got] == ["PRIMARY", f"CHAN{ifu:02d}"]
        assert got[0].header == ref[0].header
        assert got[1].header == ref[f"CHAN{ifu:02d}"].header
        np.testing.assert_array_equal(got[1].data, ref[f"CHAN{ifu:02d}"].data)


def test_a_tile_compressed_frame_slices_the_same_way(make_frame, store, tmp_path):
    path = make_frame(ifus=())
    with fits.open(path) as hdul:
        hdus = [hdul[0].copy()] + [fits.CompImageHDU(
            np.full((50, 40), ifu, np.int16), name=f"CHAN{ifu:02d}") for ifu in IFUS]
    fits.HDUList(hdus).writeto(path, overwrite=True, checksum=True)
    store.put_file(path, "raw/n/f.fits")
    fetch(store, "raw/n/f.fits", order_input(path, 3), tmp_path / "slice.fits")
    with fits.open(tmp_path / "slice.fits") as got:
        assert [h.name for h in got] == ["PRIMARY", "CHAN03"]
        assert (got["CHAN03"].data == 3).all()


def test_the_data_sum_is_the_fits_datasum(raw):
    with fits.open(raw) as hdul:
        ext = hdul["CHAN02"]
        start = ext.fileinfo()["datLoc"]
        assert str(ones_complement_sum(raw, start, start + ext.fileinfo()["datSpan"])) == \
            ext.header["DATASUM"]


CORRUPT = {  # ranges from the true (primary length, extension extent)
    "past the object's end": (lambda p, e: ((0, p), (e[0], 10**9)), "within the object's"),
    "one range": (lambda p, e: ((0, p),), "not a primary HDU and one extension"),
    "primary not at 0": (lambda p, e: ((2880, p), e), "not a primary HDU"),
    "overlapping": (lambda p, e: ((0, e[0] + 2880), e), "not a primary HDU"),
    "extension cut short": (lambda p, e: ((0, p), (e[0], e[1] - 2880)), "not a FITS file"),
    "extension off by a block": (lambda p, e: ((0, p), (e[0] + 2880, e[1] - 2880)),
                                 "not a FITS file"),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_ranges_are_a_stated_data_error(raw, store, tmp_path, case):
    store.put_file(raw, "raw/n/f.fits")
    f = order_input(raw, 1)
    ranges, reason = CORRUPT[case]
    f = f.model_copy(update={"ranges": ranges(f.ranges[0][1], f.ranges[1])})
    with pytest.raises(DataError, match=reason):
        fetch(store, "raw/n/f.fits", f, tmp_path / "slice.fits")


def test_ranges_of_another_ifu_are_refused(raw, store, tmp_path):
    store.put_file(raw, "raw/n/f.fits")
    f = order_input(raw, 1).model_copy(update={"ranges": order_input(raw, 2).ranges})
    with pytest.raises(DataError, match=r"extensions \['CHAN02'\], not the primary HDU and CHAN01"):
        fetch(store, "raw/n/f.fits", f, tmp_path / "slice.fits")


def test_an_object_changed_since_the_ingest_is_refused(raw, store, tmp_path):
    f = order_input(raw, 2)
    with fits.open(raw) as hdul:
        hdul["CHAN02"].data[0, 0] ^= 1
        hdul.writeto(tmp_path / "changed.fits")  # no new DATASUM: a different content
    store.put_file(tmp_path / "changed.fits", "raw/n/f.fits")
    with pytest.raises(DataError, match="DATASUM recorded at ingest"):
        fetch(store, "raw/n/f.fits", f, tmp_path / "slice.fits")
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(raw.read_bytes()[: f.ranges[1][0] + 100])
    store.put_file(truncated, "raw/n/f.fits")
    with pytest.raises(DataError, match="within the object's"):
        fetch(store, "raw/n/f.fits", f, tmp_path / "slice.fits")
