"""The registry: frames, jobs and products, in SQLite (embedded) or PostgreSQL (cluster)."""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from musedrp.errors import ConfigError, Transient
from musedrp.frames import Frame
from musedrp.messages import WorkOrder

JOB_STATES = ("planned", "queued", "running", "succeeded", "cached", "failed", "skipped",
              "blocked")  # blocked: an upstream job failed; issued again if it is replayed
OK_STATES = ("succeeded", "cached")


def utc_now() -> datetime:
    return datetime.now(UTC)


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database of ``url`` if it does not exist (SQLite needs nothing).

    Raises
    ------
    ConfigError
        The server cannot be reached.
    """
    u = make_url(url)
    if u.get_backend_name() != "postgresql":
        return
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            if not c.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"),
                             {"n": u.database}).scalar():
                c.execute(text(f'CREATE DATABASE "{u.database}"'))
    except OperationalError as err:
        raise ConfigError(f"registry {u.render_as_string()}: {err.orig}") from err
    finally:
        admin.dispose()


@contextmanager
def unavailable_is_transient() -> Iterator[None]:
    """A registry that cannot be reached is worth a retry, not a dead letter."""
    try:
        yield
    except OperationalError as err:
        raise Transient(f"registry unavailable: {err.orig}") from err


class Base(DeclarativeBase):
    pass


class FrameRow(Base):
    __tablename__ = "frames"

    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), index=True)
    arcfile: Mapped[str] = mapped_column(String(256), default="")
    tag: Mapped[str | None] = mapped_column(String(32), index=True)
    setup: Mapped[str] = mapped_column(String(128), default="")
    night: Mapped[str] = mapped_column(String(10), default="", index=True)
    mjd: Mapped[float] = mapped_column(Float, default=0.0)
    tpl_start: Mapped[str] = mapped_column(String(32), default="")
    status: Mapped[str] = mapped_column(String(16), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    frame: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the whole Frame


class JobRow(Base):
    __tablename__ = "jobs"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    stage: Mapped[str] = mapped_column(String(32), index=True)
    night: Mapped[str] = mapped_column(String(10))
    setup: Mapped[str] = mapped_column(String(128))
    ifu: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True, default="planned")
    reason: Mapped[str] = mapped_column(Text, default="")
    order: Mapped[dict[str, Any]] = mapped_column(JSON)
    wall_s: Mapped[float | None] = mapped_column(Float)
    peak_rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    updated: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)


class ProductRow(Base):
    __tablename__ = "products"

    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    job_key: Mapped[str] = mapped_column(ForeignKey("jobs.key"), index=True)
    tag: Mapped[str] = mapped_column(String(32), index=True)
    ifu: Mapped[int | None] = mapped_column(Integer)
    qc: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


def _in(session: Session, query, column, values: list, chunk: int = 500) -> list:
    """``query`` restricted to rows whose ``column`` is among ``values``, in chunks (one
    query per 500 values instead of one per row: planning a year re-records ~70 000 jobs)."""
    return [row for i in range(0, len(values), chunk)
            for row in session.scalars(query.where(column.in_(values[i:i + chunk])))]


class Registry:
    """A thin, typed layer over the three tables; every method is one transaction."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)
        Base.metadata.create_all(self.engine)

    @classmethod
    def connect(cls, url: str) -> "Registry":
        """The registry at ``url``, or ConfigError if it cannot be reached at start-up."""
        try:
            return cls(url)
        except OperationalError as err:
            raise ConfigError(f"registry {url}: {err.orig}") from err

    @classmethod
    def for_output(cls, out: Path, url: str | None = None) -> "Registry":
        """PostgreSQL (or any SQLAlchemy URL) when given, else ``OUT/registry.sqlite``."""
        return cls(url or f"sqlite:///{(out / 'registry.sqlite').resolve()}")

    def record_frames(self, frames: Iterable[Frame], statuses: dict[str, tuple[str, str]]) -> None:
        frames = list(frames)
        with Session(self.engine) as s, s.begin():
            rows = {r.path: r for r in _in(s, select(FrameRow), FrameRow.path,
                                           [f.path for f in frames])}
            for f in frames:
                status, reason = statuses.get(f.path, ("", f.reason))
                values = dict(
                    name=f.name, arcfile=f.arcfile, tag=f.tag and str(f.tag),
                    setup=f.setup.key if f.setup else "", night=f.night, mjd=f.mjd,
                    tpl_start=f.tpl_start, status=status, reason=reason,
                    frame=f.model_dump(mode="json"))
                if (row := rows.get(f.path)) is None:
                    s.add(FrameRow(path=f.path, **values))
                else:
                    for k, v in values.items():
                        setattr(row, k, v)

    def load_frames(self) -> list[Frame]:
        """Every registered frame, as classified: what the planner plans from."""
        with Session(self.engine) as s:
            return [Frame.model_validate(r.frame) for r in
                    s.scalars(select(FrameRow).order_by(FrameRow.mjd, FrameRow.path))]

    def record_orders(self, orders: Iterable[WorkOrder]) -> None:
        """Add planned jobs; a job already known keeps its state (re-planning is harmless)."""
        orders = list(orders)
        with Session(self.engine) as s, s.begin():
            known = set(_in(s, select(JobRow.key), JobRow.key, [o.job_key for o in orders]))
            for o in orders:
                if o.job_key not in known:
                    known.add(o.job_key)
                    s.add(JobRow(key=o.job_key, stage=o.stage, night=o.night, setup=o.setup,
                                 ifu=o.ifu, order=o.model_dump(mode="json")))

    def set_state(self, key: str, state: str, reason: str = "", wall_s: float | None = None,
                  peak_rss_bytes: int | None = None) -> None:
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}")
        with Session(self.engine) as s, s.begin():
            job = s.get(JobRow, key)
            if job is None:
                raise KeyError(f"no job {key}")
            job.state, job.reason = state, reason
            if wall_s is not None:
                job.wall_s = wall_s
            if peak_rss_bytes is not None:
                job.peak_rss_bytes = peak_rss_bytes

    def record_products(self, job_key: str, ifu: int | None,
                        products: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        """``products``: (path, tag, QC) of one finished job."""
        with Session(self.engine) as s, s.begin():
            for path, tag, qc in products:
                s.merge(ProductRow(path=path, job_key=job_key, tag=tag, ifu=ifu, qc=qc))

    def forget_products(self, paths: Iterable[str]) -> None:
        """Products deleted on purpose (pruned pixel tables): no longer listed."""
        with Session(self.engine) as s, s.begin():
            s.execute(delete(ProductRow).where(ProductRow.path.in_(list(paths))))

    def job(self, key: str) -> JobRow | None:
        with Session(self.engine) as s:
            return s.get(JobRow, key)

    def jobs(self, state: str | None = None) -> list[JobRow]:
        with Session(self.engine) as s:
            q = select(JobRow).order_by(JobRow.stage, JobRow.ifu, JobRow.key)
            if state:
                q = q.where(JobRow.state == state)
            return list(s.scalars(q))

    def frames(self) -> list[FrameRow]:
        with Session(self.engine) as s:
            return list(s.scalars(select(FrameRow).order_by(FrameRow.mjd, FrameRow.name)))

    def products(self, tag: str | None = None) -> list[ProductRow]:
        with Session(self.engine) as s:
            q = select(ProductRow).order_by(ProductRow.tag, ProductRow.ifu)
            if tag:
                q = q.where(ProductRow.tag == tag)
            return list(s.scalars(q))

    def close(self) -> None:
        self.engine.dispose()
