"""One night embedded and through the services on the same machine, side by side.

    .venv/bin/python benchmarks/makespan.py RAW [--reps 1]

(a) ``musedrp reduce RAW`` on every core; (b) the services as ``musedrp serve`` starts them
(ingest, planner, a worker per core for each per-IFU stage, one per merging stage, all
sharing the machine's cores and memory through admission.py) on a RabbitMQ vhost, a
``weed mini`` S3 server and a PostgreSQL database of their own, timed from the first upload
to the last job finished.  Both get the same memory budget.  Repetitions alternate which
path runs first.  Writes ``results/makespan.{md,json,png}``.
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
from pathlib import Path

import matplotlib.pyplot as plt

from musedrp.executor import available_memory_gb
from musedrp.serve import SERVICES, instances, submit

from common import fresh_services, write_results

DONE = ("succeeded", "cached", "failed", "skipped")


def embedded(raw: Path, work: Path, memory_gb: float) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "musedrp.cli", "reduce", str(raw),  # noqa: S603
                           "-o", str(work), "--memory", str(memory_gb)],
                          capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    runs = [json.loads(m.read_text())["run"] for m in work.glob("products/*/*/*/*/manifest.json")]
    return {"wall_s": wall, "exit": proc.returncode, "jobs": len(runs),
            "recipe_s": sum(r["wall_s"] for r in runs),
            "cpu_s": sum(r["cpu_user_s"] + r["cpu_sys_s"] for r in runs)}


def services(raw: Path, work: Path, memory_gb: float, jobs: int) -> dict:
    with fresh_services(work, memory_gb=str(memory_gb), plan_quiet_s="5",
                        admission=str(work / "admission.json")) as (_, s, fleet, registry):
        ncpus = len(os.sched_getaffinity(0))
        for name, service in instances(SERVICES, ncpus):
            fleet.start(name, service=service)
        time.sleep(5)  # start-up checks are not what we measure
        t0 = time.monotonic()
        submit(raw, s, report=lambda _: None)
        uploaded = time.monotonic() - t0
        while True:
            found = registry.jobs()
            if len(found) >= jobs and all(j.state in DONE for j in found):
                break
            if time.monotonic() - t0 > 4 * 3600:
                raise SystemExit(f"services path timed out; logs in {work}")
            time.sleep(1)
        wall = time.monotonic() - t0
        failed = [f"{j.stage} {j.ifu}: {j.reason}" for j in found if j.state not in DONE[:2]]
        return {"wall_s": wall, "upload_s": uploaded, "jobs": len(found), "failed": failed,
                "recipe_s": sum(j.wall_s or 0 for j in found)}


def planned_jobs(raw: Path) -> int:
    out = subprocess.run([sys.executable, "-m", "musedrp.cli", "plan", str(raw),  # noqa: S603
                          "--json"], capture_output=True, text=True, check=True).stdout
    return len(json.loads(out)["orders"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("raw", type=Path)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--memory", type=float, default=None,
                   help="the memory budget of both paths (default 85 %% of what is available)")
    args = p.parse_args()
    memory_gb = args.memory or round(0.85 * available_memory_gb(), 1)
    jobs = planned_jobs(args.raw)
    records = []
    for rep in range(args.reps):
        for path in (("embedded", "services") if rep % 2 == 0 else ("services", "embedded")):
            work = Path(tempfile.mkdtemp(prefix=f"musedrp-makespan-{path}-"))
            try:
                rec = (embedded(args.raw, work, memory_gb) if path == "embedded"
                       else services(args.raw, work, memory_gb, jobs))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            records.append({"rep": rep, "path": path, **rec})
            print(records[-1], flush=True)
    ratios = [s["wall_s"] / e["wall_s"] for e, s in zip(
        [r for r in records if r["path"] == "embedded"],
        [r for r in records if r["path"] == "services"], strict=True)]
    rows = [(r["rep"], r["path"], r["jobs"], r["wall_s"], r["recipe_s"], r.get("upload_s", ""))
            for r in records]
    fig, ax = plt.subplots(figsize=(5, 3))
    for i, path in enumerate(("embedded", "services")):
        ax.plot([i] * args.reps, [r["wall_s"] / 60 for r in records if r["path"] == path], "o")
    ax.set_xticks([0, 1], ["musedrp reduce", "services (serve)"])
    ax.set_ylabel("makespan [min]")
    ax.set_title(f"{args.raw.name}: {jobs} jobs")
    notes = [f"{jobs} jobs planned for `{args.raw}`; memory budget {memory_gb:.1f} GB for both "
             "paths. Services: wall from the first upload (included) to every job finished.",
             f"**services / embedded makespan: median {statistics.median(ratios):.3f}** "
             f"({', '.join(f'{x:.3f}' for x in ratios)})."]
    print(write_results("makespan", "Makespan: embedded against the services on one machine",
                        notes, ["rep", "path", "jobs", "wall [s]", "recipes [s]", "upload [s]"],
                        rows, {"records": records, "ratios": ratios, "memory_gb": memory_gb},
                        fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
