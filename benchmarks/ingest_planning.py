"""Ingest and planning at scale: header bytes per classified frame, and planning a year.

    .venv/bin/python benchmarks/ingest_planning.py [--ifus 1,3,8,24] [--nights 1,7,30,90,365]

Ingest: bias frames with 1 to 24 IFUs are put into a ``weed mini`` S3 server and classified
as the ingest service does (buffered ranged GETs of header blocks): bytes read, GET requests
and time, against the file size.  Planning: a registry (SQLite, in a temporary directory)
filled with the frames of N simulated 24-IFU nights (headers only: no pixels are written),
then the planner service's ``plan()`` timed twice: the first plan (every job new) and a
re-plan with nothing new (what a late frame costs).  Writes
``results/ingest_planning.{md,json,png}``.
"""

import argparse
import io
import logging
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import matplotlib.pyplot as plt

from musedrp import s3server, storage
from musedrp.frames import Frame, classify, classify_dir, classify_header
from musedrp.registry import Registry
from musedrp.services.planner.service import Planner
from musedrp.settings import Settings
from musedrp.simulate import detector, night
from musedrp.simulate.static import write_static

from common import NIGHT, timed, write_results


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


def planning(nights: list[int], tmp: Path) -> list[dict]:
    statics, _ = classify_dir(Path(write_static(tmp / "static")[0]).parent)
    one = first_night()
    log = logging.getLogger("planner")
    records = []
    for n in nights:
        registry = Registry.connect(f"sqlite:///{tmp / f'registry{n}.sqlite'}")
        frames = statics + [shifted(f, d) for d in range(n) for f in one]
        registry.record_frames(frames, {f.path: ("registered", "") for f in frames})
        planner = Planner(registry, Settings.load({}), "2.8.7", log)
        first_s, _ = timed(planner.plan)
        again_s, _ = timed(planner.plan)
        jobs = len(registry.jobs())
        registry.close()
        records.append({"nights": n, "frames": len(frames), "jobs": jobs,
                        "first_plan_s": round(first_s, 2), "replan_s": round(again_s, 2)})
        print(records[-1], flush=True)
    return records


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ifus", default="1,3,8,24")
    p.add_argument("--nights", default="1,7,30,90,365")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="musedrp-bench-") as tmp:
        ing = ingest([int(n) for n in args.ifus.split(",")], Path(tmp))
        plan = planning([int(n) for n in args.nights.split(",")], Path(tmp))
    ingest_table = ["| IFUs | file size [MB] | bytes read | GETs | fraction read | seconds |",
                    "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    ingest_table += [f"| {r['ifus']} | {r['size_bytes'] / 1e6:.0f} | {r['bytes_read']} | "
                     f"{r['gets']} | {r['bytes_read'] / r['size_bytes']:.1e} | {r['seconds']} |"
                     for r in ing]
    rows = [(r["nights"], r["frames"], r["jobs"], r["first_plan_s"],
             r["replan_s"]) for r in plan]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].loglog([r["size_bytes"] for r in ing], [r["bytes_read"] for r in ing], "o-")
    axes[0].set_xlabel("file size [bytes]")
    axes[0].set_ylabel("bytes read to classify")
    axes[0].set_title("ingest: header-only reads")
    xs = [r["nights"] for r in plan]
    axes[1].loglog(xs, [r["first_plan_s"] for r in plan], "o-", label="first plan")
    axes[1].loglog(xs, [r["replan_s"] for r in plan], "s-", label="re-plan, nothing new")
    axes[1].set_xlabel("nights in the registry (24 IFUs, 84 frames each)")
    axes[1].set_ylabel("seconds")
    axes[1].set_title("planner: plan() against registry size")
    axes[1].legend()
    notes = ["Ingest: one bias frame per IFU count, classified from S3 by the ingest "
             "service's code (64 KiB buffered ranged GETs).", "", *ingest_table, "",
             "Planning: the planner service's `plan()` (load every frame, plan every night, "
             "record jobs and frame states) on SQLite. The nights are one simulated night's frames "
             "moved by whole days."]
    print(write_results("ingest_planning", "Ingest bytes per frame; planning against nights",
                        notes, ["nights", "frames", "jobs", "first plan [s]",
                                "re-plan [s]"], rows,
                        {"ingest": ing, "planning": plan}, fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
