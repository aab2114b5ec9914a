"""Planner: re-plans from the registry when frames stop arriving (or have arrived for long),
and issues work orders as soon as the jobs they need have succeeded.

Planning is the same function as in embedded mode (``planner.plan_night``); a job is known by
its content-derived key, so re-planning the same frames adds nothing and publishes nothing
twice.  A new frame re-plans only the nights that may use it (those within ``SEARCH_DAYS``),
from the frames those may use.  Planning runs in a thread of its own, so that the connection
thread keeps sending heartbeats (planning a year takes minutes); what it planned is issued on
the connection thread, the only one publishing.  Many nights are planned in parts, side by
side in processes forked on the planner's CPUs (``cpu_count``), each recording the jobs of
its own nights.  State lives in the registry only: a
restarted planner plans every night at once and carries on.  Frames arriving after a night
was planned re-plan it; a better calibration then gives new job keys (new work), never a
changed old job, and the old jobs not issued yet are superseded.
"""

import functools
import gc
import logging
import math
import multiprocessing
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import NamedTuple, TypeVar

from musedrp import esorex, metrics, qctrend, service
from musedrp.broker import Handler
from musedrp.errors import DataError, NoWork
from musedrp.frames import Frame, datetime_to_mjd
from musedrp.messages import Envelope, ProductCreated, WorkOrder, night_correlation
from musedrp.planner import SEARCH_DAYS, Plan, plan_night
from musedrp.registry import (
    OK_STATES,
    WAITING,
    OrderRow,
    Registry,
    order_row,
    unavailable_is_transient,
    utc_now,
)
from musedrp.settings import Settings
from musedrp.tags import STATIC_TAGS
from musedrp.topology import BY_NAME, work_key

FAILED_STATES = ("failed", "skipped", "blocked")
ALL = "*"  # among the touched nights or the jobs due: all of them
# nights per part at least when a plan is split among processes: a part of a few nights
# gains less than its process costs
PART_NIGHTS = 16
T = TypeVar("T")


def mjd_now() -> float:
    return datetime_to_mjd(datetime.now(UTC))


def checked(night: str) -> str:
    """``night``, or DataError: an impossible date would fail every planning after it."""
    try:
        return date.fromisoformat(night).isoformat()
    except ValueError as err:
        raise DataError(f"night {night!r} is not a date") from err


def in_thread(fn: Callable[[], T]) -> Future[T]:
    """``fn()`` in a daemon thread: a shutdown does not wait for it (its registry writes are
    transactions, and a restarted planner plans again)."""
    done: Future[T] = Future()

    def run() -> None:
        try:
            done.set_result(fn())
        except Exception as err:  # raised again on the connection thread by done.result()
            done.set_exception(err)

    threading.Thread(target=run, name="planning", daemon=True).start()
    return done


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection meanwhile: planning a year makes millions of objects that
    live until it ends and form no cycles, and the collector's passes over them cost as much
    as a third of the planning (reference counting still frees what dies)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class Part(NamedTuple):
    """The plan of some nights: its jobs, those still to record, and what it says of the
    frames."""

    keys: list[str]  # every job of the part
    rows: list[OrderRow]  # the jobs not recorded yet
    new: list[str]  # the jobs it recorded that the registry did not hold
    used: dict[str, set[str]]  # frame path: the jobs that read it
    notes: dict[str, list[str]]  # frame path: why it was not used (Plan.notes)
    decisions: list[str]
    recheck: float | None
    nothing: str  # why there was nothing to plan (NoWork), else ""


def plan_part(frames: Sequence[Frame], nights: Sequence[str] | None, **kwargs) -> Part:
    """``plan_night`` of ``nights`` (None: every night) from ``frames``, nothing recorded."""
    try:
        plan = plan_night(frames, Path(""), nights=nights, **kwargs)
    except NoWork as err:
        return Part([], [], [], {}, {}, [], None, str(err))
    return Part([o.job_key for o in plan.orders], [order_row(o) for o in plan.orders], [],
                dict(plan.used),  # a frame used says so, and no more (Plan.status)
                {p: n for p, n in plan.notes.items() if p not in plan.used},
                plan.decisions, plan.recheck, "")


_FORKED: tuple = ()  # in a planning process: the planner's frames, registry URL and kwargs


def _forked(*args) -> None:
    global _FORKED
    _FORKED = args  # inherited from the planner (fork), not sent


