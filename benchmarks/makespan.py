"""One night embedded and through the services on the same machine, side by side.

    .venv/bin/python benchmarks/makespan.py RAW [--reps 1] [--paths embedded,services,...]

(a) ``musedrp reduce RAW`` on every core; (b) the services as ``musedrp serve`` starts them
(ingest, planner, a worker per core and a spare for each per-IFU stage, one per merging
stage, all sharing the machine's cores and memory through admission.py and the objects they
move through one cache on the machine's scratch disk) on a RabbitMQ vhost, a ``weed mini`` S3
server and a PostgreSQL database of their own, timed from the first upload to the last job
finished; (c) the same without the cache (``MUSEDRP_CACHE_GB=0``); (d) the archive's case: the
frames put into the bucket before the clock starts, then announced; (e) ``services-files``:
the objects in a directory instead of S3, as ``musedrp serve`` keeps them on one machine.
All get the same memory budget.  Repetitions rotate which path runs first.  The workers'
logs give the bytes they downloaded and the inputs they hard-linked instead.
Each job's recipe interval (its manifest's end time less its wall time) gives every path's
timeline: where cores stood idle, and which stage ran when.
Writes ``results/makespan.{md,json,png}`` (``--name`` another stem).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import matplotlib.pyplot as plt

from musedrp.executor import available_memory_gb
from musedrp.messages import WorkOrder
from musedrp.serve import SERVICES, instances, submit
from musedrp.storage import open_store

from common import fresh_services, worker_logs, write_results

DONE = ("succeeded", "cached", "failed", "skipped", "superseded")
# path: (the workers' cache in GB, frames in the bucket before the clock starts, the objects
# in a ``weed mini`` S3 server rather than a directory)
PATHS = {"embedded": None, "services": ("8", False, True), "services-nocache": ("0", False, True),
         "services-preloaded": ("8", True, True), "services-files": ("0", False, False)}


def interval(manifest: dict, start: datetime) -> dict:
    """A job's stage and recipe interval in seconds after ``start`` (the manifest's end time
    has whole seconds), with the cores it ended on."""
    run = manifest["run"]
    end = (datetime.fromisoformat(manifest["written"]) - start).total_seconds()
    return {"stage": manifest["stage"], "start_s": round(end - run["wall_s"], 1),
            "end_s": round(end, 1), "cpus": len(run["cpus"])}


def busy(timeline: list[dict]) -> float:
    """Core-seconds the recipes held."""
    return sum((j["end_s"] - j["start_s"]) * j["cpus"] for j in timeline)


def first_start(timeline: list[dict]) -> float:
    return min((j["start_s"] for j in timeline), default=float("nan"))


def embedded(raw: Path, work: Path, memory_gb: float) -> dict:
    start, t0 = datetime.now(UTC), time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "musedrp.cli", "reduce", str(raw),  # noqa: S603
                           "-o", str(work), "--memory", str(memory_gb)],
                          capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    manifests = [json.loads(m.read_text()) for m in work.glob("products/*/*/*/*/manifest.json")]
    runs = [m["run"] for m in manifests]
    return {"wall_s": wall, "exit": proc.returncode, "jobs": len(runs),
            "recipe_s": sum(r["wall_s"] for r in runs),
            "cpu_s": sum(r["cpu_user_s"] + r["cpu_sys_s"] for r in runs),
            "timeline": [interval(m, start) for m in manifests]}


def services(raw: Path, work: Path, memory_gb: float, jobs: int, cache_gb: str,
             preloaded: bool, s3: bool) -> dict:
    with fresh_services(work, s3, memory_gb=str(memory_gb), plan_quiet_s="5", plan_every_s="5",
                        cache_gb=cache_gb,
                        admission=str(work / "admission.json")) as (_, s, fleet, registry):
        ncpus = len(os.sched_getaffinity(0))
        for name, service in instances(SERVICES, ncpus):
            fleet.start(name, service=service)
        if preloaded:  # an archive's frames: in the bucket already, announced at the start
            submit(raw, s, report=lambda _: None, announce=False)
        time.sleep(5)  # start-up checks are not what we measure
        start, t0 = datetime.now(UTC), time.monotonic()
        submit(raw, s, report=lambda _: None, upload=not preloaded)
        uploaded = time.monotonic() - t0
        while True:
            found = registry.jobs()
            if len(found) >= jobs and all(j.state in DONE for j in found):
                break
            if time.monotonic() - t0 > 4 * 3600:
                raise SystemExit(f"services path timed out; logs in {work}")
            if dead := [n for n, p in fleet.processes.items() if p.poll() is not None]:
                raise SystemExit(f"service(s) {', '.join(dead)} exited; logs in {work}")
            time.sleep(1)
        wall = time.monotonic() - t0
        failed = [f"{j.stage} {j.ifu}: {j.reason}" for j in found if j.state not in DONE[:2]]
        store = open_store(s)
        manifests = [store.get_json(f"{WorkOrder.model_validate(j.order).product_dir}/"
                                    "manifest.json") for j in found if j.state == "succeeded"]
        return {"wall_s": wall, "upload_s": uploaded, "jobs": len(found), "failed": failed,
                "recipe_s": sum(j.wall_s or 0 for j in found),
                "timeline": [interval(m, start) for m in manifests if m],
                **worker_logs(work / "services" / "logs")}


def planned_jobs(raw: Path) -> int:
    out = subprocess.run([sys.executable, "-m", "musedrp.cli", "plan", str(raw),  # noqa: S603
                          "--json"], capture_output=True, text=True, check=True).stdout
    return len(json.loads(out)["orders"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("raw", type=Path)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--paths", default=",".join(PATHS),
                   help="of %(default)s; the first is the reference of the ratios")
    p.add_argument("--name", default="makespan", help="the results' file stem")
    p.add_argument("--memory", type=float, default=None,
                   help="the memory budget of both paths (default 85 %% of what is available)")
    args = p.parse_args()
    memory_gb = args.memory or round(0.85 * available_memory_gb(), 1)
    paths = args.paths.split(",")
    if unknown := set(paths) - set(PATHS):
        p.error(f"unknown path(s) {', '.join(sorted(unknown))}; of {', '.join(PATHS)}")
    jobs = planned_jobs(args.raw)
    records = []
    for rep in range(args.reps):
        for path in paths[rep % len(paths):] + paths[:rep % len(paths)]:
            work = Path(tempfile.mkdtemp(prefix="musedrp-makespan-"))
            try:
                rec = (embedded(args.raw, work, memory_gb) if PATHS[path] is None
                       else services(args.raw, work, memory_gb, jobs, *PATHS[path]))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            records.append({"rep": rep, "path": path, **rec})
            print(records[-1], flush=True)
    wall = {(r["rep"], r["path"]): r["wall_s"] for r in records}
    ratios = {path: [wall[rep, path] / wall[rep, paths[0]] for rep in range(args.reps)]
              for path in paths[1:]}
    ncpus = len(os.sched_getaffinity(0))
    rows = [(r["rep"], r["path"], r["jobs"], r["wall_s"],
             f"{r['wall_s'] / wall[r['rep'], paths[0]]:.3f}", r["recipe_s"], r.get("upload_s", ""),
             r["wall_s"] - r["upload_s"] if "upload_s" in r else "",
             f"{r['downloaded_bytes'] / 1e9:.2f}" if "inputs" in r else "",
             f"{r['from_cache']}/{r['inputs']}" if "inputs" in r else "",
             f"{busy(r['timeline']) / (ncpus * r['wall_s']):.0%}",
             first_start(r["timeline"])) for r in records]
    last = {r["path"]: r for r in records}  # the last repetition's timelines
    fig, grid = plt.subplots(len(paths), 1, figsize=(10, 3.5 * len(paths)), sharex=True,
                             squeeze=False)
    axes = grid[:, 0]  # one per path, one path too
    stages = sorted({j["stage"] for r in records for j in r["timeline"]},
                    key=lambda st: min(j["start_s"] for r in records for j in r["timeline"]
                                       if j["stage"] == st))
    colours = {st: plt.cm.tab20(i % 20) for i, st in enumerate(stages)}
    for ax, path in zip(axes, paths, strict=True):
        timeline = sorted(last[path]["timeline"], key=lambda j: j["start_s"])
        for y, j in enumerate(timeline):
            ax.barh(y, j["end_s"] - j["start_s"], left=j["start_s"], height=0.8,
                    color=colours[j["stage"]], label=j["stage"])
        ax.axvline(last[path]["wall_s"], color="k", lw=1, ls="--")
        ax.set_ylabel("job")
        ax.set_title(f"{path}: {last[path]['wall_s'] / 60:.1f} min, cores busy "
                     f"{busy(timeline) / (ncpus * last[path]['wall_s']):.0%}")
    handles = {h.get_label(): h for ax in axes for h in ax.containers}
    axes[0].legend([handles[st] for st in stages if st in handles],
                   [st for st in stages if st in handles], fontsize=7, ncol=4)
    axes[-1].set_xlim(left=0)
    axes[-1].set_xlabel("seconds since the start (services: the first upload or announcement)")
    notes = [f"{jobs} jobs planned for `{args.raw}`; memory budget {memory_gb:.1f} GB for every "
             "path. Services: wall from the first upload (included) to every job finished; "
             "'after upload': from the last frame announced; preloaded: from the first "
             "announcement (the frames in the bucket before).",
             *(f"**{path} / {paths[0]} makespan: median {statistics.median(r):.3f}** "
               f"({', '.join(f'{x:.3f}' for x in r)})." for path, r in ratios.items()),
             "Timelines from the manifests: a job's interval ends when its manifest was written "
             "(whole seconds, after its QC plots) and lasts its recipe's wall time. 'cores "
             "busy': the recipes' core-seconds over cores x wall; 'first recipe': when the "
             "first recipe started. 'downloaded': the bytes the workers fetched from the "
             "store (S3, or copied out of the directory; ranged reads included); 'linked': "
             "inputs hard-linked on the machine instead (from its cache, or the store's "
             "directory), of all inputs."]
    print(write_results(args.name, "Makespan: embedded against the services on one machine",
                        notes, ["rep", "path", "jobs", "wall [s]", "ratio", "recipes [s]",
                                "upload [s]", "after upload [s]", "downloaded [GB]",
                                "linked", "cores busy", "first recipe [s]"],
                        rows, {"records": records, "ratios": ratios, "memory_gb": memory_gb},
                        fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
