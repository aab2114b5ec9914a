"""The stage worker: one work order in, products and events out (DESIGN.md, stage workers).

The same shell serves every stage: it takes the stage's spec and compute from the topology,
downloads the inputs to scratch, runs the shared runner (which runs esorex pinned to this
worker's CPUs), uploads products and logs with the manifest last, and returns the events.
A work order whose manifest already exists is answered from the manifest at once.
"""

import contextlib
import errno
import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from musedrp import esorex, ifuslice, metrics, runner, service, storage
from musedrp.admission import SharedPool
from musedrp.broker import Handler
from musedrp.errors import DataError, Transient
from musedrp.localcache import LocalCache
from musedrp.messages import Envelope, InputFile, JobFinished, ProductCreated, WorkOrder
from musedrp.provenance import ERROR_FILE, MANIFEST
from musedrp.settings import Settings
from musedrp.stages import product_tag
from musedrp.topology import BY_NAME, Stage, work_key

FETCH_THREADS = 4  # inputs downloaded at once: a job's dozen frames wait on S3, not a core


class StageWorker(Handler):
    def __init__(self, stage: Stage, settings: Settings, store: storage.ObjectStore,
                 cpus: list[int], scratch: Path, log: logging.Logger,
                 pool: SharedPool | None = None) -> None:
        self.stage, self.settings, self.store, self.cpus, self.log = (
            stage, settings, store, cpus, log)
        self.pool = pool  # one machine's cores and memory, shared with other workers
        self.scratch = scratch
        self.spec, self.compute = stage.spec, stage.compute()
        self.name = stage.name

    def handle(self, env: Envelope, attempt: int) -> list[Envelope]:
        order: WorkOrder = env.payload
        if env.type != work_key(self.name):
            raise DataError(f"a {env.type} message on the {work_key(self.name)} queue")
        if (manifest := self.store.get_json(order.product_key(MANIFEST))) is not None:
            self.log.info("%s: products exist (manifest found), nothing to run", order)
            return self._events(env, order, manifest, "cached", attempt)
        metrics.IN_PROGRESS.labels(self.name).inc()
        try:
            with metrics.JOB_DURATION.labels(self.name).time():
                return self._run(env, order, attempt)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):  # may be free again later
                freed = self.store.cache.trim(0) if self.store.cache else 0
                full = err.filename and Path(os.fsdecode(err.filename))
                where = (f"scratch {self.scratch}" if not full or full.is_relative_to(
                    self.scratch) else f"the disk of {full}")  # a store directory's
                raise Transient(f"{where} is full ({freed / 1e9:.1f} GB of cached objects "
                                f"removed): {err}") from err
            raise
        finally:
            metrics.IN_PROGRESS.labels(self.name).dec()

    def _run(self, env: Envelope, order: WorkOrder, attempt: int) -> list[Envelope]:
        with tempfile.TemporaryDirectory(prefix=f"{order.job_key}-", dir=self.scratch) as tmp:
            t0 = time.monotonic()
            local = self._download(order, Path(tmp) / "in")
            t1 = time.monotonic()
            with self._claim(order) as cpus:
                t2 = time.monotonic()
                self.log.info("%s: running %s on CPUs %s", order, order.recipe,
                              esorex.format_cpus(cpus))
                result = runner.execute(local, self.spec, self.compute, Path(tmp) / "out",
                                        cpus, Path(tmp), [f.path for f in order.inputs])
            t3 = time.monotonic()
            if result.error is None:  # an earlier attempt's, wrong now; gone before the manifest
                self.store.delete(order.product_key(ERROR_FILE))
            storage.upload_dir(self.store, result.directory, order.product_dir)
            if result.error is not None:
                raise result.error
            self.log.info("%s: %s in %.1f s: inputs %.1f s, waiting for cores %.1f s, recipe "
                          "%.1f s (esorex %.1f s), products %.1f s", order, result.outcome,
                          time.monotonic() - t0, t1 - t0, t2 - t1, t3 - t2,
                          result.manifest["run"]["wall_s"], time.monotonic() - t3)
            return self._events(env, order, result.manifest, "succeeded", attempt)

    def _claim(self, order: WorkOrder) -> contextlib.AbstractContextManager:
        """The CPUs to run on: this worker's own, or a share of the machine's (serve)."""
        if self.pool is None:
            return contextlib.nullcontext(self.cpus)
        return self.pool.claim(order.memory_gb, self.spec.multicore, order.rank)

    def interrupt(self) -> None:
        if self.pool is not None:
            self.pool.interrupt()

    def _download(self, order: WorkOrder, root: Path) -> WorkOrder:
        """Every input into its own folder (names kept: esorex products cite them), up to
        ``FETCH_THREADS`` at once; of a raw frame whose order names byte ranges, only those
        (its primary HDU and the IFU's extension, see :mod:`musedrp.ifuslice`).

        Raises
        ------
        DataError
            An input's path is not an object key (absolute, ``..``, control characters), or
            its ranges do not give the IFU's extension.
        """
        inputs = []
        for i, f in enumerate(order.inputs):  # every path checked before anything is fetched
            try:
                key = storage.check_key(f.path)
            except ValueError as err:
                raise DataError(f"input {i + 1} ({f.tag}): {err}") from err
            dest = storage.under(root, root / f"{i:03d}" / key.rpartition("/")[2])
            inputs.append((f, key, dest))

        def fetch(f: InputFile, key: str, dest: Path) -> int:
            return (ifuslice.fetch(self.store, key, f, dest) if f.ranges
                    else self.store.get_file(key, dest))

        with ThreadPoolExecutor(FETCH_THREADS) as threads:
            got = list(threads.map(lambda args: fetch(*args), inputs))
        fetched = sum(got)
        sliced = sum(1 for f in order.inputs if f.ranges)
        linked = sum(1 for f, n in zip(order.inputs, got, strict=True) if not f.ranges and not n)
        metrics.INPUT_BYTES.labels(self.name).inc(fetched)
        whole = sum(1 for f in order.inputs if f.ifu and not f.ranges)
        self.log.info("%s: %d bytes fetched for %d inputs, %d raw frame(s) by ranged GETs of "
                      "the IFU's extension, %d linked on this machine%s", order, fetched,
                      len(inputs), sliced, linked, f", {whole} raw frame(s) whole: no byte "
                      "ranges in the order" if whole else "")
        timeout = self.settings.timeout_s or order.timeout_s
        return order.model_copy(update={"inputs": tuple(f.model_copy(update={"path": str(dest)})
                                                         for f, _, dest in inputs),
                                        "timeout_s": timeout})

    def _events(self, env: Envelope, order: WorkOrder, manifest: dict[str, Any], outcome: str,
                attempt: int) -> list[Envelope]:
        run = manifest.get("run", {})
        cpu_s = run["cpu_user_s"] + run["cpu_sys_s"] if run else None
        result = runner.JobResult(order, outcome, Path(), manifest=manifest)
        qc = runner.headline_qc(self.spec, result)
        keys = {name: order.product_key(name) for name in result.products}
        if outcome == "succeeded":
            metrics.RECIPE_DURATION.labels(self.name).observe(run["wall_s"])
            metrics.RECIPE_CPU.labels(self.name).inc(cpu_s)
            metrics.PEAK_RSS.labels(self.name).set(run["peak_rss_bytes"])
            metrics.RECIPE_WARNINGS.labels(self.name).inc(run["n_warnings"])
            for key, value in qc.items():
                if isinstance(value, int | float):
                    metrics.QC_VALUE.labels(self.name, key, str(order.ifu or 0)).set(value)
        metrics.JOBS.labels(self.name, outcome).inc()
        finished = JobFinished(
            job_key=order.job_key, stage=order.stage, night=order.night, ifu=order.ifu,
            outcome=outcome, products=keys, qc=qc, wall_s=run.get("wall_s"),
            cpu_s=cpu_s,
            peak_rss_bytes=run.get("peak_rss_bytes"), cpus=tuple(run.get("cpus", ())),
            attempt=attempt)
        created = [ProductCreated(job_key=order.job_key, stage=order.stage, ifu=order.ifu,
                                  tag=product_tag(Path(name)), key=key,
                                  qc=manifest.get("qc", {}).get(name, {}))
                   for name, key in keys.items()]
        return [env.reply("job.finished", self.source, finished),
                *(env.reply("product.created", self.source, c) for c in created)]

    @property
    def source(self) -> str:
        return f"worker.{self.name}"

    def failed(self, env: Envelope, outcome: str, reason: str, attempt: int) -> list[Envelope]:
        order: WorkOrder = env.payload
        metrics.JOBS.labels(self.name, outcome).inc()
        return [env.reply("job.finished", self.source, JobFinished(
            job_key=order.job_key, stage=order.stage, night=order.night, ifu=order.ifu,
            outcome=outcome, reason=f"{reason} (logs, if any, under {order.product_dir}/)",
            attempt=attempt))]


def make(stage_name: str):
    def factory(settings: Settings, log: logging.Logger) -> StageWorker:
        stage = BY_NAME[stage_name]
        if not stage.spec.own:  # ConfigError: esorex or the recipe missing
            esorex.pipeline_version(stage.spec.recipe)
        scratch = service.own_scratch(settings, stage_name, log)
        cache = (LocalCache(settings.scratch / "cache", int(settings.cache_gb * 1e9))
                 if settings.cache_gb > 0 else None)
        store = storage.open_store(settings, cache)
        store.check()
        cpus = service.cpu_set(settings)
        pool = (SharedPool(settings.admission, cpus, settings.memory_gb)
                if settings.admission else None)
        log.info("stage %s: recipe %s, CPUs %s%s, scratch %s", stage_name, stage.spec.recipe,
                 esorex.format_cpus(cpus), f" shared through {settings.admission} within "
                 f"{settings.memory_gb:.1f} GB" if pool else "", scratch)
        return StageWorker(stage, settings, store, cpus, scratch, log, pool)

    return factory


def main(stage_name: str) -> int:
    if stage_name not in BY_NAME:
        print(f"unknown stage {stage_name!r}; one of {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    return service.main(f"worker.{stage_name}", work_key(stage_name), make(stage_name))
