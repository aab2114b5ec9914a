"""The service handlers without a broker: the stage worker on a local store with a stand-in
recipe, and the planner on a SQLite registry."""

import errno
import logging
import re
import threading
import time
from concurrent import futures
from pathlib import Path

import pytest
from astropy.io import fits
from prometheus_client import REGISTRY
from sqlalchemy.exc import OperationalError

from musedrp.admission import SharedPool
from musedrp.errors import DataError, Transient
from musedrp.esorex import RecipeRun
from musedrp.localcache import LocalCache
from musedrp.messages import (
    Envelope,
    FrameRegistered,
    InputFile,
    JobFinished,
    ProductCreated,
    WorkOrder,
)
from musedrp.planner import plan_night
from musedrp.registry import Registry
from musedrp.runner import StageResult
from musedrp.services.planner import service as planner_service
from musedrp.services.planner.service import Planner
from musedrp.services.worker import StageWorker
from musedrp.settings import Settings
from musedrp.storage import LocalStore
from musedrp.tags import Tag
from musedrp.topology import BY_NAME

from ..conftest import job_key

LOG = logging.getLogger("test")
K1 = job_key("k1")
DIR = f"products/2014-08-01/bias/S/{K1}"  # where the order of order_envelope() goes
FLAT = {"DPR.TYPE": "FLAT,LAMP", "TPL.ID": "MUSE_wfm_cal_specflat"}


def fake_compute(calls: list, fail: bool = False):
    def compute(order: WorkOrder, workdir: Path, cpus) -> StageResult:
        calls.append(order.job_key)
        assert all(Path(f.path).exists() for f in order.inputs)  # downloaded before the run
        (workdir / "esorex.log").write_text("log\n")
        if fail:
            raise DataError("muse_bias exited with 1: [ERROR] no raw frames")
        name = f"MASTER_BIAS-{order.ifu:02d}.fits"
        fits.PrimaryHDU().writeto(workdir / name)
        run = RecipeRun(recipe=order.recipe, command=[], returncode=0, wall_s=1.5,
                        cpu_user_s=1.0, cpu_sys_s=0.2, peak_rss_bytes=10**9, cpus=list(cpus),
                        omp_num_threads=1, timed_out=False)
        qc = {"QC BIAS MASTER1 RON": 2.6, "QC BIAS MASTER1 RONERR": 0.01}
        return StageResult(products={name: workdir / name}, qc={name: qc}, run=run)
    return compute


@pytest.fixture
def worker(tmp_path):
    store = LocalStore(tmp_path / "store")
    raw = tmp_path / "raw.fits"
    raw.write_bytes(b"raw data")
    store.put_file(raw, "raw/2014-08-01/raw.fits")
    w = StageWorker(BY_NAME["bias"], Settings.load({}), store, [0], tmp_path / "scratch", LOG)
    (tmp_path / "scratch").mkdir()
    return w


def order_envelope():
    order = WorkOrder(stage="bias", recipe="muse_bias", job_key=K1, night="2014-08-01",
                      setup="S", ifu=1, memory_gb=1, timeout_s=60, params={},
                      inputs=(InputFile(tag=Tag.BIAS, path="raw/2014-08-01/raw.fits"),))
    return Envelope(type="work.bias", source="test", payload=order)


