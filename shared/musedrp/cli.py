"""``musedrp simulate | plan | reduce``: the whole system on one machine, no servers."""

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TextIO

from musedrp import esorex, report
from musedrp.errors import ConfigError, NoWork
from musedrp.executor import OK, LocalExecutor, available_memory_gb
from musedrp.frames import classify_dir
from musedrp.planner import Plan, plan_night
from musedrp.registry import Registry


def parse_ifus(text: str) -> list[int]:
    """``1-24``, ``1,7`` or ``1-3,13`` -> sorted IFU numbers, each within 1..24."""
    ifus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            ifus.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not an IFU list: {text!r} (e.g. 1-24 or 1,7)") from None
    if not ifus or min(ifus) < 1 or max(ifus) > 24:
        raise argparse.ArgumentTypeError(f"IFUs must lie within 1..24: {text!r}")
    return sorted(ifus)


def positive(kind: Callable[[str], float], message: str) -> Callable[[str], float]:
    """An argparse type: ``kind(text)`` if it is a finite number above 0, else ``message``."""
    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"{message}, not {text!r}")
        return value
    return convert


def cmd_simulate(args: argparse.Namespace) -> int:
    from musedrp.simulate.night import simulate_night

    t0 = time.monotonic()

    def progress(i: int, n: int, name: str) -> None:
        if i == n or i % 10 == 0:
            print(f"  [{i:>3}/{n}] {name}  (t+{time.monotonic() - t0:.0f} s)", flush=True)

    print(f"Simulating night {args.date} with IFUs {args.ifus} (seed {args.seed}) "
          f"into {args.out_dir}", flush=True)
    simulate_night(args.out_dir, args.ifus, args.seed, args.date, progress=progress,
                   compress=args.compress)
    print(f"Done in {time.monotonic() - t0:.0f} s; truth in {args.out_dir / 'truth.json'}")
    return 0


def memory_budget(args: argparse.Namespace) -> tuple[float, str]:
    """The budget in GB and where it comes from.  Read it once per command: the planner and
    the executor must work with the same number."""
    if args.memory is not None:
        return args.memory, "--memory"
    return round(0.85 * available_memory_gb(), 1), "85 % of available"


