"""Ingest: a raw file arrived in the bucket; classify it from its headers and register it.

Only header blocks are read, by ranged GETs.  A file that is not a usable MUSE frame is
registered as rejected with the reason (and announced like any other), never dropped.
"""

import io
import logging
from pathlib import PurePosixPath

from musedrp import metrics, service, storage
from musedrp.broker import Handler
from musedrp.frames import classify
from musedrp.messages import Envelope, FrameArrived, FrameRegistered
from musedrp.registry import Registry, unavailable_is_transient
from musedrp.settings import Settings


class Ingest(Handler):
    name = "ingest"

    def __init__(self, store: storage.ObjectStore, registry: Registry,
                 log: logging.Logger) -> None:
        self.store, self.registry, self.log = store, registry, log

    def handle(self, env: Envelope, attempt: int) -> list[Envelope]:
        arrived: FrameArrived = env.payload
        reader, size = self.store.open_range(arrived.key)
        with io.BufferedReader(reader, storage.HEADER_BUFFER) as f:
            frame = classify(f, size, arrived.key, PurePosixPath(arrived.key).name)
        metrics.HEADER_BYTES.inc(reader.bytes_read)
        status = "registered" if frame.tag is not None else "rejected"
        with unavailable_is_transient():
            self.registry.record_frames([frame], {frame.path: (status, frame.reason)})
        metrics.FRAMES.labels(str(frame.tag or "none"), status).inc()
        if status == "rejected":
            self.log.warning("%s rejected: %s", arrived.key, frame.reason)
        else:
            self.log.info("%s: %s, night %s, %d of %d bytes read", arrived.key, frame.tag,
                          frame.night, reader.bytes_read, size)
        return [env.reply("frame.registered", "ingest", FrameRegistered(
            key=arrived.key, night=frame.night, tag=frame.tag, status=status,
            reason=frame.reason))]


def make(settings: Settings, log: logging.Logger) -> Ingest:
    store = storage.open_store(settings)
    store.check()
    return Ingest(store, Registry.connect(settings.db_url), log)


def main() -> int:
    return service.main("ingest", "ingest", make)
