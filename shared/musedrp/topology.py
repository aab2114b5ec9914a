"""The calibration cascade, declared once: which stages exist and what each needs upstream."""

import functools
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from musedrp.stages import StageSpec

if TYPE_CHECKING:  # the runner (esorex, astropy, matplotlib) only when a stage computes
    from musedrp.runner import ComputeFn


@dataclass(frozen=True)
class Stage:
    name: str
    needs: tuple[str, ...]

    @functools.cached_property  # planning a year asks 80 000 times
    def spec(self) -> StageSpec:
        return importlib.import_module(f"musedrp.services.{self.name}.spec").SPEC

    def compute(self) -> "ComputeFn":
        """The stage's own ``compute.run`` if it has one, else the shared recipe body.

        Most stages are fully described by their spec; a ``compute.py`` beside the spec is
        for a stage that needs logic of its own."""
        try:
            return importlib.import_module(f"musedrp.services.{self.name}.compute").run
        except ModuleNotFoundError as err:
            if err.name != f"musedrp.services.{self.name}.compute":
                raise
            from musedrp import runner

            return functools.partial(runner.compute, self.spec)


STAGES: Final = (
    Stage("bias", needs=()),
    Stage("flat", needs=("bias",)),
    Stage("wavecal", needs=("bias", "flat")),
    Stage("lsf", needs=("bias", "flat", "wavecal")),
    Stage("twilight", needs=("bias", "flat", "wavecal")),
    Stage("scibasic", needs=("bias", "flat", "wavecal", "twilight")),
    Stage("standard", needs=("scibasic",)),
    Stage("sky", needs=("scibasic", "standard", "lsf")),  # muse_create_sky
    Stage("scipost", needs=("scibasic", "standard", "lsf", "sky")),
    Stage("align", needs=("scipost",)),  # muse_exp_align
    Stage("combine", needs=("scipost", "align")),  # muse_exp_combine
    Stage("stitch", needs=("combine",)),  # wavelength pieces into one cube (musedrp's own)
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


def queues(timeout_s: float | None = None) -> tuple[Queue, ...]:
    """Ingest, planner, and one work queue per stage held up to its recipe timeout plus
    transfers; ``timeout_s`` (``MUSEDRP_TIMEOUT_S``) replaces every stage's recipe timeout,
    as the worker does, so that the broker never takes back a message still computing."""
    return (
        Queue("ingest", ("frame.arrived",)),
        Queue("planner", ("frame.registered", "job.finished", "product.created")),
        *(Queue(work_key(s.name), (work_key(s.name),),
                (timeout_s or s.spec.timeout_s) + TRANSFER_MARGIN_S) for s in STAGES),
    )


def queue(name: str, timeout_s: float | None = None) -> Queue:
    """The queue called ``name`` (``timeout_s`` as for ``queues``); KeyError naming the ones
    that exist."""
    found = {q.name: q for q in queues(timeout_s)}
    if name not in found:
        raise KeyError(f"no queue {name!r}; one of {', '.join(found)}")
    return found[name]
