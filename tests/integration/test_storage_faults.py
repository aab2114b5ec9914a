"""S3 failures against a real server (``weed mini``), classified where they happen: the server
stopped while a large product is uploaded or an input downloaded (Transient, and the retry
stores or fetches it whole), and a wrong secret key at run time (a configuration error: the
worker stops and its order goes back to the queue).  No esorex; seconds each.

Stopping ``weed mini`` with SIGTERM makes it answer 500 InternalError while it shuts down (boto3
wraps that into S3UploadFailedError); SIGKILL drops the connections."""

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from musedrp import broker, s3server
from musedrp.errors import ConfigError, Transient
from musedrp.messages import Envelope, InputFile, WorkOrder
from musedrp.provenance import file_sha256
from musedrp.services.worker import StageWorker
from musedrp.settings import Settings
from musedrp.storage import SHA_META, S3Store
from musedrp.tags import Tag
from musedrp.topology import BY_NAME, queue

from .conftest import throwaway_vhost

pytestmark = pytest.mark.integration
BUCKET, KEY = "musedrp", "products/2014-08-01/scibasic/S/k/PIXTABLE_OBJECT_0001-01.fits"
SIZE_MB = 256  # 32 parts of 8 MB: the transfer is still running when the server goes
PARTS = 5  # requests completed before the server is stopped
FAIL_FAST = {"attempts": 1, "timeout_s": 5}  # as a worker is set up in the services tests


class Server:
    """A ``weed mini`` that can be stopped and started again on the same ports and data."""

    def __init__(self, root: Path) -> None:
        self.root, self.s3 = root, s3server.start(root)

    def stop(self, how: str) -> None:
        if how == "kill":
            self.s3.process.kill()
        self.s3.stop()

    def start(self) -> None:
        port = int(self.s3.endpoint.rsplit(":", 1)[1]) - 3
        self.s3 = s3server.start(self.root, port, self.s3.access_key, self.s3.secret_key)

    def store(self, secret: str | None = None, **options) -> S3Store:
        return S3Store(self.s3.endpoint, BUCKET, self.s3.access_key, secret or self.s3.secret_key,
                       **options)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "s3")
    s.store().create_bucket()
    yield s
    s.stop("term")


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "PIXTABLE_OBJECT_0001-01.fits"
    with path.open("wb") as f:
        for _ in range(SIZE_MB):
            f.write(os.urandom(1 << 20))
    return path


def stopped_midway(server: Server, how: str, store: S3Store, operation: str,
                   transfer: Callable[[], None]) -> Exception:
    """Run ``transfer``, stop the server once ``PARTS`` requests of ``operation`` are done;
    what the transfer raised."""
    done: list[float] = []
    store.client.meta.events.register(f"after-call.s3.{operation}",
                                      lambda **_: done.append(time.monotonic()))
    raised: list[Exception] = []

    def run() -> None:
        try:
            transfer()
        except Exception as err:  # noqa: BLE001 - handed to the test
            raised.append(err)

    thread = threading.Thread(target=run)
    start = time.monotonic()
    thread.start()
    while len(done) < PARTS and thread.is_alive():
        time.sleep(0.005)
    in_flight, stop = thread.is_alive(), time.monotonic()
    server.stop(how)
    thread.join(60)
    print(f"{operation} {how}: stopped {stop - start:.2f} s after the start with {len(done)} "
          f"of {SIZE_MB // 8} parts done, raised {time.monotonic() - stop:.2f} s later: "
          f"{raised[0]!r} from {raised[0].__cause__!r}" if raised else "nothing raised")
    assert in_flight and raised
    return raised[0]


def retried(transfer: Callable[[], None], within_s: float = 20) -> None:
    """``transfer`` again while it raises Transient, as the delay queue would: a restarted
    ``weed mini`` opens its port before its volume is registered (500, "volume 1 not found")."""
    start, attempts = time.monotonic(), 1
    while True:
        try:
            transfer()
            break
        except Transient:
            if time.monotonic() - start > within_s:
                raise
            attempts += 1
            time.sleep(1)
    print(f"after the restart: {attempts} attempt(s), {time.monotonic() - start:.1f} s")


