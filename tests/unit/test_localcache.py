"""The machine's object cache: what one worker uploaded or downloaded, another links instead of
downloading (moto's S3 in process: its GETs are counted; the real server is in the makespan
benchmark and the services' integration test)."""

import os

import pytest
from moto import mock_aws

from musedrp.errors import DataError
from musedrp.localcache import LocalCache
from musedrp.provenance import file_sha256
from musedrp.storage import S3Store


@pytest.fixture
def bucket():
    with mock_aws():
        S3Store("https://s3.amazonaws.com", "bucket", "key", "secret").create_bucket()
        yield


def store(cache: LocalCache | None) -> S3Store:
    return S3Store("https://s3.amazonaws.com", "bucket", "key", "secret", cache=cache)


def downloads(s3: S3Store) -> list[str]:
    """Count the GETs of object bodies this client makes."""
    calls: list[str] = []
    s3.client.meta.events.register(
        "before-parameter-build.s3.GetObject", lambda params, **_: calls.append(params["Key"]))
    return calls


def test_an_object_uploaded_on_this_machine_is_not_downloaded_again(bucket, tmp_path):
    cache = LocalCache(tmp_path / "cache", 10**9)
    product = tmp_path / "job1" / "MASTER_BIAS.fits"
    product.parent.mkdir()
    product.write_bytes(b"master" * 1000)
    store(cache).put_file(product, "products/n/bias/k/MASTER_BIAS.fits")
    reader = store(LocalCache(tmp_path / "cache", 10**9))  # another worker of the machine
    gets = downloads(reader)
    dest = tmp_path / "job2" / "in" / "MASTER_BIAS.fits"
    assert reader.get_file("products/n/bias/k/MASTER_BIAS.fits", dest) == 0
    assert dest.read_bytes() == product.read_bytes() and gets == []
    assert dest.stat().st_ino == product.stat().st_ino  # a link, no copy
    assert not os.access(dest, os.W_OK) or os.geteuid() == 0  # read-only (root writes anyway)


def test_a_key_rewritten_with_other_content_is_downloaded(bucket, tmp_path):
    cache = LocalCache(tmp_path / "cache", 10**9)
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    s3 = store(cache)
    s3.put_file(first, "products/k/x.fits")
    store(None).put_file(second, "products/k/x.fits")  # rewritten elsewhere: not in this cache
    gets = downloads(s3)
    assert s3.get_file("products/k/x.fits", tmp_path / "got") == len(b"second")
    assert (tmp_path / "got").read_bytes() == b"second" and gets == ["products/k/x.fits"]
    assert s3.get_file("products/k/x.fits", tmp_path / "again") == 0  # now it is kept


def test_a_sha256_metadata_that_is_no_digest_is_refused_before_any_path(bucket, tmp_path):
    s3 = store(LocalCache(tmp_path / "cache", 10**9))
    s3.client.put_object(Bucket="bucket", Key="k", Body=b"x",
                         Metadata={"sha256": "../../etc/passwd"})
    with pytest.raises(DataError, match="is not one"):
        s3.get_file("k", tmp_path / "got")
    assert list((tmp_path / "cache").iterdir()) == []


def test_the_least_recently_used_files_go_first_beyond_the_limit(tmp_path):
    cache = LocalCache(tmp_path / "cache", 25)
    shas = []
    for name in "abc":
        (tmp_path / name).write_bytes(name.encode() * 10)
        shas.append(file_sha256(tmp_path / name))
    for i in range(2):
        cache.add(tmp_path / "ab"[i], shas[i])
        os.utime(cache.root / shas[i], (1000 + i, 1000 + i))
    assert cache.get(shas[0], tmp_path / "use-a")  # "a" used now: "b" is the oldest
    cache.add(tmp_path / "c", shas[2])  # 30 bytes: one must go
    assert sorted(p.name for p in cache.root.iterdir()) == sorted([shas[0], shas[2]])
    assert not cache.get(shas[1], tmp_path / "b-again")
    assert cache.trim(0) == 20 and list(cache.root.iterdir()) == []
