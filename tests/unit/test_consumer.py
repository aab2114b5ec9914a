"""The consumer's connection, with a channel and connection that record instead of a broker:
how long the broker lets it hold a message, and what happens to a connection it leaves."""

import pytest

from musedrp import broker
from musedrp.broker import Consumer, Handler
from musedrp.settings import Settings
from musedrp.topology import BY_NAME, TRANSFER_MARGIN_S, queue


class Recorder:
    """A channel: every call recorded as (method, args, kwargs)."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, method):
        return lambda *args, **kwargs: self.calls.append((method, args, kwargs))


class Consumed(Exception):
    @classmethod
    def throw(cls):
        raise cls


class Connection:
    def __init__(self, channel=None, on_events=lambda: None):
        self._channel, self.on_events, self.is_open = channel, on_events, True

    def channel(self):
        return self._channel

    def process_data_events(self, time_limit):
        self.on_events()

    def close(self):
        self.is_open = False


@pytest.mark.parametrize("override", [None, 7200.0])
def test_the_consumer_timeout_follows_the_recipe_timeout_override(override):
    """A recipe allowed 2 h by MUSEDRP_TIMEOUT_S must not be taken back by the broker after
    the spec's 20 min plus transfers, and computed a second time elsewhere."""
    s = Settings.load({} if override is None else {"MUSEDRP_TIMEOUT_S": str(override)})
    expected = int(((override or BY_NAME["bias"].spec.timeout_s) + TRANSFER_MARGIN_S) * 1000)
    channel = Recorder()
    consumer = Consumer(s, queue("work.bias", s.timeout_s), Handler())  # as service.main does
    with pytest.raises(Consumed):  # the first wait for messages: consuming has begun
        consumer._serve(Connection(channel, on_events=Consumed.throw))
    declared = {args[0]: kw["arguments"] for method, args, kw in channel.calls
                if method == "queue_declare"}
    assert declared["work.bias"]["x-consumer-timeout"] == expected
    (consume,) = [kw for method, _, kw in channel.calls if method == "basic_consume"]
    assert consume["arguments"] == {"x-consumer-timeout": expected}


def test_a_channel_error_closes_the_connection_before_opening_another(monkeypatch):
    connections = []
    monkeypatch.setattr(broker, "connect", lambda _: connections.append(Connection())
                        or connections[-1])

    def serve(self, connection):
        if len(connections) == 1:  # the broker closed the channel, not the connection
            raise broker.pe.ChannelClosedByBroker(406, "PRECONDITION_FAILED")

    monkeypatch.setattr(Consumer, "_serve", serve)
    Consumer(Settings.load({}), queue("work.bias"), Handler()).run()
    assert [c.is_open for c in connections] == [False, True]