@pytest.mark.parametrize("how", ["term", "kill"])
def test_s3_stopped_during_an_upload_is_transient_and_the_retry_stores_it_once(
        server, big, tmp_path, how):
    store = server.store(**FAIL_FAST)
    err = stopped_midway(server, how, store, "UploadPart", lambda: store.put_file(big, KEY))
    assert isinstance(err, Transient)
    server.start()
    store = server.store()  # the next attempt's
    retried(lambda: store.put_file(big, KEY))
    assert store.keys("products/") == [KEY]
    head = store.client.head_object(Bucket=BUCKET, Key=KEY)
    assert head["ContentLength"] == big.stat().st_size
    assert head["Metadata"][SHA_META] == file_sha256(big)
    store.get_file(KEY, tmp_path / "back.fits")  # checked against the stored SHA-256
    assert file_sha256(tmp_path / "back.fits") == file_sha256(big)


@pytest.mark.parametrize("how", ["term", "kill"])
def test_s3_stopped_during_a_download_is_transient_and_the_retry_gets_it_whole(
        server, big, tmp_path, how):
    server.store().put_file(big, KEY)
    store = server.store(**FAIL_FAST)
    dest = tmp_path / "in" / big.name
    err = stopped_midway(server, how, store, "GetObject", lambda: store.get_file(KEY, dest))
    assert isinstance(err, Transient)
    assert list(dest.parent.iterdir()) == []  # no half-written input left behind
    server.start()
    store = server.store()
    retried(lambda: store.get_file(KEY, dest))
    assert file_sha256(dest) == file_sha256(big)


def test_a_wrong_secret_key_at_run_time_is_a_configuration_error(server, tmp_path):
    small = tmp_path / "a.fits"
    small.write_bytes(b"a" * 1000)
    server.store().put_file(small, "raw/n/a.fits")
    wrong = server.store(secret="not-the-secret")
    calls = {"put_file": (small, "raw/n/b.fits"), "get_file": ("raw/n/a.fits", tmp_path / "b"),
             "get_json": ("raw/n/a.fits",), "exists": ("raw/n/a.fits",),
             "delete": ("raw/n/a.fits",), "keys": ("raw/",)}
    for name, args in calls.items():
        with pytest.raises(ConfigError, match="SignatureDoesNotMatch|403"):
            getattr(wrong, name)(*args)
    assert server.store().exists("raw/n/a.fits")


@pytest.fixture
def vhost():
    with throwaway_vhost() as env:
        yield env["MUSEDRP_AMQP_VHOST"]


def test_a_worker_with_a_wrong_secret_stops_and_its_order_goes_back(server, vhost, tmp_path):
    """Not dead-lettered like a failed job: the next worker, with the secret fixed, runs it."""
    s3 = server.s3
    settings = Settings.load({
        "MUSEDRP_AMQP_VHOST": vhost, "MUSEDRP_S3_ENDPOINT": s3.endpoint,
        "MUSEDRP_S3_BUCKET": BUCKET, "MUSEDRP_S3_ACCESS_KEY": s3.access_key,
        "MUSEDRP_S3_SECRET_KEY": "not-the-secret", "MUSEDRP_S3_ATTEMPTS": "1"})
    worker = StageWorker(BY_NAME["bias"], settings, S3Store.from_settings(settings), [0],
                         tmp_path, logging.getLogger("test"))
    handled = []
    handle = worker.handle
    worker.handle = lambda env, attempt: (handled.append(attempt), handle(env, attempt))[1]
    order = WorkOrder(stage="bias", recipe="muse_bias", job_key="0123456789abcdef",
                      night="2014-08-01", setup="S", ifu=1, memory_gb=1, timeout_s=60, params={},
                      inputs=(InputFile(tag=Tag.BIAS, path="raw/2014-08-01/raw.fits"),))
    connection = broker.connect(settings)
    channel = connection.channel()
    broker.declare(channel, settings)
    channel.confirm_delivery()
    broker.publish(channel, Envelope(type="work.bias", source="test", payload=order))

    consumer = broker.Consumer(settings, queue("work.bias"), worker)
    watchdog = threading.Timer(20, lambda: setattr(consumer, "stopping", True))  # no hang
    watchdog.start()
    start = time.monotonic()
    try:
        with pytest.raises(ConfigError, match="SignatureDoesNotMatch|403") as stopped:
            consumer.run()
    finally:
        watchdog.cancel()
    print(f"stopped {time.monotonic() - start:.1f} s after consuming: {stopped.value}")
    assert handled == [1]  # cancelled before the nack: not handed straight back
    depth = {name: channel.queue_declare(name, passive=True).method.message_count
             for name in ("work.bias", "dead.work.bias")}
    assert depth == {"work.bias": 1, "dead.work.bias": 0}
    connection.close()