def test_worker_runs_once_and_answers_duplicates_from_the_manifest(worker):
    calls = []
    worker.compute = fake_compute(calls)
    env = order_envelope()
    first = worker.handle(env, 1)
    second = worker.handle(env, 1)
    assert calls == [K1]
    assert [(e.type, getattr(e.payload, "outcome", None)) for e in first] == [
        ("job.finished", "succeeded"), ("product.created", None)]
    assert second[0].payload.outcome == "cached"
    assert first[1].payload.qc == second[1].payload.qc == {  # every keyword, for the registry
        "QC BIAS MASTER1 RON": 2.6, "QC BIAS MASTER1 RONERR": 0.01}
    assert first[0].payload.qc == {"QC BIAS MASTER1 RON": 2.6}  # the spec's headline
    assert first[0].payload.products == second[0].payload.products == {
        "MASTER_BIAS-01.fits": f"{DIR}/MASTER_BIAS-01.fits"}
    manifest = worker.store.get_json(f"{DIR}/manifest.json")
    assert [f["path"] for f in manifest["inputs"]] == ["raw/2014-08-01/raw.fits"]
    assert all(e.correlation_id == env.correlation_id for e in first)
    assert list(worker.scratch.iterdir()) == []  # scratch cleaned


def test_worker_failure_keeps_the_log_and_no_manifest(worker):
    worker.compute = fake_compute([], fail=True)
    with pytest.raises(DataError, match="no raw frames"):
        worker.handle(order_envelope(), 1)
    keys = worker.store.keys("products/")
    assert f"{DIR}/esorex.log" in keys
    assert f"{DIR}/error.txt" in keys
    assert not any(k.endswith("manifest.json") for k in keys)
    (event,) = worker.failed(order_envelope(), "failed", "esorex exited with 1", 2)
    assert event.payload.outcome == "failed"
    assert f"{DIR}/" in event.payload.reason


def test_a_success_after_a_failed_attempt_leaves_no_error_txt(worker):
    worker.compute = fake_compute([], fail=True)
    with pytest.raises(DataError):
        worker.handle(order_envelope(), 1)
    worker.compute = fake_compute([])
    assert worker.handle(order_envelope(), 2)[0].payload.outcome == "succeeded"
    keys = worker.store.keys(f"{DIR}/")
    assert f"{DIR}/manifest.json" in keys
    assert f"{DIR}/error.txt" not in keys


def test_a_full_disk_is_retried_not_dead_lettered_and_empties_the_cache(worker, tmp_path):
    def full(order, workdir, cpus):
        raise OSError(errno.ENOSPC, "No space left on device")
    worker.compute = full
    worker.store.cache = LocalCache(tmp_path / "cache", 10**9)
    (tmp_path / "kept").write_bytes(b"x" * 100)
    worker.store.cache.add(tmp_path / "kept", "0" * 64)
    with pytest.raises(Transient, match=r"is full \(0.0 GB of cached objects removed\)"):
        worker.handle(order_envelope(), 1)
    assert list(worker.store.cache.root.iterdir()) == []


def test_a_full_store_directory_is_named_as_what_is_full(worker, tmp_path, monkeypatch):
    """``serve`` on one machine: the products go to a directory that may fill apart from the
    scratch; the retry's reason names the file that did not fit."""
    worker.compute = fake_compute([])
    part = tmp_path / "store/products/x/MASTER_BIAS.fits.0123.part"

    def full(path, key):
        raise OSError(errno.ENOSPC, "No space left on device", str(part))

    monkeypatch.setattr(worker.store, "put_file", full)
    with pytest.raises(Transient, match=rf"^the disk of {re.escape(str(part))} is full \(0.0 GB"):
        worker.handle(order_envelope(), 1)


def test_a_job_s_inputs_are_downloaded_side_by_side(worker, tmp_path):
    """Three inputs: each download waits until the other two have started (one after the
    other, the first would wait until the barrier's timeout), and the recipe sees all three."""
    keys = [f"raw/2014-08-01/r{i}.fits" for i in range(3)]
    for i, key in enumerate(keys):
        (tmp_path / "f").write_bytes(bytes([i]) * 10)
        worker.store.put_file(tmp_path / "f", key)
    together, get = threading.Barrier(3, timeout=10), worker.store.get_file
    worker.store.get_file = lambda key, dest: (together.wait(), get(key, dest))[1]
    calls = []
    worker.compute = fake_compute(calls)
    env = order_envelope()
    inputs = tuple(InputFile(tag=Tag.BIAS, path=k) for k in keys)
    (done, _) = worker.handle(env.model_copy(update={
        "payload": env.payload.model_copy(update={"inputs": inputs})}), 1)
    assert done.payload.outcome == "succeeded" and calls == [K1]


