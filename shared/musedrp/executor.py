"""Embedded mode: run work orders on this machine, within a memory budget, each job as soon
as the jobs it needs have succeeded, pinned to one core (a second gains nothing for the
per-IFU recipes) or, for a stage that uses more, to every core free when it starts and
those freed while it runs (``StageSpec.multicore``; benchmarks/results/pinning.md and
fanin_threads*.md)."""

import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from musedrp import esorex, provenance, runner
from musedrp.messages import WorkOrder, ranks
from musedrp.registry import Registry
from musedrp.runner import ComputeFn, JobResult
from musedrp.stages import StageSpec
from musedrp.topology import BY_NAME

OK = ("succeeded", "cached")


def available_memory_gb() -> float:
    """``MemAvailable`` from /proc/meminfo, in GB."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024**2
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def describe(o: WorkOrder) -> str:
    return f"{o.stage:<5} IFU {o.ifu:02d}" if o.ifu else o.stage


class LocalExecutor:
    """Schedules work orders on a CPU set and a memory budget.

    A job is admitted only while its stage's memory estimate fits beside the running ones;
    a job whose estimate alone exceeds the budget is never started and fails with that
    reason.  Jobs downstream of a failure are skipped with the upstream job named.

    A per-IFU job gets one core.  A merging job (``StageSpec.multicore``: standard, scipost)
    gets every free core when it starts and, while it runs, every core that other jobs free
    (before any new job gets one): it no longer stays on one core because another job held
    the second when it started.

    With ``prune``, a job's pixel tables (0.37 GB per IFU and exposure, most of a night's
    output) are deleted as soon as every job of the plan that reads them has succeeded; its
    manifest keeps their names under ``pruned``.  Such a job counts as done while all its
    readers are; a new reader (other parameters, a new exposure) makes it run again.
    """

    def __init__(self, out_root: Path, cpus: Sequence[int], memory_gb: float,
                 registry: Registry | None = None, scratch: Path | None = None,
                 report: Callable[[str], None] = print, heartbeat_s: float = 30.0,
                 stage_for: Callable[[str], tuple[StageSpec, ComputeFn]] | None = None,
                 prune: bool = False) -> None:
        if not cpus:
            raise ValueError("no CPUs to run on")
        self.out_root, self.cpus, self.memory_gb = out_root, list(cpus), memory_gb
        self.registry, self.scratch, self.report = registry, scratch, report
        self.heartbeat_s, self.prune = heartbeat_s, prune
        self.stage_for = stage_for or (lambda name: (BY_NAME[name].spec, BY_NAME[name].compute()))

    def _execute(self, order: WorkOrder, cpus: Sequence[int]) -> JobResult:
        try:
            spec, compute = self.stage_for(order.stage)
            return runner.execute(order, spec, compute, self.out_root, cpus, self.scratch)
        except Exception as err:  # a bug: report it as this job's failure, keep the rest going
            return self._failed(order, f"internal error: {err!r}\n{traceback.format_exc()}")

    def _failed(self, order: WorkOrder, reason: str) -> JobResult:
        """A job that failed outside the runner, its reason recorded as the runner does."""
        directory = self.out_root / order.product_dir
        provenance.write_error(directory, reason)
        return JobResult(order, "failed", directory, reason=reason)

    def _prune(self, order: WorkOrder) -> None:
        directory = self.out_root / order.product_dir
        manifest = provenance.read_manifest(directory)
        names = [n for n, tag in manifest["products"].items()
                 if tag.startswith("PIXTABLE_") and (directory / n).exists()]
        if not names:
            return
        for name in names:
            (directory / name).unlink()
        if self.registry:
            self.registry.forget_products(str(directory / n) for n in names)
        # the original "written" stays: it is when the job ended
        provenance.write_manifest(directory, {**manifest, "pruned": sorted(
            {*manifest.get("pruned", []), *names})})
        self.report(f"        pruned {len(names)} pixel table(s) of {describe(order)}: every "
                    "job reading them succeeded")

    def _finish(self, result: JobResult, done: int, total: int, t0: float) -> None:
        o, run = result.order, result.manifest.get("run", {})
        cost = (f"{run['wall_s']:6.1f} s {run['peak_rss_bytes'] / 1e9:5.2f} GB"
                if run and result.outcome != "cached" else "")
        reason = f": {result.reason.splitlines()[0]}" if result.reason else ""
        self.report(f"[{done:>3}/{total}] {result.outcome:<9} {describe(o)}  {cost}"
                    f"  (t+{time.monotonic() - t0:.0f} s){reason}")
        if self.registry:
            self.registry.set_state(o.job_key, result.outcome, result.reason,
                                    run.get("wall_s"), run.get("peak_rss_bytes"))
            if result.outcome in OK:
                self.registry.record_products(o.job_key, o.ifu, [
                    (str(result.directory / name), tag, result.manifest["qc"].get(name, {}))
                    for name, tag in result.products.items()])

    def run(self, orders: Sequence[WorkOrder]) -> dict[str, JobResult]:
        """Run everything that can run; return the result of every order, keyed by job key."""
        results: dict[str, JobResult] = {}
        waiting = ranks(orders)  # jobs with more below them start first
        pending = sorted(orders, key=lambda o: waiting[o.job_key], reverse=True)
        free = sorted(self.cpus)
        mem_in_use = 0.0
        running: dict[Future[JobResult], tuple[WorkOrder, Sequence[int]]] = {}
        total, t0, last_beat = len(orders), time.monotonic(), time.monotonic()
        if self.registry:
            self.registry.record_orders(orders)

        by_key = {o.job_key: o for o in orders}
        readers: dict[str, list[str]] = defaultdict(list)
        for o in orders:
            for n in o.needs:
                readers[n].append(o.job_key)

        def settle(result: JobResult) -> None:
            results[result.order.job_key] = result
            self._finish(result, len(results), total, t0)
            if not self.prune or result.outcome not in OK:
                return
            for n in result.order.needs:
                if n in by_key and all(k in results and results[k].outcome in OK
                                       for k in readers[n]):
                    self._prune(by_key[n])

        for o in list(pending):  # pruned, and nothing in this plan reads them anew
            manifest = provenance.read_manifest(self.out_root / o.product_dir)
            if manifest and manifest.get("pruned") and all(
                    (self.out_root / by_key[k].product_dir / provenance.MANIFEST).exists()
                    for k in readers[o.job_key]):
                pending.remove(o)
                settle(JobResult(o, "cached", self.out_root / o.product_dir, manifest=manifest))

        with ThreadPoolExecutor(max_workers=len(self.cpus)) as pool:
            try:
                while pending or running:
                    for o in list(pending):
                        failed = [n for n in o.needs
                                  if n in results and results[n].outcome not in OK]
                        if failed:
                            pending.remove(o)
                            settle(JobResult(o, "skipped", self.out_root / o.product_dir,
                                             reason=f"upstream job {failed[0]} did not succeed"))
                        elif o.memory_gb > self.memory_gb:
                            pending.remove(o)
                            settle(self._failed(o, f"needs {o.memory_gb:.1f} GB, more than "
                                                f"the memory budget of {self.memory_gb:.1f} GB: "
                                                "not started"))
                    for o in list(pending):
                        ready = all(results.get(n) and results[n].outcome in OK for n in o.needs)
                        if ready and free and mem_in_use + o.memory_gb <= self.memory_gb:
                            pending.remove(o)
                            if self.stage_for(o.stage)[0].multicore:
                                cpus, free = esorex.CpuGrant(free, len(self.cpus)), []
                            else:
                                cpus, free = free[:1], free[1:]
                            mem_in_use += o.memory_gb
                            if self.registry:
                                self.registry.set_state(o.job_key, "running")
                            running[pool.submit(self._execute, o, cpus)] = (o, cpus)
                    if not running:
                        if pending:  # nothing can start and nothing will finish: a planning bug
                            raise RuntimeError(f"deadlock: {len(pending)} job(s) cannot start")
                        break
                    finished, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        o, cpus = running.pop(fut)
                        free = sorted([*free, *cpus])
                        mem_in_use -= o.memory_gb
                        settle(fut.result())
                    for _, cpus in running.values():  # freed cores go to a merging job first
                        if isinstance(cpus, esorex.CpuGrant) and free:
                            cpus.grant(free)
                            free = []
                    if not finished and time.monotonic() - last_beat > self.heartbeat_s:
                        last_beat = time.monotonic()
                        names = ", ".join(describe(o) for o, _ in running.values())
                        self.report(f"        ... running: {names} (t+{last_beat - t0:.0f} s)")
            except BaseException:
                esorex.kill_all()  # Ctrl-C: recipes run in their own sessions, stop them too
                raise
        return results

