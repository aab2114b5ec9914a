"""Planner: re-plans from the registry when frames stop arriving, and issues work orders as
soon as the jobs they need have succeeded.

Planning is the same function as in embedded mode (``planner.plan_night``), run on every
registered frame; a job is known by its content-derived key, so re-planning the same frames
adds nothing and publishes nothing twice.  State lives in the registry only: a restarted
planner plans at once and carries on.  Frames arriving after a night was planned re-plan it;
a better calibration then gives new job keys (new work), never a changed old job.
"""

import logging
import time
from collections.abc import Callable
from pathlib import Path

from musedrp import esorex, metrics, service
from musedrp.broker import Handler
from musedrp.errors import NoWork
from musedrp.messages import Envelope, WorkOrder, night_correlation
from musedrp.planner import plan_night
from musedrp.registry import OK_STATES, Registry, unavailable_is_transient
from musedrp.settings import Settings
from musedrp.topology import work_key

FAILED_STATES = ("failed", "skipped", "blocked")


class Planner(Handler):
    name = "planner"

    def __init__(self, registry: Registry, settings: Settings, version: str,
                 log: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry, self.settings, self.version, self.log = registry, settings, version, log
        self.clock = clock
        self.last_frame = float("-inf")
        self.replan = True  # at start-up: whatever happened while we were away
        self.dispatch = True

    def handle(self, env: Envelope, attempt: int) -> list[Envelope]:
        p = env.payload
        with unavailable_is_transient():
            if env.type == "frame.registered":
                self.last_frame, self.replan = self.clock(), True
            elif env.type == "job.finished":
                job = self.registry.job(p.job_key)
                if job is None:
                    self.log.warning("job.finished for a job this registry does not know: %s", p)
                    return []
                if not (p.outcome == "cached" and job.state == "succeeded"):  # a duplicate
                    self.registry.set_state(p.job_key, p.outcome, p.reason, p.wall_s,
                                            p.peak_rss_bytes)
                self.dispatch = True
            elif env.type == "product.created":
                self.registry.record_products(p.job_key, p.ifu, [(p.key, p.tag, {})])
        return []

    def idle(self, publish: Callable[[Envelope], None]) -> None:
        quiet = self.clock() - self.last_frame >= self.settings.plan_quiet_s
        with unavailable_is_transient():  # flags are cleared only once the work is done
            if self.replan and quiet:
                self.plan()
                self.replan = False
            if self.dispatch:
                self.issue(publish)
                self.dispatch = False

    def plan(self) -> None:
        frames = self.registry.load_frames()
        try:
            plan = plan_night(frames, Path(""), self.version, self.settings.ifus or None,
                              memory_gb=self.settings.memory_gb, reduce_sky=self.settings.sky)
        except NoWork as err:
            self.log.info("%d frame(s) registered, nothing to plan yet: %s", len(frames), err)
            return
        known = {j.key for j in self.registry.jobs()}
        self.registry.record_orders(plan.orders)
        self.registry.record_frames(plan.frames, {
            f.path: (status, "; ".join(why)) for f in plan.frames
            for status, why in [plan.status(f)]})
        new = [o for o in plan.orders if o.job_key not in known]
        self.log.info("planned %d frame(s): %d job(s), %d new", len(frames), len(plan.orders),
                      len(new))
        for line in plan.decisions:
            self.log.info("decision: %s", line)
        self.dispatch = True

    def issue(self, publish: Callable[[Envelope], None]) -> None:
        """Publish every planned job whose inputs exist; block those below a failure.

        A blocked job is issued after all if its upstream job succeeds later (replayed)."""
        jobs = self.registry.jobs()
        state = {j.key: j.state for j in jobs}
        changed = True
        while changed:  # a block can block further jobs
            changed = False
            for j in jobs:
                if state[j.key] not in ("planned", "blocked"):
                    continue
                order = WorkOrder.model_validate(j.order)
                if bad := [n for n in order.needs if state.get(n) in FAILED_STATES]:
                    if state[j.key] == "planned":
                        reason = f"upstream job {bad[0]} did not succeed"
                        self.registry.set_state(j.key, "blocked", reason)
                        state[j.key], changed = "blocked", True
                        self.log.warning("%s blocked: %s", order, reason)
                elif all(state.get(n) in OK_STATES for n in order.needs):
                    publish(Envelope(type=work_key(order.stage), source="planner",
                                     correlation_id=night_correlation(order.night),
                                     payload=order))
                    self.registry.set_state(j.key, "queued")
                    state[j.key], changed = "queued", True
                    metrics.PLANNED.labels(order.stage).inc()
                    self.log.info("issued %s", order)


def make(settings: Settings, log: logging.Logger) -> Planner:
    return Planner(Registry.connect(settings.db_url), settings, esorex.pipeline_version(), log)


def main() -> int:
    return service.main("planner", "planner", make)
