"""Do the merging recipes use a second core?  The fan-in jobs of a finished reduction re-run
on one core (OMP_NUM_THREADS=1), on two (OMP_NUM_THREADS=2), and as the executor runs a
merging job that starts while another job holds the second core: on one core with two
threads (what that costs), and widened to two cores after ``--widen-after`` seconds.

    .venv/bin/python benchmarks/fanin_threads.py REDUCED_DIR [--stages twilight,standard,scipost]
        [--widen-after 30] [--name fanin_threads]

Each stage's first job is re-run from its manifest: the same inputs (by path) and the same
esorex arguments.  Wall time, CPU time, the most threads seen running (0.2 s samples) and
peak RSS.  Writes ``results/<name>.{md,json,png}``.
"""

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

import matplotlib.pyplot as plt

from musedrp import esorex
from musedrp.tags import Tag

from common import RecipeSampler, write_results

# (label, CPUs at start, OMP_NUM_THREADS, CPUs added after --widen-after s)
CONFIGS = (("1 core", [0], 1, []), ("1 core, 2 threads", [0], 2, []),
           ("2 cores", [0, 1], 2, []), ("1 core, widened to 2", [0], 2, [1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("reduced", type=Path)
    p.add_argument("--stages", default="twilight,standard,scipost")
    p.add_argument("--widen-after", type=float, default=30.0)
    p.add_argument("--name", default="fanin_threads")
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
        for label, cpus, threads, later in CONFIGS:
            grant = esorex.CpuGrant(cpus, most=threads)
            timer = threading.Timer(args.widen_after, grant.grant, [later])
            with tempfile.TemporaryDirectory(prefix="musedrp-bench-") as tmp, \
                    RecipeSampler() as sampler:
                if later:
                    timer.start()
                r = esorex.run_recipe(recipe, sof, recipe_args, Path(tmp), grant, 7200)
                timer.cancel()
                esorex.check(r, [])
            records.append({"stage": stage, "recipe": recipe, "config": label,
                            "cpus": len(r.cpus), "omp_num_threads": r.omp_num_threads,
                            "wall_s": r.wall_s, "cpu_s": round(r.cpu_user_s + r.cpu_sys_s, 1),
                            "max_running": sampler.max_running,
                            "peak_rss_gb": round(r.peak_rss_bytes / 1e9, 2)})
            print(records[-1], flush=True)
    one = {r["stage"]: r["wall_s"] for r in records if r["config"] == CONFIGS[0][0]}
    rows = [(r["recipe"], r["config"], r["omp_num_threads"], r["wall_s"], r["cpu_s"],
             r["max_running"], r["peak_rss_gb"], f"{one[r['stage']] / r['wall_s']:.2f}")
            for r in records]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    stages = list(one)
    width = 0.8 / len(CONFIGS)
    for k, (label, *_) in enumerate(CONFIGS):
        ax.bar([i + width * k for i in range(len(stages))],
               [r["wall_s"] for s in stages for r in records if r["stage"] == s
                and r["config"] == label], width=width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(stages))], stages)
    ax.set_ylabel("wall time [s]")
    ax.legend(fontsize="small")
    notes = [f"The first job of each stage of `{args.reduced}` re-run with its own inputs and "
             "arguments; `taskset` to the CPU set. 'widened': started on CPU 0 with "
             f"OMP_NUM_THREADS=2, CPU 1 added after {args.widen_after:.0f} s (as the executor "
             "does when another job frees it). 'running' is the most threads seen in state R "
             "at one 0.2 s sample."]
    print(write_results(args.name, "Merging recipes on one core and on two", notes,
                        ["recipe", "CPUs", "OMP_NUM_THREADS", "wall [s]", "CPU [s]",
                         "running", "peak RSS [GB]", "speed-up"], rows,
                        {"records": records}, fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
