"""Peak memory and time of muse_scipost versus the number of IFUs it merges.

Run after a reduction of a simulated night with several IFUs (it reuses the night's pixel
tables and calibrations):

    make run DEMO_IFUS=1-6
    .venv/bin/python benchmarks/scipost_memory.py demo/reduced-ifus1-6-seed1 [--ifus 1,2,3,4,6]

Re-runs the night's first scipost job (first by job key) with the PIXTABLE_OBJECT and
LSF_PROFILE of the first N IFUs only, with the job's own parameters, on every core, as the
stage runs.  Fits ``peak = base + per_ifu x IFUs`` (the scipost stage spec's model) and
writes ``results/scipost_memory.{md,json,png}``.  With ``--split-at`` the largest IFU count
is also run on the wavelength ranges below and above that wavelength (the recipe loads only
the pixel-table rows within ``lambdamin..lambdamax``): what a cube made in pieces would need.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from musedrp import esorex
from musedrp.services.scipost.spec import SPEC
from musedrp.tags import Tag

from common import first_job, subset, write_results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reduced", type=Path)
    p.add_argument("--ifus", default="1,2,3,4,6", help="IFU counts, each from IFU 1")
    p.add_argument("--cpus", default="0-1")
    p.add_argument("--split-at", type=float, help="wavelength [Angstrom]")
    args = p.parse_args()
    manifest = first_job(args.reduced, "scipost")
    have = sum(Tag(i["tag"]) == Tag.PIXTABLE_OBJECT for i in manifest["inputs"])
    counts = [int(n) for n in args.ifus.split(",")]
    if max(counts) > have:
        raise SystemExit(f"job {manifest['job_key']} merges {have} IFUs, asked for {max(counts)}")
    params = SPEC.params(**manifest["parameters"])
    runs = [(n, params.lambdamin, params.lambdamax) for n in counts]
    if args.split_at:
        runs += [(max(counts), params.lambdamin, args.split_at),
                 (max(counts), args.split_at, params.lambdamax)]
    cpus = esorex.parse_cpus(args.cpus)
    records = []
    for n, lo, hi in runs:
        these = params.model_copy(update={"lambdamin": lo, "lambdamax": hi})
        with tempfile.TemporaryDirectory(prefix="musedrp-bench-") as tmp:
            r = esorex.run_recipe(SPEC.recipe, subset(manifest, n), these.to_esorex_args(),
                                  Path(tmp), cpus, SPEC.timeout_s)
            cube = esorex.check(r, ["DATACUBE_FINAL.fits"])["DATACUBE_FINAL.fits"]
            cube_gb = cube.stat().st_size / 1e9
        whole = (lo, hi) == (params.lambdamin, params.lambdamax)
        rec = {"ifus": n, "lambda": f"{lo:.0f}-{hi:.0f}", "whole": whole,
               "wall_s": round(r.wall_s, 1), "cpu_s": round(r.cpu_user_s + r.cpu_sys_s, 1),
               "peak_rss_gb": round(r.peak_rss_bytes / 1e9, 3), "cube_gb": round(cube_gb, 3)}
        records.append(rec)
        print(rec, flush=True)
    print(report(records, manifest, len(cpus)))
    return 0


def report(records: list[dict], manifest: dict, n_cpus: int) -> str:
    whole = [r for r in records if r["whole"]]  # the fit: the whole wavelength range
    x = np.array([r["ifus"] for r in whole], float)
    y = np.array([r["peak_rss_gb"] for r in whole])
    per_ifu, base = np.polyfit(x, y, 1)
    model = SPEC.memory
    declared = [model.estimate_gb(0, r["ifus"]) for r in records]
    fit24 = base + per_ifu * 24
    notes = [f"Job {manifest['job_key']} (the night's first scipost) re-run with the pixel "
             f"tables and LSF profiles of IFUs 1..N; its parameters (but the wavelength range "
             f"where stated); {n_cpus} CPU(s).",
             f"Least-squares fit: peak = {base:.2f} + {per_ifu:.3f} x IFUs GB; at 24 IFUs "
             f"{fit24:.1f} GB (extrapolated, not measured). Declared model: "
             f"{model.base_gb} + {model.per_ifu_gb} x IFUs GB "
             f"({model.estimate_gb(0, 24):.1f} GB at 24)."]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, y, "o", label="measured")
    if parts := [r for r in records if not r["whole"]]:
        ax.plot([r["ifus"] for r in parts], [r["peak_rss_gb"] for r in parts], "x",
                label="part of the wavelength range")
    xs = np.array([0, 24])
    ax.plot(xs, base + per_ifu * xs, "-", lw=0.8, label="fit")
    ax.plot(xs, [model.estimate_gb(0, n) for n in xs], "--", lw=0.8, label="declared model")
    ax.set_xlabel("IFUs merged")
    ax.set_ylabel("peak RSS [GB]")
    ax.set_title("muse_scipost peak memory")
    ax.legend()
    return write_results(
        "scipost_memory", "muse_scipost peak memory vs IFUs", notes,
        ["IFUs", "wavelengths [Å]", "wall [s]", "CPU [s]", "peak RSS [GB]", "fit [GB]",
         "declared [GB]", "cube [GB]"],
        [[r["ifus"], r["lambda"], r["wall_s"], r["cpu_s"], r["peak_rss_gb"],
          base + per_ifu * r["ifus"] if r["whole"] else "", d, r["cube_gb"]]
         for r, d in zip(records, declared, strict=True)],
        {"records": records, "fit": {"base_gb": round(base, 3), "per_ifu_gb": round(per_ifu, 3)},
         "job_key": manifest["job_key"]}, fig)


if __name__ == "__main__":
    sys.exit(main())
