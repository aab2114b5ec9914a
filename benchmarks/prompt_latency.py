"""Prompt latency: from the last frame of a bias template in the store to its master stored.

    .venv/bin/python benchmarks/prompt_latency.py [--reps 3] [--quiet-s 1] [--store directory]

A one-IFU bias template (11 full-size simulated frames) is submitted to the services as the
observatory would (upload, then ``frame.arrived``): ingest, planner and the bias worker
(pinned to CPU 0) on a RabbitMQ vhost, a ``weed mini`` S3 server (``--store directory``: a
directory, as ``musedrp serve`` keeps the objects on one machine) and a PostgreSQL database
of their own (``overhead.services``).  Latency runs from the moment the last frame is stored and
announced to the bias job's ``succeeded`` in the registry (its master and manifest stored);
against it, bare ``esorex muse_bias`` on the same frames (``taskset -c 0``), alternating in
the same run.  Writes ``results/prompt_latency.{md,json,png}`` (``--name`` another stem).
"""

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
from overhead import FRAMES, bare, services

from common import timed, write_frames, write_results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quiet-s", type=float, default=1.0,
                   help="the planner's quiet period (MUSEDRP_PLAN_QUIET_S; 10 s by default)")
    p.add_argument("--store", choices=("s3", "directory"), default="s3",
                   help="where the objects live: a weed mini S3 server, or a directory")
    p.add_argument("--name", default="prompt_latency", help="results file stem")
    args = p.parse_args()
    records = []
    with tempfile.TemporaryDirectory(prefix="musedrp-bench-") as tmp:
        raw = Path(tmp) / "raw"
        gen_s, frames = timed(lambda: {"BIAS": write_frames("bias", FRAMES, [1], raw)})
        print(f"simulated {FRAMES} one-IFU biases in {gen_s:.0f} s", flush=True)
        for rep in range(args.reps):
            for path in (("esorex", "services") if rep % 2 == 0 else ("services", "esorex")):
                work = Path(tmp) / f"{path}-{rep}"
                if path == "esorex":
                    rec = {"latency_s": bare(frames, work, ("bias",))["wall_s"]}
                else:
                    rec = services(raw, work, args.quiet_s, ("bias",), args.store == "s3")
                    rec["latency_s"] = rec["wall_s"] - rec["upload_s"]
                records.append({"rep": rep, "path": path, **rec})
                print(records[-1], flush=True)
                shutil.rmtree(work, ignore_errors=True)
    esorex_s = {r["rep"]: r["latency_s"] for r in records if r["path"] == "esorex"}
    served = [r for r in records if r["path"] == "services"]
    for r in served:
        r["ratio"] = r["latency_s"] / esorex_s[r["rep"]]
    summary = {"median_esorex_s": statistics.median(esorex_s.values()),
               "median_latency_s": statistics.median(r["latency_s"] for r in served),
               "median_ratio": statistics.median(r["ratio"] for r in served),
               "median_recipe_s": statistics.median(r["recipe_s"] for r in served)}
    rows = [(r["rep"] + 1, round(esorex_s[r["rep"]], 1), round(r["latency_s"], 1),
             round(r["recipe_s"], 1), round(r["latency_s"] - r["recipe_s"], 1),
             f"{r['ratio']:.2f}") for r in served]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    reps = [r["rep"] + 1 for r in served]
    ax.bar([x - 0.2 for x in reps], [esorex_s[r["rep"]] for r in served], 0.4,
           label="bare esorex muse_bias")
    ax.bar([x + 0.2 for x in reps], [r["latency_s"] for r in served], 0.4,
           label="last frame stored -> master stored")
    ax.set_xticks(reps)
    ax.set_xlabel("repetition")
    ax.set_ylabel("seconds")
    ax.set_title(f"Prompt latency, one IFU, {FRAMES} biases")
    ax.legend()
    notes = [f"One IFU, {FRAMES} full-size simulated biases; the services ran ingest, planner "
             f"and the bias worker (CPU 0), the objects in "
             f"{'a weed mini S3 server' if args.store == 's3' else 'a directory'}; the "
             f"planner's quiet period was {args.quiet_s:g} s "
             "(part of the latency: the planner waits that long after the last frame). "
             "'recipe' is esorex's wall time inside the worker (registry `wall_s`), 'rest' "
             "the latency outside it: classification, the quiet period, planning, the "
             "download of the 11 frames, upload of the products and the messages. Ratios "
             "are side by side; times vary with the host's load.",
             "", f"Median: bare esorex {summary['median_esorex_s']:.1f} s, latency "
             f"{summary['median_latency_s']:.1f} s, ratio {summary['median_ratio']:.2f}."]
    print(write_results(args.name, "Prompt latency: last bias stored to master stored",
                        notes, ["repetition", "bare esorex [s]", "latency [s]",
                                "recipe in the worker [s]", "rest [s]", "ratio"], rows,
                        {"records": records, "summary": summary, "quiet_s": args.quiet_s,
                         "store": args.store},
                        fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
