"""Bytes a per-IFU job moves: its raw frames' primary HDU and IFU extension by ranged GETs,
against the whole files.

Per job (measured): three full-size 24-IFU bias frames, plain and tile-compressed
(``--compress``), are put into a ``weed mini`` S3 server; the stage worker runs the bias of
IFU 24 (the last extension) twice, once with the byte ranges the ingest recorded and once
with whole files, each through its real path (fetch, esorex, upload); the bytes every GET
returned are counted and the two products compared (data and headers, but for the date
they were written, the header checksum, DATASUM's comment and the job key).  Then, for
IFUs 1 and 12 too, the slices alone are fetched and timed.

Per night (computed from the work orders, whose ranges are what a job fetches, as the
per-job rows show): the per-IFU jobs of a planned night (``--night RAW_DIR``, e.g. the
integration tests' 3-IFU night), and the same night at 24 IFUs (8 times the jobs, each raw
frame 24 extensions of the same size).
"""

import argparse
import logging
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
from astropy.io import fits

from musedrp import s3server, storage
from musedrp.frames import classify_dir, classify_file
from musedrp.ifuslice import fetch
from musedrp.messages import Envelope, InputFile, WorkOrder
from musedrp.planner import ifu_ranges, plan_night
from musedrp.services.worker import StageWorker
from musedrp.settings import Settings
from musedrp.simulate import night
from musedrp.tags import Tag
from musedrp.topology import BY_NAME

from common import exposures, write_results

N_BIAS = 3
IFUS = tuple(range(1, 25))
# differ between any two runs of a recipe (when written, the header checksum; DATASUM's
# comment, compared apart, holds a time too), and the job key stamped by the runner: the two
# runs here are two jobs, or the second would be cached
RUN_KEYWORDS = ("DATE", "CHECKSUM", "MUSEDRP JOB KEY")


class Counting:
    """The store, counting the bytes of every ranged read and whole download since
    ``reset()``."""

    def __init__(self, store: storage.S3Store) -> None:
        self.store, self.readers, self.whole = store, [], 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def reset(self) -> None:
        self.readers, self.whole = [], 0

    @property
    def bytes(self) -> int:
        return self.whole + sum(r.bytes_read for r in self.readers)

    def open_range(self, key: str):
        reader, size = self.store.open_range(key)
        self.readers.append(reader)
        return reader, size

    def get_file(self, key: str, dest: Path) -> None:
        self.store.get_file(key, dest)
        self.whole += dest.stat().st_size


def per_job(tmp: Path) -> list[dict]:
    server = s3server.start(tmp / "s3")
    try:
        settings = Settings.load({"MUSEDRP_S3_ENDPOINT": server.endpoint,
                                  "MUSEDRP_S3_ACCESS_KEY": server.access_key,
                                  "MUSEDRP_S3_SECRET_KEY": server.secret_key,
                                  "MUSEDRP_SCRATCH": str(tmp / "scratch")})
        s3 = storage.S3Store.from_settings(settings)
        s3.create_bucket()
        store = Counting(s3)
        (tmp / "scratch").mkdir()
        worker = StageWorker(BY_NAME["bias"], settings, store, [0], tmp / "scratch",
                             logging.getLogger("bench"))
        rows = []
        for compress in (False, True):
            raw = tmp / f"raw-{compress}"
            raw.mkdir()
            frames = [classify_file(night.write_exposure(e, IFUS, 1, raw, compress))
                      for e in exposures("bias", N_BIAS)]
            for f in frames:
                s3.put_file(Path(f.path), f"raw/{compress}/{f.name}")
                Path(f.path).unlink()
            rows += _jobs(worker, store, frames, compress, tmp)
        return rows
    finally:
        server.stop()


def _jobs(worker: StageWorker, store: Counting, frames, compress: bool, tmp: Path) -> list:
    variant = "tile-compressed" if compress else "plain"
    whole = sum(f.size for f in frames)
    rows, products = [], {}
    for mode in ("ranged", "whole"):
        inputs = tuple(InputFile(tag=Tag.BIAS, path=f"raw/{compress}/{f.name}", ifu=24,
                                 datasum=f.datasums[24],
                                 ranges=ifu_ranges(f, 24) if mode == "ranged" else ())
                       for f in frames)
        key = f"{compress:d}{mode == 'ranged':d}".rjust(16, "0")
        order = WorkOrder(stage="bias", recipe="muse_bias", job_key=key, night="2014-08-01",
                          setup="bench", ifu=24, inputs=inputs, params={}, memory_gb=2.5,
                          timeout_s=1800, products=("MASTER_BIAS-24.fits",))
        store.reset()
        t0 = time.monotonic()
        (finished, *_) = worker.handle(Envelope(type="work.bias", source="bench",
                                                payload=order), 1)
        wall = time.monotonic() - t0
        assert finished.payload.outcome == "succeeded", finished.payload
        products[mode] = tmp / f"{variant}-{mode}.fits"
        store.store.get_file(order.product_key("MASTER_BIAS-24.fits"), products[mode])
        rows.append({"variant": variant, "ifu": 24, "mode": f"{mode}, worker job",
                     "bytes": store.bytes, "whole_bytes": whole,
                     "extension_bytes": _needed(frames, 24), "seconds": wall,
                     "recipe_s": finished.payload.wall_s})
    diff = fits.FITSDiff(str(products["ranged"]), str(products["whole"]),
                         ignore_keywords=RUN_KEYWORDS, ignore_comments=["DATASUM"])
    for r in rows:
        r["products_identical"] = diff.identical
        r["differences"] = "" if diff.identical else diff.report()
    for ifu in (1, 12, 24):
        store.reset()
        t0 = time.monotonic()
        for f in frames:
            inp = InputFile(tag=Tag.BIAS, path=f"raw/{compress}/{f.name}", ifu=ifu,
                            datasum=f.datasums[ifu], ranges=ifu_ranges(f, ifu))
            fetch(store, inp.path, inp, tmp / "slice.fits")
        rows.append({"variant": variant, "ifu": ifu, "mode": "ranged, fetch only",
                     "bytes": store.bytes, "whole_bytes": whole,
                     "extension_bytes": _needed(frames, ifu),
                     "seconds": time.monotonic() - t0, "recipe_s": None,
                     "products_identical": None, "differences": ""})
    return rows


