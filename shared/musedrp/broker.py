"""RabbitMQ: the topology declared, messages published with confirms, and the consumer loop.

This is the only module that holds a pika channel, and ``fate`` is the only place that turns
an error into a message's outcome (STYLE.md §8, §10).  Per message:

1. the body is decoded on the connection thread; an undecodable one is dead-lettered at once
   with the reason;
2. the handler runs in a worker thread while the connection thread keeps servicing
   heartbeats;
3. back on the connection thread, the handler's events are published (persistent,
   ``mandatory``, publisher confirms), a retry or dead letter is published if the outcome
   says so, and only then is the message acked.

Delivery is at-least-once; handlers are idempotent (a redelivered work order finds its
manifest).  A worker killed mid-message never acks: the quorum queue redelivers it, and its
``x-delivery-limit`` dead-letters a message that keeps killing workers.
"""

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions as pe

from musedrp import esorex, metrics
from musedrp.errors import BadMessage, ConfigError, DataError, Interrupted, NoWork, Transient
from musedrp.logs import CONTEXT
from musedrp.messages import Envelope, decode
from musedrp.settings import Settings
from musedrp.topology import DEAD_EXCHANGE, EXCHANGE, Queue, queue, queues

log = logging.getLogger("musedrp.broker")

ATTEMPT = "x-musedrp-attempt"
REASON = "x-musedrp-reason"
IDLE_RETRY_S = 10
MAX_ATTEMPT = 1000  # far beyond any retry schedule; a larger attempt header is garbage
# a lost connection, or a publish the broker did not take: reconnect, the message comes back
CONNECTION_ERRORS = (pe.AMQPConnectionError, pe.AMQPChannelError, pe.ConnectionClosed,
                     pe.StreamLostError, pe.UnroutableError, pe.NackError)


def attempt_number(headers: dict[str, Any] | None) -> int:
    """The message's attempt, from its ``x-musedrp-attempt`` header (1 without one).

    Raises
    ------
    BadMessage
        The header is not an integer from 1 to ``MAX_ATTEMPT``.
    """
    value = (headers or {}).get(ATTEMPT, 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ATTEMPT:
        raise BadMessage(f"header {ATTEMPT} is {value!r}, not an attempt from 1 to "
                         f"{MAX_ATTEMPT}")
    return value


def connection_parameters(s: Settings) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host=s.amqp_host, port=s.amqp_port, virtual_host=s.amqp_vhost,
        credentials=pika.PlainCredentials(s.amqp_user, s.amqp_password.get_secret_value()),
        heartbeat=s.amqp_heartbeat_s, blocked_connection_timeout=300,
        connection_attempts=1, socket_timeout=10)


def connect(s: Settings) -> pika.BlockingConnection:
    """A connection, or ConfigError naming the broker."""
    try:
        return pika.BlockingConnection(connection_parameters(s))
    except pe.AMQPError as err:
        raise ConfigError(f"RabbitMQ at {s.amqp_host}:{s.amqp_port} vhost {s.amqp_vhost!r} "
                          f"unreachable: {err!r}") from err


def declare(channel, s: Settings) -> None:
    """Exchanges and, for every queue of the topology, its dead-letter and delay queues.

    A delay queue has a fixed TTL and dead-letters back to its work queue; one per delay,
    because RabbitMQ expires messages only at the head of a queue (a per-message TTL would
    hold short delays behind long ones).

    Raises
    ------
    ConfigError
        A queue exists with other arguments (e.g. another ``delivery_limit``).
    """
    try:
        channel.exchange_declare(EXCHANGE, "topic", durable=True)
        channel.exchange_declare(DEAD_EXCHANGE, "topic", durable=True)
        for q in queues(s.timeout_s):
            channel.queue_declare(q.name, durable=True, arguments={
                "x-queue-type": "quorum", "x-delivery-limit": s.delivery_limit,
                "x-dead-letter-exchange": DEAD_EXCHANGE, "x-dead-letter-routing-key": q.dead,
                # honoured from RabbitMQ 3.12; older brokers need the broker-wide
                # consumer_timeout raised above the longest recipe (see docs)
                **consumer_timeout(q)})
            for key in q.bindings:
                channel.queue_bind(q.name, EXCHANGE, key)
            channel.queue_declare(q.dead, durable=True, arguments={"x-queue-type": "quorum"})
            channel.queue_bind(q.dead, DEAD_EXCHANGE, q.dead)
            for delay in s.retry_delays_s:
                channel.queue_declare(q.delay(delay), durable=True, arguments={
                    "x-message-ttl": delay * 1000, "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": q.name})
    except pe.ChannelClosedByBroker as err:
        raise ConfigError(f"declaring the topology failed: {err.reply_text}") from err