def cpu_set(n: int | None) -> list[int]:
    """The first ``n`` CPUs this process may use (all of them by default).

    Raises
    ------
    ConfigError
        Fewer than ``n`` CPUs are available.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if n and n > len(cpus):
        raise ConfigError(f"--cpus {n}: this process may use only {len(cpus)} CPU(s) "
                          f"({esorex.format_cpus(cpus)})")
    return cpus[:n]


def _plan(args: argparse.Namespace, out: Path, version: str, memory_gb: float,
          notes: TextIO | None = None) -> Plan:
    frames = []
    for directory in (args.raw_dir, *([args.static_dir] if args.static_dir else [])):
        if not directory.is_dir():
            raise ConfigError(f"no such directory: {directory}")
        found, ignored = classify_dir(directory)
        frames += found
        for path, why in ignored:
            print(f"ignored {path}: {why}", file=notes)
    if not frames:
        raise NoWork(f"no FITS files in {args.raw_dir}")
    return plan_night(frames, out.resolve(), version, args.ifus, memory_gb=memory_gb)


def cmd_plan(args: argparse.Namespace) -> int:
    notes = sys.stderr if args.json else None  # --json: nothing but the record on stdout
    try:
        esorex.esorex_path()
    except ConfigError:  # planning runs nothing: it needs the version, not esorex
        version = esorex.EXPECTED_VERSION
        print(f"job keys assume MUSE pipeline {version}: esorex was not found on PATH",
              file=notes)
    else:
        version = esorex.pipeline_version()
    memory, source = memory_budget(args)
    plan = _plan(args, args.out, version, memory, notes)
    if args.json:
        print(json.dumps(report.plan_record(plan, args.raw_dir, memory), indent=1))
    else:
        print(report.plan_text(plan, args.raw_dir, memory, source), end="")
    return 0


def cmd_reduce(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    out: Path = args.out
    cpus, version = cpu_set(args.cpus), esorex.pipeline_version()  # ConfigError before any output
    memory, source = memory_budget(args)
    out.mkdir(parents=True, exist_ok=True)
    plan = _plan(args, out, version, memory)
    (out / "plan.txt").write_text(report.plan_text(plan, args.raw_dir, memory, source))
    (out / "plan.json").write_text(json.dumps(report.plan_record(plan, args.raw_dir, memory),
                                              indent=1))
    registry = Registry.for_output(out, args.db)
    statuses = {f.path: (s, "; ".join(w)) for f in plan.frames for s, w in [plan.status(f)]}
    registry.record_frames(plan.frames, statuses)
    print("\n".join(report.frame_summary(plan)))
    print(f"Plan: {len(plan.orders)} jobs (details in {out / 'plan.txt'}); running on CPUs "
          f"{esorex.format_cpus(cpus)} within {memory:.1f} GB", flush=True)
    executor = LocalExecutor(out, cpus, memory, registry, args.scratch,
                             report=lambda line: print(line, flush=True),
                             prune=args.prune_pixtables)
    results = executor.run(plan.orders)
    print()
    print("\n".join(report.run_summary(results, out, time.monotonic() - t0)))
    print(f"Products under {out / 'products'}; registry {registry.engine.url}")
    print(f"QC report: musedrp report {out}")
    registry.close()
    failed = [r for r in results.values() if r.outcome not in OK]
    if missing := report.missing_cubes(plan, results):
        print(missing)
    return 1 if failed or missing else 0


def cmd_report(args: argparse.Namespace) -> int:
    from musedrp import qcreport

    if args.services:
        from_services(args.out_dir, args.state_dir)
    try:
        path = qcreport.write(args.out_dir, args.html)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from err
    print(f"wrote {path}")
    return 0


def parse_nights(text: str) -> tuple[str, str]:
    """``2014-08-03`` or ``2014-08-01:2014-08-10`` -> (first, last)."""
    first, _, last = text.partition(":")
    try:
        return date.fromisoformat(first).isoformat(), date.fromisoformat(last or first).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a night or range: {text!r} (e.g. 2014-08-03 or 2014-08-01:2014-08-10)") from None


def cmd_qc(args: argparse.Namespace) -> int:
    from musedrp import qctrend

    if args.db is None and not (args.out_dir / "registry.sqlite").exists():
        raise ConfigError(f"no registry in {args.out_dir}: is it the output of `musedrp "
                          "reduce`? (or give --db)")
    registry = Registry.for_output(args.out_dir, args.db)
    first, last = args.night or (registry.last_qc_night() or "",) * 2
    verdicts = qctrend.from_registry(registry, first, last) if first else []
    registry.close()
    flagged = [v for v in verdicts if v.flagged]
    judged = sum(v.judged for v in verdicts)
    if args.json:
        print(json.dumps({"first": first, "last": last, "values": len(verdicts),
                          "judged": judged, "rule": qctrend.RULE,
                          "flagged": [v.as_dict() for v in flagged]}, indent=1))
        return 0
    if not verdicts:
        print(f"no QC values on nights {first} to {last}" if first else
              "no product with QC in the registry")
        return 0
    print(f"nights {first} to {last}: {len(verdicts)} QC values, {judged} judged against their "
          f"history ({len(verdicts) - judged} with fewer than {qctrend.MIN_HISTORY} earlier "
          f"nights), {len(flagged)} flagged")
    for v in flagged:
        print(f"  {v}")
    return 0


def from_services(out: Path, state_dir: Path) -> None:
    """Materialise what the report reads from a services deployment (registry + bucket) into
    ``out``, laid out as ``musedrp reduce`` leaves it."""
    from sqlalchemy import make_url

    from musedrp.deployment import materialise
    from musedrp.registry import Registry
    from musedrp.serve import settings_for
    from musedrp.storage import open_store, where

    s = settings_for(state_dir)
    store = where(s)
    registry = Registry.connect(s.db_url)
    try:
        print(f"Reading the deployment: registry {make_url(s.db_url).render_as_string()}, "
              f"{store}", flush=True)  # the URL's password hidden
        materialise(registry, open_store(s), out, f"raw/ of the {store}")
    finally:
        registry.close()


def cmd_service(args: argparse.Namespace) -> int:
    from musedrp.serve import SERVICES

    args.name = args.name or os.environ.get("MUSEDRP_SERVICE", "")  # set in service images
    if args.name not in SERVICES:
        raise ConfigError(f"which service? one of {', '.join(SERVICES)} "
                          "(argument or MUSEDRP_SERVICE)")
    if args.name == "ingest":
        from musedrp.services.ingest.service import main
        return main()
    if args.name == "planner":
        from musedrp.services.planner.service import main
        return main()
    from musedrp.services.worker import main as worker_main
    return worker_main(args.name)


def cmd_health(args: argparse.Namespace) -> int:
    """0 when this container's service answers on its metrics port and its consume loop goes
    round (image HEALTHCHECK, Kubernetes probes)."""
    from musedrp.service import health
    from musedrp.settings import Settings

    settings = Settings.load()
    if problem := health(settings.metrics_port, settings.liveness_s):
        print(f"musedrp: {problem}", file=sys.stderr)
        return 1
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from musedrp.serve import serve

    return serve(args.state_dir, s3=args.s3)


def cmd_submit(args: argparse.Namespace) -> int:
    from musedrp.serve import settings_for, submit

    print(f"Submitting {args.raw_dir} (upload, then frame.arrived per file)", flush=True)
    n = submit(args.raw_dir, settings_for(args.state_dir),
               report=lambda line: print(line, flush=True))
    print(f"{n} files submitted; follow with `musedrp status --state-dir {args.state_dir}`")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from musedrp.serve import settings_for, status

    print("\n".join(status(settings_for(args.state_dir))))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from musedrp.broker import replay
    from musedrp.serve import settings_for

    reasons = replay(settings_for(args.state_dir), args.queue, args.max)
    for reason in reasons:
        print(f"replayed: {reason.splitlines()[0] if reason else '?'}")
    print(f"{len(reasons)} dead letter(s) of {args.queue} sent back")
    return 0


EXIT_CODES = """exit status:
  0    every job succeeded or was cached, and every science exposure has its cube
  1    a job failed or was skipped, or a science exposure was left without a cube
  2    bad usage or configuration, or nothing to reduce (no frames, no science)
  130  interrupted (Ctrl-C): the running recipes were stopped"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="musedrp", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="write a synthetic MUSE night of raw frames")
    s.add_argument("out_dir", type=Path)
    s.add_argument("--ifus", type=parse_ifus, default=parse_ifus("1-24"),
                   help="IFUs to write (default 1-24; e.g. 1-3 or 1,7)")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--date", type=date.fromisoformat, default=date(2014, 8, 1),
                   help="the night, as the date of its evening (default 2014-08-01)")
    s.add_argument("--compress", action="store_true",
                   help="write Rice tile-compressed .fits.fz files (lossless, 2.2x smaller)")
    s.set_defaults(func=cmd_simulate)

    for name, helptext in (("plan", "show the jobs and every frame's fate; run nothing"),
                           ("reduce", "plan and run the reduction on this machine")):
        c = sub.add_parser(name, help=helptext, epilog=EXIT_CODES if name == "reduce" else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        c.add_argument("raw_dir", type=Path)
        c.add_argument("-o", "--out", type=Path, default=Path("reduced"),
                       help="output directory (default ./reduced)")
        c.add_argument("--ifus", type=parse_ifus, default=None,
                       help="reduce only these IFUs (default: every IFU in the data)")
        c.add_argument("--static-dir", type=Path, default=None,
                       help="ESO's static calibrations (GEOMETRY_TABLE, LINE_CATALOG, ...), "
                            "if they are not below RAW_DIR")
        c.add_argument("--memory", default=None,
                       type=positive(float, "--memory must be a positive number of GB"),
                       help="memory budget in GB (default: 85%% of what is available)")
        if name == "plan":
            c.add_argument("--json", action="store_true",
                           help="print the plan as data (as reduce writes OUT/plan.json)")
        if name == "reduce":
            c.add_argument("--cpus", default=None,
                           type=positive(int, "--cpus must be a positive integer"),
                           help="number of CPUs to use (default: all this process may use)")
            c.add_argument("--db", default=None,
                           help="registry URL, e.g. postgresql+psycopg://user@host/db "
                                "(default: OUT/registry.sqlite)")
            c.add_argument("--scratch", type=Path, default=None,
                           help="scratch directory for recipe runs (default: system temp)")
            c.add_argument("--prune-pixtables", action="store_true",
                           help="delete pixel tables once every job reading them succeeded "
                                "(they are most of the disk a night takes)")
        c.set_defaults(func=cmd_plan if name == "plan" else cmd_reduce)

    c = sub.add_parser("qc", help="QC values that left the band of their own history",
                       description="Every QC value of every product judged against the same "
                                   "key, IFU and port on earlier nights (rule: docs/qc.md); "
                                   "prints the flagged ones.")
    c.add_argument("out_dir", type=Path, nargs="?", default=Path("reduced"),
                   help="the output directory of `musedrp reduce` (default ./reduced)")
    c.add_argument("--db", default=None, help="registry URL (default OUT_DIR/registry.sqlite)")
    c.add_argument("--night", type=parse_nights, default=None,
                   help="a night or FIRST:LAST (default: the last night with products)")
    c.add_argument("--json", action="store_true", help="print the verdicts as data")
    c.set_defaults(func=cmd_qc)

    from musedrp.serve import SERVICES

    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state-dir", type=Path, default=Path("musedrp-services"),
                       help="where `serve` keeps logs, S3 data and services.env "
                            "(default ./musedrp-services)")
    c = sub.add_parser("report", parents=[state],
                       help="write a self-contained HTML QC report of a reduction")
    c.add_argument("out_dir", type=Path, help="the output directory of `musedrp reduce`; "
                                              "with --services, a local cache to fill")
    c.add_argument("--services", action="store_true",
                   help="report on a services deployment: read its registry and bucket "
                        "(settings of --state-dir and MUSEDRP_* variables) into OUT_DIR first")
    c.add_argument("--html", type=Path, default=None, help="default OUT_DIR/report.html")
    c.set_defaults(func=cmd_report)

    c = sub.add_parser("serve", parents=[state],
                       help="run broker, object store and every service on this machine")
    c.add_argument("--s3", action="store_true",
                   help="keep the objects in a local `weed mini` S3 server rather than the "
                        "directory STATE_DIR/store (ignored if MUSEDRP_S3_ENDPOINT is set)")
    c.set_defaults(func=cmd_serve)
    c = sub.add_parser("submit", parents=[state],
                       help="upload raw files and announce each (as the observatory would)")
    c.add_argument("raw_dir", type=Path)
    c.set_defaults(func=cmd_submit)
    c = sub.add_parser("status", parents=[state], help="queues, jobs and failures")
    c.set_defaults(func=cmd_status)
    c = sub.add_parser("replay", parents=[state],
                       help="send a queue's dead letters back to it, once the cause is fixed")
    c.add_argument("queue", help="e.g. work.bias or ingest")
    c.add_argument("--max", type=positive(int, "--max must be a positive integer"), default=None,
                   help="send back at most this many (default: the letters there at the start; "
                        "one that dies again during the replay is not sent twice)")
    c.set_defaults(func=cmd_replay)
    c = sub.add_parser("service", help="run one service (settings from MUSEDRP_* variables)")
    c.add_argument("name", nargs="?", help=f"one of {', '.join(SERVICES)} "
                                           "(default: MUSEDRP_SERVICE)")
    c.set_defaults(func=cmd_service)
    c = sub.add_parser("health", help="exit 0 if this machine's service answers its metrics "
                                      "port (MUSEDRP_METRICS_PORT) and its consume loop went "
                                      "round within MUSEDRP_LIVENESS_S")
    c.set_defaults(func=cmd_health)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, NoWork) as err:
        print(f"musedrp: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("musedrp: interrupted; running recipes were stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `musedrp qc | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
