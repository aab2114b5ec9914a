"""Peak memory and time of the science product's merging stages against what they merge.

Run after a reduction of a simulated night (it reuses the night's products):

    make run
    .venv/bin/python benchmarks/science_memory.py demo/reduced-ifus1-3-seed1 [--ifus 1,2,3]

Re-runs the night's first job of each stage with its own parameters on every core, as the
stage runs: muse_create_sky (``sky``) and muse_scipost (``scipost``, with the sky model of
the SKY exposure subtracted) with the pixel tables and LSF profiles of IFUs 1..N;
muse_exp_combine (``combine``) with the reduced pixel tables of the first K exposures.
Fits ``peak = base + slope x N`` per stage (N: IFUs, or IFU-exposures for combine, which
is what its memory model counts) and writes ``results/science_memory.{md,json,png}``.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from musedrp import esorex
from musedrp.tags import Tag
from musedrp.topology import BY_NAME

from common import first_job, subset, write_results


def measure(stage: str, manifest: dict, n: int, units: int, cpus: list[int]) -> dict:
    """One re-run of ``n`` IFUs or exposures; ``units``: what the memory model counts."""
    spec = BY_NAME[stage].spec
    params = spec.params(**manifest["parameters"])
    with tempfile.TemporaryDirectory(prefix="musedrp-bench-") as tmp:
        r = esorex.run_recipe(spec.recipe, subset(manifest, n), params.to_esorex_args(),
                              Path(tmp), cpus, spec.timeout_s)
        esorex.check(r, [])
    rec = {"stage": stage, "n": n, "units": units,
           "wall_s": round(r.wall_s, 1), "cpu_s": round(r.cpu_user_s + r.cpu_sys_s, 1),
           "peak_rss_gb": round(r.peak_rss_bytes / 1e9, 3), "params": manifest["parameters"]}
    print(rec, flush=True)
    return rec


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reduced", type=Path)
    p.add_argument("--ifus", default="1,2,3", help="IFU counts for sky and scipost, from IFU 1")
    p.add_argument("--exposures", default="2,3", help="exposure counts for combine")
    p.add_argument("--cpus", default="0-1")
    args = p.parse_args()
    cpus = esorex.parse_cpus(args.cpus)
    per_exposure = sum(Tag(i["tag"]) == Tag.PIXTABLE_OBJECT
                       for i in first_job(args.reduced, "scipost")["inputs"])
    records = []
    for stage, counts, unit in (("sky", args.ifus, 1), ("scipost", args.ifus, 1),
                                ("combine", args.exposures, per_exposure)):
        manifest = first_job(args.reduced, stage)
        records += [measure(stage, manifest, int(n), int(n) * unit, cpus)
                    for n in counts.split(",")]
    print(report(records, len(cpus)))
    return 0


def report(records: list[dict], n_cpus: int) -> str:
    fits, rows = {}, []
    fig, ax = plt.subplots(figsize=(6, 4))
    for stage in dict.fromkeys(r["stage"] for r in records):
        mine = [r for r in records if r["stage"] == stage]
        x = np.array([r["units"] for r in mine], float)
        y = np.array([r["peak_rss_gb"] for r in mine])
        slope, base = np.polyfit(x, y, 1) if len(mine) > 1 else (y[0] / x[0], 0.0)
        fits[stage] = {"base_gb": round(base, 3), "slope_gb": round(slope, 3)}
        ax.plot(x, y, "o", label=f"{stage} measured")
        ax.plot([0, x.max()], [base, base + slope * x.max()], "-", lw=0.8)
        spec = BY_NAME[stage].spec
        model = spec.memory_for(spec.params(**mine[0]["params"]))
        rows += [[r["stage"], r["n"], r["units"], r["wall_s"], r["cpu_s"], r["peak_rss_gb"],
                  round(base + slope * r["units"], 2), model.estimate_gb(0, r["units"])]
                 for r in mine]
        fits[stage]["declared"] = f"{model.base_gb} + {model.per_ifu_gb} x N"
        fits[stage]["at_24_ifus_gb"] = round(base + slope * (24 * (3 if stage == "combine"
                                                                    else 1)), 1)
    ax.set_xlabel("IFUs merged (combine: IFU-exposures)")
    ax.set_ylabel("peak RSS [GB]")
    ax.set_title("science stages: peak memory")
    ax.legend()
    notes = [f"Each stage's first job of the night re-run with IFUs 1..N (sky, scipost) or "
             f"the first K exposures (combine), its own parameters, {n_cpus} CPU(s).",
             *(f"{s}: peak = {f['base_gb']:.2f} + {f['slope_gb']:.3f} x N GB; 24 IFUs"
               f"{' x 3 exposures' if s == 'combine' else ''}: {f['at_24_ifus_gb']} GB "
               f"(extrapolated); declared {f['declared']}" for s, f in fits.items())]
    return write_results(
        "science_memory", "Science stages: peak memory against what they merge", notes,
        ["stage", "IFUs or exposures", "N (model units)", "wall [s]", "CPU [s]",
         "peak RSS [GB]", "fit [GB]", "declared [GB]"], rows,
        {"records": records, "fits": fits, "cpus": n_cpus}, fig)


if __name__ == "__main__":
    sys.exit(main())
