"""What musedrp adds to a recipe: the same one-IFU bias and flat, three ways, interleaved.

    .venv/bin/python benchmarks/overhead.py [--reps 3]

(a) bare ``esorex`` as a person runs it, on local files (``taskset -c 0``,
``OMP_NUM_THREADS=1``, the stage's parameters); (b) ``musedrp reduce --cpus 1``, from
classification to QC plots; (c) the services: ingest, planner and the bias and flat
workers (pinned to CPU 0) on a RabbitMQ vhost, a ``weed mini`` S3 server and a PostgreSQL
database of their own, from the first upload to the flat's ``succeeded``; and per job:
the workers' own time, from taking the order to its products stored (their logs); (d) the
same with the objects in a directory instead of S3, as ``musedrp serve`` keeps them on one
machine.  The raw directory holds calibrations only (musedrp reduces such a night's
masters).  Each repetition runs the paths in a rotated order.
Writes ``results/overhead.{md,json,png}``.
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

from musedrp.serve import submit
from musedrp.services.bias.spec import SPEC as BIAS
from musedrp.services.flat.spec import SPEC as FLAT

from common import fresh_services, timed, worker_logs, write_frames, write_results

FRAMES = 11
PATHS = ("esorex", "reduce", "services", "services-files")


def bare(frames: dict[str, list[Path]], work: Path,
         stages: tuple[str, ...] = ("bias", "flat")) -> dict[str, float]:
    """Two SOFs and two esorex calls, as in the expert's log (or the bias's alone)."""
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    for stage, tag, spec, extra in (("bias", "BIAS", BIAS, ""),
                                    ("flat", "FLAT", FLAT, "MASTER_BIAS-01.fits")):
        if stage not in stages:
            continue
        recipe = spec.recipe
        sof = work / f"{recipe}.sof"
        lines = [f"{p} {tag}" for p in frames[tag]]
        if extra:
            lines.append(f"{work / extra} MASTER_BIAS")
        sof.write_text("\n".join(lines) + "\n")
        subprocess.run(["taskset", "-c", "0", "esorex", f"--output-dir={work}",  # noqa: S603,S607
                        recipe, "--nifu=1", *spec.params().to_esorex_args(), str(sof)],
                       cwd=work, env=env, check=True, capture_output=True)
    wall = time.monotonic() - t0
    return {"wall_s": wall, "recipe_s": wall}


def reduce(raw: Path, work: Path) -> dict[str, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "musedrp.cli", "reduce", str(raw),  # noqa: S603
                           "-o", str(work), "--cpus", "1", "--ifus", "1"],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"musedrp reduce failed:\n{proc.stdout}{proc.stderr}")
    wall = time.monotonic() - t0
    return {"wall_s": wall, "recipe_s": sum(json.loads(m.read_text())["run"]["wall_s"]
                                            for m in work.glob("products/*/*/*/*/manifest.json"))}


def services(raw: Path, work: Path, quiet_s: float, stages: tuple[str, ...] = ("bias", "flat"),
             s3: bool = True) -> dict[str, float]:
    """Fresh servers each time (not timed); timed from the first upload to the jobs of
    ``stages`` done (``upload_s``: until the last frame was stored and announced); the
    objects in ``weed mini`` (``s3``) or a directory."""
    with fresh_services(work, s3, plan_quiet_s=str(quiet_s), ifus="1") as (_, settings, fleet,
                                                                           registry):
        for name, cpus in (("ingest", None), ("planner", None), *((s, [0]) for s in stages)):
            fleet.start(name, cpus)
        time.sleep(5)  # start-up (esorex --man-page checks) is not what we measure
        t0 = time.monotonic()
        submit(raw, settings, report=lambda _: None)
        uploaded = time.monotonic() - t0
        while True:
            states = {j.stage: j.state for j in registry.jobs()}
            if states.get(stages[-1]) in ("succeeded", "failed", "skipped"):
                break
            if time.monotonic() - t0 > 900:
                raise SystemExit(f"services path timed out: {states}")
            time.sleep(0.2)
        if states != dict.fromkeys(stages, "succeeded"):
            raise SystemExit(f"services path failed: {states}; logs in {work}")
        logs = worker_logs(work / "services" / "logs")
        return {"wall_s": time.monotonic() - t0, "upload_s": uploaded,
                "recipe_s": sum(j.wall_s or 0 for j in registry.jobs()),
                "jobs_s": logs["jobs_s"], "transfers_s": logs["inputs_s"] + logs["products_s"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quiet-s", type=float, default=1.0,
                   help="the planner's quiet period in the services path")
    args = p.parse_args()
    records = []
    with tempfile.TemporaryDirectory(prefix="musedrp-bench-") as tmp:
        raw = Path(tmp) / "raw"
        gen_s, frames = timed(lambda: {k.upper(): write_frames(k, n, [1], raw)
                                       for k, n in (("bias", FRAMES), ("flat", FRAMES))})
        print(f"simulated {2 * FRAMES} one-IFU frames in {gen_s:.0f} s", flush=True)
        for rep in range(args.reps):
            order = PATHS[rep % len(PATHS):] + PATHS[:rep % len(PATHS)]
            for path in order:
                work = Path(tmp) / f"{path}-{rep}"
                if path == "esorex":
                    rec = bare(frames, work)
                elif path == "reduce":
                    rec = reduce(raw, work)
                else:
                    rec = services(raw, work, args.quiet_s, s3=path == "services")
                records.append({"rep": rep, "path": path, **rec})
                print(records[-1], flush=True)
                shutil.rmtree(work, ignore_errors=True)
    return report(records, args)


def report(records: list[dict], args: argparse.Namespace) -> int:
    base = {r["rep"]: r["wall_s"] for r in records if r["path"] == "esorex"}
    for r in records:
        r["ratio"] = r["wall_s"] / base[r["rep"]]
        if "jobs_s" in r:
            r["job_ratio"] = r["jobs_s"] / base[r["rep"]]
    rows, summary = [], {}
    for path in PATHS:
        rs = [r for r in records if r["path"] == path]
        walls, ratios = [r["wall_s"] for r in rs], [r["ratio"] for r in rs]
        summary[path] = {"median_wall_s": statistics.median(walls),
                         "median_ratio": statistics.median(ratios),
                         "min_ratio": min(ratios), "max_ratio": max(ratios)}
        upload, jobs, job_ratio = ((
            f"{statistics.median(r['upload_s'] for r in rs):.1f}",
            f"{statistics.median(r['jobs_s'] for r in rs):.1f}",
            f"{statistics.median(r['job_ratio'] for r in rs):.3f}") if "jobs_s" in rs[0]
            else ("", "", ""))
        own = statistics.median(r["wall_s"] - r["recipe_s"] for r in rs)
        summary[path]["median_own_s"] = own
        rows.append((path, len(rs), statistics.median(walls), min(walls), max(walls),
                     f"{statistics.median(ratios):.3f}",
                     f"{min(ratios):.3f}-{max(ratios):.3f}",
                     statistics.median(r["recipe_s"] for r in rs), own, upload, jobs,
                     job_ratio))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, path in enumerate(PATHS):
        ratios = [r["ratio"] for r in records if r["path"] == path]
        ax.plot([i] * len(ratios), ratios, "o", alpha=0.7)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(PATHS)), ["bare esorex", "musedrp reduce", "services (S3)",
                                      "services (files)"])
    ax.set_ylabel("wall time / bare esorex (same repetition)")
    ax.set_title(f"1-IFU bias + flat ({FRAMES} + {FRAMES} frames), {args.reps} repetitions")
    notes = [f"One IFU, {FRAMES} biases then {FRAMES} flats (full-size simulated frames), "
             "each recipe on CPU 0 with OMP_NUM_THREADS=1; the paths of one repetition run "
             "back to back in rotated order, and each path's wall time is divided by bare "
             "esorex's of the same repetition.",
             "'recipes' is the esorex wall time as musedrp measured it (the manifests' "
             "`run.wall_s`), 'outside recipes' the median of wall minus recipes.",
             f"Services: the planner's quiet period was {args.quiet_s:g} s; upload is the time "
             "`submit` took to put the 23 files into the store and announce them (included in "
             "wall); (S3): a local `weed mini`, (files): a directory, as `musedrp serve` keeps "
             "the objects on one machine. "
             "'workers' jobs': the two jobs' time in their workers, from taking the order to "
             "its products stored (inputs fetched, recipe, products and manifest uploaded), "
             "and its ratio to bare esorex: the per-job overhead, without the upload of the "
             "raw frames, the quiet period and the messages between the services."]
    print(write_results(
        "overhead", "Overhead of musedrp over bare esorex", notes,
        ["path", "runs", "median wall [s]", "min [s]", "max [s]", "median ratio",
         "ratio range", "recipes [s]", "outside recipes [s]", "upload [s]",
         "workers' jobs [s]", "per-job ratio"], rows,
        {"records": records, "summary": summary}, fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
