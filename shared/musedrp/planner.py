"""Associate calibrations with the science and turn the choice into work orders.

The rules are ESO's (MUSE.md §5): calibration sets are complete templates; they must match
the science frames' read-out mode and binning (flats also the instrument mode); among
matching templates the one closest in time to the science wins; ties are broken by
(|dt|, MJD-OBS, ARCFILE) so that plans are reproducible.  Every frame ends with a note
saying how it was used or why not.
"""

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

from musedrp.errors import NoWork
from musedrp.frames import Frame, Setup
from musedrp.messages import InputFile, WorkOrder
from musedrp.stages import StageSpec
from musedrp.tags import Tag
from musedrp.topology import BY_NAME

# What happens to frames of kinds that no implemented stage consumes yet.
NOT_YET = {
    Tag.ARC: "the wavecal and lsf stages are not implemented yet",
    Tag.ARC_LSF: "the lsf stage is not implemented yet",
    Tag.SKYFLAT: "the twilight stage is not implemented yet",
    Tag.ILLUM: "the twilight and scibasic stages are not implemented yet",
    Tag.OBJECT: "science frame: calibrations are chosen for it; scibasic is not implemented yet",
    Tag.STD: "the standard-star stages are not implemented yet",
    Tag.SKY: "sky frames are reduced only when configured (not implemented yet)",
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


@dataclass
class Plan:
    """Work orders in dependency order, and a note for every frame."""

    frames: list[Frame]
    orders: list[WorkOrder] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    used: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    decisions: list[str] = field(default_factory=list)

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
        return "unused", [NOT_YET.get(frame.tag, "no stage uses this frame")]

    def add(self, order: WorkOrder, frames: Iterable[Frame]) -> None:
        if order.job_key not in {o.job_key for o in self.orders}:
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


def choose_template(plan: Plan, candidates: Sequence[Frame], spec: StageSpec, science: Setup,
                    ref_mjd: float, keys) -> Template | None:
    """The matching, complete template closest in time to ``ref_mjd``; notes on the others."""
    min_count = next(i.min_count for i in spec.inputs if i.raw)
    matching = []
    for f in candidates:
        if why := _mismatch(f.setup, science, keys, spec.recipe):
            plan.note(f, why)
        else:
            matching.append(f)
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


def make_order(stage: str, night: str, setup: str, ifu: int, raw: Sequence[Frame],
               calibs: Sequence[tuple[WorkOrder, str]], out_root: Path, version: str,
               overrides: dict[str, dict], reasons: Sequence[str]) -> WorkOrder:
    spec = BY_NAME[stage].spec
    params = spec.params(**overrides.get(stage, {})).model_dump()
    inputs = [InputFile(tag=f.tag, path=f.path, ifu=ifu, datasum=f.datasums.get(ifu, ""))
              for f in raw]
    for upstream, name in calibs:
        tag = Tag(name.rsplit("-", 1)[0])
        inputs.append(InputFile(tag=tag, path=str(out_root / upstream.product_dir / name),
                                job_key=upstream.job_key))
    return WorkOrder(
        stage=stage, recipe=spec.recipe,
        job_key=job_key(spec.recipe, version, ifu, params, inputs),
        night=night, setup=setup, ifu=ifu, inputs=tuple(inputs), params=params,
        memory_gb=spec.memory.estimate_gb(len(raw)), timeout_s=spec.timeout_s,
        needs=tuple(u.job_key for u, _ in calibs), reasons=tuple(reasons),
    )


def plan_night(frames: Sequence[Frame], out_root: Path, version: str,
               ifus: Iterable[int] | None = None,
               overrides: dict[str, dict] | None = None) -> Plan:
    """Plan bias and flat for every (night, setup) of the science frames.

    Raises
    ------
    NoWork
        There is no science frame to calibrate for.
    """
    plan = Plan(frames=list(frames))
    overrides = overrides or {}
    good = [f for f in frames if f.tag is not None]
    science = [f for f in good if f.tag == Tag.OBJECT] or [f for f in good if f.tag == Tag.STD]
    if not science:
        raise NoWork("no science frames (OBJECT, or failing that STD): nothing to calibrate for")
    groups: dict[tuple[str, Setup], list[Frame]] = defaultdict(list)
    for f in science:
        groups[(f.night, f.setup)].append(f)
    bias_spec, flat_spec = BY_NAME["bias"].spec, BY_NAME["flat"].spec
    for (night, setup), sci in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1].key)):
        ref = fmean(f.mjd for f in sci)
        where = f"night {night}, {setup.key}, {len(sci)} science frame(s)"
        bias = choose_template(plan, [f for f in good if f.tag == Tag.BIAS], bias_spec, setup,
                               ref, READOUT)
        flat = choose_template(plan, [f for f in good if f.tag == Tag.FLAT], flat_spec, setup,
                               ref, READOUT_AND_MODE)
        if bias is None or flat is None:
            missing = " and ".join(t for t, c in (("BIAS", bias), ("FLAT", flat)) if c is None)
            plan.decisions.append(f"{where}: no usable {missing} template; nothing planned")
            continue
        available = bias.ifus & flat.ifus & set.intersection(*(set(f.ifus) for f in sci))
        wanted = set(ifus) if ifus is not None else available
        if wanted - available:
            plan.decisions.append(f"{where}: IFU(s) {sorted(wanted - available)} requested but "
                                  "not present in every chosen frame")
        why_bias = f"{bias} chosen: closest to the science ({hours(bias.mjd - ref)} away)"
        why_flat = f"{flat} chosen: closest to the science ({hours(flat.mjd - ref)} away)"
        plan.decisions += [f"{where}: {why_bias}", f"{where}: {why_flat}"]
        for ifu in sorted(wanted & available):
            b = make_order("bias", night, setup.key, ifu, bias.frames, [], out_root, version,
                           overrides, [why_bias])
            plan.add(b, bias.frames)
            fl = make_order("flat", night, setup.key, ifu, flat.frames,
                            [(b, f"MASTER_BIAS-{ifu:02d}.fits")], out_root, version, overrides,
                            [why_bias, why_flat])
            plan.add(fl, flat.frames)
    return plan
