"""``musedrp report OUT``: one self-contained HTML page of a reduction.

Read from what ``musedrp reduce`` left in OUT: ``plan.json`` (every association decision and
every frame's fate), each job's ``manifest.json`` (QC, timings, memory), its products and QC
plots, and the ``error.txt`` and esorex log of jobs that failed.  Plots and images are
embedded as data URIs, so the file can be mailed or archived alone.
"""

import base64
import html
import io
import json
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from musedrp import qcplot, qctrend
from musedrp.messages import WorkOrder
from musedrp.provenance import ERROR_FILE, MANIFEST
from musedrp.simulate.night import Truth
from musedrp.stages import product_tag
from musedrp.tags import Tag
from musedrp.topology import BY_NAME

plt = qcplot.plt  # the Agg backend, chosen once
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.failed { color: #b00020; font-weight: bold; } .ok { color: #1b7f3b; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }
img { max-width: 100%; border: 1px solid #eee; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 0.5em 1em; }
.grid h3 { font-size: 0.9em; margin: 0.5em 0 0.2em; }
td.flagged { background: #fbd5d5; color: #b00020; font-weight: bold; }
"""


@dataclass
class Job:
    order: dict[str, Any]
    directory: Path
    state: str  # succeeded, failed, skipped, not run
    manifest: dict[str, Any]
    reason: str = ""

    @property
    def label(self) -> str:
        ifu = self.order.get("ifu")
        return f"{self.order['stage']} IFU {ifu:02d}" if ifu else self.order["stage"]

    @property
    def run(self) -> dict[str, Any]:
        return self.manifest.get("run", {})

    def product(self, prefix: str) -> Path | None:
        names = sorted(n for n in self.manifest.get("products", {}) if n.startswith(prefix))
        return self.directory / names[0] if names else None


def load(out: Path) -> tuple[dict[str, Any], list[Job]]:
    """The plan and every planned job with its outcome, from the files in ``out``."""
    plan_path = out / "plan.json"
    if not plan_path.exists():
        raise FileNotFoundError(f"{plan_path} not found: is {out} the output of "
                                "`musedrp reduce`?")
    plan = json.loads(plan_path.read_text())
    jobs: dict[str, Job] = {}
    for order in plan["orders"]:
        d = out / WorkOrder.model_validate(order).product_dir
        if (d / MANIFEST).exists():
            jobs[order["job_key"]] = Job(order, d, "succeeded", json.loads((d / MANIFEST)
                                                                             .read_text()))
        elif (d / ERROR_FILE).exists():
            jobs[order["job_key"]] = Job(order, d, "failed", {},
                                         (d / ERROR_FILE).read_text().strip())
        else:
            bad = [k for k in order["needs"] if jobs.get(k) and jobs[k].state != "succeeded"]
            reason = f"upstream {jobs[bad[0]].label} did not succeed" if bad else ""
            jobs[order["job_key"]] = Job(order, d, "skipped" if bad else "not run", {}, reason)
    return plan, list(jobs.values())


def _png(fig) -> str:
    return _img(qcplot.save(fig, io.BytesIO(), dpi=80).getvalue(), "plot")


def _img(data: bytes, alt: str) -> str:
    return (f'<img alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(data).decode()}">')


@dataclass(frozen=True)
class Flagged:
    """A table cell holding a value that left the band of its history."""

    value: float
    verdict: qctrend.Verdict


def _table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    def cell(v: Any) -> str:
        if isinstance(v, Flagged):
            note = html.escape(f"flagged: {v.verdict.z:+.1f} spreads from the median "
                               f"{v.verdict.centre:.5g} of {v.verdict.n} nights")
            return f'<td class="num flagged" title="{note}">{v.value:.4g}</td>'
        if isinstance(v, float):
            return f'<td class="num">{v:.4g}</td>'
        if isinstance(v, int):
            return f'<td class="num">{v}</td>'
        return f"<td>{html.escape(str(v))}</td>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _qc(job: Job, prefix: str) -> dict[str, Any]:
    """QC values of the job's product whose name starts with ``prefix``."""
    return next((v for n, v in job.manifest.get("qc", {}).items() if n.startswith(prefix)), {})


def verdicts(jobs: list[Job]) -> list[qctrend.Verdict]:
    """Every QC value of the reduction judged against its history (``musedrp.qctrend``)."""
    return qctrend.verdicts(
        r for j in jobs if j.state == "succeeded"
        for name, qc in j.manifest.get("qc", {}).items()
        for r in qctrend.records(j.order["night"], j.order["stage"], j.order["setup"],
                                 j.order.get("ifu"), product_tag(Path(name)), qc))


def _marked(jobs: list[Job]) -> Callable[[Job, str, Any], Any]:
    """``mark(job, key, value)``: the value, or a Flagged cell if it left its band."""
    flagged = {(v.record.night, v.record.stage, v.record.ifu, v.record.key): v
               for v in verdicts(jobs) if v.flagged}

    def mark(job: Job, key: str, value: Any) -> Any:
        o = job.order
        v = flagged.get((o["night"], o["stage"], o.get("ifu") or 0, key))
        return Flagged(value, v) if v is not None else value
    return mark


def _of(jobs: list[Job], stage: str) -> list[Job]:
    return sorted((j for j in jobs if j.order["stage"] == stage and j.state == "succeeded"),
                  key=lambda j: (j.order.get("ifu") or 0, j.order["night"]))


def summary(plan: dict, jobs: list[Job]) -> str:
    states = {s: sum(j.state == s for j in jobs) for s in
              ("succeeded", "failed", "skipped", "not run")}
    frames: dict[str, int] = {}
    for f in plan["frames"]:
        frames[f["status"]] = frames.get(f["status"], 0) + 1
    wall = sum(j.run.get("wall_s", 0) for j in jobs)
    cpu = sum(j.run.get("cpu_user_s", 0) + j.run.get("cpu_sys_s", 0) for j in jobs)
    cls = "failed" if states["failed"] or states["skipped"] else "ok"
    return (f"<p>Raw data: <code>{html.escape(plan['raw_dir'])}</code>. "
            f"{len(plan['frames'])} frames: "
            + ", ".join(f"{n} {s}" for s, n in sorted(frames.items())) + ".</p>"
            f'<p class="{cls}" id="outcome">{len(jobs)} jobs: '
            + ", ".join(f"{n} {s}" for s, n in states.items()) + ".</p>"
            f"<p>Recipe time {wall / 60:.1f} min, CPU time {cpu / 60:.1f} min.</p>")


def failures(jobs: list[Job]) -> str:
    bad = [j for j in jobs if j.state in ("failed", "skipped", "not run")]
    if not bad:
        return '<p class="ok" id="no-failures">No job failed.</p>'
    parts = []
    for j in bad:
        parts.append(f'<h3 class="failed">{html.escape(j.label)}: {j.state}</h3>'
                     f"<p>{html.escape(j.reason.splitlines()[0] if j.reason else '')}</p>")
        log = j.directory / "esorex.log"
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"<p>Last lines of <code>{html.escape(str(log))}</code>:</p>"
                         f"<pre>{html.escape(chr(10).join(tail))}</pre>")
    return "".join(parts)


def detectors(jobs: list[Job]) -> str:
    """Read noise and bias level per IFU and port; flat level and trace widths; values that
    left the band of their history are marked."""
    rows, ron, mark = [], {}, _marked(jobs)
    flats = {(j.order["night"], j.order["ifu"]): j for j in _of(jobs, "flat")}
    for j in _of(jobs, "bias"):
        qc, ifu, night = _qc(j, "MASTER_BIAS"), j.order["ifu"], j.order["night"]
        ron[ifu] = [qc.get(f"QC BIAS MASTER{p} RON", np.nan) for p in range(1, 5)]
        cells = [mark(j, k, qc.get(k, np.nan)) for k in
                 [f"QC BIAS MASTER{p} RON" for p in range(1, 5)]
                 + [f"QC BIAS LEVEL{p} MEAN" for p in range(1, 5)]]
        flat = flats.get((night, ifu))
        fqc = (_qc(flat, "MASTER_FLAT") | _qc(flat, "TRACE_TABLE")) if flat else {}
        cells += [mark(flat, k, fqc[k]) if flat and k in fqc else ""
                  for k in ("QC FLAT MASTER MEDIAN", "QC TRACE WIDTHS MEDIAN")]
        rows.append([f"{ifu:02d}", *cells, night])
    if not rows:
        return "<p>No master bias was made.</p>"
    fig, ax = plt.subplots(figsize=(7, 3))
    for p in range(4):
        ax.plot(list(ron), [v[p] for v in ron.values()], "o", label=f"port {p + 1}")
    ax.set_xlabel("IFU (the last night of each)")
    ax.set_ylabel("read noise [e-]")
    ax.set_xticks(list(ron))
    ax.legend(fontsize=8, ncol=4)
    header = ["IFU", *(f"RON {p} [e-]" for p in range(1, 5)),
              *(f"bias level {p} [adu]" for p in range(1, 5)), "flat median", "trace width",
              "night"]
    return (_table(header, rows, "detectors") + _png(fig)
            + "<p>Marked: a value that left the band of its own history (section QC over "
              "nights).</p>")


def thumbnails(jobs: list[Job]) -> str:
    parts = []
    for j in _of(jobs, "bias") + _of(jobs, "flat"):
        for name in j.manifest.get("qc_plots", []):
            if (j.directory / name).exists():
                parts.append(f"<div><h3>{html.escape(j.label)}: {html.escape(name)}</h3>"
                             + _img((j.directory / name).read_bytes(), name) + "</div>")
    return f'<div class="grid">{"".join(parts)}</div>' if parts else "<p>No QC plots.</p>"


def wavelength(jobs: list[Job]) -> str:
    """Fit RMS of the wavelength solution per slice and IFU (QC WAVECAL SLICEn FIT RMS)."""
    rows, fig = [], None
    for j in _of(jobs, "wavecal"):
        qc = _qc(j, "WAVECAL_TABLE")
        rms = {int(m[1]): v * 1000 for k, v in qc.items()
               if (m := re.fullmatch(r"QC WAVECAL SLICE(\d+) FIT RMS", k))}
        lines = [v for k, v in qc.items() if re.fullmatch(r"QC WAVECAL SLICE\d+ LINES NID", k)]
        if not rms:
            continue
        if fig is None:
            fig, ax = plt.subplots(figsize=(7, 3))
        ax.plot(sorted(rms), [rms[s] for s in sorted(rms)], ".-", label=f"IFU {j.order['ifu']}")
        vals = np.array(list(rms.values()))
        rows.append([f"{j.order['ifu']:02d}", len(rms), float(np.median(vals)), float(vals.max()),
                     int(np.median(lines)) if lines else ""])
    if fig is None:
        return "<p>No wavelength solution.</p>"
    ax.set_xlabel("slice")
    ax.set_ylabel("fit RMS [mÅ]")
    ax.legend(fontsize=8)
    return _table(["IFU", "slices", "median RMS [mÅ]", "max RMS [mÅ]", "lines per slice"],
                  rows, "wavecal") + _png(fig)


def standard(jobs: list[Job]) -> str:
    (job, *_) = _of(jobs, "standard") or [None]
    response = job.product("STD_RESPONSE") if job else None
    if response is None:
        return "<p>No flux response.</p>"
    table = fits.getdata(response, 1)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(table["lambda"], table["throughput"], lw=0.8)
    ax.set_xlabel("wavelength [Å]")
    ax.set_ylabel("throughput")
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in job.manifest.get("reasons", [])
                      if "standard" in r.lower())
    return f"<ul>{reasons}</ul>" + _png(fig)


def _field_figure(image: np.ndarray):
    """An image of the field in grey, scaled to its 2-99.5 percentiles (blank and empty
    spaxels left out): (figure, axes)."""
    ny, nx = image.shape
    fig, ax = plt.subplots(figsize=(8, max(1.5, min(8, 8 * ny / nx)) + 0.6))
    shown = image[np.isfinite(image) & (image != 0)]
    lo, hi = np.percentile(shown, [2, 99.5]) if shown.size else (0, 1)
    ax.imshow(image, origin="lower", cmap="gray", vmin=lo, vmax=hi)
    ax.set_xlabel("x [spaxel]")
    ax.set_ylabel("y [spaxel]")
    return fig, ax


def white_light(jobs: list[Job]) -> str:
    parts = []
    for j in _of(jobs, "scipost"):
        cube = j.product("DATACUBE_FINAL")
        if cube is None:
            continue
        with fits.open(cube, memmap=True) as hdul:
            data = hdul["DATA"].data
            image = np.nansum([np.nan_to_num(data[i:i + 256]).sum(axis=0)
                               for i in range(0, data.shape[0], 256)], axis=0)
        fig, _ = _field_figure(image)
        parts.append(f"<h3>{html.escape(j.label)} {html.escape(j.order['job_key'])}</h3>"
                     + _png(fig))
    return "".join(parts) or "<p>No final cube.</p>"


def _truth(jobs: list[Job]) -> Truth | None:
    """The simulator's truth beside the raw OBJECT frames, when there is one (a file of that
    name that is not the simulator's is ignored)."""
    for j in _of(jobs, "scibasic"):
        for i in j.order["inputs"]:
            if i["tag"] == "OBJECT" and (path := Path(i["path"]).parent / "truth.json").exists():
                try:
                    return Truth.load(path)
                except (OSError, ValueError, TypeError, KeyError, AttributeError):
                    return None
    return None


def alignment(jobs: list[Job]) -> str:
    """How the exposures were placed: muse_exp_align's offsets (or the header fallback and
    why), against the simulated pointing errors where the truth is known."""
    truth = _truth(jobs)
    parts = []
    for j in _of(jobs, "align"):
        path = j.product("OFFSET_LIST")
        if path is None:
            continue
        qc = j.manifest["qc"].get("OFFSET_LIST.fits", {})
        method = qc.get("MUSEDRP ALIGN METHOD", "?")
        why = (f" because {qc['MUSEDRP ALIGN REASON']}" if method == "header" else
               f": {qc.get('QC EXPALIGN NMATCH MIN', '?')} stars matched at least")
        table = fits.getdata(path, 1)
        cos_dec = np.cos(np.radians(truth.target[1])) if truth else 1.0
        simulated = (truth.offsets(table["DATE_OBS"][0])
                     if truth and table["DATE_OBS"][0] in truth.objects() else {})
        rows = []
        for r in table:
            got = np.array([r["RA_OFFSET"] * cos_dec, r["DEC_OFFSET"]]) * 3600
            row = [r["DATE_OBS"], f"{got[0]:+.3f}", f"{got[1]:+.3f}"]
            if (want := simulated.get(r["DATE_OBS"])) is not None:
                row += [f"{want[0]:+.3f}", f"{want[1]:+.3f}",
                        f"{np.hypot(*(got - want)):.3f}"]
            rows.append(row)
        head = ["exposure", "RA offset [\"]", "Dec offset [\"]"]
        if simulated:
            head += ["simulated RA [\"]", "simulated Dec [\"]", "error [\"]"]
        parts.append(f"<p>{html.escape(j.order['reasons'][0] if j.order['reasons'] else '')}: "
                     f"offsets by <b>{html.escape(method)}</b>{html.escape(why)}.</p>"
                     + _table(head, rows, "offsets"))
    return "".join(parts) or "<p>No alignment (fewer than two exposures of a target).</p>"


def combined(jobs: list[Job]) -> str:
    """Each combined cube's white-light image, with the simulated stars where the first
    exposure's frame puts them (the truth, when the night was simulated), and the wavelength
    pieces it was made in, if any."""
    truth = _truth(jobs)
    parts = []
    pieces = {j.order["job_key"]: j for j in _of(jobs, "combine") if j.order["params"].get("piece")}
    for j in [*(j for j in _of(jobs, "combine") if j.order["job_key"] not in pieces),
              *_of(jobs, "stitch")]:
        path = j.product("IMAGE_FOV")
        if path is None:
            continue
        with fits.open(path) as hdul:
            image, wcs = hdul["DATA"].data, WCS(hdul["DATA"].header)
        fig, ax = _field_figure(image)
        if truth and truth.stars:
            radec = truth.apparent_stars()
            x, y = wcs.all_world2pix(radec[:, 0], radec[:, 1], 0)
            ny, nx = image.shape
            keep = (x > -1) & (x < nx) & (y > -1) & (y < ny)
            ax.scatter(x[keep], y[keep], s=30, facecolors="none", edgecolors="tab:red",
                       linewidths=0.6, label="simulated stars")
            ax.legend(loc="upper right", fontsize=7)
        made = [r for k in j.order["needs"] if k in pieces
                for r in pieces[k].order["reasons"] if r.startswith("piece ")]
        split = (f"<p>Resampled in {len(made)} wavelength pieces on one grid and stitched: "
                 f"{html.escape('; '.join(made))}.</p>" if made else "")
        parts.append(f"<h3>{html.escape(j.order['reasons'][0])}</h3>{split}" + _png(fig))
    return "".join(parts) or "<p>No combined cube.</p>"


def sky(jobs: list[Job]) -> str:
    """The sky spectrum each SKY exposure's model was made of, and how each exposure's sky
    was taken off (the planner's choice, from the cube job's reasons)."""
    parts = []
    for j in _of(jobs, "sky"):
        path = j.product("SKY_SPECTRUM")
        if path is None:
            continue
        table = fits.getdata(path, 1)
        fig, ax = plt.subplots(figsize=(8, 2.6))
        ax.plot(table["lambda"], table["data"], lw=0.5)
        ax.set_xlabel("wavelength [Å]")
        ax.set_ylabel("10⁻²⁰ erg/s/cm²/Å")
        parts.append(f"<h3>{html.escape(j.order['reasons'][0])}</h3>" + _png(fig))
    methods = [r for j in _of(jobs, "scipost") for r in j.order["reasons"]
               if r.startswith("sky: ")]
    return "".join(parts) + ("<ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in methods)
                             + "</ul>" if methods else "")


def decisions(plan: dict) -> str:
    items = "".join(f"<li>{html.escape(d)}</li>" for d in plan["decisions"])
    rows = [[f["name"], f["tag"], f["status"], "; ".join(f["why"]) if f["status"] != "used"
             else f"{len(f['why'])} job(s)"] for f in plan["frames"]]
    return (f'<ol id="decisions">{items}</ol><h3>Every frame</h3>'
            + _table(["file", "tag", "status", "why"], rows, "frames"))


def timings(jobs: list[Job]) -> str:
    done = [j for j in jobs if j.run]
    if not done:
        return "<p>No job ran.</p>"
    rows = [[j.label, j.order["job_key"], j.state, j.run.get("wall_s", 0.0),
             j.run.get("cpu_user_s", 0.0) + j.run.get("cpu_sys_s", 0.0),
             j.run.get("peak_rss_bytes", 0) / 1e9, float(j.order["memory_gb"]),
             j.run.get("n_warnings", 0)] for j in done]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 0.6 + 0.22 * len(done)))
    started = {j.order["job_key"]: datetime.fromisoformat(j.manifest["written"])
               - timedelta(seconds=j.run["wall_s"]) for j in done}
    t0 = min(started.values())
    stages = sorted({j.order["stage"] for j in done})
    colours = {s: plt.cm.tab10(i % 10) for i, s in enumerate(stages)}
    for y, j in enumerate(done):
        colour = colours[j.order["stage"]]
        a.barh(y, j.run["wall_s"] / 60, color=colour,
               left=(started[j.order["job_key"]] - t0).total_seconds() / 60)
        b.barh(y, j.run.get("peak_rss_bytes", 0) / 1e9, color=colour)
        b.plot(j.order["memory_gb"], y, "k|", ms=8)
    for ax in (a, b):
        ax.set_yticks(range(len(done)), [j.label for j in done], fontsize=7)
        ax.invert_yaxis()
    a.set_xlabel("minutes since the first job started")
    b.set_xlabel("peak RSS [GB] (| the planner's estimate)")
    return (_png(fig) + _table(["job", "key", "state", "wall [s]", "CPU [s]", "peak RSS [GB]",
                                "estimate [GB]", "warnings"], rows, "jobs"))