def _forked_part(nights: Sequence[str]) -> Part:
    """The part of ``nights`` in a planning process, from the frames they may use
    (``plan_night`` costs as many frames as it is given).  It records the jobs of its own
    nights itself, on connections of its own; a job of another night (a calibration taken
    there) may be another part's too, and is left to the planner, once every part is in."""
    frames, url, kwargs = _FORKED
    span = timedelta(days=SEARCH_DAYS)
    lo, hi = (str(date.fromisoformat(n) + d) for n, d in ((nights[0], -span), (nights[-1], span)))
    part = plan_part([f for f in frames if f.tag in STATIC_TAGS or lo <= f.night <= hi],
                     nights, **kwargs)
    own = set(nights)
    registry = Registry(url, create=False)
    try:
        new = registry.record_orders([r for r in part.rows if r.night in own])
    finally:
        registry.close()
    return part._replace(rows=[r for r in part.rows if r.night not in own], new=new)


def plan_parts(frames: Sequence[Frame], parts: list[Sequence[str] | None], processes: int,
               url: str, **kwargs) -> Iterator[Part]:
    """``plan_part`` of each of ``parts``, in order; more than one in ``processes`` processes
    forked from this one, which record on the registry at ``url``."""
    if len(parts) == 1:
        yield plan_part(frames, parts[0], **kwargs)
        return
    # forked from the planning thread: the processes only plan, and record on connections
    # of their own
    with ProcessPoolExecutor(processes, multiprocessing.get_context("fork"),
                             initializer=_forked, initargs=(frames, url, kwargs)) as pool:
        for done in [pool.submit(_forked_part, nights) for nights in parts]:
            yield done.result()


def absorb(plan: Plan, part: Part) -> None:
    """Add ``part``'s decisions, and what it says of the frames, to ``plan`` (a frame one
    part used is used)."""
    for path, used in part.used.items():
        plan.used[path] |= used
    for path, notes in part.notes.items():
        plan.notes[path] += [n for n in notes if n not in plan.notes[path]]
    plan.decisions += part.decisions
    if part.recheck is not None:
        plan.recheck = min(plan.recheck or math.inf, part.recheck)


