"""The services with real parts: RabbitMQ (a vhost of its own), a SeaweedFS S3 server,
PostgreSQL (a database of its own) and the real esorex.

The simulated night's biases, flats and object frames (and one corrupt file) are submitted as
the observatory would; the planner, restricted to IFU 1, issues bias and flat.  The tests run
in order and build on each other: the reduction (with a worker killed mid-recipe), then
duplicates, poison messages, a recipe over its time limit, S3 down, the broker restarted.
"""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest
from astropy.io import fits

from musedrp import broker, qcreport, s3server
from musedrp.frames import classify_dir, classify_file
from musedrp.messages import Envelope, FrameArrived, WorkOrder, decode
from musedrp.planner import ifu_ranges
from musedrp.registry import Registry
from musedrp.serve import Fleet, submit
from musedrp.services.worker import StageWorker
from musedrp.settings import Settings
from musedrp.storage import S3Store
from musedrp.tags import Tag
from musedrp.topology import BY_NAME, EXCHANGE

from .conftest import IFU, assert_same_data, product, products, rabbitmqctl, throwaway_vhost

pytestmark = pytest.mark.integration
SUBMITTED = (Tag.BIAS, Tag.FLAT, Tag.OBJECT)


@pytest.fixture(scope="module")
def infra(workspace: Path) -> Iterator[dict]:
    """An S3 server, a vhost and a database for this module; all removed afterwards."""
    workspace = Path(tempfile.mkdtemp(prefix="services-", dir=workspace))
    s3 = s3server.start(workspace / "s3")
    with throwaway_vhost(database=True) as names:
        # a quiet period of 5 s and no plan while frames arrive: a plan made before the
        # science frames came would see a night of calibrations alone and issue their jobs too
        env = {**names, "MUSEDRP_S3_ENDPOINT": s3.endpoint,
               "MUSEDRP_S3_ACCESS_KEY": s3.access_key, "MUSEDRP_S3_SECRET_KEY": s3.secret_key,
               "MUSEDRP_SCRATCH": str(workspace / "scratch"), "MUSEDRP_PLAN_QUIET_S": "5",
               "MUSEDRP_PLAN_MAX_WAIT_S": "600", "MUSEDRP_PLAN_EVERY_S": "600",
               "MUSEDRP_RETRY_DELAYS_S": "1,2,4,8",
               "MUSEDRP_IFUS": str(IFU), "MUSEDRP_S3_ATTEMPTS": "1", "MUSEDRP_S3_TIMEOUT_S": "5"}
        settings = Settings.load(env)
        store = S3Store.from_settings(settings)
        store.create_bucket()
        state = {"env": env, "settings": settings, "store": store, "s3": s3,
                 "fleet": Fleet(workspace / "services", env), "workspace": workspace}
        yield state
        state["fleet"].stop_all()
        state["s3"].stop()  # the one running now: a test restarts it
        shutil.rmtree(workspace, ignore_errors=True)


