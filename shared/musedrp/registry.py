"""The registry: frames, jobs and products, in SQLite (embedded) or PostgreSQL (cluster)."""

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    cast,
    create_engine,
    delete,
    event,
    false,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from musedrp.errors import ConfigError, Transient
from musedrp.frames import Frame
from musedrp.messages import WorkOrder
from musedrp.tags import STATIC_TAGS

# blocked: an upstream job failed; issued again if it is replayed.  superseded: a later plan of
# its night no longer holds it (frames arrived since); never issued, unless a plan holds it again
JOB_STATES = ("planned", "queued", "running", "succeeded", "cached", "failed", "skipped",
              "blocked", "superseded")
WAITING = ("planned", "blocked")  # not issued yet
OK_STATES = ("succeeded", "cached")
STATIC = [str(t) for t in STATIC_TAGS]  # frames that serve every night


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


class NeedRow(Base):
    """Job ``job_key`` reads a product of job ``need``: what a finished job may unblock is
    found without reading every job."""

    __tablename__ = "needs"
    # one index, by the job needed (the key's order), holding the rows (SQLite: no rowid),
    # and no foreign key to check row by row (PostgreSQL): a year's plan inserts ~300 000
    # rows, each with its job, in the same transaction
    __table_args__ = {"sqlite_with_rowid": False}

    need: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_key: Mapped[str] = mapped_column(String(64), primary_key=True)


class ProductRow(Base):
    __tablename__ = "products"

    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    job_key: Mapped[str] = mapped_column(ForeignKey("jobs.key"), index=True)
    tag: Mapped[str] = mapped_column(String(32), index=True)
    ifu: Mapped[int | None] = mapped_column(Integer)
    qc: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class DecisionRow(Base):
    """An association decision of the latest plan of its night ("" for the plan's own, such
    as the IFUs it was restricted to): what ``musedrp report`` lists for a deployment."""

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    night: Mapped[str] = mapped_column(String(10), index=True)
    text: Mapped[str] = mapped_column(Text)


def _in(session: Session, query, column, values: list, chunk: int = 500,
        fetch: Callable = Session.scalars) -> list:
    """``query`` restricted to rows whose ``column`` is among ``values``, in chunks (one
    query per 500 values instead of one per row: planning a year re-records ~70 000 jobs)."""
    return [row for i in range(0, len(values), chunk)
            for row in fetch(session, query.where(column.in_(values[i:i + chunk])))]


def _set_states(session: Session, keys: Sequence[str], state: str, reason: str,
                chunk: int = 500) -> None:
    """The jobs ``keys`` to ``state`` with ``reason``, one statement per ``chunk`` keys."""
    for i in range(0, len(keys), chunk):
        session.execute(update(JobRow).where(JobRow.key.in_(keys[i:i + chunk]))
                        .values(state=state, reason=reason))


def _near(nights: Iterable[str], days: float):
    """Where a frame's night is within ``days`` of one of ``nights`` (one range of the indexed
    column per run of close nights)."""
    span, ranges = timedelta(days=days), []
    for d in sorted(date.fromisoformat(n) for n in nights):
        if ranges and d - span <= ranges[-1][1]:
            ranges[-1][1] = d + span
        else:
            ranges.append([d - span, d + span])
    return or_(false(), *(FrameRow.night.between(a.isoformat(), b.isoformat())
                          for a, b in ranges))


