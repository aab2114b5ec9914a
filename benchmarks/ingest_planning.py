"""Ingest and planning at scale: header bytes per classified frame, and planning a year.

    .venv/bin/python benchmarks/ingest_planning.py [--ifus 1,3,8,24] [--nights 1,7,30,90,365]
        [--processes 1,2] [--registry sqlite|postgresql] [--name ingest_planning]

Ingest: bias frames with 1 to 24 IFUs are put into a ``weed mini`` S3 server and classified
as the ingest service does (buffered ranged GETs of header blocks): bytes read, GET requests
and time, against the file size.  Planning: a registry (SQLite in a temporary directory, or a
new database on the local PostgreSQL) filled with the frames of N simulated 24-IFU nights
(headers only: no pixels are written), then the planner service timed as it runs, with each
count of planning processes side by side: the first plan (every night, every job new), a
re-plan of every night with nothing new (a restart), a re-plan after one new frame in the
middle night (what a late frame costs: the nights within ``SEARCH_DAYS`` of it), and the issue
after one bias job finished (its dependents only).  Writes ``results/NAME.{md,json,png}``.
"""

import argparse
import contextlib
import io
import logging
import multiprocessing
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import date, datetime, timedelta
from pathlib import Path

import matplotlib.pyplot as plt

from musedrp import s3server, storage
from musedrp.frames import Frame, classify, classify_dir, classify_header
from musedrp.messages import Envelope, FrameRegistered, JobFinished
from musedrp.planner import SEARCH_DAYS
from musedrp.registry import Registry
from musedrp.service import cpu_count
from musedrp.services.planner.service import ALL, Planner, split
from musedrp.settings import Settings
from musedrp.simulate import detector, night
from musedrp.simulate.static import write_static
from musedrp.tags import STATIC_TAGS, Tag

from common import NIGHT, fresh_database, timed, write_results


def ingest(counts: list[int], tmp: Path) -> list[dict]:
    server = s3server.start(tmp / "s3")
    try:
        settings = Settings.load({"MUSEDRP_S3_ENDPOINT": server.endpoint,
                                  "MUSEDRP_S3_ACCESS_KEY": server.access_key,
                                  "MUSEDRP_S3_SECRET_KEY": server.secret_key})
        store = storage.S3Store.from_settings(settings)
        store.create_bucket()
        bias = next(e for e in night.schedule(NIGHT) if e.kind == "bias")
        records = []
        for n in counts:
            raw = tmp / f"raw{n}"
            raw.mkdir()
            path = night.write_exposure(bias, list(range(1, n + 1)), 1, raw)
            key = f"raw/{n}/{path.name}"
            store.put_file(path, key)
            path.unlink()
            reader, size = store.open_range(key)
            t0 = time.monotonic()
            with io.BufferedReader(reader, storage.HEADER_BUFFER) as f:
                frame = classify(f, size, key, path.name)
            records.append({"ifus": n, "size_bytes": size, "bytes_read": reader.bytes_read,
                            "gets": reader.requests, "seconds": round(time.monotonic() - t0, 3),
                            "tag": str(frame.tag)})
            print(records[-1], flush=True)
        return records
    finally:
        server.stop()


def first_night() -> list[Frame]:
    """The frames of one 24-IFU night, classified from headers made without pixels."""
    ports = {ifu: detector.ports_for(ifu, 1) for ifu in range(1, 25)}
    frames = []
    for e in night.schedule(NIGHT):
        exts = [detector.extension_header(ifu, ports[ifu], e.readout[2]) for ifu in range(1, 25)]
        fields = classify_header(night.primary_header(e), exts)
        frames.append(Frame(path=f"raw/{fields['night']}/{e.arcfile}", name=e.arcfile, size=0,
                            **fields))
    return frames


def shifted(frame: Frame, days: int) -> Frame:
    """``frame`` observed ``days`` later (times, night and names moved alike)."""
    def later(iso: str) -> str:
        moved = datetime.fromisoformat(iso) + timedelta(days=days)
        return moved.isoformat(timespec="milliseconds")

    start = frame.arcfile.removeprefix("MUSE.").removesuffix(".fits")
    name = f"MUSE.{later(start)}.fits"
    night_ = (date.fromisoformat(frame.night) + timedelta(days=days)).isoformat()
    return frame.model_copy(update={
        "mjd": frame.mjd + days, "night": night_, "tpl_start": later(frame.tpl_start),
        "arcfile": name, "name": name, "path": f"raw/{night_}/{name}"})


