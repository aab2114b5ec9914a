"""Human-readable plans and summaries."""

import re
from collections import Counter, defaultdict
from pathlib import Path

from musedrp.executor import OK, describe
from musedrp.planner import Plan
from musedrp.runner import JobResult, headline_qc
from musedrp.tags import STATIC_TAGS, Tag
from musedrp.topology import BY_NAME


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def plan_text(plan: Plan, raw_dir: Path, memory_gb: float, memory_source: str) -> str:
    """The calibration plan: every job with its inputs, every frame with its fate.

    ``memory_gb`` is the budget it was made for, ``memory_source`` where that came from
    (``--memory``, ``85 % of available``)."""
    lines = [f"Calibration plan for {raw_dir}, memory budget {memory_gb:.1f} GB "
             f"({memory_source})", ""]
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


def plan_record(plan: Plan, raw_dir: Path, memory_gb: float) -> dict:
    """The plan as data (``OUT/plan.json``, ``musedrp plan --json``), for ``musedrp report``."""
    return {
        "raw_dir": str(raw_dir), "memory_budget_gb": memory_gb, "decisions": plan.decisions,
        "orders": [o.model_dump(mode="json") for o in plan.orders],
        "frames": [{"name": f.name, "tag": str(f.tag or ""), "night": f.night,
                    "status": status, "why": why}
                   for f in sorted(plan.frames, key=lambda f: (f.mjd, f.name))
                   for status, why in [plan.status(f)]],
    }


def frame_summary(plan: Plan) -> list[str]:
    """Frame counts by status, with the reasons grouped; each unclassified file named."""
    by_status: dict[str, Counter[str]] = defaultdict(Counter)
    for f in plan.frames:
        status, why = plan.status(f)
        key = "" if status == "used" else f"{f.tag or f.name}: {why[0]}"
        by_status[status][key] += 1
    total = {s: sum(c.values()) for s, c in by_status.items()}
    lines = [f"Frames: {len(plan.frames)} classified; " + ", ".join(
        f"{total.get(s, 0)} {s}" for s in ("used", "rejected", "unused", "unclassified"))]
    for status in ("rejected", "unclassified", "unused"):
        for reason, n in sorted(by_status.get(status, Counter()).items()):
            count = "" if status == "unclassified" and n == 1 else f"{n:>3} x "
            lines.append(f"  {status:<12} {count}{reason}")
    return lines


def missing_cubes(plan: Plan, results: dict[str, JobResult]) -> str:
    """One line on the science (OBJECT) exposures without a cube and why; empty if none.

    An exposure's cube is a ``scipost`` job that reads its pixel tables: one that needs a
    job (``scibasic``) made from the exposure."""
    made = [r for r in results.values() if r.order.stage == "scipost"]
    why: Counter[str] = Counter()
    for f in plan.frames:
        if f.tag != Tag.OBJECT:
            continue
        mine = [r for r in made if plan.used.get(f.path, set()) & set(r.order.needs)]
        if any(r.outcome in OK for r in mine):
            continue
        status, notes = plan.status(f)
        if mine:
            notes = [f"scipost {mine[0].outcome}: " + mine[0].reason.partition("\n")[0]]
        elif status == "used":  # its pixel tables are planned, the cube is not
            notes = ["no scipost planned (see the decisions)"]
        why["; ".join(notes)] += 1
    if not why:
        return ""
    return (f"{why.total()} science exposure(s) got no cube: "
            + "; ".join(f"{n} x {reason}" for reason, n in why.most_common()))


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