def test_worker_refuses_an_order_of_another_stage(worker):
    env = order_envelope()
    with pytest.raises(DataError, match="work.flat message on the work.bias queue"):
        worker.handle(env.model_copy(update={"type": "work.flat"}), 1)


@pytest.mark.parametrize("path", ["/etc/passwd", "raw/../../etc/passwd", "raw//raw.fits"])
def test_worker_refuses_an_input_that_is_no_object_key(worker, path):
    """A work order's input path may be a local path (embedded mode): the worker, which
    reads object keys only, checks it before any download."""
    calls, env = [], order_envelope()
    worker.compute = fake_compute(calls)
    worker.store.get_file = lambda key, dest: pytest.fail(f"downloaded {key}")
    order = env.payload.model_copy(update={"inputs": (InputFile(tag=Tag.BIAS, path=path),)})
    with pytest.raises(DataError, match=r"input 1 \(BIAS\): .* is not a single path component"):
        worker.handle(env.model_copy(update={"payload": order}), 1)
    assert calls == []


def make_planner(registry: Registry, now: list[float]) -> Planner:
    """A planner on ``registry`` whose clock reads ``now[0]``."""
    settings = Settings.load({"MUSEDRP_PLAN_QUIET_S": "5", "MUSEDRP_PLAN_MAX_WAIT_S": "30"})
    return Planner(registry, settings, "2.8.7", LOG, clock=lambda: now[0])


@pytest.fixture
def planner_setup(tmp_path, template, science):
    registry = Registry(f"sqlite:///{tmp_path / 'reg.sqlite'}")
    frames = [*template(56870.75), *template(56870.8, keys=FLAT), *science()]
    registry.record_frames(frames, {})
    now = [0.0]
    return registry, lambda: make_planner(registry, now), now


def idle(planner) -> list[Envelope]:
    """What ``idle()`` publishes, and later calls until the planning it started is done (it
    runs in a thread of its own) and what it planned is issued."""
    published = []
    planner.idle(published.extend)
    while planner.planning is not None:
        futures.wait([planner.planning[1]])
        planner.idle(published.extend)
    return published


def finished(job, outcome):
    return Envelope(type="job.finished", source="test", payload=JobFinished(
        job_key=job.key, stage=job.stage, night=job.night, ifu=job.ifu, outcome=outcome))


def registered(frame) -> Envelope:
    return Envelope(type="frame.registered", source="test", payload=FrameRegistered(
        key=f"raw/{frame.night}/{frame.name}", night=frame.night, tag=frame.tag,
        status="registered"))


def test_planner_issues_work_as_inputs_complete_and_never_twice(planner_setup):
    registry, make, now = planner_setup
    planner = make()
    planner.handle(Envelope(type="frame.registered", source="t", payload=FrameRegistered(
        key="raw/x", night="2014-08-01", tag=Tag.BIAS, status="registered")), 1)
    assert idle(planner) == []  # still within the quiet period after the last frame
    now[0] = 10.0
    (bias,) = idle(planner)
    assert bias.type == "work.bias" and idle(planner) == []
    restarted = make()  # a new planner re-plans at start and publishes nothing twice
    assert idle(restarted) == []
    jobs = {j.stage: j for j in registry.jobs()}
    restarted.handle(finished(jobs["bias"], "succeeded"), 1)
    restarted.handle(finished(jobs["bias"], "cached"), 1)  # a duplicate answered later
    (flat,) = idle(restarted)
    assert flat.type == "work.flat" and flat.payload.needs == (jobs["bias"].key,)
    assert {j.stage: j.state for j in registry.jobs()} == {"bias": "succeeded",
                                                          "flat": "queued"}


