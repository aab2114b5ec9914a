"""A combined cube in wavelength pieces: peak memory and time per piece against the cube made
at once, and whether the stitched cube equals it.

Run after a reduction of a simulated night (it reuses the night's products):

    make run
    .venv/bin/python benchmarks/pieces.py demo/raw-ifus1-3-seed1 demo/reduced-ifus1-3-seed1 \\
        [--pieces 1,3,5,7]

Plans the night again with the combination cut into 1, 3, 5, ... pieces (the count forced,
as the planner would choose it for a budget just above its largest piece's estimate), then
runs those combine jobs and the stitch in a temporary directory, one after another on every
core, as the stage runs them.  Per count: each job's wall and CPU time and peak RSS against the
planner's estimate, the summed time, and the stitched cube against the one-piece cube
(voxels equal to the bit, largest relative difference).  Writes
``results/pieces.{md,json,png}``.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from astropy.io import fits

from musedrp import esorex, pieces, runner
from musedrp.frames import classify_dir
from musedrp.planner import plan_night
from musedrp.topology import BY_NAME

from common import write_results

BUDGET_GB = 100.0  # caps nothing on the 3-IFU night


def plan(raw: Path, reduced: Path, count: int) -> list:
    """The combine and stitch orders of the night planned in ``count`` pieces.  The piece
    count is forced (``pieces.count``), not reached through a smaller memory budget, which
    would also change other jobs (the skyflats twilight may take)."""
    frames, _ = classify_dir(raw)
    fewest = pieces.count
    pieces.count = lambda fits_in, most=pieces.MOST: count
    try:
        orders = plan_night(frames, reduced.resolve(), esorex.pipeline_version(),
                            memory_gb=BUDGET_GB).orders
    finally:
        pieces.count = fewest
    return [o for o in orders if o.stage in ("combine", "stitch")]


def compare(got: Path, ref: Path) -> tuple[float, float]:
    """Fraction of voxels equal to the bit, and the largest relative difference."""
    equal = total = 0
    worst = 0.0
    with fits.open(got) as a, fits.open(ref) as b:
        for ext in ("DATA", "STAT"):
            for z in range(0, a[ext].header["NAXIS3"], 256):
                x = np.asarray(a[ext].section[z:z + 256], float)
                y = np.asarray(b[ext].section[z:z + 256], float)
                both = np.isfinite(x) & np.isfinite(y)
                equal += int((x[both] == y[both]).sum() + (np.isnan(x) & np.isnan(y)).sum())
                total += x.size
                rel = np.abs(x[both] - y[both]) / np.maximum(np.abs(y[both]), 1e-30)
                worst = max(worst, float(rel.max(initial=0.0)))
    return equal / total, worst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("raw", type=Path)
    p.add_argument("reduced", type=Path)
    p.add_argument("--pieces", default="1,3,5,7")
    p.add_argument("--cpus", default="0-1")
    args = p.parse_args()
    cpus = esorex.parse_cpus(args.cpus)
    records, whole_cube = [], None
    with tempfile.TemporaryDirectory(prefix="musedrp-bench-") as tmp:
        for count in map(int, args.pieces.split(",")):
            out = Path(tmp) / f"pieces{count}"
            cube = None
            for order in plan(args.raw, args.reduced, count):
                if order.stage == "stitch":  # its inputs: the pieces just made here
                    order = order.model_copy(update={"inputs": tuple(
                        f.model_copy(update={"path": f.path.replace(
                            str(args.reduced.resolve()), str(out), 1)}) for f in order.inputs)})
                stage = BY_NAME[order.stage]
                result = runner.execute(order, stage.spec, stage.compute(), out, cpus)
                if result.outcome != "succeeded":
                    raise SystemExit(f"{order}: {result.outcome}: {result.reason}")
                run = result.manifest["run"]
                cube = result.directory / "DATACUBE_FINAL.fits"
                rec = {"pieces": count, "stage": order.stage,
                       "piece": order.params.get("piece", ""), "estimate_gb": order.memory_gb,
                       "peak_rss_gb": round(run["peak_rss_bytes"] / 1e9, 3),
                       "wall_s": round(run["wall_s"], 1),
                       "cpu_s": round(run["cpu_user_s"] + run["cpu_sys_s"], 1)}
                records.append(rec)
                print(rec, flush=True)
            if count == 1:
                whole_cube = cube
            elif whole_cube is not None:
                equal, worst = compare(cube, whole_cube)
                records.append({"pieces": count, "stage": "equal to one piece",
                                "piece": f"{equal:.6f} of voxels", "estimate_gb": "",
                                "peak_rss_gb": "", "wall_s": "", "cpu_s": f"max rel {worst:g}"})
                print(records[-1], flush=True)
    rows = [[r["pieces"], r["stage"], r["piece"], r["estimate_gb"], r["peak_rss_gb"], r["wall_s"],
             r["cpu_s"]] for r in records]
    jobs = [r for r in records if r["stage"] == "combine"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for count in sorted({r["pieces"] for r in jobs}):
        mine = [r for r in jobs if r["pieces"] == count]
        ax.scatter([count] * len(mine), [r["peak_rss_gb"] for r in mine], color="tab:blue")
        ax.scatter([count] * len(mine), [r["estimate_gb"] for r in mine], marker="_", s=200,
                   color="tab:red")
    ax.set_xlabel("pieces")
    ax.set_ylabel("peak RSS per combine job [GB]")
    ax.set_title("muse_exp_combine in wavelength pieces (dots), estimates (bars)", fontsize=9)
    write_results("pieces", "A combined cube in wavelength pieces", [
        f"Reduction: `{args.reduced}`; each count planned as the planner cuts the combination "
        "for a budget just above its largest piece's estimate; its combine jobs and stitch run "
        "one after another on CPUs "
        f"{esorex.format_cpus(cpus)}.",
        "\"equal to one piece\": voxels of DATA and STAT equal to the bit (NaN = NaN) and the "
        "largest relative difference of the others, against the cube made at once."],
        ["pieces", "job", "piece [Å]", "estimate [GB]", "peak RSS [GB]", "wall [s]", "CPU [s]"],
        rows, {"records": records}, fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
