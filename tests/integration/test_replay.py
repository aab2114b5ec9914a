"""``musedrp replay`` against the real RabbitMQ (a vhost of its own): it sends back the dead
letters there when it starts, not the ones that die again meanwhile, over and over."""

import threading
import time
from collections.abc import Iterator

import pika
import pytest

from musedrp import broker
from musedrp.broker import REASON
from musedrp.settings import Settings
from musedrp.topology import DEAD_EXCHANGE

from .conftest import rabbitmqctl, throwaway_vhost

pytestmark = pytest.mark.integration


@pytest.fixture
def settings() -> Iterator[Settings]:
    """A vhost where every message sent to work.bias dies at once (TTL 0), back into
    dead.work.bias: a cause that is not fixed yet."""
    with throwaway_vhost() as env:
        rabbitmqctl("set_policy", "-p", env["MUSEDRP_AMQP_VHOST"], "--apply-to", "queues",
                    "die-at-once", r"^work\.bias$", '{"message-ttl": 0}')
        yield Settings.load(env)


def replay(s: Settings, limit: int | None = None, timeout_s: float = 20) -> list[str]:
    """``broker.replay`` in a thread: a replay that never ends fails the test, not the run."""
    result: list[list[str]] = []
    thread = threading.Thread(target=lambda: result.append(broker.replay(s, "work.bias", limit)),
                              daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), "replay keeps sending back letters that died again"
    return result[0]


def wait_for_dead(s: Settings, n: int, timeout_s: float = 10) -> None:
    """Until dead.work.bias holds ``n`` letters (replayed ones die again within moments)."""
    connection = broker.connect(s)
    channel = connection.channel()
    deadline = time.monotonic() + timeout_s
    while (count := channel.queue_declare("dead.work.bias", passive=True).method
           .message_count) != n and time.monotonic() < deadline:
        time.sleep(0.1)
    connection.close()
    assert count == n


def test_replay_is_bounded_by_the_letters_dead_when_it_starts(settings):
    connection = broker.connect(settings)
    channel = connection.channel()
    broker.declare(channel, settings)
    channel.confirm_delivery()
    for i in range(3):
        channel.basic_publish(DEAD_EXCHANGE, "dead.work.bias", b"{}", mandatory=True,
                              properties=pika.BasicProperties(headers={REASON: f"reason {i}"}))
    connection.close()

    assert replay(settings) == ["reason 0", "reason 1", "reason 2"]
    wait_for_dead(settings, 3)  # none lost on the way round
    assert replay(settings, limit=2) == ["?", "?"]  # died again, by TTL, without our reason
    wait_for_dead(settings, 3)
