"""Associate calibrations with the science and turn the choice into work orders.

The rules are ESO's (MUSE.md §5, §8) plus those an expert applies by hand (§5.4):
calibration sets are complete templates; they must match the science frames' read-out mode
and binning (flats and LSF also the instrument mode, arcs, skyflats and ILLUM the optics);
candidates are searched in levels (the science night, then ±1 day, then a window per
calibration type; nothing beyond it) and, within the best level, the template closest in time
wins; the standard star is the same night's; skyflats are capped by the memory budget;
static calibrations are chosen by date and field mode; ties are broken by (|dt|, MJD-OBS,
ARCFILE) so that plans are reproducible.  A night without science still gets its
calibrations reduced (masters and QC).  Every frame ends with a note saying how it was used
or why not, every choice with a decision.
"""

import hashlib
import json
import math
import os
import re
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cache, cached_property, lru_cache
from pathlib import Path
from statistics import fmean
from typing import NamedTuple

from musedrp import pieces
from musedrp.errors import NoWork
from musedrp.frames import Frame, Setup
from musedrp.messages import InputFile, WorkOrder, ranks
from musedrp.stages import RecipeParams, StageSpec, product_tag
from musedrp.statics import choose_static
from musedrp.tags import Tag
from musedrp.topology import BY_NAME

# The widest association window per calibration type, in days (MUSE.md §8): musered falls
# back ±5 nights for standards, mypython takes skyflats within 15 days, ESO's archive
# reprocessing flags an arc more than 1.5 days from the science.  Within a window the
# levels are: the science night, then ±1 day, then the rest (marked DEGRADED).
WIDEST_DAYS = {Tag.BIAS: 7.0, Tag.FLAT: 7.0, Tag.ARC: 3.0, Tag.SKYFLAT: 15.0, Tag.STD: 5.0}
SEARCH_DAYS = max(WIDEST_DAYS.values()) + 1  # a night's plan reads no frame farther away
# Prompt mode: an incomplete template may still grow while frames arrive, and for an hour
# after its last exposure (a sequence takes minutes); after that it is used as it is
GROWING_DAYS = 1 / 24
LEVELS = ("the science night", "within 1 day", "within the widest window")
# ILLUM: the closest within 2 h of the exposure, at most 1 degree C warmer or colder
# (musered's rule; muse.oca sets none)
ILLUM_HOURS, ILLUM_KELVIN = 2.0, 1.0
VIGNETTING_BEFORE_MJD = 57823.0  # muse.oca: a VIGNETTING_MASK only for frames before this


def rank(frame: Frame, mjd: float, night: str, ref: float) -> tuple:
    """Order of preference of a candidate (a frame, or a template by its first frame and
    mean MJD): validity level, distance in time, then MJD and ARCFILE for ties."""
    return (level(frame, night, ref), abs(mjd - ref), mjd, frame.arcfile)


def level(frame: Frame, night: str, ref: float) -> int:
    """0 on the science night, 1 within a day of ``ref``, 2 beyond."""
    return 0 if frame.night == night else 1 if abs(frame.mjd - ref) <= 1.0 else 2


class Index:
    """Classified frames by tag, sorted by MJD-OBS: the candidates near a time are found by
    bisection, so planning a night costs the same in a registry of 10 nights or 10 000."""

    def __init__(self, frames: Iterable[Frame]) -> None:
        self.by_tag: dict[Tag, list[Frame]] = defaultdict(list)
        for f in sorted((f for f in frames if f.tag is not None),
                        key=lambda f: (f.mjd, f.arcfile, f.path)):
            self.by_tag[f.tag].append(f)
        self.mjds = {t: [f.mjd for f in fs] for t, fs in self.by_tag.items()}

    def all(self, tag: Tag) -> list[Frame]:
        return self.by_tag.get(tag, [])

    def near(self, tag: Tag, ref: float, days: float) -> list[Frame]:
        """Frames of ``tag`` taken within ``days`` of MJD ``ref``."""
        mjds = self.mjds.get(tag, [])
        return self.all(tag)[bisect_left(mjds, ref - days):bisect_right(mjds, ref + days)]


# Frames of kinds no stage consumes, and why.
UNUSED = {
    Tag.ARC_LSF: "long LSF arc sequences are not used: muse_lsf runs on the night's arcs",
    Tag.SKY: "no object exposure of its setup on its night to take a sky model from it",
    Tag.ASTROMETRY: "astrometric fields are not reduced: muse_scipost uses the static "
                    "ASTROMETRY_WCS calibration",
    Tag.DARK: "darks are not used (as in ESO's on-line pipeline)",
    Tag.MASK: "geometry (pinhole-mask) frames are not reduced: GEOMETRY_TABLE is static",
    Tag.STD: "no science within 5 days needs this standard star, and its night has no biases "
             "of its own to reduce it with",
}


def hours(mjd_delta: float) -> str:
    return f"{abs(mjd_delta) * 24:.1f} h"


@dataclass(frozen=True)
class Template:
    """Frames of one tag, setup and TPL.START: the atomic unit of a calibration set."""

    frames: tuple[Frame, ...]

    @property
    def first(self) -> Frame:
        return self.frames[0]

    @cached_property
    def mjd(self) -> float:
        return fmean(f.mjd for f in self.frames)

    @property
    def complete(self) -> bool:
        return len(self.frames) == self.first.tpl_nexp

    @property
    def ifus(self) -> set[int]:
        return set.intersection(*(set(f.ifus) for f in self.frames))

    def __str__(self) -> str:
        f = self.first
        return (f"{f.tag} template {f.tpl_start} ({len(self.frames)}/{f.tpl_nexp} frames, "
                f"{f.setup.key if f.setup else '?'})")


def templates(frames: Iterable[Frame]) -> list[Template]:
    groups: dict[tuple[str, str, str], list[Frame]] = defaultdict(list)
    for f in frames:
        groups[f.template].append(f)
    return [Template(tuple(sorted(g, key=lambda f: (f.tpl_expno, f.mjd, f.arcfile))))
            for _, g in sorted(groups.items())]