class Events:
    """A queue of this test's own, bound to every event, read with basic_get."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seen: list[Envelope] = []
        self.connect()

    def connect(self) -> None:
        """(Re)connect: an idle blocking connection misses heartbeats during long waits."""
        self.connection = broker.connect(self.settings)
        self.channel = self.connection.channel()
        broker.declare(self.channel, self.settings)
        self.channel.confirm_delivery()
        self.channel.queue_declare("test.events", durable=True)
        for key in ("frame.registered", "job.finished", "product.created"):
            self.channel.queue_bind("test.events", EXCHANGE, key)

    def drain(self) -> list[Envelope]:
        if not self.connection.is_open:
            self.connect()
        while True:
            try:
                method, _, body = self.channel.basic_get("test.events", auto_ack=True)
            except broker.CONNECTION_ERRORS:
                self.connect()
                continue
            if method is None:
                return self.seen
            self.seen.append(decode(body))

    def wait(self, predicate: Callable[[list[Envelope]], bool], timeout_s: float, what: str,
             fleet: Fleet | None = None) -> list[Envelope]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self.drain()):
                return self.seen
            time.sleep(1)
        raise AssertionError(f"timed out waiting for {what}; logs:\n{tail_logs(fleet)}")

    def finished(self, job_key: str, outcome: str | None = None) -> list:
        return [e.payload for e in self.drain() if e.type == "job.finished"
                and e.payload.job_key == job_key and outcome in (None, e.payload.outcome)]

    def publish(self, env: Envelope) -> None:
        self.drain()  # reconnects if the connection was dropped while idle
        broker.publish(self.channel, env)

    def publish_raw(self, routing_key: str, body: bytes) -> None:
        self.drain()
        self.channel.basic_publish(EXCHANGE, routing_key, body, mandatory=True,
                                   properties=pika.BasicProperties(delivery_mode=2))

    def dead(self, queue_name: str) -> list[tuple[bytes, dict]]:
        self.drain()
        out = []
        while True:
            method, props, body = self.channel.basic_get(f"dead.{queue_name}", auto_ack=True)
            if method is None:
                return out
            out.append((body, props.headers or {}))


def tail_logs(fleet: Fleet | None, lines: int = 15) -> str:
    if fleet is None:
        return ""
    out = []
    for log in sorted((fleet.state_dir / "logs").glob("*.log")):
        out.append(f"== {log.name}")
        out += [line[:400] for line in log.read_text(errors="replace").splitlines()[-lines:]]
    return "\n".join(out)


def start_consuming(fleet: Fleet, name: str, cpus=None, **settings: str) -> None:
    """Start a service and wait until it has passed its start-up checks."""
    log = fleet.state_dir / "logs" / f"{name}.log"
    before = log.read_text().count("consuming") if log.exists() else 0
    fleet.start(name, cpus, **settings)
    deadline = time.monotonic() + 60
    while log.read_text().count("consuming") == before:
        assert fleet.processes[name].poll() is None and time.monotonic() < deadline, \
            tail_logs(fleet)
        time.sleep(0.2)


def esorex_running(recipe: str) -> bool:
    return subprocess.run(["pgrep", "-f", f"esorex.*{recipe}"], capture_output=True,
                          check=False).returncode == 0


@pytest.fixture(scope="module")
def submitted(infra, night):
    """Services started, the night's subset and a corrupt file submitted."""
    raw, _ = night
    subset = infra["workspace"] / "submit"
    subset.mkdir()
    frames, _ = classify_dir(raw)
    for f in frames:
        if f.tag in SUBMITTED:
            (subset / f.name).symlink_to(f.path)
    obj = next(f for f in frames if f.tag == Tag.OBJECT)
    (subset / "MUSE.corrupt.fits").write_bytes(Path(obj.path).read_bytes()[:2_000_000])
    fleet: Fleet = infra["fleet"]
    for name, cpus in (("ingest", None), ("planner", None), ("bias", [0]), ("flat", [1])):
        fleet.start(name, cpus)
    events = Events(infra["settings"])
    n = submit(subset, infra["settings"], report=lambda _: None)
    return {"events": events, "n": n, "subset": subset}


def jobs_of(infra) -> list:
    reg = Registry(infra["settings"].db_url)
    try:
        return reg.jobs()
    finally:
        reg.close()