def test_planner_blocks_what_a_failure_blocks_until_it_is_replayed(planner_setup):
    registry, make, now = planner_setup
    now[0] = 10.0
    planner = make()
    idle(planner)
    jobs = {j.stage: j for j in registry.jobs()}
    planner.handle(finished(jobs["bias"], "failed"), 1)
    assert idle(planner) == []
    flat = next(j for j in registry.jobs() if j.stage == "flat")
    assert flat.state == "blocked" and jobs["bias"].key in flat.reason
    planner.handle(finished(jobs["bias"], "succeeded"), 1)  # the dead letter replayed
    (issued,) = idle(planner)
    assert issued.type == "work.flat"


def test_planning_runs_beside_the_connection_thread(planner_setup, monkeypatch):
    """idle() runs on the connection thread, which must keep sending heartbeats while a year is
    planned: it starts the planning in a thread and returns; a later idle() issues the jobs."""
    _, make, now = planner_setup
    now[0] = 10.0

    def slow(*args, **kwargs):
        time.sleep(1.5)
        return plan_night(*args, **kwargs)

    monkeypatch.setattr(planner_service, "plan_night", slow)
    planner, published = make(), []
    start = time.monotonic()
    planner.idle(published.extend)
    assert time.monotonic() - start < 0.5 and published == []
    while not published and time.monotonic() - start < 10:
        time.sleep(0.1)
        planner.idle(published.extend)
    assert [e.type for e in published] == ["work.bias"] and time.monotonic() - start > 1.5


def test_planning_that_failed_in_its_thread_is_retried(planner_setup, monkeypatch):
    registry, make, now = planner_setup
    now[0] = 10.0
    load, calls = registry.load_frames, []

    def down_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise OperationalError("SELECT", {}, ConnectionRefusedError("registry down"))
        return load(*args, **kwargs)

    monkeypatch.setattr(registry, "load_frames", down_once)
    planner = make()
    with pytest.raises(Transient, match="registry unavailable"):
        idle(planner)  # the failure is the connection thread's: the consumer retries idle()
    (bias,) = idle(planner)
    assert bias.type == "work.bias" and len(calls) == 2


def test_a_new_frame_re_plans_only_the_nights_that_may_use_it(planner_setup, template,
                                                              monkeypatch):
    """A frame of night N may serve as a calibration of the nights within SEARCH_DAYS of N:
    those are re-planned, from the frames they may use; a static calibration re-plans all."""
    registry, make, now = planner_setup  # night 2014-08-01
    registry.record_frames([*template(56880.75), *template(56930.75)], {})  # 08-11, 09-30
    now[0] = 10.0
    planner = make()
    idle(planner)  # at start-up: every night
    seen = []

    def spy(frames, *args, nights=None, **kwargs):
        seen.append((nights, {f.night for f in frames}))
        return plan_night(frames, *args, nights=nights, **kwargs)

    monkeypatch.setattr(planner_service, "plan_night", spy)
    late = template(56870.9)  # a second bias template on 2014-08-01, closer to the science
    registry.record_frames(late, {})
    planner.handle(registered(late[0]), 1)
    now[0] = 20.0
    (bias,) = idle(planner)
    assert seen == [({"2014-08-01", "2014-08-11"}, {"2014-08-01", "2014-08-11"})]
    assert {f.path for f in late} == {i.path for i in bias.payload.inputs}
    status = {r.path: r.status for r in registry.frames()}
    assert {status[f.path] for f in late} == {"used"}
    with pytest.raises(DataError, match="'2014-02-30' is not a date"):  # dead-lettered
        planner.handle(registered(late[0].model_copy(update={"night": "2014-02-30"})), 1)
    planner.handle(Envelope(type="frame.registered", source="test", payload=FrameRegistered(
        key="static/extinct.fits", night="", tag=Tag.EXTINCT_TABLE, status="registered")), 1)
    now[0] = 30.0
    idle(planner)
    assert seen[-1][0] is None


