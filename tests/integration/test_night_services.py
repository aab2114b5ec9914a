"""The session's whole night through the services, as ``musedrp serve`` runs them on one
machine: RabbitMQ (a vhost of its own), PostgreSQL (a database of its own), the objects in a
directory, a process per service and worker.

The directory starts as a hard-linked copy of the session's reduction: the services write a
job's products where ``musedrp reduce`` does, under the same job key, so a worker that finds
a job's manifest answers from it.  Every job of the night thus passes through ingest,
planner, broker and the workers of all eleven stages in a few minutes, and a job whose key
differed from the embedded mode's would run its recipe, which the test refuses.  The
alignment's manifest is removed, so muse_exp_align runs again in its worker and must give
the session's offsets.  The frames are registered before the planner starts, so that it
plans the whole night at once (as after a restart), not a night still arriving.
"""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from musedrp.registry import Registry
from musedrp.serve import SERVICES, Fleet, instances, submit
from musedrp.settings import Settings

from .conftest import assert_same_data, throwaway_vhost
from .test_services import tail_logs

pytestmark = pytest.mark.integration
DONE = ("succeeded", "cached", "failed", "skipped", "superseded")


def until(done, timeout_s: float, what: str, fleet: Fleet) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        dead = [n for n, p in fleet.processes.items() if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise AssertionError(f"{what}: {'exited: ' + ', '.join(dead) if dead else 'timed out'}"
                                 f"\n{tail_logs(fleet)}")
        time.sleep(1)


@pytest.fixture(scope="module")
def through_services(reduced, night, workspace):
    code, out, _ = reduced
    assert code == 0
    plan = json.loads((out / "plan.json").read_text())
    root = Path(tempfile.mkdtemp(prefix="night-services-", dir=workspace))
    store = root / "store"
    shutil.copytree(out / "products", store / "products", copy_function=os.link)
    (align,) = [o for o in plan["orders"] if o["stage"] == "align"]
    (manifest,) = store.glob(f"products/*/align/*/{align['job_key']}/manifest.json")
    manifest.unlink()
    ncpus = len(os.sched_getaffinity(0))
    with throwaway_vhost(database=True) as names:
        env = {**names, "MUSEDRP_S3_ENDPOINT": f"file://{store}",
               "MUSEDRP_SCRATCH": str(root / "scratch"),
               "MUSEDRP_ADMISSION": str(root / "admission.json"),
               "MUSEDRP_MEMORY_GB": str(plan["memory_budget_gb"]), "MUSEDRP_PLAN_QUIET_S": "2"}
        settings = Settings.load(env)
        fleet = Fleet(root / "services", env)
        registry = Registry.connect(settings.db_url)
        try:
            for name, service in instances([s for s in SERVICES if s != "planner"], ncpus):
                fleet.start(name, service=service)
            sent = submit(night[0], settings, report=lambda _: None)
            until(lambda: len(registry.frames()) >= sent, 600, "every frame registered", fleet)
            fleet.start("planner")
            until(lambda: len(jobs := registry.jobs()) >= len(plan["orders"])
                  and all(j.state in DONE for j in jobs), 900, "every job finished", fleet)
            yield plan, out, store, registry.jobs()
        finally:
            registry.close()
            fleet.stop_all()
            shutil.rmtree(root, ignore_errors=True)


def test_every_job_of_the_night_passes_through_the_services_under_the_embedded_key(
        through_services):
    plan, _, _, jobs = through_services
    held = {j.key: j for j in jobs if j.state != "superseded"}
    assert set(held) == {o["job_key"] for o in plan["orders"]}
    assert {j.stage for j in jobs} == {o["stage"] for o in plan["orders"]}  # all eleven
    states = {j.key: (j.stage, j.state) for j in held.values()}
    assert {s for s, state in states.values() if state != "cached"} == {"align"}, states
    (align,) = [j for j in held.values() if j.stage == "align"]
    assert align.state == "succeeded", align.reason


def test_the_alignment_run_in_its_worker_gives_the_session_s_offsets(through_services):
    plan, out, store, _ = through_services
    (align,) = [o for o in plan["orders"] if o["stage"] == "align"]
    (ref,) = out.glob(f"products/*/align/*/{align['job_key']}/OFFSET_LIST.fits")
    got = store / ref.relative_to(out)
    assert got.stat().st_ino != ref.stat().st_ino  # written again, not the linked one
    assert_same_data(got, ref)
