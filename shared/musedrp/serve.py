"""All services on one machine: a broker, an S3 server, a registry, and one process per service.

``musedrp serve`` uses what is configured (``MUSEDRP_*``) and starts what is missing: RabbitMQ
if it is local and down, ``weed mini`` if no S3 endpoint is configured, the PostgreSQL
database if it does not exist.  Each service runs as its own process (``musedrp service
NAME``); each logs JSON lines to ``STATE_DIR/logs/NAME.log`` and serves metrics on its own
port.  Per-IFU stages get one worker per core, merging stages one: they share this
machine's cores and memory budget as the embedded executor does (admission.py), so the IFUs
of a stage run side by side and a merging recipe gets the cores others free.  What the
other commands (``submit``, ``status``) need to find the servers is written to
``STATE_DIR/services.env``, and each secret (S3 key, broker password) to a file of its own
under ``STATE_DIR/secrets``, all readable by this user only.  The services run in sessions of
their own: a Ctrl-C reaches ``serve`` alone, which sends each service one SIGTERM.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from musedrp import broker, esorex, s3server
from musedrp.errors import ConfigError
from musedrp.executor import available_memory_gb
from musedrp.registry import ensure_database
from musedrp.settings import SECRETS, Settings, write_private
from musedrp.storage import S3Store
from musedrp.topology import BY_NAME, STAGES, queues

SERVICES = ("ingest", "planner", *(s.name for s in STAGES))
ENV_FILE = "services.env"
ADMISSION_FILE = "admission.json"
METRICS_BASE = 9310
SERVICE_COMMAND = (sys.executable, "-m", "musedrp.cli", "service")  # + the service's name


def read_env_file(state_dir: Path) -> dict[str, str]:
    path = state_dir / ENV_FILE
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def settings_for(state_dir: Path) -> Settings:
    """Settings of a running ``serve``: its env file, overridden by this environment."""
    return Settings.load({**read_env_file(state_dir), **os.environ})


def ensure_broker(s: Settings) -> None:
    """Connect, or start the local RabbitMQ if it is down and installed here; on a local
    broker, raise the broker-wide consumer timeout above the longest recipe (brokers before
    3.12 ignore the per-queue ``x-consumer-timeout``)."""
    local = s.amqp_host in ("127.0.0.1", "localhost") and shutil.which("rabbitmqctl")
    try:
        broker.connect(s).close()
    except ConfigError:
        if not local:
            raise
        print("starting RabbitMQ (rabbitmq-server -detached)", flush=True)
        subprocess.run(["rabbitmq-server", "-detached"], check=False)  # noqa: S603, S607
        subprocess.run(["rabbitmqctl", "await_startup", "--timeout", "60"],  # noqa: S603, S607
                       check=False, capture_output=True)
        broker.connect(s).close()
    if local:
        hold_ms = int(max(q.hold_s for q in queues(s.timeout_s)) * 1000)
        subprocess.run(["rabbitmqctl", "eval",  # noqa: S603, S607
                        f"application:set_env(rabbit, consumer_timeout, {hold_ms})."],
                       check=False, capture_output=True)


@dataclass
class Fleet:
    """Service processes started and stopped by name."""

    state_dir: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, cpus: Iterable[int] | None = None, metrics_port: int = 0,
              service: str = "", **settings: str) -> subprocess.Popen:
        """Start ``service`` (default ``name``) as the process called ``name``."""
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "MUSEDRP_LOG_FORMAT": "json",
               "MUSEDRP_METRICS_PORT": str(metrics_port),
               **({"MUSEDRP_CPUS": esorex.format_cpus(cpus)} if cpus is not None else {}),
               **{f"MUSEDRP_{k.upper()}": v for k, v in settings.items()}}
        with (logs / f"{name}.log").open("ab") as log:
            # a session of its own: a Ctrl-C in serve's terminal must not reach the service
            # beside serve's own SIGTERM, as a second signal (which kills the recipe)
            self.processes[name] = subprocess.Popen(  # noqa: S603 - our own CLI
                [*SERVICE_COMMAND, service or name], env=env, start_new_session=True,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self.processes[name]

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        p = self.processes.pop(name)
        if p.poll() is None:
            p.send_signal(sig)
        return _reap(p, timeout_s)

    def stop_all(self, timeout_s: float = 60.0) -> None:
        """SIGTERM to all at once (each finishes its message), then wait for each."""
        for p in self.processes.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for name in list(self.processes):
            _reap(self.processes.pop(name), max(0.1, deadline - time.monotonic()))


def _reap(p: subprocess.Popen, timeout_s: float) -> int:
    """Wait for a signalled process; kill it if it takes longer than ``timeout_s``."""
    try:
        return p.wait(timeout_s)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait()


def prepare(state_dir: Path, s3: bool = False) -> tuple[dict[str, str],
                                                       s3server.S3Server | None]:
    """Broker, object store and registry ready; returns the environment services need.

    Without a configured ``MUSEDRP_S3_ENDPOINT`` the objects live in ``STATE_DIR/store``, a
    directory every process here shares: a local S3 server would spend the cores the recipes
    need (``weed mini`` took ~27 CPU-s per GB moved, 413 CPU-s over the 3-IFU night,
    docs/measurements.md).  ``s3`` starts ``weed mini`` instead, to try the S3 path locally.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    s = Settings.load()
    ensure_broker(s)
    env = {k: v for k, v in os.environ.items() if k.startswith("MUSEDRP_")}
    server = None
    if "MUSEDRP_S3_ENDPOINT" in os.environ:
        pass  # the configured store
    elif s3:
        server = s3server.start(state_dir / "s3")
        env |= {"MUSEDRP_S3_ENDPOINT": server.endpoint,
                "MUSEDRP_S3_ACCESS_KEY": server.access_key,
                "MUSEDRP_S3_SECRET_KEY": server.secret_key}
    else:
        env["MUSEDRP_S3_ENDPOINT"] = f"file://{(state_dir / 'store').resolve()}"
    env.setdefault("MUSEDRP_SCRATCH", str(state_dir / "scratch"))
    # one budget for the planner (it splits or refuses jobs by it) and the workers' admission
    env.setdefault("MUSEDRP_MEMORY_GB", f"{0.85 * available_memory_gb():.1f}")
    env["MUSEDRP_ADMISSION"] = str(state_dir / ADMISSION_FILE)
    (state_dir / ADMISSION_FILE).unlink(missing_ok=True)  # an earlier serve's claims
    env = _secrets_to_files(env, state_dir / "secrets")
    s = Settings.load(env)
    if server is not None:
        _create_bucket(S3Store.from_settings(s))
    ensure_database(s.db_url)
    # the registry URL may hold a password too
    write_private(state_dir / ENV_FILE, "".join(f"{k}={v}\n" for k, v in sorted(env.items())))
    return env, server


