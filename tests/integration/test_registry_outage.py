"""PostgreSQL stopped for a while under a running ingest and planner (real RabbitMQ, S3 and
PostgreSQL, no esorex): frames that arrive meanwhile are retried through the delay queue and
registered exactly once when the registry is back, nothing is dead-lettered, and the planner,
whose planning failed during the outage, plans and issues its work order once.

The PostgreSQL server is the machine's (``pg_ctlcluster 15 main stop|start``): it is started
again whatever happens, and nothing else may use it meanwhile.
"""

import shutil
import subprocess
import time
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from musedrp import s3server
from musedrp.registry import Registry
from musedrp.serve import Fleet, submit
from musedrp.settings import Settings
from musedrp.simulate.night import schedule, write_exposure
from musedrp.storage import S3Store

from ..conftest import PG_ADMIN_URL
from .conftest import IFU, throwaway_vhost
from .test_services import Events, start_consuming, tail_logs

pytestmark = pytest.mark.integration
CLUSTER = ("15", "main")
DOWN_S = 10.0


def pg_ctl(action: str) -> float:
    """``pg_ctlcluster 15 main <action>``; its duration."""
    t0 = time.monotonic()
    subprocess.run(["pg_ctlcluster", *CLUSTER, action], check=True, capture_output=True,
                   timeout=120)
    return time.monotonic() - t0


def wait_for_postgres(timeout_s: float = 60) -> None:
    engine = create_engine(PG_ADMIN_URL)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                with engine.connect() as c:
                    c.execute(text("SELECT 1"))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        engine.dispose()


def write(kind: str, n: int, out: Path) -> Path:
    """The night's first ``n`` science-mode frames of ``kind``, IFU 1 only, in ``out``."""
    out.mkdir(parents=True)
    found = [e for e in schedule(date(2014, 8, 1))
             if e.kind == kind and e.readout[0] == "SCI1.0"][:n]
    for e in found:
        write_exposure(e, [IFU], 7, out)
    return out


def test_postgres_stopped_and_restarted_loses_no_frame_and_duplicates_nothing(tmp_path):
    if shutil.which("pg_ctlcluster") is None:
        pytest.fail("pg_ctlcluster not found: this test stops and starts the local PostgreSQL")
    biases, flats = write("bias", 3, tmp_path / "biases"), write("flat", 3, tmp_path / "flats")
    s3 = s3server.start(tmp_path / "s3")
    fleet = None
    try:
        with throwaway_vhost(database=True) as names:
            # planning waits 8 s without a new frame: the biases' plan falls into the outage;
            # their template (3 frames of the night's first) is used, DEGRADED, once no
            # frame has come for 20 s
            env = {**names, "MUSEDRP_S3_ENDPOINT": s3.endpoint,
                   "MUSEDRP_S3_ACCESS_KEY": s3.access_key, "MUSEDRP_S3_SECRET_KEY": s3.secret_key,
                   "MUSEDRP_SCRATCH": str(tmp_path / "scratch"), "MUSEDRP_PLAN_QUIET_S": "8",
                   "MUSEDRP_PLAN_MAX_WAIT_S": "20", "MUSEDRP_PLAN_EVERY_S": "20",
                   "MUSEDRP_RETRY_DELAYS_S": "1,2,4,8,16,32", "MUSEDRP_IFUS": str(IFU),
                   "MUSEDRP_S3_ATTEMPTS": "1", "MUSEDRP_S3_TIMEOUT_S": "5"}
            settings = Settings.load(env)
            S3Store.from_settings(settings).create_bucket()
            fleet = Fleet(tmp_path / "services", env)
            for name in ("ingest", "planner"):
                start_consuming(fleet, name)
            events = Events(settings)

            def registered() -> Counter:
                return Counter(e.payload.key for e in events.drain()
                               if e.type == "frame.registered")

            def wait(predicate, timeout_s: float, what: str) -> None:
                deadline = time.monotonic() + timeout_s
                while not predicate():
                    assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" \
                                                        f"{tail_logs(fleet, 25)}"
                    time.sleep(0.2)

            n_biases = submit(biases, settings, report=lambda _: None)
            wait(lambda: len(registered()) == n_biases, 60, "the biases registered")
            stopped_at = time.monotonic()
            try:
                took_stop = pg_ctl("stop")
                n_flats = submit(flats, settings, report=lambda _: None)  # S3 and broker only
                time.sleep(max(0.0, DOWN_S - (time.monotonic() - stopped_at)))
            finally:
                took_start = pg_ctl("start")
                wait_for_postgres()
            up_at = time.monotonic()
            wait(lambda: len(registered()) == n_biases + n_flats, 120, "every frame registered")
            all_registered = time.monotonic() - up_at

            reg = Registry(settings.db_url)
            try:
                def bias_issued() -> bool:
                    return any(j.stage == "bias" and j.state == "queued" for j in reg.jobs())

                wait(bias_issued, 120, "the planner to issue the bias job")
                issued = time.monotonic() - up_at
                time.sleep(2)  # a duplicate publication would come now
                frames = reg.frames()
                jobs = reg.jobs()
            finally:
                reg.close()

            keys = registered()
            assert set(keys.values()) == {1}, f"a frame.registered twice: {keys}"
            assert sorted(f.path for f in frames) == sorted(keys), "registry rows != frames"
            assert len(frames) == n_biases + n_flats == 6
            assert all(f.tag in ("BIAS", "FLAT") for f in frames), [(f.name, f.tag, f.reason)
                                                                     for f in frames]
            channel = events.channel
            depth = {q: channel.queue_declare(q, passive=True).method.message_count
                     for q in ("dead.ingest", "dead.planner", "work.bias", "work.flat")}
            bias_jobs = [j for j in jobs if j.stage == "bias"]
            assert len(bias_jobs) == 1 and bias_jobs[0].state == "queued", bias_jobs
            assert depth == {"dead.ingest": 0, "dead.planner": 0, "work.bias": 1,
                             "work.flat": 0}, depth  # the bias order issued once
            method, _, body = channel.basic_get("work.bias", auto_ack=True)
            assert bias_jobs[0].key.encode() in body
            assert all(p.poll() is None for p in fleet.processes.values()), tail_logs(fleet)
            ingest_log = (fleet.state_dir / "logs" / "ingest.log").read_text()
            planner_log = (fleet.state_dir / "logs" / "planner.log").read_text()
            assert "registry unavailable" in ingest_log and "retrying in" in ingest_log
            assert "periodic work failed" in planner_log, "the planning met no outage"
            retries = ingest_log.count("retrying in")
            events.connection.close()
            fleet.stop_all()
            fleet = None
    finally:
        if fleet is not None:
            fleet.stop_all()
        s3.stop()
    print(f"\nFAULT PostgreSQL down {DOWN_S:.0f} s (stop {took_stop:.1f} s, start "
          f"{took_start:.1f} s): {retries} ingest retries, all {n_biases + n_flats} frames "
          f"registered once {all_registered:.1f} s after it was back, the bias job issued once "
          f"{issued:.1f} s after; jobs {[(j.stage, j.state) for j in jobs]}; nothing "
          "dead-lettered")
