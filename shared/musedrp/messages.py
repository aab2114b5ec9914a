"""Message payloads.  A work order is fully resolved: a worker can run it blind."""

from typing import Any

from pydantic import BaseModel, ConfigDict

from musedrp.tags import Tag


class InputFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tag: Tag
    path: str  # a local path in embedded mode
    ifu: int | None = None  # the IFU extension the job reads, for its checksum
    job_key: str = ""  # the job that made it, for products of upstream stages
    datasum: str = ""  # DATASUM of the IFU extension read, for raw frames that carry one


class WorkOrder(BaseModel):
    """One recipe call: stage, IFU, every input, resolved parameters and why they were chosen."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str
    recipe: str
    job_key: str
    night: str
    setup: str
    ifu: int | None
    inputs: tuple[InputFile, ...]
    params: dict[str, Any]
    memory_gb: float
    timeout_s: float
    needs: tuple[str, ...] = ()  # job keys whose products are among the inputs
    reasons: tuple[str, ...] = ()  # association decisions, for provenance
    products: tuple[str, ...] = ()  # file names the job must produce

    def __str__(self) -> str:
        ifu = f" IFU {self.ifu:02d}" if self.ifu else ""
        return f"{self.stage}{ifu} {self.setup} {self.night} [{self.job_key}]"

    @property
    def product_dir(self) -> str:
        """Relative product location: ``products/<night>/<stage>/<setup>/<job_key>``."""
        return f"products/{self.night}/{self.stage}/{self.setup}/{self.job_key}"