def consumer_timeout(q: Queue) -> dict[str, int]:
    """How long the broker lets a consumer hold one message of ``q``, as a queue or consumer
    argument.  The queue keeps the argument it was first declared with; the consumer's own,
    set at every start, wins (RabbitMQ >= 3.12), so a changed ``MUSEDRP_TIMEOUT_S`` counts."""
    return {"x-consumer-timeout": int(q.hold_s * 1000)}


def publish(channel, env: Envelope, routing_key: str | None = None) -> None:
    """Publish an event or work order, persistent and confirmed; raises if unroutable."""
    channel.basic_publish(
        EXCHANGE, routing_key or env.type, env.encode(), mandatory=True,
        properties=pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json",
            type=env.type, message_id=str(env.id), correlation_id=str(env.correlation_id)))


class Announcer:
    """Publishes one envelope at a time, persistent and confirmed, for a caller that does slow
    work between messages (``submit`` uploads a file before announcing it).

    Such a caller services no heartbeats meanwhile, so the broker may close the connection
    under it.  The connection is opened when first needed, and opened again once when the
    next publish finds it lost; a message whose confirm was lost with the connection is
    published again (its consumer is idempotent).  Use as a context manager; ``connect``
    connects on entering, so that a broker not there is found before the slow work."""

    def __init__(self, settings: Settings, connect: bool = True) -> None:
        self.settings = settings
        self.eager = connect
        self.connection: pika.BlockingConnection | None = None

    def __enter__(self) -> "Announcer":
        if self.eager:
            self._open()
        return self

    def __exit__(self, *_exc) -> None:
        if self.connection is not None:
            _close(self.connection)
            self.connection = None

    def __call__(self, env: Envelope) -> None:
        """Raises ConfigError if the broker cannot be reached, or the connection is lost
        twice for one message."""
        for attempt in (1, 2):
            try:
                if self.connection is None:
                    self._open()
                self.connection.process_data_events(time_limit=0)  # a close meanwhile raises
                publish(self.channel, env)
                return
            except (pe.AMQPConnectionError, pe.ChannelWrongStateError) as err:
                _close(self.connection)
                self.connection = None
                if attempt == 2:
                    raise ConfigError(f"RabbitMQ at {self.settings.amqp_host}:"
                                      f"{self.settings.amqp_port} lost the connection twice "
                                      f"while {env.type} was published: {err!r}") from err
                log.warning("the broker connection was lost (%r); connecting again", err)

    def _open(self) -> None:
        self.connection = connect(self.settings)
        self.channel = self.connection.channel()
        declare(self.channel, self.settings)
        self.channel.confirm_delivery()


# work orders per transaction: one commit (the broker's fsync) instead of a confirm each
BATCH = 500