def wait_for_states(infra, expected: dict[str, str], timeout_s: float = 60,
                    every_job: bool = True) -> dict:
    """The registry's jobs by stage once their states are `expected` (those of `expected`'s
    stages only, unless `every_job`): the planner records a job.finished after the test has
    seen it, so the registry may lag the event."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = {j.stage: j for j in jobs_of(infra) if every_job or j.stage in expected}
        states = {s: j.state for s, j in jobs.items()}
        if states == expected or time.monotonic() > deadline:
            assert states == expected
            return jobs
        time.sleep(0.5)


def test_night_reduced_through_services_despite_a_killed_worker(infra, submitted, reduced):
    fleet, events = infra["fleet"], submitted["events"]
    # the bias worker dies (SIGKILL) in the middle of its recipe; a new one takes over
    deadline = time.monotonic() + 300
    while not esorex_running("muse_bias"):
        assert time.monotonic() < deadline, tail_logs(fleet)
        time.sleep(0.5)
    time.sleep(3)
    fleet.processes["bias"].send_signal(signal.SIGKILL)
    fleet.processes["bias"].wait()
    time.sleep(1)
    assert not esorex_running("muse_bias"), "the recipe outlived its killed worker"
    start_consuming(fleet, "bias", [0])

    def both_done(seen):
        done = {(e.payload.stage, e.payload.outcome) for e in seen if e.type == "job.finished"}
        return {("bias", "succeeded"), ("flat", "succeeded")} <= done

    events.wait(both_done, 600, "bias and flat job.finished", fleet)
    jobs = wait_for_states(infra, {"bias": "succeeded", "flat": "succeeded"})

    # every submitted file was registered, the corrupt one rejected with its reason
    registered = [e.payload for e in events.seen if e.type == "frame.registered"]
    assert len({r.key for r in registered}) == submitted["n"]
    (bad,) = [r for r in registered if r.key.endswith("MUSE.corrupt.fits")]
    assert bad.status == "rejected" and "truncated" in bad.reason

    # the same jobs as `musedrp reduce`, with the same data, each product stored exactly once
    _, out, _ = reduced
    store: S3Store = infra["store"]
    for stage, names in (("bias", [f"MASTER_BIAS-{IFU:02d}.fits"]),
                         ("flat", [f"MASTER_FLAT-{IFU:02d}.fits", f"TRACE_TABLE-{IFU:02d}.fits"])):
        local = {p.parent.name for p in products(out, stage, names[0])}
        assert jobs[stage].key in local, f"{stage}: services and reduce planned other jobs"
        keys = store.keys("products/")
        for name in names:
            mine = [k for k in keys if k.endswith(f"/{stage}/WFM-NOAO-N_SCI1.0/"
                                                  f"{jobs[stage].key}/{name}")]
            assert len(mine) == 1, keys
            got = infra["workspace"] / "from-s3" / name
            store.get_file(mine[0], got)
            (ref,) = [p for p in products(out, stage, name) if p.parent.name == jobs[stage].key]
            assert_same_data(got, ref)
        manifest = store.get_json(f"{mine[0].rsplit('/', 1)[0]}/manifest.json")
        assert manifest["job_key"] == jobs[stage].key and manifest["run"]["cpus"] in ([0], [1])
    finished = [e for e in events.seen if e.type == "job.finished"]
    assert len({e.correlation_id for e in finished}) == 1  # one night, one reduction
    for stage in ("bias", "flat"):  # raw frames cut to IFU 1 by ranged reads, none whole
        log = (fleet.state_dir / "logs" / f"{stage}.log").read_text()
        assert re.search(r"[1-9]\d* raw frame\(s\) by ranged GETs", log), stage
        assert "whole: no byte ranges" not in log
    # the master bias the bias worker stored, the flat worker linked from the machine's cache
    log = (fleet.state_dir / "logs" / "flat.log").read_text()
    assert re.search(r"extension, [1-9]\d* linked on this machine", log), log[-2000:]

    # every QC keyword of each product reached the registry (for QC trending), as in reduce
    for stage, name in (("bias", f"MASTER_BIAS-{IFU:02d}.fits"),
                        ("flat", f"MASTER_FLAT-{IFU:02d}.fits")):
        (ref,) = [p.parent / "manifest.json" for p in products(out, stage, name)
                  if p.parent.name == jobs[stage].key]
        assert recorded_qc(infra, stage, name.split("-")[0]) == json.loads(
            ref.read_text())["qc"][name]


# keywords two runs of one recipe on the same data differ in: the time a product was written
# and the header checksum that covers it (DATASUM's comment, compared apart, holds a time
# too), and the code revision that stamped it
RUN_KEYWORDS = ("DATE", "CHECKSUM", "MUSEDRP GIT SHA")


def test_a_job_of_one_ifu_fetches_only_its_extension(infra, submitted, reduced):
    """IFU 3, the last extension of the night's frames, run by a worker from ranged reads of
    the bucket, against the embedded run from whole files: the same products."""
    _, out, _ = reduced
    store: S3Store = infra["store"]
    plan = json.loads((out / "plan.json").read_text())
    (order,) = [WorkOrder.model_validate(o) for o in plan["orders"]
                if o["stage"] == "bias" and o["ifu"] == 3]
    stored = {k.rsplit("/", 1)[1]: k for k in store.keys("raw/")}
    inputs, whole = [], 0
    for f in order.inputs:
        frame = classify_file(Path(f.path))
        inputs.append(f.model_copy(update={"path": stored[frame.name],
                                           "ranges": ifu_ranges(frame, 3)}))
        whole += frame.size
    order = order.model_copy(update={"inputs": tuple(inputs)})
    log = logging.getLogger("test.worker.bias")
    worker = StageWorker(BY_NAME["bias"], infra["settings"], store, [0],
                         infra["workspace"] / "scratch", log)
    (infra["workspace"] / "scratch").mkdir(exist_ok=True)
    fetched = {}
    counted = store.open_range

    def open_range(key):
        reader, size = counted(key)
        fetched[key] = reader
        return reader, size

    store.open_range = open_range
    try:
        (finished, *_) = worker.handle(Envelope(type="work.bias", source="test",
                                                payload=order), 1)
    finally:
        del store.open_range
    assert finished.payload.outcome == "succeeded"
    ext = sum(r.ranges[0][1] + r.ranges[1][1] for r in inputs)
    assert sum(r.bytes_read for r in fetched.values()) == ext < whole / 2.9
    name = "MASTER_BIAS-03.fits"
    got = infra["workspace"] / "ifu3" / name
    store.get_file(order.product_key(name), got)
    ref = product(out, "bias", name)
    diff = fits.FITSDiff(str(got), str(ref), ignore_keywords=RUN_KEYWORDS,
                         ignore_comments=["DATASUM"])
    assert diff.identical, diff.report()


def test_the_report_reads_the_deployment(infra, submitted, reduced):
    """``musedrp report --services`` against the page of the embedded run of the same jobs
    (bias and flat of IFU 1): the same jobs and states, detector QC, QC plots; the same
    decisions as the registry holds."""
    _, out, _ = reduced
    cache = infra["workspace"] / "report-cache"
    proc = subprocess.run([sys.executable, "-m", "musedrp.cli", "report", str(cache),
                           "--services", "--state-dir", str(infra["workspace"] / "none")],
                          env={**os.environ, **infra["env"]}, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    services_page = (cache / "report.html").read_text()
    keys = {j.key for j in jobs_of(infra)}
    embedded = infra["workspace"] / "embedded-same-jobs"
    plan = json.loads((out / "plan.json").read_text())
    plan["orders"] = [o for o in plan["orders"] if o["job_key"] in keys]
    assert len(plan["orders"]) == len(keys) == 2
    embedded.mkdir()
    (embedded / "plan.json").write_text(json.dumps(plan))
    (embedded / "products").symlink_to(out / "products")
    embedded_page = qcreport.render(embedded)
    for anchor in ("failures", "detectors-read-noise-and-bias-level",
                   "master-bias-and-flat-traced-slice-edges", "wavelength-solution"):
        assert html_section(services_page, anchor) == html_section(embedded_page, anchor), anchor
    assert jobs_and_states(services_page) == jobs_and_states(embedded_page)
    reg = Registry(infra["settings"].db_url)
    decisions = reg.decisions()
    reg.close()
    assert decisions and html_section(services_page, "association-decisions").count(
        "<li>") == len(decisions)


def html_section(page: str, anchor: str) -> str:
    m = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert m, anchor
    return m[1]


def jobs_and_states(page: str) -> list[list[str]]:
    """The rows of the jobs table: job, key and state (not the timings, which differ)."""
    table = re.search(r'<table class="jobs">(.*?)</table>', page, re.S)[1]
    return sorted(re.findall(r"<td[^>]*>(.*?)</td>", row)[:3]
                  for row in re.findall(r"<tr>(.*?)</tr>", table)[1:])


def recorded_qc(infra, stage: str, tag: str, timeout_s: float = 30) -> dict:
    """The QC the registry holds for the product (``product.created`` may lag the job)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reg = Registry(infra["settings"].db_url)
        try:
            found = [qc for _, st, _, _, t, qc in reg.qc(stage=stage) if t == tag]
        finally:
            reg.close()
        if found or time.monotonic() > deadline:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.5)


