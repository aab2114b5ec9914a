"""The local executor with a stand-in compute: budget, dependencies, failures, re-runs."""

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from astropy.io import fits

from musedrp import runner
from musedrp.errors import DataError
from musedrp.esorex import RecipeRun
from musedrp.executor import LocalExecutor
from musedrp.messages import InputFile, WorkOrder
from musedrp.registry import Registry
from musedrp.runner import StageResult
from musedrp.services.bias.spec import SPEC as BIAS
from musedrp.services.flat.spec import SPEC as FLAT
from musedrp.tags import Tag

from ..conftest import job_key, job_name


class FakeCompute:
    """Records concurrency; sleeps ``durations[name]``; fails the jobs named in ``fail``
    (job names as ``make_order`` takes them)."""

    def __init__(self, durations=None, fail=()):
        self.durations, self.fail = durations or {}, set(fail)
        self.lock = threading.Lock()
        self.active = self.max_active = self.max_memory = 0
        self.memory = 0.0
        self.calls: list[str] = []
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}

    def __call__(self, order: WorkOrder, workdir: Path, cpus) -> StageResult:
        key = job_name(order.job_key)
        with self.lock:
            self.calls.append(key)
            self.started[key] = time.monotonic()
            self.active += 1
            self.memory += order.memory_gb
            self.max_active = max(self.max_active, self.active)
            self.max_memory = max(self.max_memory, self.memory)
        time.sleep(self.durations.get(key, 0.2))
        with self.lock:
            self.active -= 1
            self.memory -= order.memory_gb
            self.ended[key] = time.monotonic()
        if key in self.fail:
            raise DataError("recipe crashed")
        name = {"bias": "MASTER_BIAS-{:02d}.fits", "flat": "MASTER_FLAT-{:02d}.fits",
                "scibasic": "PIXTABLE_OBJECT_0001-{:02d}.fits",
                "scipost": "DATACUBE_FINAL.fits"}[order.stage].format(order.ifu)
        h = fits.Header()
        h["HIERARCH ESO QC X"] = 1.0
        fits.PrimaryHDU(header=h).writeto(workdir / name)
        run = RecipeRun(recipe=order.recipe, command=[], returncode=0, wall_s=0.2, cpu_user_s=0,
                        cpu_sys_s=0, peak_rss_bytes=1, cpus=list(cpus), omp_num_threads=1,
                        timed_out=False)
        return StageResult(products={name: workdir / name}, qc={name: {"QC X": 1.0}}, run=run)


@pytest.fixture
def raw(tmp_path):
    path = tmp_path / "raw.fits"
    path.write_bytes(b"raw")
    return path


def make_order(name, stage, ifu, raw, memory=2.5, needs=()):
    return WorkOrder(stage=stage, recipe=f"muse_{stage}", job_key=job_key(name),
                     night="2014-08-01", setup="S", ifu=ifu,
                     inputs=(InputFile(tag=Tag.BIAS, path=str(raw)),), params={},
                     memory_gb=memory, timeout_s=60, needs=tuple(map(job_key, needs)))


def executor(tmp_path, compute, cpus=4, memory=10.0, prune=False, registry=None):
    specs = {"bias": BIAS, "flat": FLAT, "scibasic": FLAT, "scipost": replace(FLAT, multicore=True)}
    executor = LocalExecutor(tmp_path / "out", list(range(cpus)), memory, report=lambda _: None,
                             scratch=tmp_path, stage_for=lambda name: (specs[name], compute),
                             prune=prune, registry=registry)
    run = executor.run
    executor.run = lambda orders: {job_name(k): r for k, r in run(orders).items()}  # by name
    return executor


@pytest.mark.parametrize(("budget", "expected"), [(5.0, 2), (7.5, 3), (20.0, 4)])
def test_memory_budget_limits_concurrency(tmp_path, raw, budget, expected):
    compute = FakeCompute()
    orders = [make_order(f"b{i}", "bias", i, raw) for i in range(1, 7)]
    results = executor(tmp_path, compute, cpus=4, memory=budget).run(orders)
    assert all(r.outcome == "succeeded" for r in results.values())
    assert compute.max_memory <= budget
    assert compute.max_active == expected


