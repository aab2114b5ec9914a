"""A real bias worker (``musedrp service bias``, the real ``muse_bias``) against the real
broker and a real S3 server, hit by the faults a node brings: its scratch disk full, its
recipe killed by the kernel for memory, SIGTERM once and twice while the recipe runs, and its
broker connection closed while it is idle.  Each fault must end with the outcome README.md's
table states and every product stored exactly once (object keys counted).

Each test has its own vhost, S3 server and data directory; the three one-IFU biases they reduce
are simulated once for the module.  The scratch disk is a tmpfs mounted for the test, the memory
limit a cgroup-v1 memory cgroup made for it; both are removed afterwards.
"""

import json
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from musedrp import broker, s3server
from musedrp.frames import Frame, classify_file
from musedrp.messages import Envelope, InputFile, WorkOrder
from musedrp.provenance import ERROR_FILE, MANIFEST
from musedrp.serve import Fleet
from musedrp.settings import Settings
from musedrp.simulate.night import schedule, write_exposure
from musedrp.storage import S3Store, raw_key
from musedrp.tags import Tag
from musedrp.topology import BY_NAME

from .conftest import IFU, rabbitmqctl, throwaway_vhost
from .test_services import Events, start_consuming, tail_logs

pytestmark = pytest.mark.integration
SPEC = BY_NAME["bias"].spec
PRODUCT = f"MASTER_BIAS-{IFU:02d}.fits"
LOGS = {"esorex.log", "esorex.stdout", "input.sof"}  # kept beside products, failed or not
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


@pytest.fixture(scope="module")
def biases(tmp_path_factory) -> list[Frame]:
    """Three science-mode biases of one IFU (35.8 MB each), as in test_blank_paths."""
    raw = tmp_path_factory.mktemp("biases")
    found = [e for e in schedule(date(2014, 8, 1))
             if e.kind == "bias" and e.readout[0] == "SCI1.0"][:3]
    frames = [classify_file(write_exposure(e, [IFU], 7, raw)) for e in found]
    yield frames
    shutil.rmtree(raw, ignore_errors=True)


@dataclass
class Rig:
    """One test's broker vhost, S3 server (the biases uploaded), fleet and event queue."""

    root: Path
    env: dict[str, str]
    settings: Settings
    store: S3Store
    fleet: Fleet
    events: Events
    biases: list[Frame]

    def order(self) -> WorkOrder:
        """A bias work order of a job key of its own (16 hex digits)."""
        f = self.biases[0]
        return WorkOrder(
            stage="bias", recipe=SPEC.recipe, job_key=uuid.uuid4().hex[:16], night=f.night,
            setup=f.setup.key, ifu=IFU, params=SPEC.params().model_dump(),
            memory_gb=SPEC.memory.estimate_gb(len(self.biases)), timeout_s=SPEC.timeout_s,
            inputs=tuple(InputFile(tag=Tag.BIAS, path=raw_key(b.night, b.name), ifu=IFU,
                                   datasum=b.datasums[IFU]) for b in self.biases))

    def publish(self, order: WorkOrder) -> None:
        self.events.publish(Envelope(type="work.bias", source="test", payload=order))

    def finished(self, order: WorkOrder, outcome: str | None = None) -> list:
        return self.events.finished(order.job_key, outcome)

    def wait(self, predicate: Callable[[], object], timeout_s: float, what: str) -> float:
        """Seconds until ``predicate()`` holds, polling every 0.2 s (events drained)."""
        start = time.monotonic()
        while not predicate():
            if time.monotonic() - start > timeout_s:
                raise AssertionError(f"timed out waiting for {what}; logs:\n"
                                     f"{tail_logs(self.fleet, 25)}")
            time.sleep(0.2)
        return time.monotonic() - start

    def depth(self, queue_name: str) -> int:
        self.events.drain()  # reconnects if needed
        return self.events.channel.queue_declare(queue_name, passive=True).method.message_count

    def stored(self, order: WorkOrder) -> dict[str, int]:
        """File name -> how many objects of the whole bucket's products/ end with it, for the
        files of ``order``'s product directory."""
        everything = self.store.keys("products/")
        mine = [k for k in everything if k.startswith(order.product_dir + "/")]
        return {k.rsplit("/", 1)[1]: sum(x.endswith("/" + k.rsplit("/", 1)[1])
                                         for x in everything) for k in mine}

    def log(self, name: str = "bias") -> str:
        return (self.fleet.state_dir / "logs" / f"{name}.log").read_text(errors="replace")

    def messages(self, containing: str, name: str = "bias") -> list[str]:
        """The messages of the service's JSON log lines that contain ``containing``."""
        return [m for line in self.log(name).splitlines() if line.startswith("{")
                and containing in (m := json.loads(line)["message"])]


