"""Human-readable plans and summaries."""

import re
from collections import Counter, defaultdict
from pathlib import Path

from musedrp.executor import describe
from musedrp.planner import Plan
from musedrp.runner import JobResult, headline_qc
from musedrp.tags import STATIC_TAGS
from musedrp.topology import BY_NAME


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def plan_text(plan: Plan, raw_dir: Path) -> str:
    """The calibration plan: every job with its inputs, every frame with its fate."""
    lines = [f"Calibration plan for {raw_dir}", ""]
    lines += ["Decisions:"] + [f"  - {d}" for d in plan.decisions] + [""]
    lines.append(f"Jobs ({len(plan.orders)}):")
    for o in plan.orders:
        lines.append(f"  {describe(o)}  {o.recipe}  job {o.job_key}  "
                     f"~{o.memory_gb:.1f} GB  {o.setup}  night {o.night}")
        counts = Counter(str(f.tag) for f in o.inputs
                         if not f.job_key and f.tag not in STATIC_TAGS)
        if counts:
            lines.append("      raw: " + ", ".join(f"{n} {t}" for t, n in counts.items()))
        for f in o.inputs:
            if f.job_key:
                lines.append(f"      {f.tag}: {Path(f.path).name} from job {f.job_key}")
            elif f.tag in STATIC_TAGS:
                lines.append(f"      {f.tag}: {Path(f.path).name} (static)")
    lines += ["", "Frames:"]
    for f in sorted(plan.frames, key=lambda f: (f.mjd, f.name)):
        status, why = plan.status(f)
        what = f"{f.tag or '?'}"
        detail = ("jobs " + ", ".join(why)) if status == "used" else "; ".join(why)
        lines.append(f"  {f.name:<38} {what:<10} {status:<12} {detail}")
    return "\n".join(lines) + "\n"


def plan_record(plan: Plan, raw_dir: Path) -> dict:
    """The plan as data (``OUT/plan.json``), for ``musedrp report``."""
    return {
        "raw_dir": str(raw_dir), "decisions": plan.decisions,
        "orders": [o.model_dump(mode="json") for o in plan.orders],
        "frames": [{"name": f.name, "tag": str(f.tag or ""), "night": f.night,
                    "status": status, "why": why}
                   for f in sorted(plan.frames, key=lambda f: (f.mjd, f.name))
                   for status, why in [plan.status(f)]],
    }


def frame_summary(plan: Plan) -> list[str]:
    """Frame counts by status, with the reasons grouped."""
    by_status: dict[str, Counter[str]] = defaultdict(Counter)
    for f in plan.frames:
        status, why = plan.status(f)
        key = "" if status == "used" else f"{f.tag or '?'}: {why[0]}"
        by_status[status][key] += 1
    total = {s: sum(c.values()) for s, c in by_status.items()}
    lines = [f"Frames: {len(plan.frames)} classified; " + ", ".join(
        f"{total.get(s, 0)} {s}" for s in ("used", "rejected", "unused", "unclassified"))]
    for status in ("rejected", "unclassified", "unused"):
        for reason, n in sorted(by_status.get(status, Counter()).items()):
            lines.append(f"  {status:<12} {n:>3} x {reason}")
    return lines


def run_summary(results: dict[str, JobResult], out: Path, elapsed_s: float) -> list[str]:
    outcomes = Counter(r.outcome for r in results.values())
    lines = [f"Jobs: {len(results)} in {elapsed_s:.0f} s: " + ", ".join(
        f"{outcomes.get(k, 0)} {k}" for k in ("succeeded", "cached", "failed", "skipped"))]
    for r in sorted(results.values(), key=lambda r: (r.order.stage, r.order.ifu or 0)):
        o = r.order
        if r.outcome not in ("succeeded", "cached"):
            lines.append(f"  {r.outcome.upper()} {describe(o)}: {r.reason.splitlines()[0]}")
            if (r.directory / "esorex.log").exists():
                lines.append(f"      log: {r.directory / 'esorex.log'}")
            continue
        qc = headline_qc(BY_NAME[o.stage].spec, r)
        run = r.manifest.get("run", {})
        lines.append(f"  {describe(o)}  {run.get('wall_s', 0):.1f} s  "
                     f"{run.get('peak_rss_bytes', 0) / 1e9:.2f} GB  "
                     f"{run.get('n_warnings', 0)} warnings  -> {r.directory.relative_to(out)}")
        grouped: dict[str, list[str]] = defaultdict(list)
        for k, v in qc.items():  # QC BIAS MASTER1 RON ... MASTER4 RON -> one line
            grouped[re.sub(r"(?<=[A-Z])\d(?= )", "n", k)].append(_fmt(v))
        lines += [f"      {k} = {', '.join(v)}" for k, v in grouped.items()]
    return lines