# Match keys: (description, getter) pairs compared between calibration and science.
READOUT: tuple[tuple[str, Callable[[Setup], object]], ...] = (
    ("read-out mode", lambda s: (s.readout_id, s.binx, s.biny)),
)
MODE = (("instrument mode", lambda s: s.ins_mode),)
READOUT_AND_MODE = (*READOUT, *MODE)
# TRACE_TABLE, WAVECAL_TABLE, TWILIGHT_CUBE, ILLUM: nominal/extended and WFM/NFM (MUSE.md §5.1)
READOUT_AND_OPTICS = (*READOUT, ("filter (nominal/extended)", lambda s: s.nominal),
                      ("field mode", lambda s: s.field))


@dataclass
class Plan:
    """Work orders in dependency order, and a note for every frame."""

    frames: list[Frame]
    orders: list[WorkOrder] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    used: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    decisions: list[str] = field(default_factory=list)
    by_key: dict[str, WorkOrder] = field(default_factory=dict)  # the orders
    inputs: dict[tuple, "Ident"] = field(default_factory=dict)  # one per distinct input
    # prompt mode (the planner service): the MJD it plans at, and whether frames still arrive
    now: float | None = None
    arriving: bool = False
    recheck: float | None = None  # MJD when a template held as growing stops growing

    def __post_init__(self) -> None:
        self.index = Index(self.frames)

    def note(self, frame: Frame, reason: str) -> None:
        if reason not in self.notes[frame.path]:
            self.notes[frame.path].append(reason)

    def growing(self, t: Template) -> str:
        """Why incomplete ``t`` may still get its missing frames ("" if not, or not in prompt
        mode)."""
        if self.now is None or t.complete:
            return ""
        if self.arriving:
            return "frames are still arriving"
        last = max(f.mjd for f in t.frames)
        if self.now - last < GROWING_DAYS:
            self.recheck = min(self.recheck or math.inf, last + GROWING_DAYS)
            return f"its last frame was taken {(self.now - last) * 1440:.0f} min ago"
        return ""

    def status(self, frame: Frame) -> tuple[str, list[str]]:
        """(``used``, job keys), or ``unclassified``/``rejected``/``unused`` with reasons."""
        if frame.tag is None:
            return "unclassified", [frame.reason]
        if frame.path in self.used:
            return "used", sorted(self.used[frame.path])
        if notes := self.notes.get(frame.path):
            return "rejected", notes
        return "unused", [UNUSED.get(frame.tag, "no stage uses this frame")]

    # The input files of the orders, each made once with its part of a job's identity: a
    # master bias is read by a dozen orders.  (Pydantic validates an InputFile in half the
    # time ``model_construct`` takes to skip it; a year's plan asks for ~2 million inputs,
    # hence no closure per call.)

    def raw_input(self, f: Frame, ifu: int | None, ifus: tuple[int, ...],
                  per_ifu: bool) -> "Ident":
        key = ("raw", f.path, ifu, ifus, per_ifu)
        if (found := self.inputs.get(key)) is None:
            found = self.inputs[key] = ident(InputFile(
                tag=f.tag, path=f.path, ifu=ifu,
                datasum=",".join([f.datasums.get(i, "") for i in ifus]),
                ranges=ifu_ranges(f, ifu if per_ifu else None)))
        return found

    def product_input(self, root: str, u: WorkOrder, name: str) -> "Ident":
        key = ("product", u.job_key, name)  # a job key names one order
        if (found := self.inputs.get(key)) is None:
            found = self.inputs[key] = ident(InputFile(
                tag=_tag(name), path=os.path.join(root, u.product_dir, name), job_key=u.job_key))
        return found

    def static_input(self, tag: Tag, f: Frame) -> "Ident":
        key = ("static", tag, f.path)
        if (found := self.inputs.get(key)) is None:
            found = self.inputs[key] = ident(InputFile(tag=tag, path=f.path, datasum=f.checksum))
        return found

    def add(self, order: WorkOrder, frames: Iterable[Frame]) -> WorkOrder:
        """The plan's order of ``order``'s job: ``order``, or the same job planned before
        (from another setup's cascade, its products where that one writes them)."""
        kept = self.by_key.setdefault(order.job_key, order)
        if kept is order:
            self.orders.append(order)
        for f in frames:
            self.used[f.path].add(order.job_key)
        return kept


def _mismatch(setup: Setup, science: Setup, keys, recipe: str) -> str:
    for what, get in keys:
        if get(setup) != get(science):
            mine, theirs = ((setup.readout_label, science.readout_label)
                            if what == "read-out mode" else (get(setup), get(science)))
            return (f"{what} {mine} differs from the science frames' {theirs}: "
                    f"{recipe} refuses mixed {what}s")
    return ""


def _usable(plan: Plan, frames: Iterable[Frame], setup: Setup, keys, recipe: str) -> list[Frame]:
    """The frames whose setup matches; a note on each of the others."""
    out = []
    for f in frames:
        if why := _mismatch(f.setup, setup, keys, recipe):
            plan.note(f, why)
        else:
            out.append(f)
    return out


def days(mjd_delta: float) -> str:
    return f"{abs(mjd_delta):.1f} d"


