"""The service handlers without a broker: the stage worker on a local store with a stand-in
recipe, and the planner on a SQLite registry."""

import errno
import logging
from pathlib import Path

import pytest
from astropy.io import fits

from musedrp.errors import DataError, Transient
from musedrp.esorex import RecipeRun
from musedrp.messages import Envelope, FrameRegistered, InputFile, JobFinished, WorkOrder
from musedrp.registry import Registry
from musedrp.runner import StageResult
from musedrp.services.planner.service import Planner
from musedrp.services.worker import StageWorker
from musedrp.settings import Settings
from musedrp.storage import LocalStore
from musedrp.tags import Tag
from musedrp.topology import BY_NAME

LOG = logging.getLogger("test")
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
        return StageResult(products={name: workdir / name}, qc={name: {}}, run=run)
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
    order = WorkOrder(stage="bias", recipe="muse_bias", job_key="k1", night="2014-08-01",
                      setup="S", ifu=1, memory_gb=1, timeout_s=60, params={},
                      inputs=(InputFile(tag=Tag.BIAS, path="raw/2014-08-01/raw.fits"),))
    return Envelope(type="work.bias", source="test", payload=order)


def test_worker_runs_once_and_answers_duplicates_from_the_manifest(worker):
    calls = []
    worker.compute = fake_compute(calls)
    env = order_envelope()
    first = worker.handle(env, 1)
    second = worker.handle(env, 1)
    assert calls == ["k1"]
    assert [(e.type, getattr(e.payload, "outcome", None)) for e in first] == [
        ("job.finished", "succeeded"), ("product.created", None)]
    assert second[0].payload.outcome == "cached"
    assert first[0].payload.products == second[0].payload.products == {
        "MASTER_BIAS-01.fits": "products/2014-08-01/bias/S/k1/MASTER_BIAS-01.fits"}
    manifest = worker.store.get_json("products/2014-08-01/bias/S/k1/manifest.json")
    assert [f["path"] for f in manifest["inputs"]] == ["raw/2014-08-01/raw.fits"]
    assert all(e.correlation_id == env.correlation_id for e in first)
    assert list(worker.scratch.iterdir()) == []  # scratch cleaned


def test_worker_failure_keeps_the_log_and_no_manifest(worker):
    worker.compute = fake_compute([], fail=True)
    with pytest.raises(DataError, match="no raw frames"):
        worker.handle(order_envelope(), 1)
    keys = worker.store.keys("products/")
    assert "products/2014-08-01/bias/S/k1/esorex.log" in keys
    assert "products/2014-08-01/bias/S/k1/error.txt" in keys
    assert not any(k.endswith("manifest.json") for k in keys)
    (event,) = worker.failed(order_envelope(), "failed", "esorex exited with 1", 2)
    assert event.payload.outcome == "failed"
    assert "products/2014-08-01/bias/S/k1/" in event.payload.reason


def test_a_full_disk_is_retried_not_dead_lettered(worker):
    def full(order, workdir, cpus):
        raise OSError(errno.ENOSPC, "No space left on device")
    worker.compute = full
    with pytest.raises(Transient, match="is full"):
        worker.handle(order_envelope(), 1)


def test_worker_refuses_an_order_of_another_stage(worker):
    env = order_envelope()
    with pytest.raises(DataError, match="work.flat message on the work.bias queue"):
        worker.handle(env.model_copy(update={"type": "work.flat"}), 1)


@pytest.fixture
def planner_setup(tmp_path, template, science):
    registry = Registry(f"sqlite:///{tmp_path / 'reg.sqlite'}")
    frames = [*template(56870.75), *template(56870.8, keys=FLAT), *science()]
    registry.record_frames(frames, {})
    now = [0.0]
    settings = Settings.load({"MUSEDRP_PLAN_QUIET_S": "5"})

    def make():
        return Planner(registry, settings, "2.8.7", LOG, clock=lambda: now[0])
    return registry, make, now


def idle(planner) -> list[Envelope]:
    published = []
    planner.idle(published.append)
    return published


def finished(job, outcome):
    return Envelope(type="job.finished", source="test", payload=JobFinished(
        job_key=job.key, stage=job.stage, night=job.night, ifu=job.ifu, outcome=outcome))


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
