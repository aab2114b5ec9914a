"""The calibration cascade, declared once: which stages exist and what each needs upstream."""

import functools
import importlib
from dataclasses import dataclass
from typing import Final

from musedrp import runner
from musedrp.runner import ComputeFn
from musedrp.stages import StageSpec


@dataclass(frozen=True)
class Stage:
    name: str
    needs: tuple[str, ...]

    @property
    def spec(self) -> StageSpec:
        return importlib.import_module(f"musedrp.services.{self.name}.spec").SPEC

    def compute(self) -> ComputeFn:
        """The stage's own ``compute.run`` if it has one, else the shared recipe body.

        Most stages are fully described by their spec; a ``compute.py`` beside the spec is
        for a stage that needs logic of its own."""
        try:
            return importlib.import_module(f"musedrp.services.{self.name}.compute").run
        except ModuleNotFoundError as err:
            if err.name != f"musedrp.services.{self.name}.compute":
                raise
            return functools.partial(runner.compute, self.spec)


STAGES: Final = (
    Stage("bias", needs=()),
    Stage("flat", needs=("bias",)),
    Stage("wavecal", needs=("bias", "flat")),
    Stage("lsf", needs=("bias", "flat", "wavecal")),
    Stage("twilight", needs=("bias", "flat", "wavecal")),
    Stage("scibasic", needs=("bias", "flat", "wavecal", "twilight")),
    Stage("standard", needs=("scibasic",)),
    Stage("scipost", needs=("scibasic", "standard", "lsf")),
)
BY_NAME: Final = {s.name: s for s in STAGES}


# --- the broker's shape; broker.declare() is the only code that reads it ---

EXCHANGE: Final = "musedrp"  # topic exchange for work and events
DEAD_EXCHANGE: Final = "musedrp.dead"  # dead letters, routed as dead.<queue>
TRANSFER_MARGIN_S: Final = 600  # downloads and uploads around a recipe run


@dataclass(frozen=True)
class Queue:
    """A consumed queue: its bindings, and how long a consumer may hold one message."""

    name: str
    bindings: tuple[str, ...]
    hold_s: float = 1800

    @property
    def dead(self) -> str:
        return f"dead.{self.name}"

    def delay(self, seconds: int) -> str:
        return f"delay.{self.name}.{seconds}s"


def work_key(stage: str) -> str:
    return f"work.{stage}"


def queues() -> tuple[Queue, ...]:
    """Ingest, planner, and one work queue per stage held up to its recipe timeout."""
    return (
        Queue("ingest", ("frame.arrived",)),
        Queue("planner", ("frame.registered", "job.finished", "product.created")),
        *(Queue(work_key(s.name), (work_key(s.name),), s.spec.timeout_s + TRANSFER_MARGIN_S)
          for s in STAGES),
    )


def queue(name: str) -> Queue:
    """The queue called ``name``; KeyError naming the ones that exist."""
    found = {q.name: q for q in queues()}
    if name not in found:
        raise KeyError(f"no queue {name!r}; one of {', '.join(found)}")
    return found[name]