def choose_template(n: "Night", tag: Tag, spec: StageSpec, keys,
                    candidates: Sequence[Frame] | None = None) -> Template | None:
    """The matching, complete template of the best level closest in time to the science;
    notes on the others.  Only frames within the tag's widest window are considered."""
    plan, ref = n.plan, n.ref
    if candidates is None:
        candidates = plan.index.near(tag, ref, WIDEST_DAYS[tag])
    min_count = spec.raw_min()
    matching = _usable(plan, candidates, n.setup, keys, spec.recipe)
    usable, degraded = [], []
    for t in templates(matching):
        if len(t.frames) < min_count:
            why = f"{t} has fewer than the {min_count} frames {spec.recipe} needs"
            for f in t.frames:
                plan.note(f, why)
        else:
            (usable if t.complete else degraded).append(t)

    def of(t: Template) -> tuple:
        return rank(t.first, t.mjd, n.night, ref)

    growing = {id(t): why for t in degraded if (why := plan.growing(t))}
    if growing and id(wait := min(usable + degraded, key=of)) in growing:
        n.wait_for(wait, growing[id(wait)])
        return None
    degraded = [t for t in degraded if id(t) not in growing]
    pool = usable or degraded
    if not pool:
        return None
    best = min(pool, key=of)
    if not best.complete:
        n.decide(f"DEGRADED: {best} is incomplete but no complete template exists")
    if (lvl := level(best.first, n.night, ref)) > 0:
        n.decide(f"DEGRADED: {best} of night {best.first.night}, {days(best.mjd - ref)} from "
                 f"the science: none on the science night ({LEVELS[lvl]}, at most "
                 f"{WIDEST_DAYS[tag]:g} d for {tag})")
    for t in usable + degraded:
        if t is not best:
            why = (f"{best} is of the science night" if of(t)[0] > of(best)[0] else
                   f"{best} is closer in time to the science "
                   f"({hours(best.mjd - ref)} vs {hours(t.mjd - ref)})")
            note = f"{t} not chosen: {why}"
            for f in t.frames:
                plan.note(f, note)
    return best


def ifu_ranges(f: Frame, ifu: int | None) -> tuple[tuple[int, int], ...]:
    """The byte ranges a job of one IFU reads from a raw frame: its primary HDU and that
    IFU's extension (services fetch only those); none, the whole file, for a job of all IFUs
    or a frame registered without its layout."""
    if ifu is None or ifu not in f.extents or not f.primary_size:
        return ()
    return ((0, f.primary_size), f.extents[ifu])


PLAIN = re.compile(r'[ !#-\[\]-~]*')  # printable ASCII but '"' and '\\': JSON as it is


class Ident(NamedTuple):
    """An input file and its part of a job's identity: what it is sorted by, and its JSON."""

    file: InputFile
    parts: tuple[str, str, str, str]
    text: str


def ident(f: InputFile) -> Ident:
    """An input's part of its job's identity.

    Raw inputs are identified by their name and the ``DATASUM`` of the extension read (both
    from headers, so planning never reads pixels), static calibrations by their name and the
    SHA-256 of the file, products by the key of the job that made them: product bytes carry
    creation dates, so hashing them would make every re-run look new.
    """
    parts = (f.tag.value, f.job_key, f.path.rpartition("/")[2], f.datasum)
    plain = PLAIN.fullmatch("".join(parts))  # else ``json.dumps`` escapes
    return Ident(f, parts, '["' + '", "'.join(parts) + '"]' if plain else json.dumps(parts))


def job_key(recipe: str, version: str, ifu: int | None, params: str,
            inputs: Iterable[Ident]) -> str:
    """Content-derived identity of a job: the SHA-256 of ``json.dumps([recipe, version, ifu,
    params, sorted input parts], sort_keys=True, default=str)``, written with the parameters
    (``params``: ``Resolved.text``) and each input's part (``ident``) encoded once."""
    tail = ", ".join(i.text for i in sorted(inputs, key=lambda i: i.parts))
    return hashlib.sha256(f"{_head(recipe, version, ifu, params)}, [{tail}]]"
                          .encode()).hexdigest()[:16]


@lru_cache(maxsize=4096)  # a stage's jobs share all of it but the IFU
def _head(recipe: str, version: str, ifu: int | None, params: str) -> str:
    return f"[{json.dumps(recipe)}, {json.dumps(version)}, {json.dumps(ifu)}, {params}"


class Resolved(NamedTuple):
    """A stage's parameters for a night: the model, its values, and their JSON as job keys
    encode it."""

    model: RecipeParams
    values: dict
    text: str


