"""The calibration cascade, declared once: which stages exist and what each needs upstream."""

import importlib
from dataclasses import dataclass
from typing import Final

from musedrp.stages import StageSpec


@dataclass(frozen=True)
class Stage:
    name: str
    needs: tuple[str, ...]

    @property
    def spec(self) -> StageSpec:
        return importlib.import_module(f"musedrp.services.{self.name}.spec").SPEC

    def compute(self):
        """The stage's ``compute.run`` (imported lazily: services depend on this module)."""
        return importlib.import_module(f"musedrp.services.{self.name}.compute").run


STAGES: Final = (
    Stage("bias", needs=()),
    Stage("flat", needs=("bias",)),
)
BY_NAME: Final = {s.name: s for s in STAGES}
