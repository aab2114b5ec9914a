"""What every benchmark shares: simulated frames, a sampler of running recipes, and results
written as ``results/<name>.{md,json,png}`` with the command and machine that produced them."""

import contextlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import date
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from sqlalchemy import create_engine, text  # noqa: E402

from musedrp import esorex, s3server  # noqa: E402
from musedrp.registry import Registry, ensure_database  # noqa: E402
from musedrp.serve import Fleet  # noqa: E402
from musedrp.settings import Settings  # noqa: E402
from musedrp.simulate import night  # noqa: E402
from musedrp.storage import S3Store  # noqa: E402
from musedrp.tags import Tag  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PG = os.environ.get("MUSEDRP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
NIGHT = date(2014, 8, 1)


def exposures(kind: str, n: int) -> list[night.Exposure]:
    """The simulated night's first ``n`` exposures of ``kind`` in science read-out mode."""
    found = [e for e in night.schedule(NIGHT) if e.kind == kind and e.readout[0] == "SCI1.0"]
    if len(found) < n:
        raise SystemExit(f"the simulated night has only {len(found)} {kind} frames")
    return found[:n]


def write_frames(kind: str, n: int, ifus: Sequence[int], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return [night.write_exposure(e, ifus, 1, out) for e in exposures(kind, n)]


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} x {model}, {mem_gb:.0f} GiB, Linux {platform.release()}, "
            f"Python {platform.python_version()}, MUSE pipeline "
            f"{esorex.pipeline_version()}")


def command() -> str:
    """The command line as a shell takes it (an empty argument quoted)."""
    return shlex.join([".venv/bin/python", *sys.argv])


def write_results(name: str, title: str, notes: Iterable[str], header: Sequence[str],
                  rows: Iterable[Sequence[object]], data: dict, fig=None) -> str:
    """Markdown table + JSON (+ PNG) under results/; returns the markdown."""
    RESULTS.mkdir(exist_ok=True)
    lines = [f"# {title}", "", f"Command: `{command()}`  ",
             f"Date: {date.today()}; machine: {machine()}.", "", *notes, "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    if fig is not None:
        fig.tight_layout()
        fig.savefig(RESULTS / f"{name}.png", dpi=90)
        lines += ["", f"![{title}]({name}.png)"]
    text = "\n".join(lines) + "\n"
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps(
        {"command": command(), "date": str(date.today()), "machine": machine(), **data},
        indent=1, default=str))
    return text


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


class RecipeSampler:
    """Samples every esorex process on the machine each ``period_s``: the most threads
    running at once (state R), the most threads, the largest summed RSS of concurrent
    recipes.  Benchmarks run alone on their machine."""

    def __init__(self, period_s: float = 0.2) -> None:
        self.period_s = period_s
        self.max_running = 0
        self.max_threads = 0
        self.peak_rss_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "RecipeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.wait(self.period_s):
            running = threads = rss = 0
            for pid in _esorex_pids():
                try:
                    tasks = list(Path(f"/proc/{pid}/task").iterdir())
                    rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
                except OSError:
                    continue
                threads += len(tasks)
                for t in tasks:
                    try:  # state is the field after the parenthesised command name
                        running += (t / "stat").read_text().rsplit(")", 1)[1].split()[0] == "R"
                    except OSError:
                        pass
            self.max_running = max(self.max_running, running)
            self.max_threads = max(self.max_threads, threads)
            self.peak_rss_bytes = max(self.peak_rss_bytes, rss)


def _esorex_pids() -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/comm"):
        try:
            if stat.read_text().strip() == "esorex":
                pids.append(int(stat.parent.name))
        except OSError:
            pass
    return pids


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.monotonic()
    result = fn(*args, **kwargs)
    return time.monotonic() - t0, result