@dataclass
class Night:
    """Planning context of one (night, setup) group: its science frames, or none for a
    night of calibrations only (then ``ref`` is the mean time of its calibrations)."""

    plan: Plan
    night: str
    setup: Setup
    science: list[Frame]
    ifus: list[int]
    out_root: Path
    version: str
    overrides: dict[str, dict]
    memory_gb: float | None
    ref: float
    statics: dict[Tag, tuple[Frame | None, str]] = field(default_factory=dict)
    resolved: dict[tuple, Resolved] = field(default_factory=dict)
    waiting: bool = False  # for skyflats that may still arrive: the science is not planned

    @property
    def where(self) -> str:
        return f"night {self.night}, {self.setup.key}"

    def decide(self, text: str) -> None:
        self.plan.decisions.append(f"{self.where}: {text}")

    def wait_for(self, t: Template, why: str) -> None:
        """Say that what needs ``t``, which may still grow (``Plan.growing``: ``why``), is not
        planned."""
        self.decide(f"waiting for {t}: it may still grow ({why}); what needs it is planned "
                    "once it is complete or has stopped growing")

    def order(self, stage: str, ifu: int | None, raw: Sequence[Frame],
              calibs: Sequence[tuple[WorkOrder, str]], statics: Sequence[Tag] = (),
              reasons: Sequence[str] = (), n_ifus: int = 1, products=None,
              params: dict | None = None) -> WorkOrder:
        """``params``: the planner's choice for this job (the user's overrides win)."""
        spec = BY_NAME[stage].spec
        model, params, text = self.params(stage, params)
        plan, ifus = self.plan, (ifu,) if ifu else tuple(self.ifus)
        inputs = [plan.raw_input(f, ifu, ifus, spec.per_ifu) for f in raw]
        root = str(self.out_root) if self.out_root.parts else ""  # services: keys
        inputs += [plan.product_input(root, u, name) for u, name in calibs]
        inputs += [plan.static_input(tag, self.statics[tag][0]) for tag in statics]
        # where a job writes follows from its frames, as its key does: planned again from
        # another night's or setup's cascade (or in another plan), it is the same place
        night, setup = (raw[0].night, raw[0].setup.key) if raw else (self.night, self.setup.key)
        # not validated, as the inputs are not: every value comes from a classified frame, a
        # resolved parameter model, the stage's spec or this plan (a test validates a planned
        # night's orders); whoever decodes an order validates it
        order = WorkOrder.model_construct(
            stage=stage, recipe=spec.recipe,
            job_key=job_key(spec.recipe, self.version, ifu, text, inputs),
            night=night, setup=setup, ifu=ifu, inputs=tuple(i.file for i in inputs),
            params=params,
            memory_gb=spec.memory_for(model).estimate_gb(len(raw), n_ifus),
            timeout_s=float(spec.timeout_s),
            needs=tuple(dict.fromkeys(u.job_key for u, _ in calibs)),
            reasons=tuple(reasons) + tuple(self.statics[t][1] for t in statics),
            products=tuple(products or spec.product_names(ifu, model)),
        )
        return self.plan.add(order, [*raw, *(self.statics[t][0] for t in statics)])

    def params(self, stage: str, chosen: dict | None = None) -> Resolved:
        """The stage's resolved parameters, once per night and choice."""
        key = (stage, *sorted((chosen or {}).items()))
        if key not in self.resolved:
            model = BY_NAME[stage].spec.params(**(chosen or {}) | self.overrides.get(stage, {}))
            values = model.model_dump()
            self.resolved[key] = Resolved(model, values,
                                          json.dumps(values, sort_keys=True, default=str))
        return self.resolved[key]

    def static(self, tag: Tag, required: bool = True) -> bool:
        """Choose the static file of ``tag`` once; False (with a decision) if there is none."""
        if tag not in self.statics:
            candidates = self.plan.index.all(tag)
            self.statics[tag] = choose_static(candidates, tag, date.fromisoformat(self.night),
                                              self.setup.field)
            f, why = self.statics[tag]
            if f is None and required:
                self.decide(f"{why}: add ESO's static calibrations with --static-dir")
            elif f is not None:
                self.decide(why)
            for c in candidates:
                if c is not f:
                    self.plan.note(c, f"{tag}: another file is valid for night {self.night}")
        return self.statics[tag][0] is not None


@cache
def _tag(name: str) -> Tag:
    return product_tag(Path(name))


def _product(order: WorkOrder, tag: Tag) -> tuple[WorkOrder, str]:
    (name,) = [n for n in order.products if _tag(n) == tag]
    return order, name


def choose_closest(n: "Night", candidates: Sequence[Frame], ref: float, what: str) -> Frame | None:
    """The single frame of the best level closest in time; notes on the others."""
    if not candidates:
        return None

    def of(f: Frame) -> tuple:
        return rank(f, f.mjd, n.night, ref)

    best = min(candidates, key=of)
    for f in candidates:
        if f is best:
            continue
        if of(f)[0] > of(best)[0]:
            why = f"{best.name} was taken on the science night {n.night}"
        else:
            why = f"{best.name} is closer to the science"
        n.plan.note(f, f"{what} {f.target or f.name} of night {f.night} not chosen: {why} "
                       f"({hours(best.mjd - ref)} vs {hours(f.mjd - ref)} away)")
    return best


def choose_illum(n: "Night", exposure: Frame) -> Frame | None:
    """The ILLUM of the exposure's optics closest in time, within ILLUM_HOURS and
    ILLUM_KELVIN of it (a temperature missing on either side is not compared)."""
    plan = n.plan
    near = _usable(plan, plan.index.near(Tag.ILLUM, exposure.mjd, ILLUM_HOURS / 24),
                   n.setup, READOUT_AND_OPTICS, "muse_scibasic")
    ok = []
    for f in near:
        if None not in (f.temperature, exposure.temperature) and \
                abs(f.temperature - exposure.temperature) > ILLUM_KELVIN:
            plan.note(f, f"ILLUM not used for {exposure.name}: instrument temperature "
                         f"{f.temperature:.2f} C vs {exposure.temperature:.2f} C, more than "
                         f"{ILLUM_KELVIN:g} C apart")
        else:
            ok.append(f)
    return min(ok, key=lambda f: (abs(f.mjd - exposure.mjd), f.mjd, f.arcfile), default=None)