def _secrets_to_files(env: dict[str, str], directory: Path) -> dict[str, str]:
    """``env`` with each secret moved to a file of its own in ``directory``, named by
    ``MUSEDRP_<SECRET>_FILE`` instead."""
    out = dict(env)
    for name in SECRETS:
        key = f"MUSEDRP_{name.upper()}"
        if key in out:
            write_private(directory / name, out.pop(key))
            out[f"{key}_FILE"] = str(directory / name)
    return out


def _create_bucket(store: S3Store, timeout_s: float = 30.0) -> None:
    """The bucket, once the freshly started server accepts requests."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            store.create_bucket()
            store.check()
            return
        except Exception as err:  # the filer behind the S3 port may need a moment
            if time.monotonic() > deadline:
                raise ConfigError(f"S3 bucket {store.bucket} could not be created: {err}") from err
            time.sleep(0.5)


def instances(services: Iterable[str], ncpus: int) -> list[tuple[str, str]]:
    """(process name, service) pairs: a worker per core and one more for a per-IFU stage, so
    that its IFUs run side by side and its next order is fetched and waiting for a core
    (ranked) while they run; one for ingest, the planner and a merging stage (which widens
    instead).
    """
    out = []
    for service in services:
        stage = BY_NAME.get(service)
        n = ncpus + 1 if stage is not None and not stage.spec.multicore else 1
        out += [(service if i == 0 else f"{service}.{i + 1}", service) for i in range(n)]
    return out


def serve(state_dir: Path, services: Iterable[str] = SERVICES, s3: bool = False) -> int:
    """Run every service until Ctrl-C or SIGTERM; a service that exits is reported.  ``s3``:
    see ``prepare``."""
    env, server = prepare(state_dir, s3)
    fleet = Fleet(state_dir, env)
    cpus = sorted(os.sched_getaffinity(0))
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        print(f"{'service':<11} {'pid':>7}  metrics  log  (workers share CPUs "
              f"{esorex.format_cpus(cpus)} within {Settings.load(env).memory_gb:.1f} GB)")
        for i, (name, service) in enumerate(instances(services, len(cpus))):
            p = fleet.start(name, None, METRICS_BASE + i, service)
            print(f"{name:<11} {p.pid:>7}  :{METRICS_BASE + i}    "
                  f"{state_dir / 'logs' / (name + '.log')}", flush=True)
        print(f"objects in {env['MUSEDRP_S3_ENDPOINT']}; submit with `musedrp submit RAW_DIR "
              f"--state-dir {state_dir}`; Ctrl-C stops everything", flush=True)
        reported: set[str] = set()
        while not stop:
            time.sleep(1)
            for name, p in fleet.processes.items():
                if p.poll() is not None and name not in reported:
                    reported.add(name)
                    print(f"service {name} exited with {p.returncode}; see "
                          f"{state_dir / 'logs' / (name + '.log')}", flush=True)
    finally:
        print("stopping services", flush=True)
        fleet.stop_all()
        if server is not None:
            server.stop()
    return 0


def upload_rank(frame) -> int:
    """Static calibrations; then the frames that decide what a night needs (science, sky,
    standard, astrometric field, ILLUM: a plan made while the rest arrives is the night's,
    not that of a night of calibrations alone); then the calibrations in the order the
    cascade uses them; then the rest."""
    from musedrp.tags import STATIC_TAGS, Tag

    cascade = (Tag.OBJECT, Tag.SKY, Tag.STD, Tag.ASTROMETRY, Tag.ILLUM, Tag.BIAS, Tag.FLAT,
               Tag.ARC, Tag.ARC_LSF, Tag.SKYFLAT)
    if frame.tag in STATIC_TAGS:
        return 0
    return 1 + cascade.index(frame.tag) if frame.tag in cascade else len(cascade) + 1


def submit(raw_dir: Path, s: Settings, report=print, upload: bool = True,
           announce: bool = True) -> int:
    """Do what the observatory's ingest does: upload each raw file, then announce it; static
    calibrations first, then the frames that decide what the night needs, then its
    calibrations in the order the cascade reads them.  ``upload=False`` announces files an
    earlier call put into the bucket (``announce=False``): an archive's frames, there before
    the reduction starts.

    Returns the number of files submitted.  A file is announced only after its upload; the
    announcement is confirmed by the broker before the next file.  Static calibrations are
    content-addressed: an unchanged file re-uses its object, a changed one gets a new key.
    """
    from musedrp.frames import FITS_SUFFIXES, classify_file
    from musedrp.messages import Envelope, FrameArrived, night_correlation
    from musedrp.storage import open_store, raw_key, static_key
    from musedrp.tags import STATIC_TAGS

    store = open_store(s)
    store.check()
    paths = sorted(p for p in raw_dir.rglob("*") if p.name.lower().endswith(FITS_SUFFIXES))
    if not paths:
        raise ConfigError(f"no FITS files below {raw_dir}")
    # what each file is (a static one's SHA-256 too), in upload_rank's order: the first jobs
    # start while the rest uploads
    frames = sorted(((classify_file(p), p) for p in paths), key=lambda fp: upload_rank(fp[0]))
    with broker.Announcer(s, connect=announce) as publish:
        t0 = time.monotonic()
        sent = 0
        for i, (frame, path) in enumerate(frames, 1):
            static = frame.tag in STATIC_TAGS
            try:
                key = (static_key(path.name, frame.checksum) if static
                       else raw_key(frame.night, path.name))
            except ValueError as err:  # a name no object key may hold: say so, go on
                report(f"  skipped {path.name!r}: {err}")
                continue
            night = frame.night
            if upload and not (static and store.exists(key)):
                store.put_file(path, key)
            if announce:
                publish(Envelope(
                    type="frame.arrived", source="submit",
                    correlation_id=night_correlation(night),
                    payload=FrameArrived(key=key, size=path.stat().st_size)))
            sent += 1
            if i % 10 == 0 or i == len(paths):
                report(f"  [{i:>3}/{len(paths)}] {key}  (t+{time.monotonic() - t0:.0f} s)")
    return sent


def status(s: Settings) -> list[str]:
    """Queues (ready, consumers, dead letters), jobs by state, and every failure's reason."""
    from collections import Counter

    from musedrp.registry import Registry

    lines = [f"{'queue':<16} {'ready':>6} {'consumers':>9} {'dead':>5}"]
    connection = broker.connect(s)
    try:
        channel = connection.channel()
        for q in queues():
            work = channel.queue_declare(q.name, passive=True).method
            dead = channel.queue_declare(q.dead, passive=True).method
            lines.append(f"{q.name:<16} {work.message_count:>6} {work.consumer_count:>9} "
                         f"{dead.message_count:>5}")
    except broker.pe.ChannelClosedByBroker as err:  # 404: no service has declared them yet
        lines.append(f"(queues not declared yet: {err.reply_text})")
    finally:
        if connection.is_open:
            connection.close()
    registry = Registry.connect(s.db_url)
    try:
        jobs = registry.jobs()
        frames = registry.frames()
    finally:
        registry.close()
    by_state = Counter(j.state for j in jobs)
    lines.append("jobs: " + (", ".join(f"{n} {st}" for st, n in sorted(by_state.items()))
                             or "none"))
    by_status = Counter(f.status for f in frames)
    lines.append("frames: " + (", ".join(f"{n} {st}" for st, n in sorted(by_status.items()))
                               or "none"))
    for j in jobs:
        if j.state in ("failed", "skipped", "blocked"):
            ifu = f" IFU {j.ifu:02d}" if j.ifu else ""
            lines.append(f"  {j.state} {j.stage}{ifu} [{j.key}]: {j.reason.splitlines()[0]}")
    for f in frames:
        if f.status in ("rejected", "unclassified") and not f.tag:
            lines.append(f"  rejected {f.name}: {f.reason}")
    return lines