def split(nights: Sequence[str], processes: int, least: int = PART_NIGHTS) -> list[list[str]]:
    """``nights`` in runs of consecutive nights, two per process (a part ends while the last
    ones are still planned) and of at least ``least`` nights each."""
    count = max(1, min(2 * processes, len(nights) // least)) if processes > 1 else 1
    return [list(nights[i * len(nights) // count:(i + 1) * len(nights) // count])
            for i in range(count)]


class Planned(NamedTuple):
    keys: list[str]  # the jobs of the plan
    recheck: float | None  # the MJD at which a template it waited for stops growing


class Planner(Handler):
    name = "planner"

    def __init__(self, registry: Registry, settings: Settings, version: str,
                 log: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry, self.settings, self.version, self.log = registry, settings, version, log
        self.clock = clock
        self.processes = service.cpu_count(settings)  # that plan parts side by side
        self.part_nights = PART_NIGHTS
        self.last_frame = float("-inf")
        self.waiting_since = math.inf  # when the oldest frame not planned yet came
        # at start-up, whatever happened while we were away: every night, every waiting job
        self.touched = {ALL}  # nights with new frames
        self.due = {ALL}  # jobs to look at: just planned
        self.finished: set[str] = set()  # jobs whose dependents may now run (or be blocked)
        self.planning: tuple[set[str], Future[Planned]] | None = None  # touched, result
        self.provisional: set[str] = set()  # nights planned while frames arrived: once more
        self.recheck: tuple[float, set[str]] | None = None  # when templates stop growing
        self.flag_exported: set[tuple[str, str, str]] = set()  # QC_FLAGGED labels set

    def handle(self, env: Envelope, attempt: int) -> list[Envelope]:
        p = env.payload
        with unavailable_is_transient():
            if env.type == "frame.registered":
                self.last_frame = self.clock()
                self.waiting_since = min(self.waiting_since, self.last_frame)
                if p.tag in STATIC_TAGS:  # valid for any night
                    self.touched.add(ALL)
                elif p.tag is not None:  # a rejected frame enters no plan
                    self.touched.add(checked(p.night))
            elif env.type == "job.finished":
                job = self.registry.job(p.job_key)
                if job is None:
                    self.log.warning("job.finished for a job this registry does not know: %s", p)
                    return []
                if not (p.outcome == "cached" and job.state == "succeeded"):  # a duplicate
                    self.registry.set_state(p.job_key, p.outcome, p.reason, p.wall_s,
                                            p.peak_rss_bytes)
                self.finished.add(p.job_key)
            elif env.type == "product.created":
                self.registry.record_products(p.job_key, p.ifu, [(p.key, p.tag, p.qc)])
                if p.qc:
                    self.export_qc(p)
        return []

    def export_qc(self, p: ProductCreated) -> None:
        """Judge the product's QC against its history (``musedrp.qctrend``, the rule of the
        report and of ``musedrp qc``) and export the verdicts: flag and band of the spec's
        headline keys, and the flag of any other key once it has been flagged."""
        job = self.registry.job(p.job_key)
        if job is None:
            return
        spec = BY_NAME[job.stage].spec
        for v in qctrend.from_registry(self.registry, job.night, job.night, job.stage,
                                       p.ifu or 0):
            r = v.record
            if (r.tag, r.ifu, r.setup) != (p.tag, p.ifu or 0, job.setup) or v.band is None:
                continue
            labels = (r.stage, r.key, str(r.ifu))
            if spec.headline_qc(p.tag, {r.key: r.value}):
                metrics.QC_BAND_LOW.labels(*labels).set(v.band[0])
                metrics.QC_BAND_HIGH.labels(*labels).set(v.band[1])
            elif not (v.flagged or labels in self.flag_exported):
                continue
            metrics.QC_FLAGGED.labels(*labels).set(int(v.flagged))
            self.flag_exported.add(labels)
            if v.flagged:
                self.log.warning("QC flagged: %s", v)

    def idle(self, publish: Callable[[Sequence[Envelope]], None]) -> None:
        """Collect a finished planning, start the next one (one at a time, in its thread)
        once frames pause for ``plan_quiet_s``, or ``plan_every_s`` after the first frame no
        plan holds yet while they keep coming, and issue what may run.  A plan made while frames
        arrive (the last came less than ``plan_max_wait_s`` ago) waits for every incomplete
        template, and is made again once they have stopped for that long; one that waited
        for a template taken minutes ago is made again when that template stops growing
        (``planner.GROWING_DAYS``).  What fails is kept (the touched nights, the jobs due)
        and raised: the consumer calls again later."""
        with unavailable_is_transient():
            if self.planning is not None and self.planning[1].done():
                touched, done = self.planning
                self.planning = None
                if done.exception() is not None:
                    self.touched |= touched
                keys, recheck = done.result()
                self.due.update(keys)
                if recheck is not None:
                    when, nights = self.recheck or (math.inf, set())
                    self.recheck = min(when, recheck), nights | touched
            now = self.clock()
            quiet = now - self.last_frame >= self.settings.plan_quiet_s
            # a pause inside an upload is no end of it: frames count as arriving until none
            # has come for the whole wait
            arriving = now - self.last_frame < self.settings.plan_max_wait_s
            if not arriving:
                self.touched |= self.provisional
                self.provisional = set()
            if self.recheck is not None and mjd_now() >= self.recheck[0]:
                self.touched |= self.recheck[1]
                self.recheck = None
            overdue = now - self.waiting_since >= self.settings.plan_every_s
            if self.planning is None and self.touched and (quiet or overdue):
                if arriving:
                    self.provisional |= self.touched
                self.planning = self.touched, in_thread(
                    functools.partial(self.plan, self.touched, arriving=arriving))
                self.touched, self.waiting_since = set(), math.inf
            if self.due or self.finished:
                self.issue(publish)

    def plan(self, touched: set[str], arriving: bool = False) -> Planned:
        """Re-plan the nights within SEARCH_DAYS of the nights ``touched`` (``ALL``: every
        night) from the frames they may use, in prompt mode (``arriving``: frames still
        arrive); record the new jobs, supersede those the plan no longer holds, and record
        the status of the touched nights' frames (those of other nights may serve nights not
        planned here).  Runs in the planning thread."""
        with collector_paused():  # the plan's objects are freed when ``_plan`` returns
            return self._plan(touched, arriving)

    def _plan(self, touched: set[str], arriving: bool) -> Planned:
        nights = None if ALL in touched else self.registry.nights(touched, SEARCH_DAYS)
        frames = self.registry.load_frames(nights, SEARCH_DAYS)
        observed = sorted(nights if nights is not None else
                          {f.night for f in frames if f.tag not in (None, *STATIC_TAGS)})
        parts: list[Sequence[str] | None] = split(observed, self.processes, self.part_nights)
        if len(parts) == 1:
            parts = [nights]
        plan, keys, new, rows, nothing = Plan([]), [], [], [], []
        # a frame's status is final once every part within SEARCH_DAYS of its night is in:
        # recorded meanwhile, night by night (static calibrations serve every night: last)
        dated = sorted((f for f in frames if f.tag not in STATIC_TAGS), key=lambda f: f.night)
        settled = 0

        def settle(before: str | None) -> None:  # the statuses of frames of nights < before
            nonlocal settled
            end = len(dated) if before is None else bisect_left(dated, before,
                                                                key=lambda f: f.night)
            self.registry.set_statuses({
                f.path: (status, "; ".join(why)) for f in dated[settled:end]
                if nights is None or f.night in touched for status, why in [plan.status(f)]})
            settled = end

        for i, part in enumerate(plan_parts(
                frames, parts, self.processes, self.registry.url, version=self.version,
                ifus=self.settings.ifus or None, memory_gb=self.settings.memory_gb,
                now=mjd_now(), arriving=arriving)):
            keys += part.keys
            new += part.new
            rows += part.rows
            absorb(plan, part)
            nothing += [part.nothing] if part.nothing else []
            if i + 1 < len(parts) and len(nothing) <= i:  # a part had work: there is a plan
                settle(str(date.fromisoformat(parts[i + 1][0]) - timedelta(days=SEARCH_DAYS)))
        new += self.registry.record_orders(rows)
        if len(nothing) == len(parts):
            self.log.info("%d frame(s) registered, nothing to plan yet: %s", len(frames),
                          nothing[0])
            return Planned([], None)
        gone = self.registry.supersede(  # jobs of frames that more frames have replaced
            None if nights is None else self.settled(nights), keys,
            f"no longer planned: the plan of {utc_now():%Y-%m-%d %H:%M:%S} UTC holds other "
            "jobs (frames arrived since)")
        dated += [f for f in frames if f.tag in STATIC_TAGS]
        settle(None)
        self.registry.record_decisions(nights, plan.decisions)
        self.log.info("planned %s from %d frame(s)%s: %d job(s), %d new, %d superseded",
                      "every night" if nights is None else f"{len(nights)} night(s)",
                      len(frames), f" in {len(parts)} parts" if len(parts) > 1 else "",
                      len(keys), len(new), len(gone))
        for line in plan.decisions:
            self.log.info("decision: %s", line)
        return Planned(keys, plan.recheck)

    def settled(self, nights: set[str]) -> set[str]:
        """The nights of ``nights`` whose jobs only nights of ``nights`` may use: no other
        night with observations is within SEARCH_DAYS of them."""
        span = timedelta(days=SEARCH_DAYS)
        others = [date.fromisoformat(n) for n in self.registry.nights(nights, SEARCH_DAYS)
                  - nights]
        return {n for n in nights
                if all(abs(date.fromisoformat(n) - o) > span for o in others)}

    def issue(self, publish: Callable[[Sequence[Envelope]], None]) -> None:
        """Publish the waiting jobs just planned or needing a job just finished, if their
        inputs exist, in one batch, and then mark them queued; block those below a failure,
        and the jobs below them in turn.  A crash between the two re-issues the batch (a
        worker finds a job's manifest and does not run it twice).

        A blocked job is issued after all if its upstream job succeeds later (replayed): its
        dependents are looked at again when it finishes."""
        jobs = (self.registry.jobs(*WAITING) if ALL in self.due else
                self.registry.jobs(*WAITING, keys=self.due)
                + self.registry.dependents(self.finished, *WAITING))
        issued: list[WorkOrder] = []
        while jobs:
            state = self.registry.states({n for j in jobs for n in j.order["needs"]})
            blocked = []
            for j in {j.key: j for j in jobs}.values():
                order = WorkOrder.model_validate(j.order)
                if bad := [n for n in order.needs if state.get(n) in FAILED_STATES]:
                    if j.state == "planned":
                        reason = f"upstream job {bad[0]} did not succeed"
                        self.registry.set_state(j.key, "blocked", reason)
                        blocked.append(j.key)
                        self.log.warning("%s blocked: %s", order, reason)
                elif all(state.get(n) in OK_STATES for n in order.needs):
                    issued.append(order)
            jobs = self.registry.dependents(blocked, "planned")
        issued.sort(key=lambda o: o.rank, reverse=True)  # a queue's head: the most below it
        publish([Envelope(type=work_key(o.stage), source="planner",
                          correlation_id=night_correlation(o.night), payload=o)
                 for o in issued])
        self.registry.set_states([o.job_key for o in issued], "queued")
        for order in issued:
            metrics.PLANNED.labels(order.stage).inc()
            self.log.info("issued %s", order)
        self.due, self.finished = set(), set()


def make(settings: Settings, log: logging.Logger) -> Planner:
    return Planner(Registry.connect(settings.db_url), settings, esorex.pipeline_version(), log)


def main() -> int:
    return service.main("planner", "planner", make)