def plan_calibrations(n: Night) -> dict[str, dict[int, WorkOrder]]:
    """bias, flat, wavecal and lsf per IFU, as far as the frames go: a stage whose frames are
    missing is left out with a decision, and so is everything after it."""
    plan = n.plan
    bias = choose_template(n, Tag.BIAS, BY_NAME["bias"].spec, READOUT)
    flat = choose_template(n, Tag.FLAT, BY_NAME["flat"].spec, READOUT_AND_MODE)
    arcs = plan.index.near(Tag.ARC, n.ref, WIDEST_DAYS[Tag.ARC])
    for f in arcs:
        if len(f.lamps) != 1:
            plan.note(f, f"{len(f.lamps)} arc lamps on ({', '.join(f.lamps) or 'none'}): "
                         "muse_wavecal needs exactly one lamp per arc exposure")
    arcs = [f for f in arcs if len(f.lamps) == 1]
    arc = choose_template(n, Tag.ARC, BY_NAME["wavecal"].spec, READOUT_AND_OPTICS, arcs)
    chain = [("bias", bias), ("flat", flat), ("arc", arc)]
    if None in (c for _, c in chain):
        first = next(i for i, (_, c) in enumerate(chain) if c is None)
        later = [t for t, _ in chain[first + 1:]]
        n.decide(f"no usable {chain[first][0].upper()} template: "
                 + ("nothing planned" if first == 0 else
                    f"only {', '.join(t for t, _ in chain[:first])} planned")
                 + (f" ({', '.join(later)} frames would need it)" if later else ""))
        chain = chain[:first]
    if not chain:
        return {}
    # LSF_PROFILE must match the science's instrument mode as well (muse.oca)
    lsf_arc = arc
    if arc is not None and arc.first.setup.ins_mode != n.setup.ins_mode:
        lsf_arc = choose_template(n, Tag.ARC, BY_NAME["lsf"].spec, (*READOUT_AND_OPTICS, *MODE),
                                  arcs)
        n.decide(f"{arc} is of instrument mode {arc.first.setup.ins_mode}: "
                 + (f"LSF from {lsf_arc}" if lsf_arc else
                    f"no ARC template of {n.setup.ins_mode}, so no LSF_PROFILE"))
    available = set.intersection(*(c.ifus for _, c in chain),
                                 *(set(f.ifus) for f in n.science))
    if set(n.ifus) - available:
        n.decide(f"IFU(s) {sorted(set(n.ifus) - available)} requested but not present in "
                 "every chosen frame")
    n.ifus = sorted(set(n.ifus) & available)
    target = "the science" if n.science else "the night's calibrations"
    why = {t: f"{c} chosen: closest to {target} ({hours(c.mjd - n.ref)} away)"
           for t, c in chain}
    if arc is not None and "arc" in why:
        why["arc"] += f"; lamps {', '.join(sorted({f.lamps[0] for f in arc.frames}))}"
    for w in why.values():
        n.decide(w)
    with_arcs = "arc" in why and n.static(Tag.LINE_CATALOG)
    out: dict[str, dict[int, WorkOrder]] = defaultdict(dict)
    for ifu in n.ifus:
        out["bias"][ifu] = b = n.order("bias", ifu, bias.frames, [], reasons=[why["bias"]])
        if "flat" not in why:
            continue
        out["flat"][ifu] = fl = n.order("flat", ifu, flat.frames, [_product(b, Tag.MASTER_BIAS)],
                                        reasons=[why["flat"]])
        if not with_arcs:
            continue
        base = [_product(b, Tag.MASTER_BIAS), _product(fl, Tag.TRACE_TABLE)]
        out["wavecal"][ifu] = wc = n.order("wavecal", ifu, arc.frames, base, [Tag.LINE_CATALOG],
                                           [why["arc"]])
        if lsf_arc is not None:
            out["lsf"][ifu] = n.order("lsf", ifu, lsf_arc.frames,
                                      [*base, _product(wc, Tag.WAVECAL_TABLE)],
                                      [Tag.LINE_CATALOG], [why["arc"]])
    return out


def per_ifu_calibs(cal: dict[str, dict[int, WorkOrder]], ifu: int) -> list[tuple[WorkOrder, str]]:
    """MASTER_BIAS, MASTER_FLAT, TRACE_TABLE and WAVECAL_TABLE of one IFU."""
    return [_product(cal["bias"][ifu], Tag.MASTER_BIAS),
            _product(cal["flat"][ifu], Tag.MASTER_FLAT),
            _product(cal["flat"][ifu], Tag.TRACE_TABLE),
            _product(cal["wavecal"][ifu], Tag.WAVECAL_TABLE)]


def plan_twilight(n: Night, cal, illum: Frame | None) -> WorkOrder | None:
    plan = n.plan
    spec = BY_NAME["twilight"].spec
    if 1 not in n.ifus:
        n.decide("twilight not planned: muse_twilight needs IFU 1 (its flux reference)")
        return None
    if not n.static(Tag.GEOMETRY_TABLE):
        return None
    skyflats = _usable(plan, plan.index.near(Tag.SKYFLAT, n.ref, WIDEST_DAYS[Tag.SKYFLAT]),
                       n.setup, READOUT_AND_OPTICS, spec.recipe)
    if not skyflats:
        n.decide("twilight not planned: no usable SKYFLAT frames within "
                 f"{WIDEST_DAYS[Tag.SKYFLAT]:g} d")
        return None
    best = min(skyflats, key=lambda f: (level(f, n.night, n.ref), abs(f.mjd - n.ref)))
    chosen_night = best.night
    if chosen_night != n.night:
        n.decide(f"DEGRADED: no skyflats of night {n.night}; using night {chosen_night}, "
                 f"{days(best.mjd - n.ref)} from the science")
    pool = sorted((f for f in skyflats if f.night == chosen_night),
                  key=lambda f: (abs(f.mjd - n.ref), f.mjd, f.arcfile))
    for f in skyflats:
        if f.night != chosen_night:
            plan.note(f, f"skyflat of night {f.night}: night {chosen_night} is closer")
    for t in templates(pool):
        if why := plan.growing(t):
            n.wait_for(t, why)
            n.waiting = True
            return None
    # the cap counts every raw frame the job reads: the ILLUM is one more (MUSE.md §9)
    n_ifus = len(n.ifus)
    room = (len(pool) + 1 if n.memory_gb is None  # no budget: all of them and the ILLUM
            else spec.memory.max_frames(n.memory_gb, n_ifus))
    if illum is not None and room - 1 < min(len(pool), spec.raw_min()):
        n.decide(f"ILLUM {illum.name} left out of muse_twilight: it does not fit the memory "
                 f"budget of {n.memory_gb:.1f} GB beside {spec.raw_min()} skyflats")
        illum = None
    extra = [illum] if illum else []
    fit = min(len(pool), room - len(extra))
    take, left = pool[:fit], pool[fit:]
    reasons = [f"{len(pool)} skyflats of night {chosen_night}"]
    if left:
        estimate = spec.memory.estimate_gb(fit + len(extra), n_ifus)
        why = (f"only {fit} of {len(pool)} skyflats fit the memory budget of "
               f"{n.memory_gb:.1f} GB for {n_ifus} IFU(s) ({estimate:.2f} GB estimated"
               + (" with the ILLUM frame" if extra else "") + ")")
        reasons.append(f"{why}; left out: {', '.join(f.name for f in left)}")
        n.decide(why)
        for f in left:
            plan.note(f, f"skyflat left out of muse_twilight: {why}; the closest in time were kept")
    if len(take) < spec.raw_min():
        n.decide(f"twilight not planned: {len(take)} skyflats fit, muse_twilight needs "
                 f"{spec.raw_min()}")
        return None
    raw = sorted(take, key=lambda f: f.mjd) + extra
    statics = [Tag.GEOMETRY_TABLE]
    if all(f.mjd < VIGNETTING_BEFORE_MJD for f in raw):
        if n.static(Tag.VIGNETTING_MASK, required=False):
            statics.append(Tag.VIGNETTING_MASK)
        else:
            n.decide("no VIGNETTING_MASK available (optional for frames before MJD "
                     f"{VIGNETTING_BEFORE_MJD:g})")
    calibs = [c for ifu in n.ifus for c in per_ifu_calibs(cal, ifu)]
    return n.order("twilight", None, raw, calibs, statics, reasons, n_ifus=n_ifus)


