"""What ``musedrp report`` reads, materialised from a services deployment.

The services keep the plan in the registry (jobs with their work orders and states, every
frame's fate, the association decisions) and the jobs' files in the bucket.  :func:`materialise`
lays them out in a local directory the way ``musedrp reduce`` leaves its output
(``plan.json``, and under ``products/<night>/<stage>/<setup>/<job_key>/`` each job's
``manifest.json``, QC plots and the products the page reads, or the ``error.txt`` and esorex
log of a failed job), so one report code path serves both modes.  Files of a job already
materialised are not fetched again: a job's files never change once its manifest exists.
"""

import json
from pathlib import Path

from musedrp import storage
from musedrp.errors import NotFound
from musedrp.esorex import LOG_FILE
from musedrp.messages import WorkOrder
from musedrp.provenance import ERROR_FILE, MANIFEST
from musedrp.registry import Registry
from musedrp.topology import BY_NAME

# Products the report's pages open (qcreport: the standard's response, each final cube, the
# field images, offsets and sky spectrum of the science product); the
# other products are only described by their manifests, so their bytes stay in the bucket.
PRODUCTS_READ = ("STD_RESPONSE", "DATACUBE_FINAL", "IMAGE_FOV", "OFFSET_LIST", "SKY_SPECTRUM")
STAGE_ORDER = {name: i for i, name in enumerate(BY_NAME)}


def materialise(registry: Registry, store: storage.ObjectStore, out: Path, source: str) -> Path:
    """Write ``out/plan.json`` and every job's report files from the deployment; ``source``
    names it on the page (where the raw data are).  Returns ``out``.

    Raises
    ------
    ConfigError, Transient
        The bucket cannot be read (as the store raises them).
    """
    jobs = registry.jobs()
    orders = sorted((WorkOrder.model_validate(j.order) for j in jobs),
                    key=lambda o: (o.night, STAGE_ORDER[o.stage], o.ifu or 0, o.job_key))
    states = {j.key: (j.state, j.reason) for j in jobs}
    out.mkdir(parents=True, exist_ok=True)
    for order in orders:
        local = storage.under(out, out / order.product_dir)
        _job_files(store, order, *states[order.job_key], local)
    plan = {
        "raw_dir": source, "memory_budget_gb": None, "decisions": registry.decisions(),
        "orders": [o.model_dump(mode="json") for o in orders],
        "frames": [{"name": f.name, "tag": f.tag or "", "night": f.night, "status": f.status,
                    "why": f.reason.split("; ") if f.reason else []}
                   for f in registry.frames()],
    }
    (out / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    return out


def _job_files(store: storage.ObjectStore, order: WorkOrder, state: str, reason: str,
               local: Path) -> None:
    """A finished job's manifest (last: the local commit point too), QC plots and read
    products; a failed job's error and log.  The registry's reason stands in for an error
    file the worker could not write (a dead-lettered order)."""
    if (local / MANIFEST).exists():
        return
    manifest = store.get_json(order.product_key(MANIFEST))
    if manifest is not None:
        wanted = [*manifest.get("qc_plots", []),
                  *(n for n in manifest.get("products", {}) if n.startswith(PRODUCTS_READ))]
        for name in wanted:
            store.get_file(order.product_key(name), local / name)
        local.mkdir(parents=True, exist_ok=True)
        (local / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        return
    if state != "failed":
        return
    for name in (ERROR_FILE, LOG_FILE):
        try:
            store.get_file(order.product_key(name), local / name)
        except NotFound:
            if name == ERROR_FILE:
                local.mkdir(parents=True, exist_ok=True)
                (local / ERROR_FILE).write_text(reason.rstrip("\n") + "\n")
