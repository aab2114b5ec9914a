"""The consumer's contract, with a channel that records instead of a broker: one outcome per
error, events before the ack, retries with attempt counts, dead letters with reasons."""

from types import SimpleNamespace

import pytest

from musedrp import broker
from musedrp.broker import ATTEMPT, REASON, Consumer, Fate, Handler, fate
from musedrp.errors import ConfigError, DataError, Interrupted, NoWork, Transient
from musedrp.messages import MAX_BODY_BYTES, Envelope, FrameArrived
from musedrp.settings import Settings
from musedrp.topology import DEAD_EXCHANGE, queue

ENV = Envelope(type="frame.arrived", source="test", payload=FrameArrived(key="raw/n/a.fits"))
DELAYS = (1, 5)


class Raising(Handler):
    def __init__(self, error=None):
        self.error = error

    def handle(self, env, attempt):
        if self.error:
            raise self.error
        return [env.reply("frame.registered", "t", env.payload)]

    def failed(self, env, outcome, reason, attempt):
        return [env.reply("job.finished", "t", env.payload)]


@pytest.mark.parametrize(("error", "attempt", "outcome", "events"), [
    (None, 1, "handled", 1),
    (NoWork("3 biases needed"), 1, "skipped", 1),
    (Transient("S3 timeout"), 1, "retried", 0),
    (Transient("S3 timeout"), 2, "retried", 0),
    (Transient("S3 timeout"), 3, "failed", 1),
    (DataError("esorex exited with 1"), 1, "failed", 1),
    (KeyError("a bug"), 1, "failed", 1),
    (Interrupted(), 1, "interrupted", 0),
    (ConfigError("S3 AccessDenied"), 1, "stopped", 0),
])
def test_each_error_has_one_outcome(error, attempt, outcome, events):
    result = fate(Raising(error), ENV, attempt, DELAYS, interrupted=lambda: False)
    assert (result.outcome, len(result.events)) == (outcome, events)
    if outcome == "retried":
        assert result.retry_delay_s == DELAYS[attempt - 1]
    if isinstance(error, KeyError):
        assert result.reason.startswith("internal error: KeyError")


def test_an_error_after_a_shutdown_request_requeues():
    stop = []

    class KilledByShutdown(Handler):
        def handle(self, env, attempt):
            stop.append(True)  # the second signal arrives while the recipe runs
            raise DataError("muse_bias exited with -9")

    assert fate(KilledByShutdown(), ENV, 1, DELAYS, interrupted=lambda: bool(stop)).outcome \
        == "interrupted"


class Channel:
    def __init__(self):
        self.calls = []

    def basic_publish(self, exchange, routing_key, body, properties=None, mandatory=False):
        self.calls.append(("publish", exchange, routing_key, properties.headers or {}))

    def basic_ack(self, tag):
        self.calls.append(("ack", tag))

    def basic_nack(self, tag, requeue):
        self.calls.append(("nack", tag, requeue))

    def basic_cancel(self, tag):
        self.calls.append(("cancel", tag))


def settle(result: Fate, headers=None, consumer=None):
    consumer = consumer or Consumer(Settings.load({}), queue("work.bias"), Raising())
    channel = Channel()
    props = SimpleNamespace(headers=headers, content_type="application/json", type="work.bias",
                            message_id="m", correlation_id="c")
    consumer._settle(channel, 7, b"body", props, result, broker.attempt_number(headers))
    return channel.calls


def test_events_are_published_before_the_ack():
    calls = settle(Fate("handled", [ENV, ENV]))
    assert [c[0] for c in calls] == ["publish", "publish", "ack"]
    assert calls[0][1:3] == (broker.EXCHANGE, "frame.arrived")


def test_retry_goes_to_the_delay_queue_with_the_next_attempt():
    calls = settle(Fate("retried", reason="S3 timeout", retry_delay_s=5), {ATTEMPT: 2})
    (_, exchange, key, headers), ack = calls
    assert (exchange, key, headers[ATTEMPT], headers[REASON]) == (
        "", "delay.work.bias.5s", 3, "S3 timeout")
    assert ack == ("ack", 7)