def _add_rows(session: Session, table: Table, columns: Sequence[str],
              rows: list[tuple]) -> None:
    """Insert ``rows`` (values of ``columns``, as the driver takes them) by the driver's
    executemany, or PostgreSQL's COPY: SQLAlchemy's processing of each row's parameters costs
    more than the insert, and planning a year adds ~80 000 jobs and four times as many needs.
    Drivers: pysqlite and psycopg."""
    if not rows:
        return
    conn = session.connection()
    quote = conn.dialect.identifier_preparer
    # our own table's and columns' names; every value is bound or sent as data
    into = f"{quote.format_table(table)} ({', '.join(quote.quote(c) for c in columns)})"
    if conn.dialect.driver == "psycopg":  # COPY (a year's plan: 7.5 s instead of 12.2 s)
        with conn.connection.driver_connection.cursor() as cursor, \
                cursor.copy(f"COPY {into} FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join(["?"] * len(columns))
    conn.exec_driver_sql(f"INSERT INTO {into} VALUES ({marks})", rows)  # noqa: S608


class OrderRow(NamedTuple):
    """A planned job as the registry records it: cheap to send between processes (a planning
    process makes them, ``services/planner``)."""

    key: str
    stage: str
    night: str
    setup: str
    ifu: int | None
    needs: tuple[str, ...]
    order: str  # the WorkOrder's JSON


def order_row(o: WorkOrder) -> OrderRow:
    return OrderRow(o.job_key, o.stage, o.night, o.setup, o.ifu, o.needs, o.model_dump_json())


def _write_lock(conn: Connection) -> None:
    """SQLite: take the database's write lock as the transaction begins.  Two transactions
    that read and then write, begun side by side, would deadlock, and SQLite fails one at
    once instead of waiting."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_cache(connection, _record) -> None:
    """A page cache of up to 64 MiB (2 MiB by default): a year's plan writes ~80 000 jobs and
    their needs into indexes of random keys, a third faster with their pages in memory."""
    connection.execute("PRAGMA cache_size = -65536")


# PostgreSQL plans a query from its statistics of the table, which lag behind a large insert:
# with a table taken for empty, the next plans' key lookups scan all of it (0.3 s each, a
# minute for a year's plan in parts).  More jobs than this at once are followed by ANALYZE.
ANALYZE_ROWS = 5000
SCHEMA_LOCK = 0x6D757365647270  # "musedrp": the advisory lock of the schema's creation


class Registry:
    """A thin, typed layer over the three tables; every method is one transaction."""

    def __init__(self, url: str, create: bool = True) -> None:
        """``create``: the tables that are missing (False: another process made them)."""
        self.url = url
        self.engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_cache)
        if create:
            self._create_schema()

    def _create_schema(self) -> None:
        """Create what tables are missing, one process at a time: the services that ``serve``
        starts together on a new database would each create them, and all but one fail."""
        with self.engine.begin() as c:
            if c.dialect.name == "postgresql":
                c.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
            _write_lock(c)  # SQLite: the driver begins no transaction before DDL
            index_needs = not inspect(c).has_table(NeedRow.__tablename__)
            Base.metadata.create_all(c)
            if index_needs:  # a registry older than the needs table: index its jobs once
                rows = [{"job_key": key, "need": n}
                        for key, order in c.execute(select(JobRow.key, JobRow.order))
                        for n in order.get("needs", ())]
                if rows:
                    c.execute(insert(NeedRow), rows)

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

    def set_statuses(self, statuses: dict[str, tuple[str, str]]) -> None:
        """A plan's verdict on each frame (path: status, reason); nothing else of the frame is
        written, so a registration made while the plan ran is kept."""
        if statuses:
            with Session(self.engine) as s, s.begin():
                s.execute(update(FrameRow), [{"path": p, "status": st, "reason": why}
                                             for p, (st, why) in statuses.items()])

    def load_frames(self, nights: Iterable[str] | None = None, days: float = 0) -> list[Frame]:
        """Every registered frame, as classified: what the planner plans from; with ``nights``,
        only the frames of nights within ``days`` of them, and the static calibrations."""
        # the JSON as text, parsed by pydantic: twice as fast as a dict validated
        q = select(cast(FrameRow.frame, Text)).order_by(FrameRow.mjd, FrameRow.path)
        if nights is not None:
            q = q.where(or_(_near(nights, days), FrameRow.tag.in_(STATIC)))
        with Session(self.engine) as s:
            return [Frame.model_validate_json(text) for text in s.scalars(q)]

    def nights(self, near: Iterable[str], days: float) -> set[str]:
        """The nights with observations (not static calibrations) within ``days`` of the
        nights ``near``."""
        q = select(FrameRow.night).distinct().where(_near(near, days), FrameRow.tag.not_in(STATIC))
        with Session(self.engine) as s:
            return set(s.scalars(q))

    def record_orders(self, orders: Iterable[WorkOrder | OrderRow]) -> list[str]:
        """Add planned jobs; a job already known keeps its state (re-planning is harmless).
        Returns the keys of the jobs added."""
        rows = [o if isinstance(o, OrderRow) else order_row(o) for o in orders]
        with Session(self.engine) as s, s.begin():
            _write_lock(s.connection())  # planning processes record side by side
            known = set(_in(s, select(JobRow.key), JobRow.key, [r.key for r in rows]))
            new = {r.key: r for r in rows if r.key not in known}
            jobs = JobRow.__table__
            dialect = self.engine.dialect  # its form of a time (SQLite: text without a zone)
            stamp = jobs.c.updated.type.dialect_impl(dialect).bind_processor(dialect)
            now = stamp(utc_now()) if stamp else utc_now()
            _add_rows(s, jobs, ("key", "stage", "night", "setup", "ifu", "state", "reason",
                                "order", "updated"),
                      [(r.key, r.stage, r.night, r.setup, r.ifu, "planned", "", r.order, now)
                       for r in new.values()])
            _add_rows(s, NeedRow.__table__, ("job_key", "need"),
                      [(r.key, n) for r in new.values() for n in r.needs])
            if len(new) >= ANALYZE_ROWS and self.engine.dialect.name == "postgresql":
                s.execute(text("ANALYZE jobs, needs"))
        return list(new)

    def supersede(self, nights: Iterable[str] | None, held: Iterable[str],
                  reason: str) -> list[str]:
        """After a plan of ``nights`` (None: every night) that holds the jobs ``held``: a job
        of those nights not issued yet that the plan does not hold is superseded, with
        ``reason``; a superseded job that it holds waits again.  Returns the keys superseded.
        (A job issued already runs: its products are harmless, and nothing waits on them.)"""
        held = set(held)
        with Session(self.engine) as s, s.begin():
            q = select(JobRow.key).where(JobRow.state.in_(WAITING))
            if nights is not None:
                q = q.where(JobRow.night.in_(list(nights)))
            gone = [k for k in s.scalars(q) if k not in held]
            # of any night (a plan holds calibrations of other nights); far fewer than held
            back = [k for k in s.scalars(select(JobRow.key).where(JobRow.state == "superseded"))
                    if k in held]
            _set_states(s, gone, "superseded", reason)
            _set_states(s, back, "planned", "")
        return gone

    def record_decisions(self, nights: Iterable[str] | None, decisions: Iterable[str]) -> None:
        """The decisions of a plan of ``nights`` (None: every night), replacing those of an
        earlier plan of the same nights.  A decision belongs to the night it names first
        (``night 2014-08-01, ...``)."""
        rows = [dict(night=m[1] if (m := re.match(r"night (\d{4}-\d\d-\d\d)\b", d)) else "",
                     text=d) for d in decisions]
        with Session(self.engine) as s, s.begin():
            old = delete(DecisionRow)
            if nights is not None:
                old = old.where(DecisionRow.night.in_([*nights, ""]))
            s.execute(old)
            if rows:
                s.execute(insert(DecisionRow), rows)

    def decisions(self) -> list[str]:
        with Session(self.engine) as s:
            return list(s.scalars(select(DecisionRow.text).order_by(DecisionRow.id)))

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

    def set_states(self, keys: Sequence[str], state: str) -> None:
        """Many jobs to ``state`` in one transaction, their reasons cleared."""
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}")
        with Session(self.engine) as s, s.begin():
            _set_states(s, keys, state, "")

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

    def jobs(self, *states: str, keys: Iterable[str] | None = None) -> list[JobRow]:
        """The jobs (in ``states`` if given; among ``keys`` if given)."""
        q = select(JobRow).order_by(JobRow.stage, JobRow.ifu, JobRow.key)
        if states:
            q = q.where(JobRow.state.in_(states))
        with Session(self.engine) as s:
            return list(s.scalars(q)) if keys is None else _in(s, q, JobRow.key, list(keys))

    def dependents(self, keys: Iterable[str], *states: str) -> list[JobRow]:
        """The jobs in ``states`` that need a product of one of the jobs ``keys``."""
        q = select(JobRow).join(NeedRow, NeedRow.job_key == JobRow.key).where(
            JobRow.state.in_(states))
        with Session(self.engine) as s:
            return list({j.key: j for j in _in(s, q, NeedRow.need, list(keys))}.values())

    def states(self, keys: Iterable[str]) -> dict[str, str]:
        """The state of each of the jobs ``keys`` that exists."""
        with Session(self.engine) as s:
            return dict(_in(s, select(JobRow.key, JobRow.state), JobRow.key, list(keys),
                            fetch=Session.execute))

    def frames(self) -> list[FrameRow]:
        with Session(self.engine) as s:
            return list(s.scalars(select(FrameRow).order_by(FrameRow.mjd, FrameRow.name)))

    def products(self, tag: str | None = None) -> list[ProductRow]:
        with Session(self.engine) as s:
            q = select(ProductRow).order_by(ProductRow.tag, ProductRow.ifu)
            if tag:
                q = q.where(ProductRow.tag == tag)
            return list(s.scalars(q))

    def qc(self, stage: str | None = None, ifu: int | None = None, since: str | None = None,
           until: str | None = None) -> list[tuple[str, str, str, int | None, str, dict]]:
        """(night, stage, setup, IFU, product tag, QC) of every product with QC, in night
        order (of one stage, IFU (0: of all IFUs), between two nights, if given): what QC
        trending reads."""
        q = (select(JobRow.night, JobRow.stage, JobRow.setup, ProductRow.ifu, ProductRow.tag,
                    ProductRow.qc, ProductRow.job_key, ProductRow.path)
             .join(JobRow, ProductRow.job_key == JobRow.key)
             .order_by(JobRow.night, ProductRow.path))
        if stage is not None:
            q = q.where(JobRow.stage == stage)
        if ifu is not None:
            q = q.where(ProductRow.ifu == ifu if ifu else ProductRow.ifu.is_(None))
        if since is not None:
            q = q.where(JobRow.night >= since)
        if until is not None:
            q = q.where(JobRow.night <= until)
        with Session(self.engine) as s:
            rows = {(job, Path(path).name): (night, stage_, setup, ifu, tag, qc)
                    for night, stage_, setup, ifu, tag, qc, job, path in s.execute(q) if qc}
        return list(rows.values())  # one row per product of a job, wherever it was recorded

    def last_qc_night(self) -> str | None:
        """The last night with a product, or None."""
        q = select(func.max(JobRow.night)).join(ProductRow, ProductRow.job_key == JobRow.key)
        with Session(self.engine) as s:
            return s.scalar(q)

    def close(self) -> None:
        self.engine.dispose()
