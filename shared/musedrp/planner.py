"""Associate calibrations with the science and turn the choice into work orders.

The rules are ESO's (MUSE.md §5) plus those an expert applies by hand (§5.4): calibration
sets are complete templates; they must match the science frames' read-out mode and binning
(flats also the instrument mode, arcs, skyflats and ILLUM the optics); among matching
templates the one closest in time to the science wins; the standard star is the same
night's; skyflats are capped by the memory budget; static calibrations are chosen by date;
ties are broken by (|dt|, MJD-OBS, ARCFILE) so that plans are reproducible.  Every frame
ends with a note saying how it was used or why not, every choice with a decision.
"""

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from statistics import fmean

from musedrp.errors import NoWork
from musedrp.frames import Frame, Setup
from musedrp.messages import InputFile, WorkOrder
from musedrp.stages import StageSpec, product_tag
from musedrp.statics import VIGNETTING_UNTIL, choose_static
from musedrp.tags import Tag
from musedrp.topology import BY_NAME

# Frames of kinds no stage consumes, and why.
UNUSED = {
    Tag.ARC_LSF: "long LSF arc sequences are not used: muse_lsf runs on the night's arcs",
    Tag.SKY: "sky frames are reduced only when the object fills the field (musedrp --sky)",
    Tag.ASTROMETRY: "astrometric fields are not reduced: muse_scipost uses the static "
                    "ASTROMETRY_WCS calibration",
    Tag.DARK: "darks are not used (as in ESO's on-line pipeline)",
    Tag.MASK: "geometry (pinhole-mask) frames are not reduced: GEOMETRY_TABLE is static",
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

    @property
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
READOUT_AND_MODE = (*READOUT, ("instrument mode", lambda s: s.ins_mode))
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
    keys: set[str] = field(default_factory=set)  # of the orders

    def note(self, frame: Frame, reason: str) -> None:
        if reason not in self.notes[frame.path]:
            self.notes[frame.path].append(reason)

    def status(self, frame: Frame) -> tuple[str, list[str]]:
        """(``used``, job keys), or ``unclassified``/``rejected``/``unused`` with reasons."""
        if frame.tag is None:
            return "unclassified", [frame.reason]
        if frame.path in self.used:
            return "used", sorted(self.used[frame.path])
        if notes := self.notes.get(frame.path):
            return "rejected", notes
        return "unused", [UNUSED.get(frame.tag, "no stage uses this frame")]

    def add(self, order: WorkOrder, frames: Iterable[Frame]) -> None:
        if order.job_key not in self.keys:
            self.keys.add(order.job_key)
            self.orders.append(order)
        for f in frames:
            self.used[f.path].add(order.job_key)


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


def choose_template(plan: Plan, candidates: Sequence[Frame], spec: StageSpec, science: Setup,
                    ref_mjd: float, keys) -> Template | None:
    """The matching, complete template closest in time to ``ref_mjd``; notes on the others."""
    min_count = spec.raw_min()
    matching = _usable(plan, candidates, science, keys, spec.recipe)
    usable, degraded = [], []
    for t in templates(matching):
        if len(t.frames) < min_count:
            for f in t.frames:
                plan.note(f, f"{t} has fewer than the {min_count} frames {spec.recipe} needs")
        else:
            (usable if t.complete else degraded).append(t)
    pool = usable or degraded
    if not pool:
        return None
    best = min(pool, key=lambda t: (abs(t.mjd - ref_mjd), t.mjd, t.first.arcfile))
    if not best.complete:
        plan.decisions.append(f"DEGRADED: {best} is incomplete but no complete template exists")
    for t in usable + degraded:
        if t is not best:
            for f in t.frames:
                plan.note(f, f"{t} not chosen: {best} is closer in time to the science "
                             f"({hours(best.mjd - ref_mjd)} vs {hours(t.mjd - ref_mjd)})")
    return best


def job_key(recipe: str, version: str, ifu: int | None, params: dict,
            inputs: Sequence[InputFile]) -> str:
    """Content-derived identity of a job.

    Raw inputs are identified by their name and the ``DATASUM`` of the extension read (both
    from headers, so planning never reads pixels), products by the key of the job that made
    them: product bytes carry creation dates, so hashing them would make every re-run look new.
    """
    ident = sorted((str(f.tag), f.job_key, Path(f.path).name, f.datasum) for f in inputs)
    blob = json.dumps([recipe, version, ifu, params, ident], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Night:
    """Planning context of one (night, setup) group of science frames."""

    plan: Plan
    night: str
    setup: Setup
    science: list[Frame]
    ifus: list[int]
    out_root: Path
    version: str
    overrides: dict[str, dict]
    memory_gb: float | None
    statics: dict[Tag, tuple[Frame | None, str]] = field(default_factory=dict)

    @property
    def ref(self) -> float:
        return fmean(f.mjd for f in self.science)

    @property
    def where(self) -> str:
        return f"night {self.night}, {self.setup.key}"

    def decide(self, text: str) -> None:
        self.plan.decisions.append(f"{self.where}: {text}")

    def order(self, stage: str, ifu: int | None, raw: Sequence[Frame],
              calibs: Sequence[tuple[WorkOrder, str]], statics: Sequence[Tag] = (),
              reasons: Sequence[str] = (), n_ifus: int = 1, products=None) -> WorkOrder:
        spec = BY_NAME[stage].spec
        params = spec.params(**self.overrides.get(stage, {})).model_dump()
        inputs = [InputFile(tag=f.tag, path=f.path, ifu=ifu,
                            datasum=",".join(f.datasums.get(i, "") for i in
                                             ([ifu] if ifu else self.ifus)))
                  for f in raw]
        inputs += [InputFile(tag=product_tag(Path(name)), job_key=u.job_key,
                             path=str(self.out_root / u.product_dir / name)) for u, name in calibs]
        for tag in statics:
            f, _ = self.statics[tag]
            inputs.append(InputFile(tag=tag, path=f.path, datasum=f.datasums.get(0, "")))
        n_raw = len(raw)
        order = WorkOrder(
            stage=stage, recipe=spec.recipe,
            job_key=job_key(spec.recipe, self.version, ifu, params, inputs),
            night=self.night, setup=self.setup.key, ifu=ifu, inputs=tuple(inputs), params=params,
            memory_gb=spec.memory.estimate_gb(n_raw, n_ifus), timeout_s=spec.timeout_s,
            needs=tuple(dict.fromkeys(u.job_key for u, _ in calibs)),
            reasons=tuple(reasons) + tuple(self.statics[t][1] for t in statics),
            products=tuple(products or spec.product_names(ifu, spec.params(**params))),
        )
        self.plan.add(order, [*raw, *(self.statics[t][0] for t in statics)])
        return order

    def static(self, tag: Tag, required: bool = True) -> bool:
        """Choose the static file of ``tag`` once; False (with a decision) if there is none."""
        if tag not in self.statics:
            candidates = [f for f in self.plan.frames if f.tag == tag]
            self.statics[tag] = choose_static(candidates, tag, date.fromisoformat(self.night))
            f, why = self.statics[tag]
            if f is None and required:
                self.decide(f"{why}: add ESO's static calibrations with --static-dir")
            elif f is not None:
                self.decide(why)
            for c in candidates:
                if c is not f:
                    self.plan.note(c, f"{tag}: another file is valid for night {self.night}")
        return self.statics[tag][0] is not None


def _product(order: WorkOrder, tag: Tag) -> tuple[WorkOrder, str]:
    (name,) = [n for n in order.products if product_tag(Path(n)) == tag]
    return order, name


def choose_closest(plan: Plan, candidates: Sequence[Frame], ref: float, what: str,
                   same_night: str | None = None) -> Frame | None:
    """The single frame closest in time (same night first, if asked); notes on the others."""
    if not candidates:
        return None
    best = min(candidates, key=lambda f: (same_night is not None and f.night != same_night,
                                          abs(f.mjd - ref), f.mjd, f.arcfile))
    for f in candidates:
        if f is best:
            continue
        if same_night and f.night != same_night and best.night == same_night:
            why = f"{best.name} was taken on the science night {same_night}"
        else:
            why = f"{best.name} is closer to the science"
        plan.note(f, f"{what} {f.target or f.name} of night {f.night} not chosen: {why} "
                     f"({hours(best.mjd - ref)} vs {hours(f.mjd - ref)} away)")
    return best


def plan_calibrations(n: Night) -> dict[str, dict[int, WorkOrder]]:
    """bias, flat, wavecal and lsf per IFU, as far as the frames go: a stage whose frames are
    missing is left out with a decision, and so is everything after it."""
    plan, good = n.plan, [f for f in n.plan.frames if f.tag is not None]
    bias = choose_template(plan, [f for f in good if f.tag == Tag.BIAS], BY_NAME["bias"].spec,
                           n.setup, n.ref, READOUT)
    flat = choose_template(plan, [f for f in good if f.tag == Tag.FLAT], BY_NAME["flat"].spec,
                           n.setup, n.ref, READOUT_AND_MODE)
    arcs = [f for f in good if f.tag == Tag.ARC]
    for f in arcs:
        if len(f.lamps) != 1:
            plan.note(f, f"{len(f.lamps)} arc lamps on ({', '.join(f.lamps) or 'none'}): "
                         "muse_wavecal needs exactly one lamp per arc exposure")
    arc = choose_template(plan, [f for f in arcs if len(f.lamps) == 1],
                          BY_NAME["wavecal"].spec, n.setup, n.ref, READOUT_AND_OPTICS)
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
    available = set.intersection(*(c.ifus for _, c in chain),
                                 *(set(f.ifus) for f in n.science))
    if set(n.ifus) - available:
        n.decide(f"IFU(s) {sorted(set(n.ifus) - available)} requested but not present in "
                 "every chosen frame")
    n.ifus = sorted(set(n.ifus) & available)
    why = {t: f"{c} chosen: closest to the science ({hours(c.mjd - n.ref)} away)"
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
        out["lsf"][ifu] = n.order("lsf", ifu, arc.frames, [*base, _product(wc, Tag.WAVECAL_TABLE)],
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
    good = [f for f in plan.frames if f.tag == Tag.SKYFLAT]
    skyflats = _usable(plan, good, n.setup, READOUT_AND_OPTICS, spec.recipe)
    nights = sorted({f.night for f in skyflats},
                    key=lambda d: abs(date.fromisoformat(d) - date.fromisoformat(n.night)))
    if not nights:
        n.decide("twilight not planned: no usable SKYFLAT frames")
        return None
    chosen_night = nights[0]
    if chosen_night != n.night:
        n.decide(f"DEGRADED: no skyflats of night {n.night}; using night {chosen_night}")
    pool = sorted((f for f in skyflats if f.night == chosen_night),
                  key=lambda f: (abs(f.mjd - n.ref), f.mjd, f.arcfile))
    for f in skyflats:
        if f.night != chosen_night:
            plan.note(f, f"skyflat of night {f.night}: night {chosen_night} is closer")
    fit = len(pool) if n.memory_gb is None else spec.memory.max_frames(n.memory_gb, len(n.ifus))
    take, left = pool[:fit], pool[fit:]
    reasons = [f"{len(pool)} skyflats of night {chosen_night}"]
    if left:
        why = (f"only {fit} of {len(pool)} skyflats fit the memory budget of "
               f"{n.memory_gb:.1f} GB for {len(n.ifus)} IFU(s) "
               f"({spec.memory.estimate_gb(fit, len(n.ifus)):.1f} GB estimated)")
        reasons.append(f"{why}; left out: {', '.join(f.name for f in left)}")
        n.decide(why)
        for f in left:
            plan.note(f, f"skyflat left out of muse_twilight: {why}; the closest in time were kept")
    if len(take) < spec.raw_min():
        n.decide(f"twilight not planned: {len(take)} skyflats fit, muse_twilight needs "
                 f"{spec.raw_min()}")
        return None
    raw = sorted(take, key=lambda f: f.mjd) + ([illum] if illum else [])
    statics = [Tag.GEOMETRY_TABLE]
    if n.static(Tag.VIGNETTING_MASK, required=False):
        statics.append(Tag.VIGNETTING_MASK)
    elif date.fromisoformat(n.night) < VIGNETTING_UNTIL:
        n.decide(f"no VIGNETTING_MASK available (optional for data before {VIGNETTING_UNTIL})")
    calibs = [c for ifu in n.ifus for c in per_ifu_calibs(cal, ifu)]
    return n.order("twilight", None, raw, calibs, statics, reasons, n_ifus=len(n.ifus))


def plan_night(frames: Sequence[Frame], out_root: Path, version: str,
               ifus: Iterable[int] | None = None, overrides: dict[str, dict] | None = None,
               memory_gb: float | None = None, reduce_sky: bool = False) -> Plan:
    """Plan the whole cascade for every (night, setup) of the science frames.

    Raises
    ------
    NoWork
        There is no science frame to calibrate for.
    """
    plan = Plan(frames=list(frames))
    good = [f for f in frames if f.tag is not None]
    science = [f for f in good if f.tag == Tag.OBJECT] or [f for f in good if f.tag == Tag.STD]
    if not science:
        raise NoWork("no science frames (OBJECT, or failing that STD): nothing to calibrate for")
    groups: dict[tuple[str, Setup], list[Frame]] = defaultdict(list)
    for f in science:
        groups[(f.night, f.setup)].append(f)
    for (night, setup), sci in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1].key)):
        wanted = sorted(set(ifus) if ifus is not None else set.union(*(set(f.ifus) for f in sci)))
        n = Night(plan, night, setup, sci, wanted, out_root, version, overrides or {}, memory_gb)
        n.decide(f"{len(sci)} science frame(s), IFUs {wanted}")
        cal = plan_calibrations(n)
        if "wavecal" not in cal:
            for f in sci:
                plan.note(f, "not reduced: no wavelength calibration for it (see the decisions)")
            continue
        illums = _usable(plan, [f for f in good if f.tag == Tag.ILLUM], setup,
                         READOUT_AND_OPTICS, "muse_scibasic")
        illum = choose_closest(plan, illums, n.ref, "ILLUM")
        if illum is None:
            n.decide("no ILLUM frame: slice illumination is not corrected (optional)")
        twilight = plan_twilight(n, cal, illum)
        plan_science(n, cal, twilight, illum, good, reduce_sky)
    return plan


def plan_science(n: Night, cal, twilight: WorkOrder | None, illum: Frame | None,
                 good: list[Frame], reduce_sky: bool) -> None:
    """scibasic per exposure and IFU; standard from the chosen star; scipost per exposure."""
    plan = n.plan
    if not n.static(Tag.GEOMETRY_TABLE):
        return
    stds = _usable(plan, [f for f in good if f.tag == Tag.STD], n.setup, READOUT_AND_MODE,
                   "muse_standard")
    std = choose_closest(plan, stds, n.ref, "standard star", same_night=n.night)
    if std is not None:
        if std.night != n.night:
            n.decide(f"DEGRADED: no standard star on night {n.night}; using {std.name} of "
                     f"night {std.night}")
        else:
            n.decide(f"standard star {std.target} ({std.name}) chosen: same night, "
                     f"{hours(std.mjd - n.ref)} from the science")
    objects = [f for f in n.science if f.tag == Tag.OBJECT]
    skies = [f for f in good if f.tag == Tag.SKY and f.night == n.night] if reduce_sky else []
    extra = [_product(twilight, Tag.TWILIGHT_CUBE)] if twilight else []
    if twilight is None:
        n.decide("no TWILIGHT_CUBE: scibasic runs without the twilight correction")
    pixtables: dict[str, dict[int, WorkOrder]] = defaultdict(dict)
    scibasic = BY_NAME["scibasic"].spec
    params = scibasic.params(**n.overrides.get("scibasic", {}))
    for exposure in [*objects, *skies, *([std] if std else [])]:
        mine = {Tag(f"PIXTABLE_{exposure.tag}"), Tag(f"{exposure.tag}_RED"),
                Tag(f"{exposure.tag}_RESAMPLED")}  # what scibasic makes of this raw tag
        for ifu in n.ifus:
            names = [name for name in scibasic.product_names(ifu, params)
                     if product_tag(Path(name)) in mine]
            pixtables[exposure.path][ifu] = n.order(
                "scibasic", ifu, [exposure] + ([illum] if illum else []),
                per_ifu_calibs(cal, ifu) + extra, [Tag.GEOMETRY_TABLE], products=names)
    response = None
    if std is None:
        n.decide("no standard star: neither response nor flux-calibrated cubes")
    elif len(n.ifus) < 3:
        n.decide(f"standard not planned: muse_standard needs at least 3 adjacent IFUs around "
                 f"the star, {len(n.ifus)} planned")
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
    for exposure in objects:
        tables = [_product(o, Tag.PIXTABLE_OBJECT) for o in pixtables[exposure.path].values()]
        lsf = [_product(cal["lsf"][ifu], Tag.LSF_PROFILE) for ifu in n.ifus]
        n.order("scipost", None, [], [*tables, _product(response, Tag.STD_RESPONSE),
                                      _product(response, Tag.STD_TELLURIC), *lsf],
                statics, [f"exposure {exposure.name}; response from {std.name}"],
                n_ifus=len(n.ifus))
