"""The contract of a recipe stage: inputs and products from its man page, plus what only we
know (per-IFU or fan-in, memory model, timeout, headline QC keys)."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from musedrp.tags import Tag


class RecipeParams(BaseModel):
    """Recipe options; subclasses copy names and defaults from ``esorex --man-page``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    # musedrp's own options of the stage, never passed to the recipe
    OWN: ClassVar[tuple[str, ...]] = ()

    def to_esorex_args(self) -> list[str]:
        """The only place that writes ``--name=value``; booleans as esorex spells them."""
        def fmt(v: object) -> str:
            return ("TRUE" if v else "FALSE") if isinstance(v, bool) else str(v)
        return [f"--{k}={fmt(v)}" for k, v in self.model_dump().items() if k not in self.OWN]


class OverscanParams(RecipeParams):
    """Overscan handling, shared by every recipe that reads raw CCD frames."""

    overscan: Literal["none", "offset", "vpoly"] = "vpoly"
    ovscreject: Literal["none", "dcr", "fit"] = "dcr"
    ovscsigma: float = 30.0
    ovscignore: int = 3


class CcdParams(OverscanParams):
    """Overscan handling and image combination, shared by the CCD-level recipes."""

    combine: Literal["average", "median", "minmax", "sigclip"] = "sigclip"
    nlow: int = 1
    nhigh: int = 1
    nkeep: int = 1
    lsigma: float = 3.0
    hsigma: float = 3.0


@dataclass(frozen=True)
class Input:
    """One row of the man page's input table."""

    tag: Tag
    raw: bool = False
    required: bool = True
    min_count: int = 1
    own: bool = False  # read by musedrp's own code around the recipe, not in the recipe's SOF


@dataclass(frozen=True)
class Product:
    tag: Tag
    # the option that enables an optional product: a boolean, or ``option:word`` for a
    # comma-separated list option that must contain the word (``save:individual``)
    when: str = ""

    def enabled(self, params: "RecipeParams") -> bool:
        name, _, word = self.when.partition(":")
        if not name:
            return True
        value = getattr(params, name)
        return word in str(value).split(",") if word else bool(value)
    numbered: bool = False  # esorex numbers it per input frame: <tag>_0001[-<ifu>].fits


@dataclass(frozen=True)
class MemoryModel:
    """Peak RSS of one job in GB: ``base + per_ifu * IFUs + per_frame * raw frames``.

    Per-IFU jobs have one IFU.  The fan-in recipes keep a product per IFU in memory but
    load the raw frames one IFU at a time (measured for muse_twilight: the cost of a skyflat
    does not grow with the number of IFUs, benchmarks/results/twilight_memory.md)."""

    base_gb: float
    per_frame_gb: float
    per_ifu_gb: float = 0.0

    def estimate_gb(self, n_frames: int, n_ifus: int = 1) -> float:
        return round(self.base_gb + n_ifus * self.per_ifu_gb + self.per_frame_gb * n_frames, 2)

    def max_frames(self, budget_gb: float, n_ifus: int = 1) -> int:
        """The most raw frames that fit into ``budget_gb``."""
        room = budget_gb - self.base_gb - n_ifus * self.per_ifu_gb
        return max(0, int(room / self.per_frame_gb)) if self.per_frame_gb else 10**6


@dataclass(frozen=True)
class StageSpec:
    name: str
    recipe: str
    inputs: tuple[Input, ...]
    products: tuple[Product, ...]
    params: type[RecipeParams]
    per_ifu: bool
    memory: MemoryModel
    timeout_s: float
    qc: dict[Tag, tuple[str, ...]]  # headline QC keys (regular expressions) per product
    deviations: tuple[str, ...] = ()  # parameters whose default differs from the man page
    # the recipe uses more than one core (benchmarks/results/fanin_threads.md: muse_standard
    # and muse_scipost 1.8x faster on 2 cores; per-IFU recipes and twilight gain nothing)
    multicore: bool = False
    # models that replace ``memory`` for one value of a parameter: (name, value) -> model
    memory_when: tuple[tuple[tuple[str, str], MemoryModel], ...] = ()

    @property
    def own(self) -> bool:
        """musedrp's own step (``musedrp_<name>``), not an ESO recipe."""
        return self.recipe.startswith("musedrp_")

    def memory_for(self, params: RecipeParams) -> MemoryModel:
        """The memory model of a job with ``params``."""
        for (name, value), model in self.memory_when:
            if str(getattr(params, name)) == value:
                return model
        return self.memory

    def raw_min(self) -> int:
        return max((i.min_count for i in self.inputs if i.raw), default=1)

    @property
    def raw_tags(self) -> tuple[Tag, ...]:
        return tuple(i.tag for i in self.inputs if i.raw)

    def product_names(self, ifu: int | None, params: RecipeParams) -> list[str]:
        """File names esorex writes with ``--merge=FALSE``: ``<PRO.CATG>[_0001][-<ifu>].fits``.

        Our jobs give numbered products exactly one input exposure, hence ``_0001``."""
        suffix = f"-{ifu:02d}" if self.per_ifu and ifu else ""
        return [f"{p.tag}{'_0001' if p.numbered else ''}{suffix}.fits" for p in self.products
                if p.enabled(params)]

    def headline_qc(self, tag: Tag, qc: dict[str, object]) -> dict[str, object]:
        patterns = [re.compile(p) for p in self.qc.get(tag, ())]
        return {k: v for k, v in qc.items() if any(p.fullmatch(k) for p in patterns)}


def product_tag(path: Path) -> Tag:
    """``MASTER_BIAS-01.fits`` -> ``Tag.MASTER_BIAS``; ``PIXTABLE_STD_0001-02.fits`` too."""
    return Tag(re.sub(r"(_\d{4})?(-\d\d)?\.fits$", "", path.name))
