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