@pytest.mark.parametrize("outcome", ["failed", "rejected"])
def test_dead_letters_carry_the_reason(outcome):
    calls = settle(Fate(outcome, reason="esorex exited with 1"))
    (_, exchange, key, headers), ack = calls
    assert (exchange, key, headers[REASON]) == (DEAD_EXCHANGE, "dead.work.bias",
                                                "esorex exited with 1")
    assert ack == ("ack", 7)


def test_interrupted_is_requeued_not_acked():
    assert settle(Fate("interrupted")) == [("nack", 7, True)]


def test_a_config_error_requeues_and_stops_the_consumer():
    """Stopping, not dead-lettering: every other message would die of the same setting.  The
    consumer is cancelled first, so the message is not handed straight back to it; the message
    goes back to the end of its queue as it came (a nack would count towards the delivery
    limit); ``run`` then raises the ConfigError (exit 1, the supervisor restarts the service)."""
    consumer = Consumer(Settings.load({}), queue("work.bias"), Raising())
    consumer._tag = "ctag"
    assert settle(Fate("stopped", reason="S3 AccessDenied"), {broker.ATTEMPT: 2},
                  consumer=consumer) == [
        ("cancel", "ctag"), ("publish", "", "work.bias", {broker.ATTEMPT: 2}), ("ack", 7)]
    assert consumer.stopping and consumer.fatal == "S3 AccessDenied"


class FailingIdle(Handler):
    def __init__(self, error):
        self.error = error

    def idle(self, publish):
        raise self.error


def test_periodic_work_that_fails_is_tried_again_later_not_fatal():
    consumer = Consumer(Settings.load({}), queue("planner"), FailingIdle(Transient("db down")))
    assert consumer._idle() >= broker.IDLE_RETRY_S
    lost = Consumer(Settings.load({}), queue("planner"),
                    FailingIdle(broker.pe.StreamLostError("gone")))
    with pytest.raises(broker.pe.StreamLostError):
        lost._idle()


def deliver(body: bytes, headers=None):
    """One delivery to the consumer's ``on_message``, on a recording channel."""
    consumer = Consumer(Settings.load({}), queue("work.bias"), Raising())
    channel = Channel()
    props = SimpleNamespace(headers=headers, content_type="application/json", type="work.bias",
                            message_id="m", correlation_id="c")
    consumer._on_message_factory(None, channel)(channel, SimpleNamespace(delivery_tag=7), props,
                                                body)
    return consumer, channel.calls


@pytest.mark.parametrize("attempt", ["two", "2", -1, 0, broker.MAX_ATTEMPT + 1, 10**30, 2.5,
                                     True, None, b"\x01"])
def test_a_bad_attempt_header_is_dead_lettered_with_the_reason(attempt):
    consumer, calls = deliver(ENV.encode(), {ATTEMPT: attempt})
    (_, exchange, key, headers), ack = calls
    assert (exchange, key) == (DEAD_EXCHANGE, "dead.work.bias")
    assert headers[REASON] == (f"header {ATTEMPT} is {attempt!r}, not an attempt from 1 to "
                               f"{broker.MAX_ATTEMPT}")
    assert ack == ("ack", 7) and consumer._job is None  # nothing was run


def test_a_body_above_the_limit_is_dead_lettered_with_the_reason():
    body = b" " * (MAX_BODY_BYTES + 1)
    _, calls = deliver(body, {ATTEMPT: 2})
    (_, exchange, key, headers), ack = calls
    assert (exchange, key, headers[ATTEMPT]) == (DEAD_EXCHANGE, "dead.work.bias", 2)
    assert headers[REASON] == (f"body of {len(body)} bytes exceeds the limit of "
                               f"{MAX_BODY_BYTES}")
    assert ack == ("ack", 7)


def test_the_attempt_comes_from_its_header():
    assert broker.attempt_number(None) == broker.attempt_number({}) == 1
    assert broker.attempt_number({ATTEMPT: 3, "other": "x"}) == 3
