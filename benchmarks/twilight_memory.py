"""Peak memory and time of muse_twilight versus the number of skyflats and IFUs.

Run after a reduction of a simulated night (it reuses the night's calibrations):

    .venv/bin/python benchmarks/twilight_memory.py RAW_DIR REDUCED_DIR [--ifus 1,1-3]

Writes ``benchmarks/results/twilight_memory.{md,json,png}`` and the least-squares fit of
``peak = base + per_ifu * IFUs + per_frame * skyflats`` that the twilight stage spec
declares.  ``--from-json`` redoes the fit and the report from the saved measurements.
"""

import argparse
import json
import sys
import tempfile
from datetime import date
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from musedrp import esorex  # noqa: E402
from musedrp.cli import parse_ifus  # noqa: E402
from musedrp.frames import classify_dir  # noqa: E402
from musedrp.services.twilight.spec import SPEC  # noqa: E402
from musedrp.tags import Tag  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CALIBS = ("MASTER_BIAS", "MASTER_FLAT", "TRACE_TABLE", "WAVECAL_TABLE")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("raw", type=Path)
    p.add_argument("reduced", type=Path)
    p.add_argument("--ifus", default="1;1-3", help="IFU sets separated by ';'")
    p.add_argument("--skyflats", default="3,5,7")
    p.add_argument("--from-json", action="store_true")
    args = p.parse_args()
    if args.from_json:
        saved = json.loads((RESULTS / "twilight_memory.json").read_text())
        return report(saved["records"], saved["command"])
    return report(measure(args), " ".join(["python", *sys.argv]))


def measure(args: argparse.Namespace) -> list[dict]:
    frames, _ = classify_dir(args.raw)
    skyflats = sorted((f for f in frames if f.tag == Tag.SKYFLAT), key=lambda f: f.mjd)
    geometry = next(f for f in frames if f.tag == Tag.GEOMETRY_TABLE)
    records = []
    for ifus in (parse_ifus(s) for s in args.ifus.split(";")):
        calibs = [esorex.SofEntry(q, Tag(c)) for ifu in ifus for c in CALIBS
                  for q in args.reduced.glob(f"products/*/*/*/*/{c}-{ifu:02d}.fits")]
        for n in (int(x) for x in args.skyflats.split(",")):
            sof = [esorex.SofEntry(Path(f.path), Tag.SKYFLAT) for f in skyflats[:n]]
            sof += [*calibs, esorex.SofEntry(Path(geometry.path), Tag.GEOMETRY_TABLE)]
            with tempfile.TemporaryDirectory(prefix="musedrp-bench-") as tmp:
                r = esorex.run_recipe("muse_twilight", sof, SPEC.params().to_esorex_args(),
                                      Path(tmp), [0], 3600)
                esorex.check(r, ["TWILIGHT_CUBE.fits"])
            rec = {"ifus": len(ifus), "skyflats": n, "wall_s": r.wall_s,
                   "peak_rss_gb": round(r.peak_rss_bytes / 1e9, 3)}
            records.append(rec)
            print(rec, flush=True)
    return records


def model(fit: dict, ifus: int, skyflats: int) -> float:
    return fit["base_gb"] + fit["per_ifu_gb"] * ifus + fit["per_frame_gb"] * skyflats


def report(records: list[dict], command: str) -> int:
    a = np.array([[1.0, r["ifus"], r["skyflats"]] for r in records])
    y = np.array([r["peak_rss_gb"] for r in records])
    base, per_ifu, per_frame = np.linalg.lstsq(a, y, rcond=None)[0]
    fit = {"base_gb": round(base, 3), "per_ifu_gb": round(per_ifu, 3),
           "per_frame_gb": round(per_frame, 3)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "twilight_memory.json").write_text(json.dumps(
        {"command": command, "records": records, "fit": fit}, indent=1))
    lines = ["# muse_twilight peak memory vs skyflats and IFUs", "",
             f"Command: `{command}`  ",
             f"Date: {date.today()}; full-size simulated frames, 1 CPU, OMP_NUM_THREADS=1.", "",
             "| IFUs | skyflats | wall [s] | peak RSS [GB] | fit [GB] |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        lines.append(f"| {r['ifus']} | {r['skyflats']} | {r['wall_s']:.1f} | "
                     f"{r['peak_rss_gb']:.2f} | {model(fit, r['ifus'], r['skyflats']):.2f} |")
    lines += ["", f"Fit: peak = {base:.2f} + {per_ifu:.3f} x IFUs + {per_frame:.3f} x skyflats "
              f"GB; extrapolated to 24 IFUs and 7 skyflats: {model(fit, 24, 7):.1f} GB "
              "(not measured)."]
    (RESULTS / "twilight_memory.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for n_ifus in sorted({r["ifus"] for r in records}):
        rs = [r for r in records if r["ifus"] == n_ifus]
        xs = [r["skyflats"] for r in rs]
        ax.plot(xs, [r["peak_rss_gb"] for r in rs], "o", label=f"{n_ifus} IFU(s) measured")
        ax.plot(xs, [model(fit, n_ifus, x) for x in xs], "-", lw=0.8)
    ax.set_xlabel("skyflats")
    ax.set_ylabel("peak RSS [GB]")
    ax.set_title("muse_twilight peak memory")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "twilight_memory.png", dpi=90)
    print((RESULTS / "twilight_memory.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
