"""Object stores: the local directory and S3 (moto in process; the real server is in the
integration tests), checksums, ranged header reads, error mapping."""

import io
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from botocore.exceptions import ReadTimeoutError
from botocore.response import StreamingBody
from botocore.stub import Stubber
from moto import mock_aws

from musedrp import storage
from musedrp.errors import ConfigError, DataError, NotFound, Transient
from musedrp.frames import classify, classify_file
from musedrp.storage import (
    HEADER_BUFFER,
    LocalStore,
    S3Store,
    object_key,
    raw_key,
    static_key,
    upload_dir,
)


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
    with pytest.raises(DataError, match="SHA-256 differs"):  # the same bytes on every retry
        s3.get_file("raw/n/a.bin", tmp_path / "b.bin")


@pytest.mark.parametrize("call", ["get_json", "get_file", "put_file", "delete"])
def test_unreachable_endpoint_is_transient(call, tmp_path):
    store = S3Store("http://127.0.0.1:9", "bucket", "k", "s", timeout_s=1, attempts=1)
    (tmp_path / "a").write_bytes(b"a")
    args = {"get_json": ("k",), "get_file": ("k", tmp_path / "b"),
            "put_file": (tmp_path / "a", "k"), "delete": ("k",)}[call]
    with pytest.raises(Transient, match="unreachable"):
        getattr(store, call)(*args)


# what S3 answers -> the class it is raised as; through a plain call (head_object) and through
# boto3's transfer manager, which wraps a ClientError into S3UploadFailedError
ANSWERS = [
    ("InternalError", 500, Transient), ("SlowDown", 503, Transient),
    ("ServiceUnavailable", 503, Transient), ("TooManyRequests", 429, Transient),
    ("RequestTimeout", 400, Transient),
    ("InvalidArgument", 400, DataError), ("NoSuchKey", 404, NotFound),
    ("AccessDenied", 403, ConfigError), ("SignatureDoesNotMatch", 403, ConfigError),
    ("InvalidAccessKeyId", 403, ConfigError), ("NoSuchBucket", 404, ConfigError),
]


@pytest.fixture
def stubbed():
    store = S3Store("http://127.0.0.1:9", "bucket", "k", "s", timeout_s=1, attempts=1)
    with Stubber(store.client) as stub:
        yield store, stub
        stub.assert_no_pending_responses()


@pytest.mark.parametrize(("code", "status", "raised"), ANSWERS)
def test_each_s3_answer_is_classified_once(stubbed, tmp_path, code, status, raised):
    store, stub = stubbed
    src = tmp_path / "a.fits"
    src.write_bytes(b"x" * 100)
    stub.add_client_error("head_object", service_error_code=code, http_status_code=status)
    stub.add_client_error("put_object", service_error_code=code, http_status_code=status)
    with pytest.raises(raised, match=code) as plain:
        store.get_file("raw/n/a.fits", tmp_path / "b.fits")
    with pytest.raises(raised, match=code) as wrapped:
        store.put_file(src, "raw/n/a.fits")
    assert type(plain.value) is type(wrapped.value) is raised
    assert type(wrapped.value.__cause__).__name__ == "S3UploadFailedError"


class _Dropped(io.RawIOBase):
    """A response body whose connection drops (or times out) after the headers."""

    def __init__(self, error):
        self.error = error

    def readable(self):
        return True

    def readinto(self, buffer):
        raise self.error


@pytest.mark.parametrize("error", [ReadTimeoutError(endpoint_url="http://s3"),
                                   ConnectionResetError(104, "Connection reset by peer")])
def test_a_download_that_keeps_dropping_is_transient(stubbed, tmp_path, error):
    """s3transfer retries a broken body 5 times, then raises boto3's RetriesExceededError."""
    store, stub = stubbed
    head = {"ContentLength": 100, "ETag": '"e"', "Metadata": {}}
    stub.add_response("head_object", head)
    stub.add_response("head_object", head)  # the transfer manager's own
    for _ in range(5):
        stub.add_response("get_object", {"Body": StreamingBody(_Dropped(error), 100),
                                         "ContentLength": 100, "ETag": '"e"'})
    with pytest.raises(Transient, match="unreachable") as raised:
        store.get_file("raw/n/a.fits", tmp_path / "b.fits")
    assert type(raised.value.__cause__).__name__ == "RetriesExceededError"


@pytest.mark.parametrize(("code", "status", "raised"), [
    ("NoSuchKey", 404, None), ("InvalidArgument", 400, DataError), ("InternalError", 500,
                                                                    Transient)])
def test_only_a_missing_manifest_reads_as_none(stubbed, code, status, raised):
    store, stub = stubbed
    stub.add_client_error("get_object", service_error_code=code, http_status_code=status)
    stub.add_client_error("head_object", service_error_code=code, http_status_code=status)
    if raised is None:
        assert store.get_json("products/j/manifest.json") is None
        assert store.exists("products/j/manifest.json") is False
        return
    with pytest.raises(raised):
        store.get_json("products/j/manifest.json")
    with pytest.raises(raised):
        store.exists("products/j/manifest.json")


def test_a_missing_bucket_fails_the_start_up_check():
    with mock_aws():
        with pytest.raises(ConfigError, match="nobucket"):  # a HEAD's 404 has no code
            S3Store("https://s3.amazonaws.com", "nobucket", "key", "secret").check()