def rabbitmqctl(*args: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", *args], check=check, capture_output=True)  # noqa: S603,S607


@contextlib.contextmanager
def fresh_services(work: Path, s3: bool = True, **settings: str) -> Iterator[
        tuple[dict, Settings, Fleet, Registry]]:
    """A RabbitMQ vhost, a ``weed mini`` S3 server (``s3``; else a directory as the object
    store, as ``musedrp serve`` has on one machine) and a PostgreSQL database of their own
    (removed afterwards), the environment that points services at them (plus
    ``MUSEDRP_<NAME>`` for each of ``settings``), a fleet to start services in, and the
    registry."""
    tag = uuid.uuid4().hex[:8]
    vhost = f"musedrp-bench-{tag}"
    with fresh_database(tag) as db_url:
        rabbitmqctl("add_vhost", vhost)
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        server = s3server.start(work / "s3") if s3 else None
        env = {"MUSEDRP_AMQP_VHOST": vhost, "MUSEDRP_DB_URL": db_url,
               "MUSEDRP_SCRATCH": str(work / "scratch"),
               **({"MUSEDRP_S3_ENDPOINT": server.endpoint,
                   "MUSEDRP_S3_ACCESS_KEY": server.access_key,
                   "MUSEDRP_S3_SECRET_KEY": server.secret_key} if server
                  else {"MUSEDRP_S3_ENDPOINT": f"file://{work / 'store'}"}),
               **{f"MUSEDRP_{k.upper()}": v for k, v in settings.items()}}
        s = Settings.load(env)
        if server:
            S3Store.from_settings(s).create_bucket()
        fleet = Fleet(work / "services", env)
        registry = Registry.connect(db_url)
        try:
            yield env, s, fleet, registry
        finally:
            registry.close()
            fleet.stop_all()
            if server:
                server.stop()
            rabbitmqctl("delete_vhost", vhost, check=False)


@contextlib.contextmanager
def fresh_database(tag: str) -> Iterator[str]:
    """The URL of a new database ``musedrp_bench_<tag>`` on the local PostgreSQL, dropped
    afterwards."""
    db = f"musedrp_bench_{tag}"
    db_url = PG.rsplit("/", 1)[0] + f"/{db}"
    ensure_database(db_url)
    try:
        yield db_url
    finally:
        engine = create_engine(PG, isolation_level="AUTOCOMMIT")
        with engine.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        engine.dispose()


# What a stage worker logs of each job (services/worker.py)
FETCHED = re.compile(r"(\d+) bytes fetched for (\d+) inputs, \d+ raw frame\(s\) by ranged GETs "
                     r"of the IFU's extension, (\d+) linked on this machine")
TIMED = re.compile(r": succeeded in ([\d.]+) s: inputs ([\d.]+) s, waiting for cores ([\d.]+) s, "
                   r"recipe ([\d.]+) s \(esorex [\d.]+ s\), products ([\d.]+) s")


def worker_logs(logs: Path) -> dict:
    """From the stage workers' logs under ``logs``: the bytes they downloaded, their inputs
    and those linked from the machine's cache, and the seconds their succeeded jobs took
    (order taken to products stored) and spent on inputs, waiting for cores and products."""
    text = "".join(log.read_text(errors="replace") for log in sorted(logs.glob("*.log")))
    fetched = [tuple(map(int, m.groups())) for m in FETCHED.finditer(text)]
    timed_ = [tuple(map(float, m.groups())) for m in TIMED.finditer(text)]
    return {"downloaded_bytes": sum(f[0] for f in fetched),
            "inputs": sum(f[1] for f in fetched), "from_cache": sum(f[2] for f in fetched),
            **{f"{what}_s": round(sum(t[i] for t in timed_), 1) for i, what in enumerate(
                ("jobs", "inputs", "waiting", "recipe", "products"))}}


# Re-running a merging job of a reduction on part of its inputs (memory benchmarks)
PER_IFU = (Tag.PIXTABLE_OBJECT, Tag.PIXTABLE_SKY, Tag.LSF_PROFILE)
IFU_SUFFIX = re.compile(r"-(\d\d)\.fits$")


def first_job(reduced: Path, stage: str) -> dict:
    """The manifest of a reduction's first job (by key) of ``stage``."""
    manifests = sorted(reduced.glob(f"products/*/{stage}/*/*/manifest.json"))
    if not manifests:
        raise SystemExit(f"no {stage} job with a manifest under {reduced}/products")
    return json.loads(manifests[0].read_text())


def subset(manifest: dict, n: int) -> list[esorex.SofEntry]:
    """A merging job's inputs (its manifest's) with the per-IFU ones of IFUs 1..n only, or
    with the first n reduced pixel tables (one per exposure): what it costs on less."""
    sof, tables = [], 0
    for i in manifest["inputs"]:
        tag = Tag(i["tag"])
        if tag in PER_IFU and int(IFU_SUFFIX.search(i["name"])[1]) > n:
            continue
        if tag == Tag.PIXTABLE_REDUCED:
            tables += 1
            if tables > n:
                continue
        sof.append(esorex.SofEntry(Path(i["path"]).resolve(), tag))
    return sof