def _needed(frames, ifu: int) -> int:
    """What a job of ``ifu`` reads: each frame's primary HDU and that IFU's extension."""
    return sum(f.primary_size + f.extents[ifu][1] for f in frames)


def per_night(raw: Path) -> list[dict]:
    frames, _ = classify_dir(raw)
    plan = plan_night(frames, raw, "2.8.7")
    sizes = {f.path: f for f in frames}
    rows = []
    for stage in BY_NAME:
        orders = [o for o in plan.orders if o.stage == stage and BY_NAME[stage].spec.per_ifu]
        raw_inputs = [f for o in orders for f in o.inputs if f.ranges]
        if not raw_inputs:
            continue
        n_ifus = len(sizes[raw_inputs[0].path].extents)
        ranged = sum(r[1] for f in raw_inputs for r in f.ranges)
        whole = sum(sizes[f.path].size for f in raw_inputs)
        at24 = sum(sizes[f.path].primary_size + 24 * f.ranges[1][1] for f in raw_inputs)
        rows.append({"stage": stage, "jobs": len(orders), "raw_inputs": len(raw_inputs),
                     "ifus": n_ifus, "ranged_bytes": ranged, "whole_bytes": whole,
                     "jobs_24": len(orders) * 24 // n_ifus,
                     "ranged_bytes_24": ranged * 24 // n_ifus,
                     "whole_bytes_24": at24 * 24 // n_ifus})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--night", type=Path, required=True,
                   help="raw frames of a night to plan (e.g. a 3-IFU simulated night)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="musedrp-bench-") as tmp:
        jobs = per_job(Path(tmp))
    nights = per_night(args.night)
    job_rows = [(r["variant"], r["ifu"], r["mode"], r["bytes"] / 1e6, r["whole_bytes"] / 1e6,
                 r["bytes"] / r["extension_bytes"], r["seconds"], r["recipe_s"] or "",
                 {True: "yes", False: "NO", None: ""}[r["products_identical"]]) for r in jobs]
    night_table = ["| stage | per-IFU jobs | raw inputs | ranged [GB] | whole files [GB] | "
                   "at 24 IFUs: jobs | ranged [GB] | whole files [GB] |",
                   "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    night_table += [f"| {r['stage']} | {r['jobs']} | {r['raw_inputs']} | "
                    f"{r['ranged_bytes'] / 1e9:.2f} | {r['whole_bytes'] / 1e9:.2f} | "
                    f"{r['jobs_24']} | {r['ranged_bytes_24'] / 1e9:.1f} | "
                    f"{r['whole_bytes_24'] / 1e9:.1f} |" for r in nights]
    total = {k: sum(r[k] for r in nights) for k in
             ("ranged_bytes", "whole_bytes", "ranged_bytes_24", "whole_bytes_24")}
    night_table.append(f"| **night** | | | **{total['ranged_bytes'] / 1e9:.2f}** | "
                       f"**{total['whole_bytes'] / 1e9:.2f}** | | "
                       f"**{total['ranged_bytes_24'] / 1e9:.1f}** | "
                       f"**{total['whole_bytes_24'] / 1e9:.1f}** |")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [r["stage"] for r in nights]
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], [r["whole_bytes_24"] / 1e9 for r in nights], 0.4,
           label="whole files")
    ax.bar([i + 0.2 for i in x], [r["ranged_bytes_24"] / 1e9 for r in nights], 0.4,
           label="ranged: primary HDU + IFU extension")
    ax.set_xticks(list(x), labels)
    ax.set_yscale("log")
    ax.set_ylabel("GB fetched by per-IFU jobs")
    ax.set_title(f"one night at 24 IFUs (planned from {args.night.name})")
    ax.legend(fontsize=8)
    notes = [
        __doc__.split("\n\n", 1)[1].strip(), "",
        "Per job: bytes are what the S3 server returned to every GET of the job's inputs "
        "(for the worker job: the raw frames; bias has no other input). `needed` is each "
        "frame's primary HDU plus the IFU's extension (header, data, padding), read from the "
        "headers. Times are wall clock on a machine shared with other work: noisy.",
    ]
    text = write_results(
        "ranged_inputs", "Per-IFU jobs: bytes fetched by ranged GETs against whole files",
        notes, ["frames", "IFU", "fetch", "fetched [MB]", "whole files [MB]",
                "fetched / needed", "wall [s]", "recipe [s]", "products identical"],
        job_rows, {"per_job": jobs, "per_night": nights, "night_raw": str(args.night)}, fig)
    text += "\n## Per night\n\n" + "\n".join(night_table) + "\n"
    (Path(__file__).parent / "results" / "ranged_inputs.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
