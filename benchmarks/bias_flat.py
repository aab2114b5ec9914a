"""Time and peak memory of muse_bias and muse_flat for one IFU, and bias memory vs frames.

Run: ``make bench`` (or ``.venv/bin/python benchmarks/bias_flat.py``).  Writes
``benchmarks/results/bias_flat.{md,json,png}``.  Simulated full-size frames, one IFU,
each recipe pinned to one CPU as the local executor runs it.
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from musedrp import esorex  # noqa: E402
from musedrp.services.bias.spec import SPEC as BIAS  # noqa: E402
from musedrp.services.flat.spec import SPEC as FLAT  # noqa: E402
from musedrp.simulate import night  # noqa: E402
from musedrp.tags import Tag  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def run(recipe, entries, workdir, ifu, params):
    r = esorex.run_recipe(recipe, entries, [f"--nifu={ifu}", *params.to_esorex_args()],
                          workdir, [0], 3600)
    esorex.check(r, [])
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ifu", type=int, default=1)
    p.add_argument("--frames", default="3,5,7,11", help="bias frame counts to measure")
    args = p.parse_args()
    counts = [int(n) for n in args.frames.split(",")]
    frames = night.schedule(date(2014, 8, 1))
    biases = [e for e in frames if e.kind == "bias" and e.readout[0] == "SCI1.0"]
    flats = [e for e in frames if e.kind == "flat" and e.readout[0] == "SCI1.0"][:11]
    rows = []
    with tempfile.TemporaryDirectory(prefix="musedrp-bench-") as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        t0 = time.monotonic()
        bias_paths = [night.write_exposure(e, [args.ifu], 1, raw) for e in biases]
        flat_paths = [night.write_exposure(e, [args.ifu], 1, raw) for e in flats]
        print(f"simulated {len(bias_paths) + len(flat_paths)} frames in "
              f"{time.monotonic() - t0:.0f} s", flush=True)
        master = None
        for n in counts:
            work = Path(tmp) / f"bias{n}"
            r = run("muse_bias", [esorex.SofEntry(q, Tag.BIAS) for q in bias_paths[:n]], work,
                    args.ifu, BIAS.params())
            rows.append(("muse_bias", n, r))
            master = work / "products" / f"MASTER_BIAS-{args.ifu:02d}.fits"
            print(f"muse_bias {n:>2} frames: {r.wall_s:6.1f} s {r.peak_rss_bytes / 1e9:.2f} GB",
                  flush=True)
        entries = [esorex.SofEntry(q, Tag.FLAT) for q in flat_paths]
        r = run("muse_flat", [*entries, esorex.SofEntry(master, Tag.MASTER_BIAS)],
                Path(tmp) / "flat", args.ifu, FLAT.params())
        rows.append(("muse_flat", len(flat_paths), r))
        print(f"muse_flat {len(flat_paths)} frames: {r.wall_s:6.1f} s "
              f"{r.peak_rss_bytes / 1e9:.2f} GB", flush=True)

    records = [{"recipe": rec, "frames": n, "wall_s": r.wall_s, "cpu_user_s": r.cpu_user_s,
                "cpu_sys_s": r.cpu_sys_s, "peak_rss_gb": round(r.peak_rss_bytes / 1e9, 3),
                "model_gb": (BIAS if rec == "muse_bias" else FLAT).memory.estimate_gb(n)}
               for rec, n, r in rows]
    versions = rows[0][2].versions
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bias_flat.json").write_text(json.dumps(
        {"versions": versions, "host": platform.node(), "records": records}, indent=1))
    lines = [
        "# muse_bias and muse_flat, one IFU, full-size simulated frames", "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`  ",
        f"Date: {date.today()}; pipeline {versions}; 1 CPU per recipe (`taskset`, "
        "`OMP_NUM_THREADS=1`); files in page cache.", "",
        "| recipe | frames | wall [s] | user [s] | sys [s] | peak RSS [GB] | model [GB] |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ] + [f"| {r['recipe']} | {r['frames']} | {r['wall_s']:.1f} | {r['cpu_user_s']:.1f} | "
         f"{r['cpu_sys_s']:.1f} | {r['peak_rss_gb']:.2f} | {r['model_gb']:.2f} |" for r in records]
    (RESULTS / "bias_flat.md").write_text("\n".join(lines) + "\n")

    bias = [r for r in records if r["recipe"] == "muse_bias"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["frames"] for r in bias], [r["peak_rss_gb"] for r in bias], "o", label="measured")
    xs = range(1, max(counts) + 2)
    ax.plot(xs, [BIAS.memory.estimate_gb(n) for n in xs], "-", label="stage memory model")
    ax.set_xlabel("bias frames (one IFU)")
    ax.set_ylabel("peak RSS [GB]")
    ax.set_title("muse_bias --nifu=1 peak memory")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "bias_flat.png", dpi=90)
    print((RESULTS / "bias_flat.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