def test_delete(store, tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"a")
    store.put_file(src, "products/j/error.txt")
    store.delete("products/j/error.txt")
    store.delete("products/j/error.txt")  # already gone: fine
    assert not store.exists("products/j/error.txt")


def test_two_writers_of_one_key_in_a_local_store_do_not_mix(tmp_path, monkeypatch):
    """``serve`` on one machine shares a directory: a redelivered job may store the same
    object while the first still writes it.  Each writer renames a whole file of its own."""
    store = LocalStore(tmp_path / "store")
    first, second = tmp_path / "first.fits", tmp_path / "second.fits"
    first.write_bytes(b"first" * 1000)
    second.write_bytes(b"second")
    copy = storage.shutil.copyfile

    def copy_beside_another_writer(src, dst):
        copy(src, dst)
        if src == first:  # the other writer starts and ends meanwhile
            store.put_file(second, "products/MASTER_BIAS-01.fits")

    monkeypatch.setattr(storage.shutil, "copyfile", copy_beside_another_writer)
    store.put_file(first, "products/MASTER_BIAS-01.fits")
    assert (tmp_path / "store/products/MASTER_BIAS-01.fits").read_bytes() == first.read_bytes()
    assert store.keys("products/") == ["products/MASTER_BIAS-01.fits"]
    assert [p.name for p in (tmp_path / "store/products").iterdir()] == ["MASTER_BIAS-01.fits"]


def test_a_local_store_links_what_a_job_reads_and_keeps_it_when_the_key_is_rewritten(
        tmp_path):
    """``serve`` on one machine: a worker's input is the stored file itself (no byte
    copied), and storing the key again leaves the linked input as the job read it."""
    store = LocalStore(tmp_path / "store")
    src = tmp_path / "a.fits"
    src.write_bytes(b"first")
    store.put_file(src, "raw/a.fits")
    got = tmp_path / "scratch/job/000/a.fits"
    assert store.get_file("raw/a.fits", got) == 0
    assert got.stat().st_ino == (tmp_path / "store/raw/a.fits").stat().st_ino
    src.write_bytes(b"second")
    store.put_file(src, "raw/a.fits")
    assert got.read_bytes() == b"first" and store.get_file("raw/a.fits", got) == 0
    assert got.read_bytes() == b"second"  # a second fetch to the same place replaces it
    with pytest.raises(NotFound):
        store.get_file("raw/missing.fits", tmp_path / "x.fits")


def test_processes_sharing_a_local_store_check_it_side_by_side(tmp_path, monkeypatch):
    """Every service checks the store as it starts: one's probe is not another's."""
    first, second = LocalStore(tmp_path / "store"), LocalStore(tmp_path / "store")
    write = Path.write_text

    def write_beside_another_check(path, *args, **kwargs):
        write(path, *args, **kwargs)
        if path.parent == first.root and not second.checked:
            second.checked = True
            second.check()  # starts and ends between the first's write and its removal

    second.checked = False
    monkeypatch.setattr(Path, "write_text", write_beside_another_check)
    first.check()
    assert second.checked and list(first.root.iterdir()) == []


def test_keys_cannot_leave_a_local_store(tmp_path):
    with pytest.raises(DataError, match="leaves the store"):
        LocalStore(tmp_path).get_json("../outside.json")


@pytest.mark.parametrize("key", ["raw/../raw/a.fits", "raw/./a.fits", "raw//a.fits", "/raw/a",
                                 "raw/a/", "raw\\a.fits", "raw/a\x00.fits"])
def test_a_local_store_refuses_keys_that_are_not_plain_paths(tmp_path, key):
    """Even those that would resolve inside the store: S3 would keep them as they are."""
    store = LocalStore(tmp_path / "store")
    (tmp_path / "a.fits").write_bytes(b"a")
    with pytest.raises(DataError, match="leaves the store: .* is not a single path component"):
        store.put_file(tmp_path / "a.fits", key)
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("part", ["", ".", "..", "/abs", "a/b", "a\\b", "a\x00b", "a\nb",
                                  "a\x7fb", "a\x85b"])
def test_object_key_refuses_a_part_that_is_not_one_path_component(part):
    with pytest.raises(ValueError, match=r"is not a single path component of an object key"):
        object_key("products", part, "MASTER_BIAS-01.fits")


def test_raw_static_and_upload_keys_go_through_object_key(tmp_path):
    assert raw_key("", "MUSE.2014-08-01T10:40:00.000.fits") == (
        "raw/unknown/MUSE.2014-08-01T10:40:00.000.fits")
    assert static_key("a b.fits", "f" * 64) == f"static/{'f' * 16}/a b.fits"
    with pytest.raises(ValueError, match="'..'"):
        raw_key("..", "a.fits")
    with pytest.raises(ValueError, match="'../a.fits'"):
        static_key("../a.fits", "f" * 64)
    job = tmp_path / "job"
    job.mkdir()
    (job / "esorex.log").write_text("log")
    with pytest.raises(ValueError, match="'..'"):
        upload_dir(LocalStore(tmp_path / "store"), job, "products/../../x")


def test_bucket_listing(s3, tmp_path):
    src = tmp_path / "a"
    src.write_bytes(b"a")
    for i in range(3):
        s3.put_file(src, f"raw/n/{i}")
    assert s3.keys("raw/n/") == ["raw/n/0", "raw/n/1", "raw/n/2"]
