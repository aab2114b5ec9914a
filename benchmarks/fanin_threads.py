"""Do the merging recipes use a second core?  The fan-in jobs of a finished reduction re-run
on one core (OMP_NUM_THREADS=1) and on two (OMP_NUM_THREADS=2).

    .venv/bin/python benchmarks/fanin_threads.py REDUCED_DIR [--stages twilight,standard,scipost]

Each stage's first job is re-run from its manifest: the same inputs (by path) and the same
esorex arguments.  Wall time, CPU time, the most threads seen running (0.2 s samples) and
peak RSS.  Writes ``results/fanin_threads.{md,json,png}``.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from musedrp import esorex
from musedrp.tags import Tag

from common import RecipeSampler, write_results

CPU_SETS = ([0], [0, 1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("reduced", type=Path)
    p.add_argument("--stages", default="twilight,standard,scipost")
    args = p.parse_args()
    records = []
    for stage in args.stages.split(","):
        manifests = sorted(args.reduced.glob(f"products/*/{stage}/*/*/manifest.json"))
        if not manifests:
            raise SystemExit(f"no {stage} manifest below {args.reduced}")
        m = json.loads(manifests[0].read_text())
        command = m["run"]["command"]
        recipe = m["run"]["recipe"]
        recipe_args = command[command.index(recipe) + 1:-1]
        sof = [esorex.SofEntry(Path(i["path"]), Tag(i["tag"])) for i in m["inputs"]]
        for cpus in CPU_SETS:
            with tempfile.TemporaryDirectory(prefix="musedrp-bench-") as tmp, \
                    RecipeSampler() as sampler:
                r = esorex.run_recipe(recipe, sof, recipe_args, Path(tmp), cpus, 7200)
                esorex.check(r, [])
            records.append({"stage": stage, "recipe": recipe, "cpus": len(cpus),
                            "omp_num_threads": r.omp_num_threads, "wall_s": r.wall_s,
                            "cpu_s": round(r.cpu_user_s + r.cpu_sys_s, 1),
                            "max_running": sampler.max_running,
                            "peak_rss_gb": round(r.peak_rss_bytes / 1e9, 2)})
            print(records[-1], flush=True)
    one = {r["stage"]: r["wall_s"] for r in records if r["cpus"] == 1}
    rows = [(r["recipe"], r["cpus"], r["omp_num_threads"], r["wall_s"], r["cpu_s"],
             r["max_running"], r["peak_rss_gb"], f"{one[r['stage']] / r['wall_s']:.2f}")
            for r in records]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    stages = list(one)
    for k, n in enumerate((1, 2)):
        ax.bar([i + 0.4 * k for i in range(len(stages))],
               [r["wall_s"] for s in stages for r in records if r["stage"] == s
                and r["cpus"] == n], width=0.4, label=f"{n} core(s)")
    ax.set_xticks([i + 0.2 for i in range(len(stages))], stages)
    ax.set_ylabel("wall time [s]")
    ax.legend()
    notes = [f"The first job of each stage of `{args.reduced}` re-run with its own inputs and "
             "arguments; `taskset` to the CPU set, OMP_NUM_THREADS = its size. 'running' is "
             "the most threads seen in state R at one 0.2 s sample."]
    print(write_results("fanin_threads", "Merging recipes on one core and on two", notes,
                        ["recipe", "CPUs", "OMP_NUM_THREADS", "wall [s]", "CPU [s]",
                         "running", "peak RSS [GB]", "speed-up"], rows,
                        {"records": records}, fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
