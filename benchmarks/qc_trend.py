"""QC trending on a longer simulated history: does the rule find the planted drifts, and how
often does it flag a value on the undrifted nights?

    .venv/bin/python benchmarks/qc_trend.py [--nights 16] [--ifus 1-2] [--work DIR]

Simulates ``--nights`` monitoring nights (3 biases and 3 lamp flats per night and IFU) with
two drifts (IFU 1 port 3 read noise x1.25 from night 12, IFU 2 throughput x0.85 from night
14), reduces them with ``musedrp reduce`` (the real recipes), and judges every QC value with
``musedrp.qctrend``.  A flagged value is a *detection* when a planted drift explains it
(``Drift.explains``: its IFU, from its first night, the keys it moves), a *false positive*
otherwise.  ``--work`` keeps the frames and products: a second run only judges.
Writes ``results/qc_trend.{md,json,png}``.
"""

import argparse
import contextlib
import json
import tempfile
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import matplotlib.pyplot as plt

from musedrp import cli, qctrend
from musedrp.cli import parse_ifus
from musedrp.registry import Registry
from musedrp.simulate.history import Drift, simulate_history

from common import write_results

FIRST = date(2014, 8, 1)
HEADLINE = {"ron": "QC BIAS MASTER3 RON", "throughput": "QC FLAT MASTER INTFLUX"}


def explained(v: qctrend.Verdict, drifts: list[Drift]) -> bool:
    r = v.record
    return any(d.explains(r.stage, r.ifu, r.port, r.key, r.night) for d in drifts)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nights", type=int, default=16)
    p.add_argument("--ifus", type=parse_ifus, default=parse_ifus("1-2"))
    p.add_argument("--work", type=Path, default=None)
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="qc-trend-"))
    raw, out = work / "raw", work / "out"
    drifts = [Drift("ron", args.ifus[0], 1.25, FIRST + timedelta(days=11), port=3),
              Drift("throughput", args.ifus[-1], 0.85, FIRST + timedelta(days=13))]
    timings = work / "timings.json"  # of the first run, which simulated and reduced
    if not timings.exists():
        t0 = time.monotonic()
        simulate_history(raw, FIRST, args.nights, args.ifus, drifts)
        t_sim = time.monotonic() - t0
        with open(work / "reduce.log", "w") as log, contextlib.redirect_stdout(log):
            if cli.main(["reduce", str(raw), "-o", str(out)]) != 0:
                raise SystemExit(f"the reduction failed: {work / 'reduce.log'}")
        timings.write_text(json.dumps([t_sim, time.monotonic() - t0 - t_sim]))
    t_sim, t_reduce = json.loads(timings.read_text())
    registry = Registry.for_output(out)
    t1 = time.monotonic()
    verdicts = qctrend.from_registry(registry)
    t_judge = time.monotonic() - t1
    judged = [v for v in verdicts if v.judged]
    clean = [v for v in judged if not explained(v, drifts)]
    false = [v for v in clean if v.flagged]
    rows = []
    for d in drifts:
        key = HEADLINE[d.what].replace("MASTER3", f"MASTER{d.port}")
        on = [v for v in judged if v.record.key == key and v.record.ifu == d.ifu
              and v.record.night >= d.first.isoformat()]
        rows.append([f"{d.what} IFU {d.ifu}" + (f" port {d.port}" if d.port else "")
                     + f" x{d.factor} from {d.first}", key, len(on), sum(v.flagged for v in on),
                     min((abs(v.z or 0) for v in on), default=0.0)])
    by_stage = Counter(v.record.stage for v in clean)
    false_by_stage = Counter(v.record.stage for v in false)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for ax, d in zip(axes, drifts, strict=True):
        key = HEADLINE[d.what].replace("MASTER3", f"MASTER{d.port}")
        for ifu in args.ifus:
            vs = [v for v in verdicts if v.record.key == key and v.record.ifu == ifu]
            x = [date.fromisoformat(v.record.night).toordinal() - FIRST.toordinal() + 1
                 for v in vs]
            ax.plot(x, [v.record.value for v in vs], "o-", ms=3, label=f"IFU {ifu}")
            band = [(xi, *v.band) for xi, v in zip(x, vs, strict=True) if v.band]
            if band:
                bx, lo, hi = zip(*band, strict=True)
                ax.fill_between(bx, lo, hi, step="mid", alpha=0.15)
            bad = [(xi, v.record.value) for xi, v in zip(x, vs, strict=True) if v.flagged]
            if bad:
                ax.plot(*zip(*bad, strict=True), "x", color="tab:red", ms=9, mew=2)
        ax.axvline((d.first - FIRST).days + 0.5, color="grey", ls=":")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("night")
        ax.legend(fontsize=8)
    notes = [
        f"{args.nights} simulated monitoring nights, IFUs {args.ifus}, 3 biases + 3 flats per "
        f"night and IFU; simulation {t_sim:.0f} s, reduction {t_reduce:.0f} s (2 cores shared "
        "with other work: timings are noisy), judging every value "
        f"{t_judge:.2f} s. Rule: {qctrend.RULE}.",
        "",
        f"**Undrifted values judged: {len(clean)}; flagged: {len(false)} "
        f"(false-positive rate {len(false) / max(1, len(clean)):.2%}).** By stage: "
        + ", ".join(f"{s} {false_by_stage[s]} of {n}" for s, n in sorted(by_stage.items()))
        + ".",
        *(f"- false positive: {v}" for v in false[:20]),
        "",
        "Planted drifts (headline key, drifted nights judged, flagged, smallest |z|):",
    ]
    print(write_results(
        "qc_trend", "QC trending: planted drifts found, false positives on undrifted nights",
        notes, ["drift", "key", "nights judged", "flagged", "smallest |z|"], rows,
        {"nights": args.nights, "ifus": args.ifus, "rule": qctrend.RULE,
         "undrifted_judged": len(clean), "false_positives": [v.as_dict() for v in false],
         "drifts": rows, "simulate_s": t_sim, "reduce_s": t_reduce, "judge_s": t_judge},
        fig))


if __name__ == "__main__":
    main()
