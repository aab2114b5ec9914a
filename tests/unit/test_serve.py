"""``musedrp submit`` with the broker faked: static calibrations keyed by their content."""

import hashlib
from contextlib import nullcontext

import pytest
from moto import mock_aws

from musedrp import broker, storage
from musedrp.serve import submit
from musedrp.settings import Settings
from musedrp.simulate.static import geometry_table
from musedrp.storage import LocalStore, S3Store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, monkeypatch):
    """The store ``submit`` opens, counting uploads; what it announces in ``.announced``."""
    with mock_aws():
        if request.param == "local":
            s = LocalStore(tmp_path / "store")
        else:
            s = S3Store("https://s3.amazonaws.com", "bucket", "key", "secret")
            s.create_bucket()
        s.uploads, s.announced, put = [], [], s.put_file
        s.put_file = lambda path, key: (s.uploads.append(key), put(path, key))
        monkeypatch.setattr(storage, "open_store", lambda _: s)
        monkeypatch.setattr(broker, "Announcer", lambda _s, connect: nullcontext(
            lambda env: s.announced.append(env.payload.key)))
        yield s


def test_static_keys_follow_content(store, tmp_path):
    kit = tmp_path / "kit"
    kit.mkdir()
    path = kit / "geometry_table_wfm.fits"
    table = geometry_table()
    table.writeto(path)
    old = path.read_bytes()
    for _ in range(2):
        assert submit(kit, Settings.load({}), report=lambda _: None) == 1
    first = f"static/{hashlib.sha256(old).hexdigest()[:16]}/geometry_table_wfm.fits"
    assert store.keys("static/") == [first] and store.uploads == [first]

    table[0].header["HIERARCH MUSEDRP KIT"] = 2  # a new kit, same file name
    table.writeto(path, overwrite=True)
    submit(kit, Settings.load({}), report=lambda _: None)
    (second,) = set(store.keys("static/")) - {first}
    assert second.endswith("/geometry_table_wfm.fits") and store.uploads == [first, second]
    assert store.announced == [first, first, second]
    store.get_file(first, tmp_path / "back.fits")
    assert (tmp_path / "back.fits").read_bytes() == old


def test_a_file_name_no_object_key_may_hold_is_skipped_with_the_reason(store, tmp_path):
    kit = tmp_path / "kit"
    kit.mkdir()
    geometry_table().writeto(kit / "geometry_table_wfm.fits")
    geometry_table().writeto(kit / "bad\\name.fits")
    said = []
    assert submit(kit, Settings.load({}), report=said.append) == 1
    assert any("skipped 'bad\\\\name.fits'" in line for line in said)
    assert [k.rsplit("/", 1)[1] for k in store.announced] == ["geometry_table_wfm.fits"]


def test_static_calibrations_the_science_then_the_cascade_s_frames_are_uploaded(
        store, tmp_path, make_frame):
    """Names sort the flat first here; the science goes first (a plan made meanwhile is a
    science night's), then the biases the cascade starts from."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, keys in (("a_flat.fits", {"DPR.TYPE": "FLAT,LAMP",
                                        "TPL.ID": "MUSE_wfm_cal_specflat"}),
                       ("b_bias.fits", {}),
                       ("c_object.fits", {"DPR.CATG": "SCIENCE", "DPR.TYPE": "OBJECT",
                                          "TPL.ID": "MUSE_wfm_obs_genericoffset"})):
        make_frame(keys, name=name).rename(raw / name)
    geometry_table().writeto(raw / "z_geometry.fits")
    assert submit(raw, Settings.load({}), report=lambda _: None) == 4
    assert [k.rsplit("/", 1)[1] for k in store.announced] == [
        "z_geometry.fits", "c_object.fits", "b_bias.fits", "a_flat.fits"]


def test_an_archive_s_frames_are_put_into_the_bucket_first_and_announced_later(
        store, tmp_path, make_frame):
    """``announce=False`` only uploads; ``upload=False`` only announces what is there."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("a.fits", "b.fits"):
        make_frame({}, name=name).rename(raw / name)
    assert submit(raw, Settings.load({}), report=lambda _: None, announce=False) == 2
    assert len(store.uploads) == 2 and store.announced == []
    assert submit(raw, Settings.load({}), report=lambda _: None, upload=False) == 2
    assert len(store.uploads) == 2 and store.announced == store.uploads