class Batch:
    """Publishes many envelopes per transaction: persistent, and every one routed, as
    ``publish`` with a confirm each, but one round trip per ``BATCH``
    (benchmarks/results/broker_throughput.md).

    Each call opens a connection of its own: reading the broker's returns means processing
    that connection's events, which on the consumer's connection would also deliver the next
    message while the handler's idle work is still running.  A message no queue took comes
    back (``mandatory``) before the commit's reply and raises ``UnroutableError`` once the
    batch is committed, as a confirm would; the others stay published (their consumers are
    idempotent)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, envs: Sequence[Envelope]) -> None:
        if not envs:
            return
        returned: list[str] = []
        connection = connect(self.settings)
        try:
            channel = connection.channel()
            channel.add_on_return_callback(
                lambda _ch, method, _props, _body: returned.append(
                    f"{method.routing_key}: {method.reply_text}"))
            channel.tx_select()
            for start in range(0, len(envs), BATCH):
                for env in envs[start:start + BATCH]:
                    publish(channel, env)
                channel.tx_commit()
            connection.process_data_events(time_limit=0)  # delivers the returns
        finally:
            _close(connection)
        if returned:
            log.error("%d of %d messages routed nowhere: %s", len(returned), len(envs),
                      "; ".join(returned[:5]))
            raise pe.UnroutableError(returned)


def _republish(channel, exchange: str, routing_key: str, body: bytes, properties,
               headers: dict[str, Any]) -> None:
    """The original body and properties with ``headers``: to a delay, dead-letter or (replayed)
    work queue."""
    props = pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent, content_type=properties.content_type,
        type=properties.type, message_id=properties.message_id,
        correlation_id=properties.correlation_id, headers=headers)
    channel.basic_publish(exchange, routing_key, body, properties=props, mandatory=True)


@dataclass
class Fate:
    """What happens to a message: ``outcome`` and the events to publish before the ack."""

    outcome: str  # handled, skipped, failed, retried, rejected, interrupted, stopped
    events: list[Envelope] = field(default_factory=list)
    reason: str = ""
    retry_delay_s: int = 0


class Handler:
    """What a service does with one message; the loop does everything else."""

    name = "service"

    def handle(self, env: Envelope, attempt: int) -> list[Envelope]:
        raise NotImplementedError

    def failed(self, env: Envelope, outcome: str, reason: str, attempt: int) -> list[Envelope]:
        """Events announcing that the message's work was skipped or failed (default none)."""
        return []

    def idle(self, publish: Callable[[Sequence[Envelope]], None]) -> None:
        """Called on the connection thread about once a second while no message is handled;
        ``publish`` takes a batch and returns once the broker has committed it (``Batch``)."""

    def interrupt(self) -> None:
        """The second signal: stop what the running message waits for (default nothing)."""


def fate(handler: Handler, env: Envelope, attempt: int, delays: Sequence[int],
         interrupted: Callable[[], bool]) -> Fate:
    """Run the handler and map what it raised to the message's outcome (STYLE.md §8).

    ``interrupted`` is asked after a failure: a recipe killed by a shutdown fails like any
    other, but its message goes back to the queue instead of to the dead letters.  A
    ``ConfigError`` (S3 credentials refused, no bucket, esorex gone) would fail every message
    alike: the message goes back to the queue and the service stops, exit 1, for its
    supervisor to restart it once the setting is fixed."""
    try:
        return Fate("handled", handler.handle(env, attempt))
    except Interrupted:
        return Fate("interrupted", reason="shutdown while running")
    except ConfigError as err:
        return Fate("stopped", reason=str(err))
    except NoWork as err:
        return Fate("skipped", handler.failed(env, "skipped", str(err), attempt), str(err))
    except Transient as err:
        if interrupted():
            return Fate("interrupted", reason=str(err))
        if attempt <= len(delays):
            return Fate("retried", reason=str(err), retry_delay_s=delays[attempt - 1])
        reason = f"gave up after {attempt} attempts: {err}"
        return Fate("failed", handler.failed(env, "failed", reason, attempt), reason)
    except Exception as err:  # DataError, or a bug: either way this message cannot succeed
        if interrupted():
            return Fate("interrupted", reason=str(err))
        if not isinstance(err, DataError):
            log.exception("unexpected error handling %s", env.type)
        reason = str(err) if isinstance(err, DataError) else f"internal error: {err!r}"
        return Fate("failed", handler.failed(env, "failed", reason, attempt), reason)