@pytest.fixture
def rig(biases, tmp_path) -> Iterator[Rig]:
    root = tmp_path / "rig"
    s3 = s3server.start(root / "s3")
    events = None
    fleet = None
    try:
        with throwaway_vhost() as names:
            env = {**names, "MUSEDRP_S3_ENDPOINT": s3.endpoint,
                   "MUSEDRP_S3_ACCESS_KEY": s3.access_key, "MUSEDRP_S3_SECRET_KEY": s3.secret_key,
                   "MUSEDRP_SCRATCH": str(root / "scratch"), "MUSEDRP_RETRY_DELAYS_S": "2,4,8",
                   "MUSEDRP_S3_ATTEMPTS": "1", "MUSEDRP_S3_TIMEOUT_S": "10"}
            settings = Settings.load(env)
            store = S3Store.from_settings(settings)
            store.create_bucket()
            for b in biases:
                store.put_file(Path(b.path), raw_key(b.night, b.name))
            events = Events(settings)
            fleet = Fleet(root / "services", env)
            yield Rig(root, env, settings, store, fleet, events, biases)
            fleet.stop_all()
            with suppress(*broker.CONNECTION_ERRORS):
                events.connection.close()
    finally:
        if fleet is not None:
            fleet.stop_all()
        s3.stop()
        shutil.rmtree(root, ignore_errors=True)


def esorex_pids(order: WorkOrder) -> list[int]:
    """The esorex processes of ``order`` (its work directory, named by the job key, is on the
    command line), whoever started them."""
    out = subprocess.run(["pgrep", "-f", f"esorex.*{order.job_key}"], capture_output=True,
                         text=True, check=False).stdout
    return [int(p) for p in out.split()]


