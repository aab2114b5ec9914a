"""What every service does around its handler: settings, logs, metrics, start-up checks, and
the consumer loop; a failed check is one critical line and exit code 1 (STYLE.md §11)."""

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import musedrp
from musedrp import broker, esorex, logs, metrics
from musedrp.errors import ConfigError
from musedrp.metrics import LOOP_HEARTBEAT
from musedrp.provenance import git_sha
from musedrp.settings import Settings
from musedrp.topology import queue

LOCK_FILE = ".lock"  # in each scratch directory, locked by the process using it


def cpu_set(settings: Settings) -> list[int]:
    """``MUSEDRP_CPUS`` if set, else this process's affinity (never the node's CPU count)."""
    cpus = esorex.parse_cpus(settings.cpus) if settings.cpus else sorted(os.sched_getaffinity(0))
    if not cpus:
        raise ConfigError("empty CPU set")
    return cpus


def cpu_count(settings: Settings, quota: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """How many CPUs this process may keep busy: its CPU set (``cpu_set``), at most its
    cgroup's CPU quota (a container's CPU limit, which the CPU set does not show)."""
    count = len(cpu_set(settings))
    try:
        limit, period = quota.read_text().split()
        if limit != "max":
            count = min(count, max(1, int(limit) // int(period)))
    except (OSError, ValueError):  # no cgroup v2 here
        pass
    return count


def own_scratch(settings: Settings, name: str, log: logging.Logger) -> Path:
    """This process's scratch directory, new at every start, ``SCRATCH/<name>.<pid>.<random>``,
    locked (``flock``) for as long as the process lives.  Directories of processes of the same
    name whose lock can be taken (killed mid-recipe) are removed: a PID cannot tell, since in
    a container it is the same (1) at every start.

    Raises
    ------
    ConfigError
        The scratch directory is not writable.
    """
    try:
        settings.scratch.mkdir(parents=True, exist_ok=True)
        with _locked(settings.scratch / LOCK_FILE):  # one process at a time cleans or creates
            for stale in filter(Path.is_dir, settings.scratch.glob(f"{name}.*")):
                if (fd := _lock(stale / LOCK_FILE, blocking=False)) is not None:
                    shutil.rmtree(stale, ignore_errors=True)
                    os.close(fd)
                    log.info("removed %s, left by a process that no longer runs", stale)
            mine = Path(tempfile.mkdtemp(prefix=f"{name}.{os.getpid()}.", dir=settings.scratch))
            _lock(mine / LOCK_FILE)  # held until this process exits: never closed
    except OSError as err:
        raise ConfigError(f"MUSEDRP_SCRATCH={settings.scratch} is not writable: {err}") from err
    return mine


def _lock(path: Path, blocking: bool = True) -> int | None:
    """A descriptor of ``path`` holding its exclusive ``flock``; None if another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = _lock(path)
    try:
        yield
    finally:
        os.close(fd)


def health(port: int, limit_s: float) -> str:
    """Why the service behind ``port`` is not healthy, '' when it is: its metrics port does not
    answer, or its consume loop has not started, or has not gone round for ``limit_s`` (stuck:
    the metrics thread answering alone is not health).  ``musedrp health``, the probes."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:  # noqa: S310
            text = r.read().decode()
    except OSError as err:
        return f"no answer on :{port}: {err}"
    name = LOOP_HEARTBEAT.describe()[0].name
    beats = [line.split()[1] for line in text.splitlines() if line.startswith(f"{name} ")]
    if not beats or float(beats[0]) == 0:
        return "the consume loop has not started"
    if (age := time.time() - float(beats[0])) > limit_s:
        return f"the consume loop has not gone round for {age:.0f} s (limit {limit_s:g} s): stuck"
    return ""


def main(name: str, queue_name: str,
         make_handler: Callable[[Settings, logging.Logger], broker.Handler]) -> int:
    """Run one service until it is stopped; returns the process exit code."""
    try:
        settings = Settings.load()
    except ConfigError as err:
        logs.setup(name).critical("%s", err)
        return 1
    log = logs.setup(name, settings.log_format)
    try:
        handler = make_handler(settings, log)  # start-up checks happen here
        consumer = broker.Consumer(settings, queue(queue_name, settings.timeout_s), handler)
        consumer.install_signal_handlers()
        metrics.BUILD.labels(musedrp.__version__, git_sha(), _pipeline()).set(1)
        metrics.serve(settings.metrics_port)
        log.info("started: queue %s, metrics on :%s, settings %s", queue_name,
                 settings.metrics_port or "-", settings.public())
        consumer.run()
    except ConfigError as err:
        log.critical("%s", err)
        return 1
    log.info("stopped")
    return 0


def _pipeline() -> str:
    try:
        return esorex.pipeline_version()
    except ConfigError:
        return "none"