def test_a_finished_job_reads_only_the_jobs_it_may_unblock(tmp_path, template, science,
                                                           monkeypatch):
    """Issuing after a job.finished costs what the job may unblock, not the whole registry."""
    registry = Registry(f"sqlite:///{tmp_path / 'reg.sqlite'}")
    ifus = (1, 2, 3)
    registry.record_frames([*template(56870.75, ifus=ifus),
                            *template(56870.8, keys=FLAT, ifus=ifus), *science(ifus=ifus)], {})
    planner = make_planner(registry, [10.0])
    assert len(idle(planner)) == 3  # the biases
    read = []

    def counting(method):
        def counted(*args, **kwargs):
            rows = method(*args, **kwargs)
            read.extend(j.key for j in rows)
            return rows
        return counted

    for name in ("jobs", "dependents"):
        monkeypatch.setattr(registry, name, counting(getattr(registry, name)))
    bias = next(j for j in registry.jobs("queued") if j.ifu == 2)
    read.clear()
    planner.handle(finished(bias, "succeeded"), 1)
    (flat,) = idle(planner)
    assert (flat.type, flat.payload.ifu, flat.payload.needs) == ("work.flat", 2, (bias.key,))
    assert read == [flat.payload.job_key]


def test_a_failure_blocks_every_job_below_it_until_replayed(tmp_path):
    """bias <- flat <- wavecal, and an unrelated job: a failed bias blocks flat and wavecal;
    replayed, it unblocks flat, whose success unblocks wavecal."""
    registry = Registry(f"sqlite:///{tmp_path / 'reg.sqlite'}")
    keys = [job_key(n) for n in ("bias", "flat", "wavecal", "other")]
    chain = [WorkOrder(stage=stage, recipe=f"muse_{stage}", job_key=key, night="2014-08-01",
                       setup="S", ifu=1, memory_gb=1, timeout_s=60, params={}, needs=needs,
                       inputs=(InputFile(tag=Tag.BIAS, path="raw/2014-08-01/a.fits"),))
             for stage, key, needs in (("bias", keys[0], ()), ("flat", keys[1], keys[:1]),
                                       ("wavecal", keys[2], keys[1:2]), ("bias", keys[3], ()))]
    registry.record_orders(chain)
    planner = make_planner(registry, [0.0])
    planner.touched.clear()  # nothing to plan: the jobs are given

    def issued():
        return sorted(e.payload.job_key for e in idle(planner))

    assert issued() == [keys[0], keys[3]]
    planner.handle(finished(registry.job(keys[0]), "failed"), 1)
    assert issued() == []
    blocked = {k: registry.job(k) for k in keys[1:3]}
    assert {j.state for j in blocked.values()} == {"blocked"}
    assert keys[0] in blocked[keys[1]].reason and keys[1] in blocked[keys[2]].reason
    planner.handle(finished(registry.job(keys[0]), "succeeded"), 1)  # replayed
    assert issued() == [keys[1]] and registry.job(keys[2]).state == "blocked"
    planner.handle(finished(registry.job(keys[1]), "succeeded"), 1)
    assert issued() == [keys[2]]


def test_planning_keeps_a_frame_registered_meanwhile(planner_setup, monkeypatch):
    """The planner writes each frame's status, never the frame it read: ingest may have
    registered the file again (replaced) while the plan was made."""
    registry, make, now = planner_setup
    now[0] = 10.0
    (science,) = [f for f in registry.load_frames() if f.tag == Tag.OBJECT]
    newer = science.model_copy(update={"target": "re-registered"})

    def meanwhile(*args, **kwargs):
        registry.record_frames([newer], {newer.path: ("registered", "")})
        return plan_night(*args, **kwargs)

    monkeypatch.setattr(planner_service, "plan_night", meanwhile)
    idle(make())
    row = next(r for r in registry.frames() if r.path == science.path)
    assert row.frame["target"] == "re-registered" and row.status == "rejected"
    assert "no wavelength calibration" in row.reason