class Consumer:
    """Consume one queue with one handler: prefetch 1, reconnect on loss, drain on SIGTERM."""

    def __init__(self, settings: Settings, queue: Queue, handler: Handler) -> None:
        self.settings, self.queue, self.handler = settings, queue, handler
        self.stopping = False  # first SIGTERM: finish the running message, then exit
        self.interrupted = False  # second signal: kill the recipe, requeue, exit
        self.fatal = ""  # a ConfigError met while handling a message: requeue it, exit 1
        self._tag = ""  # the consumer's, on the current channel
        self._job: threading.Thread | None = None

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: Any) -> None:
            if self.stopping:
                self.interrupted = True
                esorex.kill_all()
                self.handler.interrupt()
            self.stopping = True
            log.info("signal %d: %s", signum, "stopping the running recipe" if
                     self.interrupted else "finishing the running message, then exiting")

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def run(self) -> None:
        """Consume until stopped.

        Raises
        ------
        ConfigError
            The broker is unreachable at start-up, the topology cannot be declared, or a
            message met a configuration error (the message was requeued).
        """
        self._consume()
        if self.fatal:
            raise ConfigError(f"{self.fatal} (message requeued; stopped)")

    def _consume(self) -> None:
        metrics.LOOP_HEARTBEAT.set_to_current_time()
        connection = connect(self.settings)
        delay = 1.0
        while True:
            try:
                self._serve(connection)
                return
            except CONNECTION_ERRORS as err:
                log.warning("broker connection lost (%r); reconnecting", err)
                _close(connection)  # a channel error leaves the connection itself open
            self._wait_for_job()  # its ack is lost: the broker redelivers the message
            while not self.stopping:
                time.sleep(delay)
                metrics.LOOP_HEARTBEAT.set_to_current_time()
                try:
                    connection = connect(self.settings)
                    delay = 1.0
                    break
                except ConfigError as err:
                    delay = min(2 * delay, 30.0)
                    log.warning("%s; next attempt in %.0f s", err, delay)
            if self.stopping:
                return

    def _wait_for_job(self) -> None:
        """Until the running job ends (an hour, maybe), the loop alive all along."""
        job = self._job
        while job is not None and job.is_alive():
            job.join(timeout=1)
            metrics.LOOP_HEARTBEAT.set_to_current_time()
        self._job = None

    def _serve(self, connection: pika.BlockingConnection) -> None:
        channel = connection.channel()
        declare(channel, self.settings)
        channel.confirm_delivery()
        channel.basic_qos(prefetch_count=1)
        tag = channel.basic_consume(self.queue.name, self._on_message_factory(connection, channel),
                                    arguments=consumer_timeout(self.queue))
        self._tag = tag
        log.info("consuming %s", self.queue.name)
        next_idle = 0.0
        while True:
            metrics.LOOP_HEARTBEAT.set_to_current_time()  # `musedrp health` reads it
            connection.process_data_events(time_limit=1)
            if self.stopping and tag in channel.consumer_tags:  # _settle may have cancelled
                channel.basic_cancel(tag)
            if self._job is None:
                if self.stopping:
                    break
                if time.monotonic() >= next_idle:
                    next_idle = self._idle()
        connection.close()

    def _idle(self) -> float:
        """The handler's periodic work; when it fails (registry down), again in a while."""
        try:
            self.handler.idle(Batch(self.settings))
            return 0.0
        except CONNECTION_ERRORS:
            raise
        except Exception as err:
            log.error("periodic work failed (%s); trying again in %d s", err, IDLE_RETRY_S)
            return time.monotonic() + IDLE_RETRY_S

    def _on_message_factory(self, connection, channel) -> Callable[..., None]:
        def on_message(ch, method, properties, body: bytes) -> None:
            attempt = 1  # for a dead letter whose attempt header is itself what is wrong
            try:
                attempt = attempt_number(properties.headers)
                env = decode(body)
            except BadMessage as err:
                self._settle(ch, method.delivery_tag, body, properties,
                             Fate("rejected", reason=str(err)), attempt)
                return
            self._job = threading.Thread(
                target=self._work, name=f"job-{method.delivery_tag}", daemon=True,
                args=(connection, ch, method.delivery_tag, body, properties, env, attempt))
            self._job.start()

        return on_message

    def _work(self, connection, channel, delivery_tag: int, body: bytes, properties,
              env: Envelope, attempt: int) -> None:
        CONTEXT.set({"queue": self.queue.name, "type": env.type,
                     "correlation_id": str(env.correlation_id), "attempt": attempt,
                     **({"job_key": env.payload.job_key} if hasattr(env.payload, "job_key")
                        else {})})
        result = fate(self.handler, env, attempt, self.settings.retry_delays_s,
                      lambda: self.interrupted)

        def settle() -> None:
            try:
                self._settle(channel, delivery_tag, body, properties, result, attempt)
            finally:
                self._job = None

        try:
            connection.add_callback_threadsafe(settle)
        except CONNECTION_ERRORS + (RuntimeError,) as err:
            log.warning("could not hand %s back to a lost connection (%r); the broker will "
                        "redeliver it", env.type, err)

    def _settle(self, channel, delivery_tag: int, body: bytes, properties, result: Fate,
                attempt: int) -> None:
        q, headers = self.queue, properties.headers or {}
        for env in result.events:
            publish(channel, env)
        if result.outcome == "retried":
            log.warning("attempt %d failed (%s); retrying in %d s", attempt, result.reason,
                        result.retry_delay_s)
            _republish(channel, "", q.delay(result.retry_delay_s), body, properties,
                       {**headers, ATTEMPT: attempt + 1, REASON: result.reason[:1000]})
            metrics.RETRIES.labels(q.name).inc()
        elif result.outcome in ("failed", "rejected"):
            log.error("dead-lettering to %s: %s", q.dead, result.reason)
            _republish(channel, DEAD_EXCHANGE, q.dead, body, properties,
                       {**headers, ATTEMPT: attempt, REASON: result.reason[:4000]})
            metrics.DEAD_LETTERS.labels(q.name, result.outcome).inc()
        if result.outcome == "stopped":
            # cancel first, or the message comes straight back to us; then put it at the end
            # of its queue as it came (a nack would count towards the delivery limit: a worker
            # restarted four times with a bad setting would dead-letter it)
            self.stopping, self.fatal = True, result.reason
            channel.basic_cancel(self._tag)
            log.critical("stopping: %s; the message goes back to %s", result.reason, q.name)
            _republish(channel, "", q.name, body, properties, {**headers, ATTEMPT: attempt})
        if result.outcome == "interrupted":
            channel.basic_nack(delivery_tag, requeue=True)
        else:
            channel.basic_ack(delivery_tag)
        metrics.MESSAGES.labels(q.name, result.outcome).inc()


def _close(connection: pika.BlockingConnection) -> None:
    try:
        if connection.is_open:
            connection.close()
    except pe.AMQPError as err:
        log.warning("closing the old connection failed (%r)", err)


def replay(s: Settings, queue_name: str, limit: int | None = None) -> list[str]:
    """Move the dead letters of ``queue_name`` back to it, attempts reset; returns the
    reasons they died with.  For use once the cause is fixed (a new recipe, a repaired file).

    Only the letters there when replay starts are moved, at most ``limit``: one that dies
    again meanwhile stays dead instead of going round for ever.
    """
    try:
        q = queue(queue_name)
    except KeyError as err:
        raise ConfigError(err.args[0]) from None
    connection = connect(s)
    reasons: list[str] = []
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        count = channel.queue_declare(q.dead, passive=True).method.message_count
        for _ in range(count if limit is None else min(count, limit)):
            method, properties, body = channel.basic_get(q.dead)
            if method is None:
                break
            headers = dict(properties.headers or {})
            reasons.append(str(headers.pop(REASON, "?")))
            headers.pop(ATTEMPT, None)
            _republish(channel, "", q.name, body, properties, headers)
            channel.basic_ack(method.delivery_tag)
    finally:
        connection.close()
    return reasons
