"""Run one work order end to end: cache check, compute, provenance, commit.

Shared by every stage and every run mode; stages only supply their ``compute.run``.
"""

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from musedrp import esorex, provenance, storage
from musedrp.errors import MusedrpError
from musedrp.messages import WorkOrder
from musedrp.stages import StageSpec, product_tag
from musedrp.tags import Tag


@dataclass(frozen=True)
class StageResult:
    """What compute returns: products by file name, QC per product, and the recipe run."""

    products: dict[str, Path]
    qc: dict[str, dict[str, Any]]
    run: esorex.RecipeRun


@dataclass
class JobResult:
    order: WorkOrder
    outcome: str  # succeeded, cached, failed
    directory: Path
    reason: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)
    error: MusedrpError | None = None  # what a failed job raised: decides a message's fate

    @property
    def products(self) -> dict[str, str]:
        return self.manifest.get("products", {})


ComputeFn = Callable[[WorkOrder, Path, Sequence[int]], StageResult]


def compute(spec: StageSpec, order: WorkOrder, workdir: Path, cpus: Sequence[int]) -> StageResult:
    """The common body of every recipe stage: SOF from the order (without the inputs only
    musedrp's own code reads), esorex, checked products."""
    params = spec.params(**order.params)
    args = ([f"--nifu={order.ifu}"] if spec.per_ifu and order.ifu else []) + params.to_esorex_args()
    own = {i.tag for i in spec.inputs if i.own}
    sof = [esorex.SofEntry(Path(f.path), f.tag) for f in order.inputs if f.tag not in own]
    run = esorex.run_recipe(spec.recipe, sof, args, workdir, cpus, order.timeout_s)
    products = esorex.check(run, list(order.products) or spec.product_names(order.ifu, params),
                            order.memory_gb)
    qc = {name: esorex.qc_keywords(p) for name, p in products.items()}
    return StageResult(products=products, qc=qc, run=run)


def _run_record(run: esorex.RecipeRun) -> dict[str, Any]:
    return {
        "recipe": run.recipe, "command": run.command, "returncode": run.returncode,
        "versions": run.versions, "cpus": run.cpus, "omp_num_threads": run.omp_num_threads,
        "wall_s": run.wall_s, "cpu_user_s": run.cpu_user_s, "cpu_sys_s": run.cpu_sys_s,
        "peak_rss_bytes": run.peak_rss_bytes, "n_warnings": len(run.warnings),
        "n_errors": len(run.errors), "timed_out": run.timed_out,
    }


def execute(
    order: WorkOrder,
    spec: StageSpec,
    compute_fn: ComputeFn,
    out_root: Path,
    cpus: Sequence[int],
    scratch_root: Path | None = None,
    origins: Sequence[str] | None = None,
) -> JobResult:
    """Run ``order`` unless its manifest exists; commit products, logs and manifest.

    Products are moved into place first and ``manifest.json`` is written last, so a crash
    leaves no manifest and the next run recomputes.  A failed job keeps its esorex log and
    an ``error.txt`` beside where its products would be.  ``origins`` names where each input
    came from, for the manifest, when the order's paths are local copies (object keys in
    services mode).
    """
    final = storage.under(out_root, out_root / order.product_dir)
    manifest = provenance.read_manifest(final)
    if manifest is not None and not manifest.get("pruned"):  # pruned: needed again, rerun
        return JobResult(order, "cached", final, manifest=manifest)
    final.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"{order.job_key}-", dir=scratch_root))
    try:
        storage.under(Path(scratch_root or tempfile.gettempdir()), workdir)
        inputs = [{"tag": f.tag, "name": Path(f.path).name, "path": origin,
                   "checksum": provenance.checksum(f), "job_key": f.job_key}
                  for f, origin in zip(order.inputs, origins or [f.path for f in order.inputs],
                                       strict=True)]
        try:
            result = compute_fn(order, workdir, cpus)
        except MusedrpError as err:
            _keep_logs(workdir, final)
            provenance.write_error(final, str(err))
            run = err.metadata.get("run")
            record = {"run": _run_record(run)} if run else {}
            return JobResult(order, "failed", final, reason=str(err), manifest=record, error=err)
        for name, path in result.products.items():
            provenance.stamp(path, order.job_key)
            shutil.move(path, storage.under(final, final / name))
        _keep_logs(workdir, final)
        (final / provenance.ERROR_FILE).unlink(missing_ok=True)
        from musedrp import qcplot  # matplotlib: paid by the first job, not by every import

        plots = qcplot.plot_products({n: final / n for n in result.products}, final)
        manifest = provenance.write_manifest(final, {
            "job_key": order.job_key, "stage": order.stage, "night": order.night,
            "setup": order.setup, "ifu": order.ifu, "inputs": inputs,
            "parameters": spec.params(**order.params).model_dump(),
            "reasons": list(order.reasons),
            "products": {name: str(product_tag(Path(name))) for name in result.products},
            "qc": result.qc, "qc_plots": [p.name for p in plots], "run": _run_record(result.run),
        })
        return JobResult(order, "succeeded", final, manifest=manifest)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _keep_logs(workdir: Path, final: Path) -> None:
    """The esorex log, SOF and console output go beside the products, failed or not."""
    for extra in (esorex.LOG_FILE, esorex.SOF_FILE, esorex.STDOUT_FILE):
        if (workdir / extra).exists():
            shutil.copy(workdir / extra, final / extra)


def headline_qc(spec: StageSpec, result: JobResult) -> dict[str, Any]:
    """The spec's headline QC keys of every product of a finished job."""
    qc = result.manifest.get("qc", {})
    return {k: v for name, values in qc.items()
            for k, v in spec.headline_qc(Tag(product_tag(Path(name))), values).items()}
