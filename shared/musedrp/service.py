"""What every service does around its handler: settings, logs, metrics, start-up checks, and
the consumer loop; a failed check is one critical line and exit code 1 (STYLE.md §11)."""

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import musedrp
from musedrp import broker, esorex, logs, metrics
from musedrp.errors import ConfigError
from musedrp.provenance import git_sha
from musedrp.settings import Settings
from musedrp.topology import queue


def cpu_set(settings: Settings) -> list[int]:
    """``MUSEDRP_CPUS`` if set, else this process's affinity (never the node's CPU count)."""
    cpus = esorex.parse_cpus(settings.cpus) if settings.cpus else sorted(os.sched_getaffinity(0))
    if not cpus:
        raise ConfigError("empty CPU set")
    return cpus


def own_scratch(settings: Settings, name: str, log: logging.Logger) -> Path:
    """This process's scratch directory, ``SCRATCH/<name>.<pid>``; directories left there by
    processes of the same name that no longer run (killed mid-recipe) are removed.

    Raises
    ------
    ConfigError
        The scratch directory is not writable.
    """
    try:
        settings.scratch.mkdir(parents=True, exist_ok=True)
        for stale in settings.scratch.glob(f"{name}.*"):
            pid = stale.suffix[1:]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(stale, ignore_errors=True)
                log.info("removed %s, left by a process that no longer runs", stale)
        mine = settings.scratch / f"{name}.{os.getpid()}"
        mine.mkdir(exist_ok=True)
        (mine / ".probe").write_text("ok")
        (mine / ".probe").unlink()
    except OSError as err:
        raise ConfigError(f"MUSEDRP_SCRATCH={settings.scratch} is not writable: {err}") from err
    return mine


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
        consumer = broker.Consumer(settings, queue(queue_name), handler)
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