def late_frame(frames: list[Frame]) -> Frame:
    """One more science exposure of the middle night, a minute after its last one."""
    science = sorted((f for f in frames if f.tag == Tag.OBJECT), key=lambda f: f.mjd)
    nights = sorted({f.night for f in science})
    last = [f for f in science if f.night == nights[len(nights) // 2]][-1]
    name = last.name.replace(".fits", ".late.fits")
    return last.model_copy(update={"mjd": last.mjd + 1 / 1440, "name": name, "arcfile": name,
                                   "path": f"raw/{last.night}/{name}"})


def cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended (planning processes)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def clocked(fn, *args) -> tuple[float, float, object]:
    """Wall and CPU seconds of ``fn(*args)``: CPU time shows the planner's own cost (with its
    planning processes) when other work shares the machine's cores."""
    wall, cpu = time.monotonic(), cpu_s()
    result = fn(*args)
    return time.monotonic() - wall, cpu_s() - cpu, result


@contextlib.contextmanager
def registry_at(kind: str, tmp: Path, name: str) -> Iterator[Registry]:
    """A new registry: an SQLite file in ``tmp``, or a database on the local PostgreSQL
    (dropped afterwards)."""
    with (contextlib.nullcontext(f"sqlite:///{tmp / f'{name}.sqlite'}") if kind == "sqlite"
          else fresh_database(name)) as url:
        registry = Registry.connect(url)
        try:
            yield registry
        finally:
            registry.close()


def event(kind: str, payload) -> Envelope:
    return Envelope(type=kind, source="benchmark", payload=payload)


def planning(nights: list[int], processes: list[int], kind: str, tmp: Path) -> list[dict]:
    """``plan_once`` of each count of nights with each count of processes, each in a process
    of its own, new as a restarted planner's (one that has planned before has a larger heap,
    and forks and allocates more slowly: up to 30 % in one run of every size)."""
    records = []
    for n, count in [(n, c) for n in nights for c in processes]:
        with ProcessPoolExecutor(1, multiprocessing.get_context("spawn")) as pool:
            records.append(pool.submit(plan_once, n, count, kind, tmp).result())
        print(records[-1], flush=True)
    return records


def plan_once(n: int, count: int, kind: str, tmp: Path) -> dict:
    one = first_night()
    frames = [shifted(f, d) for d in range(n) for f in one]
    frames += classify_dir(Path(write_static(tmp / f"static{n}p{count}")[0]).parent)[0]
    with registry_at(kind, tmp, f"n{n}p{count}") as registry:
        registry.record_frames(frames, {f.path: ("registered", "") for f in frames})
        planner = Planner(registry, Settings.load({}), "2.8.7", logging.getLogger("planner"))
        planner.processes = count
        first_s, first_cpu_s, _ = clocked(planner.plan, {ALL})
        parts = len(split(sorted({f.night for f in frames if f.tag not in STATIC_TAGS}), count))
        again_s, _ = timed(planner.plan, {ALL})
        late = late_frame(frames)
        registry.record_frames([late], {late.path: ("registered", "")})
        planner.touched.clear()
        planner.handle(event("frame.registered", FrameRegistered(
            key=late.path, night=late.night, tag=late.tag, status="registered")), 1)
        touched = set(planner.touched)
        one_s, one_cpu_s, planned = clocked(planner.plan, touched)
        replanned = registry.nights(touched, SEARCH_DAYS)
        planner.issue(lambda env: None)  # at start-up: the biases of every night
        bias = next(j for j in registry.jobs("queued") if j.night == late.night)
        planner.handle(event("job.finished", JobFinished(
            job_key=bias.key, stage=bias.stage, night=bias.night, ifu=bias.ifu,
            outcome="succeeded")), 1)
        issue_s, _ = timed(planner.issue, lambda env: None)
        jobs = len(registry.jobs())
    return {"nights": n, "processes": count, "parts": parts, "frames": len(frames),
            "frames_per_night": len(one), "jobs": jobs, "first_plan_s": round(first_s, 2),
            "first_plan_cpu_s": round(first_cpu_s, 2),
            "replan_one_frame_cpu_s": round(one_cpu_s, 2), "replan_s": round(again_s, 2),
            "replan_one_frame_s": round(one_s, 2), "replan_one_frame_nights": len(replanned),
            "replan_one_frame_jobs": len(planned.keys),
            "issue_one_finished_s": round(issue_s, 3)}


def per_night_s(plan: list[dict]) -> dict:
    """The first plan's seconds per night (a line through the origin), and how far the
    points of 30 nights or more fall from it: linear cost means a small deviation."""
    fit = {}
    for what, col in (("wall", "first_plan_s"), ("cpu", "first_plan_cpu_s")):
        fit[what] = (sum(r["nights"] * r[col] for r in plan)
                     / sum(r["nights"] ** 2 for r in plan))
    fit["deviation"] = max((abs(r["first_plan_cpu_s"] / (fit["cpu"] * r["nights"]) - 1)
                            for r in plan if r["nights"] >= 30), default=0.0)
    return fit


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ifus", default="1,3,8,24", help="IFU counts of the ingest part; '' skips it")
    p.add_argument("--nights", default="1,7,30,90,365")
    p.add_argument("--processes", default=f"1,{cpu_count(Settings.load({}))}",
                   help="planning processes, each count side by side")
    p.add_argument("--registry", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--name", default="ingest_planning")
    args = p.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    with tempfile.TemporaryDirectory(prefix="musedrp-bench-") as tmp:
        ing = ingest([int(n) for n in args.ifus.split(",")], Path(tmp)) if args.ifus else []
        plan = planning([int(n) for n in args.nights.split(",")], counts, args.registry,
                        Path(tmp))
    ingest_table = ["| IFUs | file size [MB] | bytes read | GETs | fraction read | seconds |",
                    "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    ingest_table += [f"| {r['ifus']} | {r['size_bytes'] / 1e6:.0f} | {r['bytes_read']} | "
                     f"{r['gets']} | {r['bytes_read'] / r['size_bytes']:.1e} | {r['seconds']} |"
                     for r in ing]
    rows = [(r["nights"], r["processes"], r["parts"], r["frames"], r["jobs"], r["first_plan_s"],
             r["first_plan_cpu_s"], r["replan_s"], r["replan_one_frame_s"],
             r["replan_one_frame_cpu_s"], r["replan_one_frame_nights"],
             r["replan_one_frame_jobs"], r["issue_one_finished_s"]) for r in plan]
    per_night = {c: per_night_s([r for r in plan if r["processes"] == c]) for c in counts}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    if ing:
        axes[0].loglog([r["size_bytes"] for r in ing], [r["bytes_read"] for r in ing], "o-")
    axes[0].set_xlabel("file size [bytes]")
    axes[0].set_ylabel("bytes read to classify")
    axes[0].set_title("ingest: header-only reads")
    for c in counts:
        mine = [r for r in plan if r["processes"] == c]
        xs = [r["nights"] for r in mine]
        axes[1].loglog(xs, [r["first_plan_s"] for r in mine], "o-", label=f"first plan, {c} p.")
        axes[1].loglog(xs, [r["first_plan_cpu_s"] for r in mine], "o--",
                       label=f"first plan, CPU, {c} p.")
        axes[1].loglog(xs, [r["replan_one_frame_s"] for r in mine], "^-",
                       label=f"re-plan after one new frame, {c} p.")
    axes[1].loglog(xs, [r["issue_one_finished_s"] for r in mine], "v-",
                   label="issue after one job.finished")
    axes[1].axhline(10, color="grey", lw=0.5)
    axes[1].set_xlabel(f"nights in the registry (24 IFUs, {plan[0]['frames_per_night']} "
                       "frames each)")
    axes[1].set_ylabel("seconds")
    axes[1].set_title(f"planner: plan() against registry size ({args.registry})")
    axes[1].legend(fontsize=7)
    fits = [f"{c} process(es): {f['wall']:.3f} s (CPU {f['cpu']:.3f} s) per night, i.e. "
            f"{f['wall'] * 365:.1f} s (CPU {f['cpu'] * 365:.1f} s) for 365 nights; largest "
            f"relative deviation of a point with 30 nights or more: {f['deviation']:.0%}."
            for c, f in per_night.items()]
    notes = ([] if not ing else
             ["Ingest: one bias frame per IFU count, classified from S3 by the ingest "
              "service's code (64 KiB buffered ranged GETs).", "", *ingest_table, ""]) + [
        f"Planning: the planner service's `plan()` on {args.registry}; the nights are one "
        "simulated night's frames moved by whole days. Processes: how many the planner plans "
        "in side by side (parts: runs of consecutive nights, two per process, each recording "
        "its own nights' jobs); 1 is one plan in the planner itself. First plan and re-plan: "
        "every night (load every frame, plan, record jobs and frame states), as at start-up. "
        "After one new frame (an object exposure in the middle night): the nights with frames "
        "within SEARCH_DAYS of it, from the frames within SEARCH_DAYS of those. Issue: after "
        "one bias job.finished, the waiting jobs that need it. CPU: the planner's and its "
        "planning processes' CPU time meanwhile.", "",
        "First plan, least squares through the origin:", "", *(f"- {f}" for f in fits)]
    print(write_results(args.name, "Ingest bytes per frame; planning against nights", notes,
                        ["nights", "processes", "parts", "frames", "jobs", "first plan [s]",
                         "first plan, CPU [s]", "re-plan, nothing new [s]",
                         "re-plan after one frame [s]", "re-plan after one frame, CPU [s]",
                         "nights re-planned", "jobs of that plan",
                         "issue after one job.finished [s]"], rows,
                        {"ingest": ing, "planning": plan, "first_plan_per_night": per_night},
                        fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