def _bias_order(infra) -> WorkOrder:
    (job,) = [j for j in jobs_of(infra) if j.stage == "bias"]
    return WorkOrder.model_validate(job.order)


def _publish_order(events: Events, order: WorkOrder) -> None:
    events.publish(Envelope(type="work.bias", source="test", payload=order))


def test_duplicates_change_nothing(infra, submitted):
    events, store = submitted["events"], infra["store"]
    keys_before = store.keys("products/")
    jobs_before = {j.key: j.state for j in jobs_of(infra)}
    order = _bias_order(infra)
    arrived = next(k for k in store.keys("raw/") if "corrupt" not in k)
    for _ in range(2):
        _publish_order(events, order)
        events.publish(Envelope(type="frame.arrived", source="test",
                                payload=FrameArrived(key=arrived)))
    events.wait(lambda _: len(events.finished(order.job_key, "cached")) >= 2, 120,
                "two cached answers", infra["fleet"])
    time.sleep(4)  # the planner re-plans after the quiet period
    assert {j.key: j.state for j in jobs_of(infra)} == jobs_before
    assert store.keys("products/") == keys_before
    assert len(events.finished(order.job_key, "succeeded")) == 1


def test_poison_messages_are_dead_lettered_with_the_reason(infra, submitted):
    events = submitted["events"]
    order = _bias_order(infra)
    good = Envelope(type="work.bias", source="test", payload=order)
    future = json.loads(good.encode()) | {"schema_version": 2}
    events.publish_raw("work.bias", b"{not json")
    events.publish_raw("work.bias", json.dumps(future).encode())
    _publish_order(events, order)  # behind the poison: the queue keeps flowing
    before = len(events.finished(order.job_key, "cached"))
    events.wait(lambda _: len(events.finished(order.job_key, "cached")) > before, 120,
                "the good order after the poison", infra["fleet"])
    dead = events.dead("work.bias")
    reasons = sorted(h[broker.REASON] for _, h in dead)
    assert len(dead) == 2, reasons
    assert "body is not JSON" in reasons[0] and "unknown schema_version 2" in reasons[1]
    assert {body for body, _ in dead} == {b"{not json", json.dumps(future).encode()}