def test_a_worker_sharing_the_machine_runs_on_the_core_it_claimed(worker, tmp_path):
    """Under ``serve`` the recipe runs on a core the shared pool grants (here the one left
    free beside another worker's claim), released afterwards."""
    calls = []
    worker.compute = fake_compute(calls)
    worker.pool = SharedPool(tmp_path / "admission.json", [0, 1], memory_gb=4.0)
    with worker.pool.claim(2.5) as other:
        (finished, _) = worker.handle(order_envelope(), 1)
    assert finished.payload.cpus == tuple(c for c in (0, 1) if c not in other)
    assert worker.pool.held() == {}


def test_planner_exports_qc_flags_and_bands_judged_against_the_history(tmp_path):
    """Eight nights of master biases of IFU 1; port 3's read noise jumps on the last: its
    flag goes up, port 1's stays down, and the band of the headline keys is exported."""
    registry = Registry(f"sqlite:///{tmp_path / 'reg.sqlite'}")
    planner = make_planner(registry, [0.0])
    nights = [f"2014-08-{d:02d}" for d in range(1, 9)]
    for i, night in enumerate(nights):
        key = job_key(f"b{i}")
        registry.record_orders([WorkOrder(
            stage="bias", recipe="muse_bias", job_key=key, night=night, setup="S", ifu=1,
            memory_gb=1, timeout_s=60, params={},
            inputs=(InputFile(tag=Tag.BIAS, path=f"raw/{night}/a.fits"),))])
        qc = {f"QC BIAS MASTER{p} RON": 2.6 + 0.002 * (i % 3) for p in (1, 2, 3, 4)}
        qc["QC BIAS MASTER3 RONERR"] = 0.01 + 0.0001 * (i % 3)  # not a headline key
        if night == nights[-1]:
            qc["QC BIAS MASTER3 RON"], qc["QC BIAS MASTER3 RONERR"] = 3.3, 0.02
        planner.handle(Envelope(type="product.created", source="t", payload=ProductCreated(
            job_key=key, stage="bias", ifu=1, tag=Tag.MASTER_BIAS,
            key=f"products/{night}/bias/S/{key}/MASTER_BIAS-01.fits", qc=qc)), 1)

    def sample(name, key):
        return REGISTRY.get_sample_value(name, {"stage": "bias", "key": key, "ifu": "1"})

    assert sample("musedrp_qc_flagged", "QC BIAS MASTER3 RON") == 1
    assert sample("musedrp_qc_flagged", "QC BIAS MASTER3 RONERR") == 1
    assert sample("musedrp_qc_flagged", "QC BIAS MASTER1 RON") == 0
    low, high = (sample(f"musedrp_qc_band_{b}", "QC BIAS MASTER1 RON") for b in ("low", "high"))
    assert low < 2.6 < high < 3.3
    assert sample("musedrp_qc_band_low", "QC BIAS MASTER3 RONERR") is None  # not headline
    (stored,) = [qc for night, *_, qc in registry.qc(since=nights[-1])]
    assert stored["QC BIAS MASTER3 RON"] == 3.3