CALIBRATION_TAGS = (Tag.BIAS, Tag.FLAT, Tag.ARC, Tag.SKYFLAT)


def plan_night(frames: Sequence[Frame], out_root: Path, version: str,
               ifus: Iterable[int] | None = None, overrides: dict[str, dict] | None = None,
               memory_gb: float | None = None, nights: Iterable[str] | None = None,
               now: float | None = None, arriving: bool = False) -> Plan:
    """Plan the whole cascade for every (night, setup) of the science frames, and the
    calibrations of every night without science; only ``nights`` if given (``frames`` must
    then hold every frame within ``SEARCH_DAYS`` of them: the candidates they may use).
    In prompt mode (``now``, the MJD, given) a template that may still grow is waited for
    (``Plan.growing``): what needs it is not planned yet.

    Raises
    ------
    NoWork
        There is neither a science frame nor a calibration template to reduce.
    """
    plan = Plan(frames=list(frames), now=now, arriving=arriving)
    good = [f for f in frames if f.tag is not None]
    # the science of a night is its OBJECT frames; on a night without any, a standard star
    # observed beside the night's own biases (throughput monitoring), never one a
    # calibration package brought alone.  Decided per night, so that planning some nights
    # gives what planning all of them gives.
    object_nights = {f.night for f in good if f.tag == Tag.OBJECT}
    bias_nights = {f.night for f in good if f.tag == Tag.BIAS}
    groups: dict[tuple[str, Setup], list[Frame]] = defaultdict(list)
    for f in good:
        if f.tag == Tag.OBJECT or (f.tag == Tag.STD and f.night not in object_nights
                                   and f.night in bias_nights):
            groups[(f.night, f.setup)].append(f)
    calib_only: dict[tuple[str, Setup], list[Frame]] = defaultdict(list)
    science_nights = {night for night, _ in groups}
    for f in good:
        if f.tag in CALIBRATION_TAGS and f.night not in science_nights:
            calib_only[(f.night, f.setup)].append(f)
    if nights is not None:
        wanted_nights = set(nights)
        groups = {k: v for k, v in groups.items() if k[0] in wanted_nights}
        calib_only = {k: v for k, v in calib_only.items() if k[0] in wanted_nights}
    if not groups and not calib_only:
        raise NoWork("neither science frames (OBJECT, STD) nor calibrations (BIAS, FLAT, ARC, "
                     "SKYFLAT): nothing to reduce")
    key = lambda kv: (kv[0][0], kv[0][1].key)  # noqa: E731
    for (night, setup), sci in sorted(groups.items(), key=key):
        wanted = sorted(set(ifus) if ifus is not None else set.union(*(set(f.ifus) for f in sci)))
        n = Night(plan, night, setup, sci, wanted, out_root, version, overrides or {}, memory_gb,
                  ref=fmean(f.mjd for f in sci))
        n.decide(f"{len(sci)} science frame(s), IFUs {wanted}")
        cal = plan_calibrations(n)
        if "wavecal" not in cal:
            for f in sci:
                plan.note(f, "not reduced: no wavelength calibration for it (see the decisions)")
            continue
        illum = choose_illum(n, min(sci, key=lambda f: (abs(f.mjd - n.ref), f.mjd)))
        twilight = plan_twilight(n, cal, illum)
        if n.waiting:
            for f in sci:
                plan.note(f, "not planned yet: its twilight's skyflats may still arrive")
            continue
        plan_science(n, cal, twilight)
    plan_calibration_nights(plan, calib_only, out_root, version, ifus, overrides or {},
                            memory_gb)
    below = ranks(plan.orders)
    plan.orders = [o.model_copy(update={"rank": below[o.job_key]}) for o in plan.orders]
    return plan


def plan_calibration_nights(plan: Plan, groups: dict[tuple[str, Setup], list[Frame]],
                            out_root: Path, version: str, ifus: Iterable[int] | None,
                            overrides: dict[str, dict], memory_gb: float | None) -> None:
    """Masters and QC of the nights without science, one cascade per setup whose flats (or,
    without flats, biases) were taken there, as the observatory reduces every morning's
    calibrations.  Binned (engineering) read-out modes are not reduced on their own."""
    flat_nights = {night for (night, _), fs in groups.items() if any(f.tag == Tag.FLAT
                                                                     for f in fs)}
    for (night, setup), frames in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1].key)):
        tags = {f.tag for f in frames}
        if (setup.binx, setup.biny) != (1, 1):
            for f in frames:
                plan.note(f, f"night {night} has no science: the binned read-out "
                             f"{setup.readout_label} is not reduced on its own")
            continue
        if Tag.FLAT not in tags and (Tag.BIAS not in tags or night in flat_nights):
            continue  # such frames serve the cascade of the night's flats, if any
        wanted = sorted(set(ifus) if ifus is not None
                        else set.union(*(set(f.ifus) for f in frames)))
        n = Night(plan, night, setup, [], wanted, out_root, version, overrides, memory_gb,
                  ref=fmean(f.mjd for f in frames))
        n.decide(f"no science frames: the night's calibrations alone, IFUs {wanted}")
        cal = plan_calibrations(n)
        if "wavecal" in cal and any(f.night == night for f in plan.index.near(
                Tag.SKYFLAT, n.ref, 1.0)):
            plan_twilight(n, cal, None)


