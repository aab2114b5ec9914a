"""``broker.Batch`` against the real RabbitMQ (a vhost of its own): the planner's work orders
published in transactions land in their queues, and one that no queue takes raises as a
confirm would, without losing the others."""

from collections.abc import Iterator

import pika.exceptions as pe
import pytest

from musedrp import broker
from musedrp.messages import Envelope, FrameArrived
from musedrp.settings import Settings

from .conftest import throwaway_vhost

pytestmark = pytest.mark.integration


@pytest.fixture
def settings() -> Iterator[Settings]:
    with throwaway_vhost() as env:
        yield Settings.load(env)


def arrived(n: int) -> list[Envelope]:
    return [Envelope(type="frame.arrived", source="test",
                     payload=FrameArrived(key=f"raw/MUSE.{i}.fits")) for i in range(n)]


def test_a_batch_larger_than_a_transaction_lands_whole_and_an_unroutable_one_raises(settings):
    connection = broker.connect(settings)
    try:
        channel = connection.channel()
        broker.declare(channel, settings)
        batch = broker.Batch(settings)
        batch(arrived(broker.BATCH + 7))
        assert channel.queue_declare("ingest", passive=True).method.message_count == \
            broker.BATCH + 7
        stray = Envelope(type="nobody.listens", source="test",
                         payload=FrameArrived(key="raw/x.fits"))
        with pytest.raises(pe.UnroutableError) as lost:
            batch([*arrived(2), stray])
        assert lost.value.messages == ["nobody.listens: NO_ROUTE"]
        assert channel.queue_declare("ingest", passive=True).method.message_count == \
            broker.BATCH + 9
        batch(arrived(1))  # the batch is usable again, nothing stale returned
        assert channel.queue_declare("ingest", passive=True).method.message_count == \
            broker.BATCH + 10
    finally:
        connection.close()