def test_flat_starts_when_its_own_bias_is_done(tmp_path, raw):
    compute = FakeCompute(durations={"b1": 0.1, "b2": 1.0, "f1": 0.1, "f2": 0.1})
    orders = [make_order("b1", "bias", 1, raw), make_order("b2", "bias", 2, raw),
              make_order("f1", "flat", 1, raw, needs=["b1"]),
              make_order("f2", "flat", 2, raw, needs=["b2"])]
    executor(tmp_path, compute, cpus=2).run(orders)
    assert compute.started["f1"] >= compute.ended["b1"]
    assert compute.started["f1"] < compute.ended["b2"]
    assert compute.started["f2"] >= compute.ended["b2"]


def test_a_multicore_stage_takes_every_free_core_and_those_freed_later(tmp_path, raw):
    compute = FakeCompute(durations={"b1": 0.3, "b2": 0.3, "s1": 1.5, "b3": 0.1, "s2": 0.3})
    orders = [make_order("b1", "bias", 1, raw), make_order("b2", "bias", 2, raw),
              make_order("s1", "scipost", 1, raw),
              make_order("s2", "scipost", 2, raw, needs=["b1", "b2", "s1"]),
              make_order("b3", "bias", 3, raw)]
    results = executor(tmp_path, compute, cpus=3).run(orders)
    cpus = {k: r.manifest["run"]["cpus"] for k, r in results.items()}
    assert len(cpus["b1"]) == len(cpus["b2"]) == 1  # per-IFU: one core each
    assert compute.started["s1"] < compute.ended["b1"]  # started beside the biases, on the
    assert cpus["s1"] == [0, 1, 2]  # one core left; given theirs when they ended
    assert compute.started["b3"] >= compute.ended["s1"]  # so b3 waited for s1
    assert cpus["s2"] == [0, 1, 2]  # alone: all three


def test_failure_skips_downstream_and_the_rest_goes_on(tmp_path, raw):
    compute = FakeCompute(fail={"b1"})
    orders = [make_order("b1", "bias", 1, raw), make_order("b2", "bias", 2, raw),
              make_order("f1", "flat", 1, raw, needs=["b1"]),
              make_order("f2", "flat", 2, raw, needs=["b2"])]
    results = executor(tmp_path, compute).run(orders)
    outcome = {k: r.outcome for k, r in results.items()}
    assert outcome == {"b1": "failed", "b2": "succeeded", "f1": "skipped", "f2": "succeeded"}
    assert "recipe crashed" in results["b1"].reason
    assert f"upstream job {job_key('b1')}" in results["f1"].reason
    assert (results["b1"].directory / "error.txt").read_text() == "recipe crashed\n"
    assert not (results["b1"].directory / "manifest.json").exists()
    assert "f1" not in compute.calls


def test_job_larger_than_the_budget_is_never_started(tmp_path, raw):
    compute = FakeCompute()
    results = executor(tmp_path, compute, memory=2.0).run([make_order("b1", "bias", 1, raw)])
    assert results["b1"].outcome == "failed"
    assert "needs 2.5 GB, more than the memory budget of 2.0 GB" in results["b1"].reason
    assert (results["b1"].directory / "error.txt").read_text() == results["b1"].reason + "\n"
    assert compute.calls == []


def test_rerun_recomputes_nothing(tmp_path, raw):
    orders = [make_order("b1", "bias", 1, raw), make_order("f1", "flat", 1, raw, needs=["b1"])]
    first = FakeCompute()
    results = executor(tmp_path, first).run(orders)
    manifest = results["f1"].directory / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    stamped = fits.getheader(results["b1"].directory / "MASTER_BIAS-01.fits")
    assert stamped["MUSEDRP JOB KEY"] == job_key("b1")
    second = FakeCompute()
    again = executor(tmp_path, second).run(orders)
    assert {r.outcome for r in again.values()} == {"cached"}
    assert second.calls == [] and manifest.stat().st_mtime_ns == stamp


