"""Messages: one versioned envelope around frozen payloads (DESIGN.md, "Messages").

A work order is fully resolved: a worker can run it blind.  Input locations are local paths
in embedded mode and object keys in services mode.
"""

import json
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from musedrp.errors import BadMessage
from musedrp.tags import Tag

SCHEMA_VERSION = 1


class Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputFile(Payload):
    tag: Tag
    path: str  # a local path (embedded mode) or an object key (services mode)
    ifu: int | None = None  # the IFU extension the job reads, for its checksum
    job_key: str = ""  # the job that made it, for products of upstream stages
    datasum: str = ""  # DATASUM of the IFU extension read, for raw frames that carry one


class WorkOrder(Payload):
    """One recipe call: stage, IFU, every input, resolved parameters and why they were chosen."""

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


class FrameArrived(Payload):
    """The observatory's ingest put a raw file into the bucket."""

    key: str
    size: int | None = None

    def __str__(self) -> str:
        return self.key


class FrameRegistered(Payload):
    """Ingest classified a frame (or rejected it, with the reason) and registered it."""

    key: str
    night: str
    tag: Tag | None
    status: str  # registered, rejected
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.key} {self.tag or self.status}"


Outcome = Literal["succeeded", "cached", "skipped", "failed"]


class JobFinished(Payload):
    job_key: str
    stage: str
    night: str
    ifu: int | None
    outcome: Outcome
    reason: str = ""
    products: dict[str, str] = {}  # PRO.CATG-named file -> object key
    qc: dict[str, Any] = {}  # the spec's headline QC
    wall_s: float | None = None
    cpu_s: float | None = None
    peak_rss_bytes: int | None = None
    cpus: tuple[int, ...] = ()
    attempt: int = 1

    def __str__(self) -> str:
        ifu = f" IFU {self.ifu:02d}" if self.ifu else ""
        return f"{self.stage}{ifu} {self.outcome} [{self.job_key}]"


class ProductCreated(Payload):
    job_key: str
    stage: str
    ifu: int | None
    tag: Tag
    key: str

    def __str__(self) -> str:
        return self.key


P = TypeVar("P", bound=Payload)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel, Generic[P]):
    """CloudEvents-like: who sent what, when, for which reduction."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    id: UUID = Field(default_factory=uuid4)
    type: str
    source: str
    time: AwareDatetime = Field(default_factory=utc_now)
    correlation_id: UUID = Field(default_factory=uuid4)
    payload: P

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    def reply(self, kind: str, source: str, payload: Payload) -> "Envelope[Any]":
        """A message caused by this one: same correlation id."""
        return Envelope(type=kind, source=source, correlation_id=self.correlation_id,
                        payload=payload)


def night_correlation(night: str) -> UUID:
    """All messages about one night's reduction share this id."""
    return uuid5(NAMESPACE_URL, f"musedrp:night:{night}")


EVENTS: dict[str, type[Payload]] = {
    "frame.arrived": FrameArrived,
    "frame.registered": FrameRegistered,
    "job.finished": JobFinished,
    "product.created": ProductCreated,
}


def payload_class(kind: str) -> type[Payload]:
    if kind.startswith("work."):
        return WorkOrder
    try:
        return EVENTS[kind]
    except KeyError:
        raise BadMessage(f"unknown message type {kind!r}") from None


def decode(body: bytes) -> Envelope[Any]:
    """Validate a message body.

    Raises
    ------
    BadMessage
        Not JSON, an unknown schema version or type, or a payload that does not validate;
        the message says which.
    """
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadMessage(f"body is not JSON: {err}") from err
    if not isinstance(raw, dict):
        raise BadMessage(f"body is a JSON {type(raw).__name__}, not an object")
    if (version := raw.get("schema_version")) != SCHEMA_VERSION:
        raise BadMessage(f"unknown schema_version {version!r} "
                         f"(this service reads version {SCHEMA_VERSION})")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise BadMessage("no message type")
    cls = payload_class(kind)
    try:
        return Envelope[cls].model_validate(raw)  # type: ignore[valid-type]
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(x) for x in e["loc"])
        raise BadMessage(f"invalid {kind} message: {where}: {e['msg']}") from err
