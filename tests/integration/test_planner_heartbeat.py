"""The planner on the real broker and PostgreSQL (a vhost and a database of its own): planning
that takes longer than the connection's heartbeat timeout no longer costs the connection."""

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from musedrp import broker
from musedrp.frames import classify_file
from musedrp.messages import decode
from musedrp.planner import plan_night
from musedrp.registry import Registry
from musedrp.services.planner import service as planner_service
from musedrp.settings import Settings
from musedrp.topology import queue

from .conftest import throwaway_vhost

pytestmark = pytest.mark.integration
HEARTBEAT_S = 2


@pytest.fixture
def settings() -> Iterator[Settings]:
    with throwaway_vhost(database=True) as env:
        yield Settings.load({**env, "MUSEDRP_AMQP_HEARTBEAT_S": str(HEARTBEAT_S)})


def test_planning_longer_than_the_heartbeat_keeps_the_connection(settings, make_frame,
                                                                 monkeypatch, caplog):
    registry = Registry(settings.db_url)
    biases = [classify_file(make_frame({"TPL.EXPNO": i + 1, "MJD-OBS": 56870.75 + i / 1440}))
              for i in range(3)]
    registry.record_frames(biases, {})

    def slow(*args, **kwargs):  # a year's planning, in short: 4 heartbeats long
        time.sleep(4 * HEARTBEAT_S)
        return plan_night(*args, **kwargs)

    monkeypatch.setattr(planner_service, "plan_night", slow)
    planner = planner_service.Planner(registry, settings, "2.8.7", logging.getLogger("test"))
    consumer = broker.Consumer(settings, queue("planner"), planner)
    serving = threading.Thread(target=consumer.run, daemon=True)
    start = time.monotonic()
    serving.start()
    connection = broker.connect(settings)
    try:
        channel = connection.channel()
        broker.declare(channel, settings)
        method = None
        while method is None and time.monotonic() - start < 40:
            connection.process_data_events(time_limit=0.5)
            method, _, body = channel.basic_get("work.bias", auto_ack=True)
        assert method is not None, "no work order in 40 s"
        order = decode(body).payload
    finally:
        connection.close()
        consumer.stopping = True
        serving.join(10)
        registry.close()
    assert time.monotonic() - start > 4 * HEARTBEAT_S
    assert {i.path for i in order.inputs} == {f.path for f in biases}
    assert not serving.is_alive()
    assert "broker connection lost" not in caplog.text
