"""N IFUs of bias, then flat, on the same two cores, three ways.

    .venv/bin/python benchmarks/fanout.py [--ifus 1,2,4] [--frames 7]

(a) one esorex call, ``--nifu=0`` (the IFUs one after the other), on both cores with
OMP_NUM_THREADS=2; (b) one esorex call, ``--nifu=-1`` (esorex's parallel mode), likewise;
(c) musedrp's fan-out: one ``--nifu=k`` job per IFU, one core and one thread each, as many
at once as there are cores (what the local executor does).  Makespan, CPU time and the
largest summed RSS of the recipes running at once; then the model fitted to them,
extrapolated to 24 IFUs and to K nodes.  Writes ``results/fanout.{md,json,png}``.
"""

import argparse
import math
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib.pyplot as plt

from musedrp import esorex
from musedrp.services.bias.spec import SPEC as BIAS
from musedrp.services.flat.spec import SPEC as FLAT
from musedrp.tags import Tag

from common import RecipeSampler, timed, write_frames, write_results

CORES = [0, 1]
MODES = ("nifu=0", "nifu=-1", "fan-out")


def ifu_set(mode: str, n: int) -> list[int]:
    """Which IFUs the files hold.  esorex's modes loop over all 24 IFUs: ``--nifu=0`` stops
    at the first missing one, so it needs IFUs 1..N; ``--nifu=-1`` hands IFUs 1-12 to the
    first of two OpenMP threads and 13-24 to the second (static schedule), so IFUs 1..N
    would all land on one thread, unlike a real 24-IFU file: it gets IFUs spread evenly."""
    return [1 + k * 24 // n for k in range(n)] if mode == "nifu=-1" else list(range(1, n + 1))


def products(mode: str, work: Path, prefix: str, ifus: list[int]) -> dict[int, Path]:
    """The product of each IFU; a missing one is an error.  (A recipe that fails leaves
    what it saved in its working directory: esorex moves products only on success.)"""
    found = {k: work / f"ifu{k}" / "products" / f"{prefix}-{k:02d}.fits" if mode == "fan-out"
             else work / f"{prefix}-{k:02d}.fits" for k in ifus}
    if missing := [str(q) for q in found.values() if not q.exists()]:
        raise SystemExit(f"{mode}: no {', '.join(missing)}")
    return found


def run_mode(mode: str, recipe: str, sof: list[esorex.SofEntry], ifus: list[int],
             work: Path) -> dict:
    """One recipe over ``ifus`` in ``mode``; esorex's modes end with an error for the first
    IFU missing from the files, after reducing those present (checked by their products)."""
    spec = BIAS if recipe == "muse_bias" else FLAT
    params = spec.params().to_esorex_args()
    with RecipeSampler() as sampler:
        if mode != "fan-out":
            nifu = mode.split("=")[1]
            wall, r = timed(esorex.run_recipe, recipe, sof, [f"--nifu={nifu}", *params],
                            work, CORES, 3600)
            runs = [r]
        else:
            def one(k: int) -> esorex.RecipeRun:
                cpu = CORES[ifus.index(k) % len(CORES)]
                own = [e for e in sof if e.tag != Tag.MASTER_BIAS or e.path.stem.endswith(
                    f"-{k:02d}")]
                r = esorex.run_recipe(recipe, own, [f"--nifu={k}", *params], work / f"ifu{k}",
                                      [cpu], 3600)
                esorex.check(r, [])
                return r

            with ThreadPoolExecutor(len(CORES)) as pool:
                wall, runs = timed(lambda: list(pool.map(one, ifus)))
    return {"recipe": recipe, "mode": mode, "ifus": len(ifus), "wall_s": round(wall, 2),
            "cpu_s": round(sum(r.cpu_user_s + r.cpu_sys_s for r in runs), 1),
            "peak_rss_gb": round(sampler.peak_rss_bytes / 1e9, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ifus", default="1,2,4")
    p.add_argument("--frames", type=int, default=7)
    args = p.parse_args()
    records = []
    with tempfile.TemporaryDirectory(prefix="musedrp-bench-") as tmp:
        for n in (int(x) for x in args.ifus.split(",")):
            for mode in MODES:
                ifus = ifu_set(mode, n)
                raw = Path(tmp) / f"raw-{'-'.join(map(str, ifus))}"
                if not raw.exists():
                    write_frames("bias", args.frames, ifus, raw / "bias")
                    write_frames("flat", args.frames, ifus, raw / "flat")
                bias = [esorex.SofEntry(q, Tag.BIAS) for q in sorted((raw / "bias").iterdir())]
                work = Path(tmp) / f"{mode}-{n}"
                records.append(run_mode(mode, "muse_bias", bias, ifus, work / "bias"))
                print(records[-1], flush=True)
                masters = [esorex.SofEntry(q, Tag.MASTER_BIAS) for q in
                           products(mode, work / "bias", "MASTER_BIAS", ifus).values()]
                flat = [esorex.SofEntry(q, Tag.FLAT) for q in sorted((raw / "flat").iterdir())]
                records.append(run_mode(mode, "muse_flat", flat + masters, ifus, work / "flat"))
                products(mode, work / "flat", "MASTER_FLAT", ifus)
                print(records[-1], flush=True)
                shutil.rmtree(work)
    return report(records, args.frames)


def fit(records: list[dict], recipe: str) -> dict:
    """Per mode: seconds per IFU (least squares through the origin) and memory per IFU."""
    out = {}
    for mode in MODES:
        rs = [r for r in records if r["recipe"] == recipe and r["mode"] == mode]
        n = [r["ifus"] for r in rs]
        if mode == "fan-out":  # makespan = ceil(N / cores) rounds of one single-core job
            rounds = [math.ceil(k / len(CORES)) for k in n]
            per = sum(r["wall_s"] * k for r, k in zip(rs, rounds, strict=True)) / sum(
                k * k for k in rounds)
        else:
            per = sum(r["wall_s"] * k for r, k in zip(rs, n, strict=True)) / sum(k * k for k in n)
        out[mode] = {"s_per_unit": round(per, 2),
                     "peak_gb": {r["ifus"]: r["peak_rss_gb"] for r in rs}}
    return out


def extrapolate(model: dict, ifus: int, nodes: int, cores: int = len(CORES)) -> dict:
    """Makespan of ``ifus`` IFUs on ``nodes`` nodes of ``cores`` cores: esorex's modes run on
    one node; the fan-out spreads jobs over all nodes (transfers not counted)."""
    return {"nifu=0": model["nifu=0"]["s_per_unit"] * ifus,
            "nifu=-1": model["nifu=-1"]["s_per_unit"] * ifus,
            "fan-out": model["fan-out"]["s_per_unit"] * math.ceil(ifus / (nodes * cores))}


def report(records: list[dict], frames: int) -> int:
    models = {rec: fit(records, rec) for rec in ("muse_bias", "muse_flat")}
    rows = [(r["recipe"], r["ifus"], r["mode"], r["wall_s"], r["cpu_s"], r["peak_rss_gb"])
            for r in records]
    notes = [f"{frames} full-size simulated frames per recipe, N IFUs per file, two cores "
             "(`taskset -c 0-1`, OMP_NUM_THREADS=2 for one esorex call; one core and one "
             "thread per job for the fan-out). Peak RSS is the largest sum over the recipes "
             "running at one 0.2 s sample. esorex's own modes loop over all 24 IFUs and end "
             "with an error at the first IFU missing from these partial files, after "
             "reducing the N present (their products are checked); `--nifu=-1` gets IFUs "
             "spread over 1-24 so that its OpenMP threads share them as in a full file."]
    for rec, model in models.items():
        per = {m: model[m]["s_per_unit"] for m in MODES}
        notes += ["", f"**{rec}** model: `nifu=0` {per['nifu=0']} s x N; `nifu=-1` "
                  f"{per['nifu=-1']} s x N; fan-out {per['fan-out']} s x ceil(N / cores)."]
        notes.append("Extrapolated makespan for 24 IFUs [min]: " + "; ".join(
            f"{k} node(s) of 2 cores: " + ", ".join(
                f"{m} {v / 60:.1f}" for m, v in extrapolate(model, 24, k).items())
            for k in (1, 4, 12)) + ".")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, rec in zip(axes, ("muse_bias", "muse_flat"), strict=True):
        for mode in MODES:
            rs = [r for r in records if r["recipe"] == rec and r["mode"] == mode]
            ax.plot([r["ifus"] for r in rs], [r["wall_s"] for r in rs], "o-", label=mode)
        ax.set_title(f"{rec}, {frames} frames, 2 cores")
        ax.set_xlabel("IFUs")
        ax.set_ylabel("makespan [s]")
        ax.legend()
    print(write_results("fanout", "Fan-out: IFUs per esorex call or per job", notes,
                        ["recipe", "IFUs", "mode", "makespan [s]", "CPU [s]", "peak RSS [GB]"],
                        rows, {"records": records, "models": models}, fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