def test_a_recipe_over_its_time_limit_is_retried_then_dead_lettered(infra, submitted):
    fleet, events, store = infra["fleet"], submitted["events"], infra["store"]
    fleet.stop("bias")
    start_consuming(fleet, "bias", [0], timeout_s="4", retry_delays_s="1")
    order = _bias_order(infra).model_copy(update={"job_key": uuid.uuid4().hex[:16]})
    _publish_order(events, order)
    events.wait(lambda _: events.finished(order.job_key, "failed"), 300,
                "the timed-out job's failure", fleet)
    (failed,) = events.finished(order.job_key, "failed")
    assert "gave up after 2 attempts" in failed.reason and "4 s wall-clock limit" in failed.reason
    (dead,) = [h for _, h in events.dead("work.bias")]
    assert "wall-clock limit" in dead[broker.REASON] and dead[broker.ATTEMPT] == 2
    kept = {k.rsplit("/", 1)[1] for k in store.keys(f"{order.product_dir}/")}
    assert {"esorex.stdout", "error.txt", "input.sof"} <= kept and "manifest.json" not in kept
    fleet.stop("bias")
    start_consuming(fleet, "bias", [0])


def test_s3_down_for_a_while_is_retried(infra, submitted):
    fleet, events, s3 = infra["fleet"], submitted["events"], infra["s3"]
    order = _bias_order(infra)
    s3.stop()
    before = len(events.finished(order.job_key, "cached"))
    _publish_order(events, order)
    time.sleep(4)  # attempts 1 and 2 fail on the dead endpoint
    port = int(s3.endpoint.rsplit(":", 1)[1]) - 3
    infra["s3"] = s3server.start(infra["workspace"] / "s3", port, s3.access_key, s3.secret_key)
    events.wait(lambda _: len(events.finished(order.job_key, "cached")) > before, 120,
                "the order answered once S3 is back", fleet)
    assert not events.dead("work.bias")
    log = (fleet.state_dir / "logs" / "bias.log").read_text()
    assert "retrying in" in log and "unreachable" in log


def test_services_reconnect_after_a_broker_restart(infra, submitted):
    fleet, settings = infra["fleet"], infra["settings"]
    submitted["events"].connection.close()
    rabbitmqctl("stop_app")
    time.sleep(3)
    rabbitmqctl("start_app")
    rabbitmqctl("await_startup")
    events = Events(settings)
    order = _bias_order(infra)
    _publish_order(events, order)
    events.wait(lambda _: events.finished(order.job_key, "cached"), 120,
                "an answer after the broker restart", fleet)
    assert all(p.poll() is None for p in fleet.processes.values()), tail_logs(fleet)
    reconnected = [n for n in fleet.processes if "reconnecting" in
                   (fleet.state_dir / "logs" / f"{n}.log").read_text()]
    assert sorted(reconnected) == sorted(fleet.processes)
