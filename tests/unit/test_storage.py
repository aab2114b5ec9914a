"""Object stores: the local directory and S3 (moto in process; the real server is in the
integration tests), checksums, ranged header reads, error mapping."""

import io
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from moto import mock_aws

from musedrp.errors import DataError, Transient
from musedrp.frames import classify, classify_file
from musedrp.storage import HEADER_BUFFER, LocalStore, S3Store, upload_dir


@pytest.fixture
def s3():
    with mock_aws():
        store = S3Store("https://s3.amazonaws.com", "bucket", "key", "secret")
        store.create_bucket()
        yield store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
    else:
        yield request.getfixturevalue("s3")


def test_put_get_json_keys(store, tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 1000)
    store.check()
    store.put_file(src, "raw/n/a.bin")
    store.get_file("raw/n/a.bin", tmp_path / "out" / "a.bin")
    assert (tmp_path / "out" / "a.bin").read_bytes() == src.read_bytes()
    store.put_json({"k": 1}, "products/j/manifest.json")
    assert store.get_json("products/j/manifest.json") == {"k": 1}
    assert store.get_json("products/none/manifest.json") is None
    assert store.keys("raw/") == ["raw/n/a.bin"]
    with pytest.raises(DataError, match="raw/n/missing"):
        store.get_file("raw/n/missing", tmp_path / "m")


def test_manifest_is_uploaded_last(store, tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    for name in ("manifest.json", "MASTER_BIAS-01.fits", "esorex.log"):
        (job / name).write_text(name)
    order = []
    put = store.put_file
    store.put_file = lambda path, key: (order.append(Path(key).name), put(path, key))
    keys = upload_dir(store, job, "products/n/bias/s/k")
    assert order[-1] == "manifest.json" and len(order) == 3
    assert set(keys) == {"MASTER_BIAS-01.fits", "esorex.log"}


def test_headers_are_classified_from_ranges_only(store, make_frame):
    path = make_frame(ifus=(1, 2, 3))
    with fits.open(path) as hdul:  # full-size-like pixel data between the headers
        for ext in hdul[1:]:
            ext.data = np.zeros((1200, 1000), dtype=np.int16)
        hdul.writeto(path, overwrite=True)
    store.put_file(path, "raw/n/frame.fits")
    reader, size = store.open_range("raw/n/frame.fits")
    with io.BufferedReader(reader, HEADER_BUFFER) as f:
        frame = classify(f, size, "raw/n/frame.fits", "frame.fits")
    assert frame == classify_file(path).model_copy(update={"path": "raw/n/frame.fits",
                                                           "name": "frame.fits"})
    assert frame.ifus == (1, 2, 3)
    assert reader.bytes_read <= 4 * HEADER_BUFFER < size / 10
    # one GET per IFU extension: the primary header comes with the first one
    assert reader.requests == len(frame.ifus)


def test_a_changed_object_fails_its_checksum(s3, tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"original")
    s3.put_file(src, "raw/n/a.bin")
    head = s3.client.head_object(Bucket="bucket", Key="raw/n/a.bin")
    s3.client.put_object(Bucket="bucket", Key="raw/n/a.bin", Body=b"tampered",
                         Metadata=head["Metadata"])
    with pytest.raises(Transient, match="SHA-256 differs"):
        s3.get_file("raw/n/a.bin", tmp_path / "b.bin")


def test_unreachable_endpoint_is_transient(tmp_path):
    store = S3Store("http://127.0.0.1:9", "bucket", "k", "s", timeout_s=1, attempts=1)
    with pytest.raises(Transient, match="unreachable"):
        store.get_json("products/x/manifest.json")


def test_keys_cannot_leave_a_local_store(tmp_path):
    with pytest.raises(DataError, match="leaves the store"):
        LocalStore(tmp_path).get_json("../outside.json")


def test_bucket_listing(s3, tmp_path):
    src = tmp_path / "a"
    src.write_bytes(b"a")
    for i in range(3):
        s3.put_file(src, f"raw/n/{i}")
    assert s3.keys("raw/n/") == ["raw/n/0", "raw/n/1", "raw/n/2"]
