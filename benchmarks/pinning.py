"""How ``taskset`` and ``OMP_NUM_THREADS`` interact for the MUSE recipes.

    .venv/bin/python benchmarks/pinning.py [--frames 5]

muse_bias on full-size simulated frames with IFUs 1 and 13 in each file, for every CPU set
size (1 core, 2 cores) x OMP_NUM_THREADS (unset, 1, 2, 4) x ``--nifu`` mode (1: one IFU;
-1: both IFUs in esorex's parallel mode, an OpenMP loop over all 24 IFUs that hands 1-12 to
the first of two threads and 13-24 to the second, and fails on the absent ones after
reducing the two present; ``--nifu=0`` is a serial loop of ``--nifu=k`` calls and behaves
as ``--nifu=1``), and muse_flat (``--nifu=1``) for every CPU set x thread count.  Wall
time, CPU time (user + system), the most threads of the recipe seen running at once
(sampled every 0.2 s from /proc), the threads it had, and peak RSS.
Writes ``results/pinning.{md,json,png}``.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from musedrp import esorex
from musedrp.services.bias.spec import SPEC as BIAS
from musedrp.services.flat.spec import SPEC as FLAT
from musedrp.tags import Tag

from common import RecipeSampler, write_frames, write_results

CPU_SETS = ([0], [0, 1])
THREADS = (0, 1, 2, 4)  # 0: OMP_NUM_THREADS unset
NIFU = (1, -1)
IFUS = [1, 13]


def measure(recipe: str, sof: list[esorex.SofEntry], args: list[str], cpus: list[int],
            threads: int, work: Path) -> tuple[esorex.RecipeRun, RecipeSampler]:
    with RecipeSampler() as sampler:
        r = esorex.run_recipe(recipe, sof, args, work, cpus, 3600, threads=threads)
    names = ["MASTER_BIAS-01.fits", "MASTER_BIAS-13.fits"] if "--nifu=-1" in args else []
    if names:  # esorex fails on the absent IFUs; the products stay in its working directory
        if missing := [n for n in names if not (work / n).exists()]:
            raise SystemExit(f"{recipe} {args[0]}: no {missing}")
    else:
        esorex.check(r, [])
    return r, sampler


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=5)
    args = p.parse_args()
    records = []
    with tempfile.TemporaryDirectory(prefix="musedrp-bench-") as tmp:
        raw = Path(tmp) / "raw"
        biases = [esorex.SofEntry(q, Tag.BIAS) for q in write_frames("bias", args.frames,
                                                                     IFUS, raw)]
        flats = [esorex.SofEntry(q, Tag.FLAT) for q in write_frames("flat", args.frames,
                                                                    IFUS, raw)]
        cases = [("muse_bias", nifu, cpus, t) for nifu in NIFU for cpus in CPU_SETS
                 for t in THREADS]
        cases += [("muse_flat", 1, cpus, t) for cpus in CPU_SETS for t in THREADS]
        master = None
        for i, (recipe, nifu, cpus, threads) in enumerate(cases):
            work = Path(tmp) / f"run{i}"
            spec = BIAS if recipe == "muse_bias" else FLAT
            sof = biases if recipe == "muse_bias" else [*flats, master]
            r, s = measure(recipe, sof, [f"--nifu={nifu}", *spec.params().to_esorex_args()],
                           cpus, threads, work)
            if master is None and recipe == "muse_bias" and nifu == 1:
                master = esorex.SofEntry(Path(tmp) / "MASTER_BIAS-01.fits", Tag.MASTER_BIAS)
                (work / "products" / "MASTER_BIAS-01.fits").rename(master.path)
            records.append({
                "recipe": recipe, "nifu": nifu, "cpus": len(cpus),
                "omp_num_threads": threads or "unset", "wall_s": r.wall_s,
                "cpu_s": round(r.cpu_user_s + r.cpu_sys_s, 2),
                "max_running": s.max_running, "threads": s.max_threads,
                "peak_rss_gb": round(r.peak_rss_bytes / 1e9, 2)})
            print(records[-1], flush=True)
    return report(records, args.frames)


def report(records: list[dict], frames: int) -> int:
    rows = [(r["recipe"], r["nifu"], r["cpus"], r["omp_num_threads"], r["wall_s"], r["cpu_s"],
             f"{r['cpu_s'] / r['wall_s']:.2f}", r["max_running"], r["threads"],
             r["peak_rss_gb"]) for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, n_cpus in zip(axes, (1, 2), strict=True):
        for recipe, nifu in [("muse_bias", n) for n in NIFU] + [("muse_flat", 1)]:
            rs = [r for r in records if r["cpus"] == n_cpus and r["recipe"] == recipe
                  and r["nifu"] == nifu]
            ax.plot([str(r["omp_num_threads"]) for r in rs], [r["wall_s"] for r in rs], "o-",
                    label=f"{recipe} --nifu={nifu}")
        ax.set_title(f"taskset: {n_cpus} CPU(s)")
        ax.set_xlabel("OMP_NUM_THREADS")
    axes[0].set_ylabel("wall time [s]")
    axes[1].legend(fontsize=8)
    notes = [f"{frames} full-size simulated frames with IFUs 1 and 13 per file; `--nifu=1` "
             "reduces IFU 1, `--nifu=-1` both in esorex's parallel mode. CPU/wall > 1 "
             "means more than one core was busy; "
             "'running' is the most recipe threads seen in state R at one 0.2 s sample, "
             "'threads' the most the recipe had."]
    print(write_results(
        "pinning", "taskset x OMP_NUM_THREADS x --nifu", notes,
        ["recipe", "nifu", "CPUs", "OMP_NUM_THREADS", "wall [s]", "CPU [s]", "CPU/wall",
         "running", "threads", "peak RSS [GB]"], rows, {"records": records}, fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
