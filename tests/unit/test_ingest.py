"""The ingest handler without a broker: a local object store and a SQLite registry."""

import hashlib
import logging

import pytest
from astropy.io import fits

from musedrp.messages import Envelope, FrameArrived
from musedrp.registry import Registry
from musedrp.services.ingest.service import Ingest
from musedrp.storage import LocalStore
from musedrp.tags import Tag


@pytest.fixture
def ingest(tmp_path):
    return Ingest(LocalStore(tmp_path / "store"),
                  Registry(f"sqlite:///{tmp_path / 'registry.sqlite'}"), logging.getLogger("test"))


def arrived(ingest: Ingest, path, key: str) -> Envelope:
    """Put ``path`` into the store under ``key`` and hand its arrival to the handler."""
    ingest.store.put_file(path, key)
    (reply,) = ingest.handle(Envelope(type="frame.arrived", source="test",
                                      payload=FrameArrived(key=key)), 1)
    assert reply.type == "frame.registered"
    return reply


def test_a_card_without_value_is_registered_as_rejected(ingest, make_frame):
    key = "raw/incoming/nexp.fits"
    reply = arrived(ingest, make_frame({"TPL.NEXP": None}), key)
    assert (reply.payload.status, reply.payload.tag) == ("rejected", None)
    assert reply.payload.reason == "card TPL.NEXP: no value"
    (row,) = ingest.registry.frames()
    assert (row.path, row.status, row.reason) == (key, "rejected", "card TPL.NEXP: no value")


def test_a_static_calibration_is_registered_with_its_checksum(ingest, tmp_path):
    path = tmp_path / "extinct_table.fits"
    fits.PrimaryHDU(header=fits.Header({"HIERARCH ESO PRO CATG": "EXTINCT_TABLE"})).writeto(path)
    reply = arrived(ingest, path, "static/extinct_table.fits")
    assert (reply.payload.status, reply.payload.tag) == ("registered", Tag.EXTINCT_TABLE)
    (frame,) = ingest.registry.load_frames()
    assert frame.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