def adjacent_run(ifus: Sequence[int], length: int = 3) -> bool:
    """Whether ``ifus`` hold ``length`` consecutive IFUs (neighbours in the field)."""
    have = set(ifus)
    return any(all(i + k in have for k in range(length)) for i in have)


def plan_science(n: Night, cal, twilight: WorkOrder | None) -> None:
    """scibasic per exposure and IFU; standard from the chosen star; a sky model per SKY
    exposure; scipost per exposure; alignment and combination per target."""
    plan = n.plan
    if not n.static(Tag.GEOMETRY_TABLE):
        return
    stds = _usable(plan, plan.index.near(Tag.STD, n.ref, WIDEST_DAYS[Tag.STD]), n.setup,
                   READOUT_AND_MODE, "muse_standard")
    std = choose_closest(n, stds, n.ref, "standard star")
    if std is not None:
        if std.night != n.night:
            n.decide(f"DEGRADED: no standard star on night {n.night}; using {std.name} of "
                     f"night {std.night}, {days(std.mjd - n.ref)} from the science")
        else:
            n.decide(f"standard star {std.target} ({std.name}) chosen: same night, "
                     f"{hours(std.mjd - n.ref)} from the science")
    objects = [f for f in n.science if f.tag == Tag.OBJECT]
    skies = _usable(plan, [f for f in plan.index.near(Tag.SKY, n.ref, 1.0)
                           if f.night == n.night], n.setup, READOUT_AND_MODE, "muse_create_sky")
    extra = [_product(twilight, Tag.TWILIGHT_CUBE)] if twilight else []
    if twilight is None:
        n.decide("no TWILIGHT_CUBE: scibasic runs without the twilight correction")
    pixtables: dict[str, dict[int, WorkOrder]] = defaultdict(dict)
    scibasic = BY_NAME["scibasic"].spec
    params = scibasic.params(**n.overrides.get("scibasic", {}))
    for exposure in [*objects, *skies, *([std] if std else [])]:
        mine = {Tag(f"PIXTABLE_{exposure.tag}"), Tag(f"{exposure.tag}_RED"),
                Tag(f"{exposure.tag}_RESAMPLED")}  # what scibasic makes of this raw tag
        illum = choose_illum(n, exposure)
        if illum is None:
            n.decide(f"no ILLUM within {ILLUM_HOURS:g} h and {ILLUM_KELVIN:g} C of "
                     f"{exposure.name}: its slice illumination is not corrected (optional)")
        for ifu in n.ifus:
            names = [name for name in scibasic.product_names(ifu, params)
                     if _tag(name) in mine]
            pixtables[exposure.path][ifu] = n.order(
                "scibasic", ifu, [exposure] + ([illum] if illum else []),
                per_ifu_calibs(cal, ifu) + extra, [Tag.GEOMETRY_TABLE], products=names)
    response = None
    if std is None:
        n.decide("no standard star: neither response nor flux-calibrated cubes")
    elif not adjacent_run(n.ifus):
        n.decide(f"standard not planned: muse_standard needs at least 3 adjacent IFUs around "
                 f"the star, IFUs {n.ifus} planned")
    elif n.static(Tag.EXTINCT_TABLE) and n.static(Tag.STD_FLUX_TABLE):
        statics = [Tag.EXTINCT_TABLE, Tag.STD_FLUX_TABLE]
        if n.static(Tag.FILTER_LIST, required=False):
            statics.append(Tag.FILTER_LIST)
        tables = [_product(o, Tag.PIXTABLE_STD) for o in pixtables[std.path].values()]
        response = n.order("standard", None, [], tables, statics,
                           [f"standard star {std.target} from {std.name}"], n_ifus=len(n.ifus))
    if response is None:
        return
    statics = [Tag.EXTINCT_TABLE]
    for tag in (Tag.ASTROMETRY_WCS, Tag.FILTER_LIST):
        if n.static(tag, required=False):
            statics.append(tag)
    if Tag.ASTROMETRY_WCS not in statics:
        n.decide("no ASTROMETRY_WCS: muse_scipost uses its built-in default astrometry")
    lsf = [_product(cal["lsf"][ifu], Tag.LSF_PROFILE) for ifu in n.ifus if ifu in cal["lsf"]]
    flux = [_product(response, Tag.STD_RESPONSE), _product(response, Tag.STD_TELLURIC)]
    cubes = {}
    for exposure in objects:
        tables = [_product(o, Tag.PIXTABLE_OBJECT) for o in pixtables[exposure.path].values()]
        method, sky, why = choose_sky(n, exposure, skies, pixtables, flux, lsf)
        n.decide(f"{exposure.name}: {why}")
        cubes[exposure.path] = n.order(
            "scipost", None, [], [*tables, *flux, *lsf, *sky],
            statics + ([Tag.SKY_LINES] if method == "model" else []),
            [f"exposure {exposure.name}; response from {std.name}", why], n_ifus=len(n.ifus),
            params={"skymethod": method})
    plan_combination(n, objects, cubes)


