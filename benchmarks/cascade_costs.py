"""Time and peak memory of every stage of a finished reduction, from its manifests.

    .venv/bin/python benchmarks/cascade_costs.py REDUCED_DIR [--name NAME]

Writes ``benchmarks/results/<NAME>.md`` (default ``cascade_costs``): per stage the number of
jobs, wall time (mean and max), CPU time and peak RSS, as measured by the runner; the span from
the first job's start to the last job's end; the largest sum of peak RSS of jobs that ran at
the same time (an upper bound of the recipes' memory at any moment); jobs that did not succeed.
"""

import argparse
import json
import sys
from collections import defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path

from musedrp.topology import STAGES

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("reduced", type=Path)
    p.add_argument("--name", default="cascade_costs")
    args = p.parse_args()
    runs = defaultdict(list)
    spans = []  # (start, end, peak RSS) of every job
    for path in args.reduced.glob("products/*/*/*/*/manifest.json"):
        m = json.loads(path.read_text())
        runs[m["stage"]].append(m["run"])
        end = datetime.fromisoformat(m["written"])
        spans.append((end - timedelta(seconds=m["run"]["wall_s"]), end, m["run"]["peak_rss_bytes"]))
    failed = sorted(f"{p.parent.name} ({p.parts[-4]}): {p.read_text().strip().splitlines()[0]}"
                    for p in args.reduced.glob("products/*/*/*/*/error.txt"))
    lines = [f"# Cost of each stage, from the manifests of `{args.reduced.name}`", "",
             f"Command: `{' '.join(['python', *sys.argv])}`  ",
             f"Date: {date.today()}; each job pinned to its CPU set. CPUs: the most a job of "
             "the stage ended with, as its manifest records (standard and scipost get more "
             "than one).", "",
             "| stage | jobs | wall mean [s] | wall max [s] | CPU mean [s] | CPUs | "
             "peak RSS max [GB] |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for stage in (s.name for s in STAGES):
        rs = runs.get(stage)
        if not rs:
            continue
        walls = [r["wall_s"] for r in rs]
        cpu = [r["cpu_user_s"] + r["cpu_sys_s"] for r in rs]
        lines.append(f"| {stage} | {len(rs)} | {sum(walls) / len(rs):.1f} | {max(walls):.1f} | "
                     f"{sum(cpu) / len(rs):.1f} | {max(len(r['cpus']) for r in rs)} | "
                     f"{max(r['peak_rss_bytes'] for r in rs) / 1e9:.2f} |")
    total = sum(r["cpu_user_s"] + r["cpu_sys_s"] for rs in runs.values() for r in rs)
    lines += ["", f"Total CPU time of all jobs: {total / 60:.1f} min."]
    if spans:
        elapsed = max(e for _, e, _ in spans) - min(s for s, _, _ in spans)
        # at each job's start, the sum over the jobs running then
        peak = max(sum(r for s, e, r in spans if s <= t < e) for t, _, _ in spans)
        lines += [f"From the first job's start to the last job's end: "
                  f"{elapsed.total_seconds() / 60:.1f} min.",
                  f"Largest sum of peak RSS of jobs running at once: {peak / 1e9:.2f} GB."]
    lines += ["", f"Jobs that did not succeed: {len(failed)}", *(f"- {f}" for f in failed)]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