def _headline(v: qctrend.Verdict) -> bool:
    r = v.record
    return bool(BY_NAME[r.stage].spec.headline_qc(Tag(r.tag), {r.key: r.value}))


def _trend_figure(stage: str, key: str, series: dict[int, list[qctrend.Verdict]],
                  nights: list[str]):
    """One panel per IFU: the values over nights, the band they were judged against, the
    flagged ones as red crosses."""
    cols = min(len(series), 4)
    rows = -(-len(series) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 0.6, 2.2 * rows + 0.6),
                             sharex=True, squeeze=False)
    x = {n: i for i, n in enumerate(nights)}
    for ax, (ifu, vs) in zip(axes.flat, sorted(series.items()), strict=False):
        ax.plot([x[v.record.night] for v in vs], [v.record.value for v in vs], "o-", ms=3,
                lw=0.8, color="tab:blue")
        if bands := [(x[v.record.night], *v.band) for v in vs if v.band is not None]:
            at, low, high = zip(*bands, strict=True)
            ax.fill_between(at, low, high, step="mid", color="tab:green", alpha=0.2, lw=0)
        if bad := [v for v in vs if v.flagged]:
            ax.plot([x[v.record.night] for v in bad], [v.record.value for v in bad], "x",
                    color="tab:red", ms=9, mew=2)
        ax.set_title(f"IFU {ifu:02d}" if ifu else "all IFUs", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(series):]:
        ax.set_visible(False)
    step = max(1, len(nights) // 6)
    for ax in axes[-1]:
        ax.set_xticks(range(0, len(nights), step), [n[5:] for n in nights[::step]])
    fig.suptitle(f"{stage}: {key}", fontsize=9)
    return fig


def trends(jobs: list[Job]) -> str:
    """QC over nights: each headline QC key per IFU against the band of its own history,
    and every flagged value of any key (``musedrp.qctrend``)."""
    judged = verdicts(jobs)
    nights = sorted({v.record.night for v in judged})
    rule = (f"<p>Each value is judged against the same key, IFU and port on up to "
            f"{qctrend.WINDOW} earlier nights (at least {qctrend.MIN_HISTORY}): flagged beyond "
            f"{qctrend.K:g} spreads from their median (spread: 1.4826 MAD, at least the key's "
            f"pooled spread over its ports and slices and {qctrend.REL_FLOOR:.1%} of the "
            "median; rule in docs/qc.md). Green: the band; red crosses: flagged.</p>")
    if len(nights) < 2:
        return rule + f"<p>Nights: {', '.join(nights) or 'none'}; nothing to compare yet.</p>"
    series: dict[tuple[str, str], dict[int, list[qctrend.Verdict]]] = defaultdict(
        lambda: defaultdict(list))
    for v in judged:
        if _headline(v):
            series[(v.record.stage, v.record.key)][v.record.ifu].append(v)
    plots = [f"<h3>{html.escape(stage)}: {html.escape(key)}</h3>"
             + _png(_trend_figure(stage, key, by_ifu, nights))
             for (stage, key), by_ifu in sorted(series.items())]
    bad = [v for v in judged if v.flagged]
    return (rule + f'<p id="qc-counts">{len(nights)} nights, {len(judged)} QC values, '
            f"{sum(v.judged for v in judged)} judged, {len(bad)} flagged.</p>"
            + _flagged_tables(bad) + "".join(plots))


def _flagged_tables(bad: list[qctrend.Verdict]) -> str:
    """The flagged values by night, stage, IFU and port (with the furthest off), then all."""
    if not bad:
        return '<p class="ok" id="no-flags">No value left its band.</p>'
    groups: dict[tuple, list[qctrend.Verdict]] = defaultdict(list)
    for v in bad:
        groups[(v.record.night, v.record.stage, v.record.ifu, v.record.port or "")].append(v)
    rows = [[night, stage, f"{ifu:02d}", port, len(vs), worst.record.key, worst.record.value,
             worst.centre, round(worst.z or 0, 1)]
            for (night, stage, ifu, port), vs in groups.items()
            for worst in [max(vs, key=lambda v: abs(v.z or 0))]]
    every = [[v.record.night, v.record.stage, f"{v.record.ifu:02d}", v.record.port or "",
              v.record.key, v.record.value, v.centre, v.spread, round(v.z or 0, 1)] for v in bad]
    return (_table(["night", "stage", "IFU", "port", "keys flagged", "furthest off", "value",
                    "median", "spreads off"], rows, "flagged")
            + f"<details><summary>All {len(bad)} flagged values</summary>"
            + _table(["night", "stage", "IFU", "port", "key", "value", "median", "spread",
                      "spreads off"], every, "flagged-all") + "</details>")


ARCFILE_TIME = re.compile(r"MUSE\.(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})")


def _taken(path: str) -> datetime | None:
    """When a raw frame was taken, from its ARCFILE name (MUSE.<UT start>.fits)."""
    m = ARCFILE_TIME.search(Path(path).name)
    return datetime.fromisoformat(m[1]) if m else None


def _aligned(scibasic: set[str], jobs: list[Job]) -> str:
    """How the exposure whose scibasic jobs are ``scibasic`` was aligned to the others."""
    cubes = {j.order["job_key"] for j in _of(jobs, "scipost") if scibasic & set(j.order["needs"])}
    for j in _of(jobs, "align"):
        if cubes & set(j.order["needs"]):
            qc = j.manifest.get("qc", {}).get("OFFSET_LIST.fits", {})
            if qc.get("MUSEDRP ALIGN METHOD") == "muse_exp_align":
                return f"yes ({qc.get('QC EXPALIGN NMATCH MIN', '?')}+ stars matched)"
            return f"NO (header offsets: {qc.get('MUSEDRP ALIGN REASON', j.state)})"
    return "not aligned (single exposure)"


def scores(jobs: list[Job]) -> str:
    """ESO's archive score per science exposure (MUSE.md §11): arc within 1.5 days,
    twilight flat used, SKY present, exposures aligned."""
    by_key = {j.order["job_key"]: j for j in jobs}
    exposures: dict[str, list[Job]] = defaultdict(list)
    for j in jobs:
        if j.order["stage"] == "scibasic":
            for i in j.order["inputs"]:
                if i["tag"] in ("OBJECT", "SKY"):
                    exposures[i["path"]].append(j)
    sky_nights = {j.order["night"] for path, js in exposures.items() for j in js
                  if any(i["tag"] == "SKY" for i in j.order["inputs"])}
    rows = []
    for path, js in sorted(exposures.items()):
        first = js[0].order
        if not any(i["tag"] == "OBJECT" for i in first["inputs"]):
            continue
        t = _taken(path)
        arcs = [a for k in first["needs"] if k in by_key and by_key[k].order["stage"] == "wavecal"
                for i in by_key[k].order["inputs"] if i["tag"] == "ARC"
                if (a := _taken(i["path"])) is not None]
        gap = (max(abs((a - t).total_seconds()) for a in arcs) / 86400
               if arcs and t else None)
        arc = "unknown" if gap is None else f"{'yes' if gap <= 1.5 else 'NO'} ({gap:.2f} d)"
        twilight = any(i["tag"] == "TWILIGHT_CUBE" for j in js for i in j.order["inputs"])
        sky = first["night"] in sky_nights
        rows.append([Path(path).name, arc, "yes" if twilight else "NO",
                     "yes" if sky else "NO", _aligned({j.order["job_key"] for j in js}, jobs)])
    if not rows:
        return "<p>No science exposure.</p>"
    return ("<p>ESO's archive reprocessing scores every product on these criteria. Alignment: "
            "muse_exp_align's offsets matched stars in every exposure (their accuracy is "
            "not known without a reference; the simulated night's is in the section "
            "Alignment), or the header offsets were used.</p>"
            + _table(["exposure", "arc within 1.5 days", "twilight flat used", "SKY present",
                      "aligned on stars"], rows, "scores"))


SECTIONS = (("Failures", lambda p, j: failures(j)),
            ("Detectors: read noise and bias level", lambda p, j: detectors(j)),
            ("Exposures: ESO score", lambda p, j: scores(j)),
            ("Master bias and flat, traced slice edges", lambda p, j: thumbnails(j)),
            ("Wavelength solution", lambda p, j: wavelength(j)),
            ("Standard star response", lambda p, j: standard(j)),
            ("Final cube: white-light image", lambda p, j: white_light(j)),
            ("Combined cube", lambda p, j: combined(j)),
            ("Alignment of the exposures", lambda p, j: alignment(j)),
            ("Sky", lambda p, j: sky(j)),
            ("QC over nights", lambda p, j: trends(j)),
            ("Job timings and memory", lambda p, j: timings(j)),
            ("Association decisions", lambda p, j: decisions(p)))


def render(out: Path) -> str:
    plan, jobs = load(out)
    body = [f"<h1>musedrp reduction report: {html.escape(out.resolve().name)}</h1>",
            summary(plan, jobs)]
    for title, section in SECTIONS:
        anchor = re.sub(r"\W+", "-", title.lower()).strip("-")
        body.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>'
                    f"{section(plan, jobs)}</section>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>musedrp report: {html.escape(out.resolve().name)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def write(out: Path, path: Path | None = None) -> Path:
    path = path or out / "report.html"
    path.write_text(render(out))
    return path
