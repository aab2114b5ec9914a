"""The bias stage's computation: the shared recipe body with this stage's spec."""

from collections.abc import Sequence
from pathlib import Path

from musedrp.messages import WorkOrder
from musedrp.runner import StageResult
from musedrp.runner import compute as compute_stage
from musedrp.services.bias.spec import SPEC


def run(order: WorkOrder, workdir: Path, cpus: Sequence[int]) -> StageResult:
    """Run bias's recipe for one work order inside workdir; no broker, no object store."""
    return compute_stage(SPEC, order, workdir, cpus)