def test_a_job_a_new_plan_no_longer_holds_is_superseded_never_issued(tmp_path, template,
                                                                      science):
    """Prompt mode: 3 of 5 biases arrive, then a pause, then the other two.  The first plan's
    master bias (degraded, 3 frames) is issued and runs; the second plan's replaces it.  The
    flat of the first plan, waiting on that bias, must not run when it finishes."""
    registry = Registry(f"sqlite:///{tmp_path / 'reg.sqlite'}")
    biases = template(56870.75, n=5)
    registry.record_frames([*template(56870.8, keys=FLAT), *science(), *biases[:3]], {})
    now = [10.0]
    planner = make_planner(registry, now)
    (first,) = idle(planner)
    assert len(first.payload.inputs) == 3
    registry.record_frames(biases[3:], {})
    for f in biases[3:]:
        planner.handle(registered(f), 1)
    now[0] = 20.0
    (second,) = idle(planner)
    assert second.type == "work.bias" and len(second.payload.inputs) == 5
    flats = {j.order["needs"][0]: j for j in registry.jobs() if j.stage == "flat"}
    old = flats[first.payload.job_key]
    assert old.state == "superseded" and "no longer" in old.reason
    planner.handle(finished(registry.job(first.payload.job_key), "succeeded"), 1)
    assert idle(planner) == []  # the first flat is not issued
    planner.handle(finished(registry.job(second.payload.job_key), "succeeded"), 1)
    (flat,) = idle(planner)
    assert flat.payload.needs == (second.payload.job_key,)


def arriving_until(planner, now, frame, end: float) -> list[Envelope]:
    """A frame announced every 2 s up to ``end``: what idle() issued meanwhile."""
    issued = []
    while now[0] < end:
        planner.handle(registered(frame), 1)
        issued += idle(planner)
        now[0] += 2
    return issued


def test_a_long_upload_has_its_first_jobs_issued_while_it_goes_on(tmp_path, template, science):
    """Frames every 2 s for a minute: the complete bias template is issued once
    ``plan_every_s`` (10 s) has passed since the first frame, not after the wait (30 s)."""
    registry = Registry(f"sqlite:///{tmp_path / 'reg.sqlite'}")
    complete, sci = template(56870.70), science()
    registry.record_frames([*complete, *template(56870.8, keys=FLAT), *sci], {})
    now = [0.0]
    planner, issued = make_planner(registry, now), {}
    while now[0] < 60:
        planner.handle(registered(sci[0]), 1)
        issued.update((e.type, now[0]) for e in idle(planner))
        now[0] += 2
    assert issued == {"work.bias": 10.0}


def test_frames_arriving_for_long_are_planned_without_the_templates_that_may_grow(
        tmp_path, template, science):
    """A bulk upload: frames arrive for longer than plan_max_wait_s.  The complete bias
    template is planned and issued meanwhile.  With a closer one of 3 of 4 frames, which would
    be chosen once complete, nothing is planned while frames arrive, nor after a pause of the
    quiet period; once none has come for plan_max_wait_s, the complete template is (a
    complete template goes before a closer incomplete one)."""
    registry = Registry(f"sqlite:///{tmp_path / 'reg.sqlite'}")
    complete, flats, sci = template(56870.70), template(56870.8, keys=FLAT), science()
    registry.record_frames([*complete, *flats, *sci], {})
    now = [0.0]
    planner = make_planner(registry, now)
    (bias,) = arriving_until(planner, now, sci[0], 70)  # issued at 10 s, frames arriving
    assert {i.path for i in bias.payload.inputs} == {f.path for f in complete}
    assert idle(planner) == []  # within the quiet period
    now[0] += 10
    assert idle(planner) == []  # planned once more, quiet: the same jobs, none issued twice

    registry = Registry(f"sqlite:///{tmp_path / 'reg2.sqlite'}")
    growing = template(56871.05, n=3, nexp=4)
    registry.record_frames([*complete, *growing, *flats, *sci], {})
    now[0] = 0.0
    planner = make_planner(registry, now)
    assert arriving_until(planner, now, sci[0], 70) == []
    assert any("waiting for BIAS" in d and "frames are still arriving" in d
               for d in registry.decisions())
    now[0] += 10
    assert idle(planner) == []  # a pause of the quiet period: they may still be arriving
    now[0] += 30
    (bias,) = idle(planner)
    assert {i.path for i in bias.payload.inputs} == {f.path for f in complete}