def assert_stored_once(rig: Rig, order: WorkOrder, error_file: bool = False) -> dict[str, int]:
    """The job's product, manifest and logs in its directory, each the only object of its
    name in the bucket's products (the biases of each test make one job's products)."""
    stored = rig.stored(order)
    assert stored.get(PRODUCT) == 1 and stored.get(MANIFEST) == 1, stored
    assert set(stored.values()) == {1}, f"an object stored twice: {stored}"
    assert (ERROR_FILE in stored) == error_file, stored
    assert LOGS <= set(stored), stored
    manifest = rig.store.get_json(order.product_key(MANIFEST))
    assert manifest["job_key"] == order.job_key and manifest["run"]["returncode"] == 0
    return stored


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path``, unmounted afterwards."""
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False, capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)


@contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[Path]:
    """A cgroup-v1 memory cgroup limited to ``limit_bytes``; afterwards whatever still runs in
    it goes back to the root cgroup and the cgroup is removed."""
    if not (CGROUP_ROOT / "cgroup.procs").exists():
        pytest.fail(f"no cgroup-v1 memory hierarchy at {CGROUP_ROOT}")
    group = CGROUP_ROOT / f"musedrp-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                (CGROUP_ROOT / "cgroup.procs").write_text(pid)
            except OSError:
                pass  # ended meanwhile
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:  # charges of a process just gone are still being released
                time.sleep(0.1)
        assert not group.exists(), f"cgroup {group} left behind"


def oom_kills(group: Path) -> int:
    fields = dict(line.split() for line in (group / "memory.oom_control").read_text()
                  .splitlines())
    return int(fields.get("oom_kill", 0))


@pytest.mark.parametrize(("size", "too_small_for"), [("64m", "inputs"), ("200m", "products")])
def test_a_full_scratch_disk_is_retried_and_the_order_completes_once_there_is_room(
        rig, size, too_small_for):
    """A 64 MB scratch cannot hold the three inputs (108 MB); a 200 MB one holds them but not
    the master bias esorex writes beside them (202 MB).  Either is ``Transient``: retried
    through the delay queue until the disk is given room (remounted at 512 MB).

    With 200 MB, esorex itself fails (exit 255, no esorex.log: it could not write one); what
    the worker meets is ENOSPC when it copies the recipe's logs beside the products, on the
    same full disk."""
    scratch = rig.root / "tmpfs"
    with tmpfs(scratch, size):
        try:
            start_consuming(rig.fleet, "bias", [0], scratch=str(scratch))
            order = rig.order()
            t0 = time.monotonic()
            rig.publish(order)
            rig.wait(lambda: "retrying in" in rig.log() or rig.finished(order), 180,
                     "the first attempt's outcome")
            failed_after = time.monotonic() - t0
            assert not rig.finished(order), [f.reason for f in rig.finished(order)]
            subprocess.run(["mount", "-o", "remount,size=512m", str(scratch)], check=True,
                           capture_output=True)
            t_room = time.monotonic()
            rig.wait(lambda: rig.finished(order), 180, "the job's job.finished")
            recovered = time.monotonic() - t_room
            finished = rig.finished(order)
            assert [f.outcome for f in finished] == ["succeeded"], [f.reason for f in finished]
            assert finished[0].attempt >= 2
            retries = rig.messages("retrying in")
            assert all("is full" in r and "No space left on device" in r for r in retries), \
                retries
            retry = retries[0]
            assert rig.depth("dead.work.bias") == 0 and rig.depth("work.bias") == 0
            stored = assert_stored_once(rig, order)
            assert not [p for p in scratch.glob("bias.*/*") if p.is_dir()]  # jobs' removed
        finally:
            rig.fleet.stop_all()
    print(f"\nFAULT scratch full ({size}, too small for the {too_small_for}): first attempt "
          f"retried after {failed_after:.1f} s; succeeded at attempt {finished[0].attempt}, "
          f"{recovered:.1f} s after the disk got room; stored once: {sorted(stored)}; the "
          f"retry's reason: {retry!r}")


def test_a_recipe_killed_for_memory_fails_with_the_reason_and_uploads_no_product(rig):
    """muse_bias on three frames needs ~0.9 GB; in a 500 MB memory cgroup the kernel kills it
    (the worker, ~0.2 GB, survives): job.finished failed, dead-lettered with the reason, and
    only error.txt and the logs where the products would be."""
    with memory_cgroup(500 * 2**20) as group:
        try:
            start_consuming(rig.fleet, "bias", [0])
            worker = rig.fleet.processes["bias"]
            (group / "cgroup.procs").write_text(str(worker.pid))  # esorex is born inside it
            order = rig.order()
            t0 = time.monotonic()
            rig.publish(order)
            rig.wait(lambda: rig.finished(order), 180, "the job's job.finished")
            took = time.monotonic() - t0
            (finished,) = rig.finished(order)
            kills = oom_kills(group)
            assert worker.poll() is None, "the worker itself was killed"
            assert not esorex_pids(order)
        finally:
            rig.fleet.stop_all()
    assert kills >= 1, "no OOM kill in the cgroup"
    assert finished.outcome == "failed" and finished.attempt == 1
    assert "killed by SIGKILL" in finished.reason and "out-of-memory" in finished.reason
    assert f"estimate {order.memory_gb:.1f} GB" in finished.reason, finished.reason
    dead = rig.events.dead("work.bias")
    assert len(dead) == 1 and "out-of-memory" in dead[0][1][broker.REASON], dead
    assert rig.depth("work.bias") == 0
    # error.txt and the recipe's console log; esorex.log is written buffered, so a recipe
    # killed this early leaves none (as the recipe killed at its time limit in test_services)
    stored = rig.stored(order)
    assert set(stored) <= LOGS | {ERROR_FILE} and {ERROR_FILE, "esorex.stdout"} <= set(stored), \
        stored
    console = rig.store.client.get_object(Bucket=rig.store.bucket, Key=order.product_key(
        "esorex.stdout"))["Body"].read().decode()
    assert "muse_bias" in console
    error = rig.store.client.get_object(Bucket=rig.store.bucket, Key=order.product_key(
        ERROR_FILE))["Body"].read().decode()
    assert "out-of-memory" in error
    print(f"\nFAULT recipe OOM-killed (cgroup 500 MB, {kills} OOM kill(s)): failed after "
          f"{took:.1f} s, dead-lettered: {finished.reason!r}; stored: {sorted(stored)}")


def _sigterm_mid_recipe(rig: Rig):
    """A bias worker given an order, sent SIGTERM once its esorex has run for 2 s:
    (order, worker process, time of the signal)."""
    start_consuming(rig.fleet, "bias", [0])
    order = rig.order()
    rig.publish(order)
    rig.wait(lambda: esorex_pids(order), 120, "muse_bias to start")
    time.sleep(2)
    worker = rig.fleet.processes.pop("bias")
    t0 = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    return order, worker, t0


def test_sigterm_lets_the_running_recipe_finish_then_the_worker_exits(rig):
    order, worker, t0 = _sigterm_mid_recipe(rig)
    assert worker.wait(180) == 0, tail_logs(rig.fleet)
    took = time.monotonic() - t0
    assert not esorex_pids(order)
    (finished,) = rig.finished(order)
    assert finished.outcome == "succeeded", finished.reason
    assert rig.depth("work.bias") == 0 and rig.depth("dead.work.bias") == 0  # acked
    stored = assert_stored_once(rig, order)
    assert "finishing the running message" in rig.log()
    print(f"\nFAULT SIGTERM mid-recipe: the recipe finished, worker exited 0 {took:.1f} s after "
          f"the signal; stored once: {sorted(stored)}")


def test_a_second_sigterm_kills_the_recipe_and_requeues_the_order(rig):
    order, worker, t0 = _sigterm_mid_recipe(rig)
    time.sleep(1)
    assert esorex_pids(order), "the recipe did not outlive the first SIGTERM"
    worker.send_signal(signal.SIGTERM)
    code = worker.wait(60)
    stopped = time.monotonic() - t0
    assert code == 0, tail_logs(rig.fleet)
    assert not esorex_pids(order), "a recipe outlived its worker"
    assert not rig.finished(order)  # neither failed nor succeeded: requeued
    assert rig.depth("work.bias") == 1 and rig.depth("dead.work.bias") == 0
    assert "stopping the running recipe" in rig.log()

    t1 = time.monotonic()
    start_consuming(rig.fleet, "bias", [0])
    rig.wait(lambda: rig.finished(order), 180, "the requeued order's job.finished")
    recovered = time.monotonic() - t1
    (finished,) = rig.finished(order)
    assert finished.outcome == "succeeded", finished.reason
    assert rig.depth("work.bias") == 0 and rig.depth("dead.work.bias") == 0
    stored = assert_stored_once(rig, order)  # the interrupted attempt's error.txt is gone
    print(f"\nFAULT second SIGTERM mid-recipe: recipe killed, worker exited 0 {stopped:.1f} s "
          f"after the first signal, order requeued; a new worker completed it in "
          f"{recovered:.1f} s; stored once: {sorted(stored)}")


def test_a_worker_whose_connection_is_closed_reconnects_and_serves_the_next_order(rig):
    start_consuming(rig.fleet, "bias", [0])
    before = rig.log().count("consuming work.bias")
    t0 = time.monotonic()
    rabbitmqctl("close_all_connections", "--vhost", rig.env["MUSEDRP_AMQP_VHOST"],
                "test: connection closed by the broker")
    rig.wait(lambda: rig.log().count("consuming work.bias") > before, 60, "the reconnection")
    reconnected = time.monotonic() - t0
    assert "broker connection lost" in rig.log()
    order = rig.order()
    rig.publish(order)  # Events reconnects too
    rig.wait(lambda: rig.finished(order), 180, "the next order's job.finished")
    (finished,) = rig.finished(order)
    assert finished.outcome == "succeeded", finished.reason
    assert rig.fleet.processes["bias"].poll() is None
    stored = assert_stored_once(rig, order)
    print(f"\nFAULT connection closed while idle: reconnected in {reconnected:.1f} s, next "
          f"order succeeded; stored once: {sorted(stored)}")

