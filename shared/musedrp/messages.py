"""Messages: one versioned envelope around frozen payloads (DESIGN.md, "Messages").

A work order is fully resolved: a worker can run it blind.  Input locations are local paths
in embedded mode and object keys in services mode.

Every identifier has a declared pattern, checked when a message is decoded: night, stage,
setup, job key and file names become directories and object keys (``products/<night>/<stage>/
<setup>/<job_key>/<name>``), so none may hold a ``/``, be ``..`` or carry control characters.
"""

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    StringConstraints,
    ValidationError,
)

from musedrp.errors import BadMessage
from musedrp.stages import product_tag
from musedrp.storage import CONTROL, check_key, object_key
from musedrp.tags import Tag

SCHEMA_VERSION = 1
# The largest work order of a 24-IFU night (twilight: 105 inputs) encodes to 19.5 kB
# (measured with the planner service on benchmarks/ingest_planning.py's header-only night);
# 1 MiB leaves a margin of 50 for more skyflats or longer keys, and bounds what a bad
# publisher can make a consumer parse.
MAX_BODY_BYTES = 2**20

# A safe name: letters, digits and ``_+-``, with single dots between them; never ``.``, ``..``
# or anything with a ``/``.  Written for both pydantic's regex engine and Python's ``re``.
SAFE_NAME = r"[A-Za-z0-9](?:\.?[A-Za-z0-9_+-])*"
SetupKey = Annotated[str, StringConstraints(pattern=f"^{SAFE_NAME}$", max_length=96)]  # Setup.key
FileName = Annotated[str, StringConstraints(pattern=f"^{SAFE_NAME}$", max_length=128)]
JobKey = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]  # planner.job_key
Night = Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
Ifu = Annotated[int, Field(ge=1, le=24)]
ObjectKey = Annotated[str, AfterValidator(check_key)]
LocalPathOrKey = Annotated[str, StringConstraints(pattern=f"^[^{CONTROL}]+$")]


def _stage(name: str) -> str:
    from musedrp.topology import BY_NAME  # here: topology imports the runner, which imports us

    if name not in BY_NAME:
        raise ValueError(f"unknown stage {name!r}; one of {', '.join(BY_NAME)}")
    return name


def _product(name: str) -> str:
    product_tag(Path(name))  # ValueError: the name declares no PRO.CATG
    return name


StageName = Annotated[str, AfterValidator(_stage)]
ProductName = Annotated[FileName, AfterValidator(_product)]  # <PRO.CATG>[_NNNN][-<ifu>].fits


class Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputFile(Payload):
    tag: Tag
    path: LocalPathOrKey  # a local path (embedded mode) or an object key (services mode)
    ifu: Ifu | None = None  # the IFU extension the job reads, for its checksum
    job_key: JobKey | Literal[""] = ""  # the job that made it, for products of upstream stages
    datasum: str = ""  # DATASUM of the IFU extension read, for raw frames that carry one
    # (offset, length) of each byte range the job reads, from the ingest's scan: the primary
    # HDU and the IFU's extension of a raw frame; empty for a whole file
    ranges: tuple[tuple[NonNegativeInt, PositiveInt], ...] = ()


class WorkOrder(Payload):
    """One recipe call: stage, IFU, every input, resolved parameters and why they were chosen."""

    stage: StageName
    recipe: str
    job_key: JobKey
    night: Night
    setup: SetupKey
    ifu: Ifu | None
    inputs: tuple[InputFile, ...]
    params: dict[str, Any]
    memory_gb: float
    timeout_s: float
    needs: tuple[JobKey, ...] = ()  # job keys whose products are among the inputs
    reasons: tuple[str, ...] = ()  # association decisions, for provenance
    products: tuple[ProductName, ...] = ()  # file names the job must produce
    # how many jobs of its plan wait on it, directly or not (``ranks``): of the jobs waiting
    # for a core, those with more start first; not part of its identity (``job_key``)
    rank: NonNegativeInt = 0

    def __str__(self) -> str:
        ifu = f" IFU {self.ifu:02d}" if self.ifu else ""
        return f"{self.stage}{ifu} {self.setup} {self.night} [{self.job_key}]"

    def product_key(self, *name: str) -> str:
        """``products/<night>/<stage>/<setup>/<job_key>[/<name>]``: where the job's files go."""
        return object_key("products", self.night, self.stage, self.setup, self.job_key, *name)

    @property
    def product_dir(self) -> str:
        """Relative product location: ``products/<night>/<stage>/<setup>/<job_key>``."""
        return self.product_key()


def ranks(orders: Sequence[WorkOrder]) -> dict[str, int]:
    """How many of ``orders`` wait on each, directly or not, by job key."""
    children: dict[str, list[str]] = {o.job_key: [] for o in orders}
    for o in orders:
        for n in o.needs:
            children.setdefault(n, []).append(o.job_key)
    below: dict[str, frozenset[str]] = {}

    def under(key: str) -> frozenset[str]:
        if key not in below:
            below[key] = frozenset().union(*(under(c) | {c} for c in children[key]))
        return below[key]

    return {o.job_key: len(under(o.job_key)) for o in orders}


class FrameArrived(Payload):
    """The observatory's ingest put a raw file into the bucket."""

    key: ObjectKey
    size: int | None = Field(default=None, ge=0)

    def __str__(self) -> str:
        return self.key


class FrameRegistered(Payload):
    """Ingest classified a frame (or rejected it, with the reason) and registered it."""

    key: ObjectKey
    night: Night | Literal[""]  # "": a rejected file may have no date
    tag: Tag | None
    status: Literal["registered", "rejected"]
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.key} {self.tag or self.status}"


Outcome = Literal["succeeded", "cached", "skipped", "failed"]


class JobFinished(Payload):
    job_key: JobKey
    stage: StageName
    night: Night
    ifu: Ifu | None
    outcome: Outcome
    reason: str = ""
    products: dict[ProductName, ObjectKey] = {}  # PRO.CATG-named file -> object key
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
    job_key: JobKey
    stage: StageName
    ifu: Ifu | None
    tag: Tag
    key: ObjectKey
    qc: dict[str, Any] = {}  # every QC keyword of the product, for the registry

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
        Larger than ``MAX_BODY_BYTES``, not JSON, an unknown schema version or type, or a
        payload that does not validate; the message says which.
    """
    if len(body) > MAX_BODY_BYTES:
        raise BadMessage(f"body of {len(body)} bytes exceeds the limit of {MAX_BODY_BYTES}")
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