def choose_sky(n: Night, exposure: Frame, skies: Sequence[Frame], pixtables, flux,
               lsf) -> tuple[str, list[tuple[WorkOrder, str]], str]:
    """ESO's automatic sky (MUSE.md §10): the model of the SKY exposure closest in time
    (``subtract-model``); without one, a model from the object field's darkest spaxels
    (``model``); both need a SKY_LINES list and every IFU's LSF, else ``simple``."""
    missing = [what for what, ok in (("a SKY_LINES list", n.static(Tag.SKY_LINES, False)),
                                     ("an LSF_PROFILE of every IFU", len(lsf) == len(n.ifus)))
               if not ok]
    if missing:
        return "simple", [], (f"sky: simple (the darkest part of the field): a sky model "
                              f"needs {' and '.join(missing)}")
    sky = min(skies, key=lambda f: (abs(f.mjd - exposure.mjd), f.mjd, f.arcfile), default=None)
    if sky is None:
        return "model", [], (f"sky: model, fitted to the darkest "
                             f"{n.params('scipost').model.skymodel_fraction:.0%} of "
                             f"the field: no SKY exposure of this setup on night {n.night}")
    tables = [_product(o, Tag.PIXTABLE_SKY) for o in pixtables[sky.path].values()]
    model = n.order("sky", None, [], [*tables, *flux, *lsf],
                    [Tag.EXTINCT_TABLE, Tag.SKY_LINES], [f"SKY exposure {sky.name}"],
                    n_ifus=len(n.ifus))
    return "subtract-model", [_product(model, Tag.SKY_LINES), _product(model, Tag.SKY_CONTINUUM)], \
        f"sky: subtract-model, the model of SKY exposure {sky.name}, " \
        f"{hours(sky.mjd - exposure.mjd)} away"


# Exposures are combined when their field centres are closer than half the WFM field; the
# recipe's limit is far wider (0.5 deg), but farther apart they hardly overlap
OVERLAP_ARCSEC = 30.0


def separation(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Arcsec between two (RA, DEC) pointings (flat sky: the fields are arcminutes apart)."""
    dra = (a[0] - b[0] + 180.0) % 360.0 - 180.0
    return 3600.0 * math.hypot(dra * math.cos(math.radians((a[1] + b[1]) / 2)), a[1] - b[1])


def plan_combination(n: Night, objects: Sequence[Frame], cubes: dict[str, WorkOrder]) -> None:
    """Per target: muse_exp_align on the exposures' field images, muse_exp_combine of their
    reduced pixel tables with the checked offsets.  Exposures whose field overlaps no other
    (by the header pointings) stay single, with the reason."""
    by_target: dict[str, list[Frame]] = defaultdict(list)
    for e in objects:
        if e.path in cubes:
            by_target[e.target or "(no target name)"].append(e)
    for target, exposures in sorted(by_target.items()):
        keep = []
        for e in exposures:
            others = [separation(e.pointing, o.pointing) for o in exposures
                      if o is not e and o.pointing and e.pointing]
            if e.pointing is None:
                n.decide(f"{e.name} not combined: no RA/DEC in its header to place it")
            elif len(exposures) > 1 and min(others, default=math.inf) > OVERLAP_ARCSEC:
                n.decide(f"{e.name} not combined: its field centre is {min(others):.0f} "
                         f"arcsec from the nearest other exposure of {target}, more than the "
                         f"{OVERLAP_ARCSEC:g} arcsec at which fields still overlap")
            else:
                keep.append(e)
        if len(keep) < 2:
            n.decide(f"{target}: {len(keep)} exposure(s) to combine: no alignment or combined "
                     "cube, the exposure cubes are the product")
            continue
        names = ", ".join(e.name for e in keep)
        align = n.order("align", None, [], [_product(cubes[e.path], Tag.IMAGE_FOV)
                                             for e in keep],
                        reasons=[f"{target}: {len(keep)} exposures ({names})"],
                        products=["OFFSET_LIST.fits", "PREVIEW_FOV.fits",
                                  *(f"SOURCE_LIST_{i:04d}.fits" for i in range(1, len(keep) + 1))])
        statics = [Tag.FILTER_LIST] if n.static(Tag.FILTER_LIST, required=False) else []
        inputs = [*(_product(cubes[e.path], tag) for tag in (Tag.PIXTABLE_REDUCED, Tag.IMAGE_FOV)
                    for e in keep), _product(align, Tag.OFFSET_LIST)]
        why = f"{target}: {len(keep)} exposures ({names}), offsets from muse_exp_align, checked"
        plan_cube(n, f"{target}: {len(keep)} exposures", inputs, statics, why,
                  len(n.ifus) * len(keep))


def plan_cube(n: Night, what: str, inputs, statics, why: str, size: int) -> None:
    """muse_exp_combine of ``size`` IFU-exposures: one job if it fits the memory budget, else
    the fewest wavelength pieces that each fit, and the stitch (``musedrp.pieces``)."""
    model = n.params("combine").model
    memory = BY_NAME["combine"].spec.memory_for(model)
    whole = memory.estimate_gb(0, size)
    count = pieces.count(lambda f: n.memory_gb is None
                         or memory.estimate_gb(0, size * f) <= n.memory_gb)
    if count is None:
        n.decide(f"{what} not combined: even in {pieces.MOST} wavelength pieces "
                 f"muse_exp_combine of {size} IFU-exposures needs "
                 f"{memory.estimate_gb(0, size * pieces.fraction(pieces.MOST)):.1f} GB, more "
                 f"than the memory budget of {n.memory_gb:.1f} GB; the exposure cubes are "
                 "the product")
        return
    if count == 1:
        n.order("combine", None, [], inputs, statics, [why], n_ifus=size)
        n.decide(f"{what} aligned (muse_exp_align) and combined (muse_exp_combine) into one "
                 "cube")
        return
    cuts = pieces.cuts(model.lambdamin, model.lambdamax, count)
    parts = [n.order("combine", None, [], inputs, statics,
                     [why, f"piece {k} of {count}: {lo:g}-{hi:g} Å"],
                     n_ifus=size * pieces.fraction(count), params={"piece": f"{lo:g},{hi:g}"})
             for k, (lo, hi) in enumerate(cuts, 1)]
    n.order("stitch", None, [], [_product(p, tag) for p in parts
                                 for tag in (Tag.DATACUBE_FINAL, Tag.IMAGE_FOV)],
            reasons=[f"{what}: the {count} wavelength pieces of the combined cube"])
    n.decide(f"{what} aligned (muse_exp_align) and combined (muse_exp_combine) in {count} "
             f"wavelength pieces of at most {parts[0].memory_gb:.1f} GB, stitched into one cube: "
             f"the whole range at once needs {whole:.1f} GB, more than the memory budget of "
             f"{n.memory_gb:.1f} GB")