def test_jobs_with_waiting_downstream_work_start_first(tmp_path, raw):
    """With two cores, the third bias must not wait behind the first flat: when b1 ends
    (b2 still runs), b3 and f1 are both ready for the one free core."""
    compute = FakeCompute(durations={"b1": 0.1, "b2": 1.0})
    orders = []
    for i in (1, 2, 3):
        orders += [make_order(f"b{i}", "bias", i, raw),
                   make_order(f"f{i}", "flat", i, raw, needs=[f"b{i}"])]
    executor(tmp_path, compute, cpus=2).run(orders)
    assert set(compute.calls[:2]) == {"b1", "b2"}  # started together, in either order
    assert compute.calls[2] == "b3"
    assert compute.started["f1"] >= compute.ended["b3"]


def test_pixel_tables_are_pruned_once_every_reader_succeeded(tmp_path, raw):
    orders = [make_order("s1", "scibasic", 1, raw), make_order("s2", "scibasic", 2, raw),
              make_order("s3", "scibasic", 3, raw),
              make_order("p", "scipost", None, raw, needs=["s1", "s2"]),
              make_order("q", "scipost", None, raw, needs=["s2", "s3"])]
    registry = Registry.for_output(tmp_path)
    results = executor(tmp_path, FakeCompute(fail={"q"}), prune=True,
                       registry=registry).run(orders)
    pixtable = {k: results[k].directory / f"PIXTABLE_OBJECT_0001-0{k[1]}.fits"
                for k in ("s1", "s2", "s3")}
    assert not pixtable["s1"].exists()  # its one reader succeeded
    assert pixtable["s2"].exists() and pixtable["s3"].exists()  # q, a reader, failed
    listed = {r.path for r in registry.products(str(Tag.PIXTABLE_OBJECT))}
    assert listed == {str(pixtable["s2"]), str(pixtable["s3"])}
    registry.close()
    manifest = json.loads((results["s1"].directory / "manifest.json").read_text())
    assert manifest["pruned"] == [pixtable["s1"].name]
    assert manifest["written"] == results["s1"].manifest["written"]
    # again: q runs; s1 counts as done (p, its reader, is); s2 and s3 go once q succeeded
    second = FakeCompute()
    again = executor(tmp_path, second, prune=True).run(orders)
    assert second.calls == ["q"]
    assert {r.outcome for k, r in again.items() if k != "q"} == {"cached"}
    assert not any(p.exists() for p in pixtable.values())
    # a new reader of s1's pixel table: s1 runs again, and without prune keeps it
    third = FakeCompute()
    executor(tmp_path, third).run([*orders, make_order("r", "scipost", None, raw, needs=["s1"])])
    assert third.calls == ["s1", "r"]
    assert pixtable["s1"].exists()


def test_the_runner_writes_nothing_outside_its_output_root(tmp_path, raw):
    """Defence in depth behind the checked identifiers: an order that skipped validation,
    and a directory link leading out of the output root."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    order = make_order("b1", "bias", 1, raw)
    escape = "../../../../x"  # from out/products/<night>/<stage>/ to tmp_path/x
    with pytest.raises(ValueError, match=f"'{escape}' is not a single path component"):
        runner.execute(order.model_copy(update={"setup": escape}), BIAS, FakeCompute(), out,
                       [0], tmp_path)
    (out / "products").mkdir(parents=True)
    (out / "products" / "2014-08-01").symlink_to(outside)
    with pytest.raises(DataError, match="resolves outside"):
        runner.execute(order, BIAS, FakeCompute(), out, [0], tmp_path)
    assert list(outside.iterdir()) == [] and not (tmp_path / "x").exists()
