"""Peak memory of each per-IFU stage against its raw frames, and the model each stage declares.

    .venv/bin/python benchmarks/memory_models.py [--counts 3,5,7,11] [--arcs 1,3,5]

One IFU of full-size simulated frames: muse_bias and muse_flat with ``--counts`` frames,
muse_wavecal and muse_lsf with ``--arcs`` arcs per lamp (three lamps); each pinned to one
core.  For each stage: the least-squares line ``peak = base + per_frame x frames``, its
largest and RMS deviation, and the declared model's largest deviation.  muse_twilight's
measurements (``twilight_memory.py``) join the table from its saved JSON.  Writes
``results/memory_models.{md,json,png}``.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from musedrp import esorex
from musedrp.simulate import night
from musedrp.simulate.static import write_static
from musedrp.tags import Tag
from musedrp.topology import BY_NAME

from common import RESULTS, exposures, write_frames, write_results

IFU = 1


def run(stage: str, sof: list[esorex.SofEntry], work: Path) -> esorex.RecipeRun:
    spec = BY_NAME[stage].spec
    r = esorex.run_recipe(spec.recipe, sof, [f"--nifu={IFU}", *spec.params().to_esorex_args()],
                          work, [0], 3600)
    esorex.check(r, [])
    print(f"{stage:<8} {len(sof):>3} inputs {r.wall_s:6.1f} s {r.peak_rss_bytes / 1e9:.2f} GB",
          flush=True)
    return r


def product(r: esorex.RecipeRun, name: str) -> Path:
    return r.products[0].parent / f"{name}-{IFU:02d}.fits"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--counts", default="3,5,7,11", help="bias and flat frame counts")
    p.add_argument("--arcs", default="1,3,5", help="arcs per lamp for wavecal and lsf")
    args = p.parse_args()
    counts = [int(n) for n in args.counts.split(",")]
    per_lamp = [int(n) for n in args.arcs.split(",")]
    records = []
    with tempfile.TemporaryDirectory(prefix="musedrp-bench-") as tmp:
        raw = Path(tmp) / "raw"
        bias = write_frames("bias", max(counts), [IFU], raw)
        flat = write_frames("flat", max(counts), [IFU], raw)
        arcs = exposures("arc", 15)
        lamps = sorted({e.lamps for e in arcs})
        arc_paths = {lamp: [night.write_exposure(e, [IFU], 1, raw) for e in arcs
                            if e.lamps == lamp] for lamp in lamps}
        catalog = next(q for q in write_static(Path(tmp) / "static")
                       if q.name.startswith("line_catalog"))
        calibs: dict[str, esorex.SofEntry] = {}
        for n in counts:
            r = run("bias", [esorex.SofEntry(q, Tag.BIAS) for q in bias[:n]], Path(tmp) / f"b{n}")
            records.append({"stage": "bias", "frames": n, "wall_s": r.wall_s,
                            "peak_gb": r.peak_rss_bytes / 1e9})
        calibs["bias"] = esorex.SofEntry(product(r, "MASTER_BIAS"), Tag.MASTER_BIAS)
        for n in counts:
            r = run("flat", [*(esorex.SofEntry(q, Tag.FLAT) for q in flat[:n]), calibs["bias"]],
                    Path(tmp) / f"f{n}")
            records.append({"stage": "flat", "frames": n, "wall_s": r.wall_s,
                            "peak_gb": r.peak_rss_bytes / 1e9})
        trace = esorex.SofEntry(product(r, "TRACE_TABLE"), Tag.TRACE_TABLE)
        base = [calibs["bias"], trace, esorex.SofEntry(catalog, Tag.LINE_CATALOG)]
        wavecal = None
        for stage in ("wavecal", "lsf"):
            for k in per_lamp:
                arc = [esorex.SofEntry(q, Tag.ARC) for lamp in lamps for q in arc_paths[lamp][:k]]
                extra = [wavecal] if stage == "lsf" else []
                r = run(stage, [*arc, *base, *extra], Path(tmp) / f"{stage}{k}")
                records.append({"stage": stage, "frames": len(arc), "wall_s": r.wall_s,
                                "peak_gb": r.peak_rss_bytes / 1e9})
            if stage == "wavecal":
                wavecal = esorex.SofEntry(product(r, "WAVECAL_TABLE"), Tag.WAVECAL_TABLE)
    return report(records)


def fit(records: list[dict], stage: str) -> dict:
    rs = [r for r in records if r["stage"] == stage]
    x = np.array([r["frames"] for r in rs], float)
    y = np.array([r["peak_gb"] for r in rs])
    per_frame, base = np.polyfit(x, y, 1)
    declared = BY_NAME[stage].spec.memory
    fitted = base + per_frame * x
    model = np.array([declared.estimate_gb(int(n)) for n in x])
    return {"stage": stage, "base_gb": round(base, 3), "per_frame_gb": round(per_frame, 4),
            "max_err_gb": round(float(np.abs(y - fitted).max()), 3),
            "rms_err_gb": round(float(np.sqrt(((y - fitted) ** 2).mean())), 3),
            "declared": f"{declared.base_gb} + {declared.per_frame_gb} x frames",
            "declared_max_err_gb": round(float(np.abs(y - model).max()), 3),
            "declared_underestimate_gb": round(float((y - model).max()), 3)}


def report(records: list[dict]) -> int:
    fits_ = [fit(records, s) for s in ("bias", "flat", "wavecal", "lsf")]
    twilight = RESULTS / "twilight_memory.json"
    notes = ["One IFU, full-size simulated frames, one core, OMP_NUM_THREADS=1. 'max err' is "
             "the largest |measured - line|; 'declared' is the stage spec's model, "
             "'under' the most it underestimates a measurement (positive: the planner would "
             "admit a job larger than it thinks)."]
    if twilight.exists():
        t = json.loads(twilight.read_text())
        notes.append(f"muse_twilight (from `{t['command']}`): peak = {t['fit']['base_gb']} + "
                     f"{t['fit']['per_ifu_gb']} x IFUs + {t['fit']['per_frame_gb']} x skyflats "
                     f"GB over {len(t['records'])} runs; see twilight_memory.md.")
    rows = [(f["stage"], f"{f['base_gb']} + {f['per_frame_gb']} x n", f["max_err_gb"],
             f["rms_err_gb"], f["declared"], f["declared_max_err_gb"],
             f["declared_underestimate_gb"]) for f in fits_]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for f in fits_:
        ax = axes[int(f["stage"] in ("wavecal", "lsf"))]
        rs = [r for r in records if r["stage"] == f["stage"]]
        xs = [r["frames"] for r in rs]
        ax.plot(xs, [r["peak_gb"] for r in rs], "o", label=f"{f['stage']} measured")
        ax.plot(xs, [f["base_gb"] + f["per_frame_gb"] * x for x in xs], "-", lw=0.8)
    axes[0].set_xlabel("bias / flat frames")
    axes[1].set_xlabel("arcs (three lamps)")
    for ax in axes:
        ax.set_ylabel("peak RSS [GB]")
        ax.legend()
    print(write_results("memory_models", "Peak memory per stage against its raw frames", notes,
                        ["stage", "fit [GB]", "max err [GB]", "RMS err [GB]", "declared [GB]",
                         "declared max err [GB]", "under [GB]"], rows,
                        {"records": records, "fits": fits_}, fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
