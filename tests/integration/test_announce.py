"""``musedrp submit`` against the real RabbitMQ with a one-second heartbeat: uploads that
outlast it (nothing services the connection meanwhile, so the broker or pika closes it) still
get every file announced, once the connection is opened again."""

import time

import pytest

from musedrp import broker
from musedrp.serve import submit
from musedrp.settings import Settings
from musedrp.storage import LocalStore

from .conftest import throwaway_vhost

pytestmark = pytest.mark.integration


def test_uploads_outlasting_the_heartbeat_still_announce_every_file(
        tmp_path, make_frame, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("a.fits", "b.fits"):
        make_frame({}, name=name).rename(raw / name)
    put = LocalStore.put_file
    monkeypatch.setattr(LocalStore, "put_file",
                        lambda self, path, key: (time.sleep(5), put(self, path, key)))
    with throwaway_vhost() as env:
        settings = Settings.load({**env, "MUSEDRP_AMQP_HEARTBEAT_S": "1",
                                  "MUSEDRP_S3_ENDPOINT": f"file://{tmp_path / 'store'}"})
        assert submit(raw, settings, report=lambda _: None) == 2
        connection = broker.connect(settings)
        try:
            ingest = connection.channel().queue_declare("ingest", passive=True).method
        finally:
            connection.close()
    assert ingest.message_count == 2
