"""Run one esorex recipe as an isolated, pinned, time-limited subprocess.

The recipe runs in its own scratch directory with explicit ``--output-dir``/``--log-dir``,
pinned with ``taskset`` to a CPU set and with ``OMP_NUM_THREADS`` equal to its size (libgomp
would otherwise start one thread per CPU it sees, MUSE.md §8), in a new session so that a
timeout kills the whole process group.  A ``CpuGrant`` may grow while the recipe runs; its
threads then move onto the new CPUs.  Exit codes are not enough (MUSE.md §2.1): the log
is parsed and the products are checked.
"""

import ctypes
import functools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from astropy.io import fits

from musedrp.errors import ConfigError, DataError, Interrupted, Transient
from musedrp.stages import product_tag
from musedrp.tags import Tag

LOG_FILE = "esorex.log"
STDOUT_FILE = "esorex.stdout"
SOF_FILE = "input.sof"
RECIPE_DIR = "/usr/lib/x86_64-linux-gnu/cpl/plugins"
EXPECTED_VERSION = "2.8.7"  # the MUSE pipeline (cpl-plugin-muse) this project is built for
# the only variables a recipe inherits: nothing that changes what it does (ESOREX_*, MUSE_*,
# OMP_*: MUSE.md §4) and none of the service's secrets (S3 keys, broker password, database URL)
RECIPE_ENV = ("PATH", "LD_LIBRARY_PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR")
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d \[\s*(?P<level>[A-Z]+)\s*\] (?P<text>.*)$")


@dataclass(frozen=True)
class SofEntry:
    path: Path
    tag: Tag


@dataclass
class RecipeRun:
    """What one esorex call did and cost."""

    recipe: str
    command: list[str]
    returncode: int | None
    wall_s: float
    cpu_user_s: float
    cpu_sys_s: float
    peak_rss_bytes: int
    cpus: list[int]
    omp_num_threads: int
    timed_out: bool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    products: list[Path] = field(default_factory=list)
    log_path: Path | None = None


class CpuGrant(Sequence[int]):
    """The CPUs a running recipe may use, growing while it runs: the executor hands the cores
    that other jobs free to a multicore job, and ``run_recipe`` widens the recipe's affinity
    to them.  OpenMP's thread count is fixed at start, so it is ``most``, the CPUs the
    recipe could ever get (two threads on one core cost muse_standard 2 %,
    benchmarks/results/fanin_threads_widening.md).

    ``grant`` replaces the list, never changes it: a reader sees the old set or the new one."""

    def __init__(self, cpus: Iterable[int], most: int) -> None:
        self._cpus, self.most = sorted(cpus), most

    def grant(self, cpus: Iterable[int]) -> None:
        self._cpus = sorted({*self._cpus, *cpus})

    def __getitem__(self, i):
        return self._cpus[i]

    def __iter__(self) -> Iterator[int]:
        return iter(self._cpus)

    def __len__(self) -> int:
        return len(self._cpus)


def _set_affinity(pid: int, cpus: Sequence[int]) -> None:
    """Every thread of ``pid`` onto ``cpus`` (threads made later inherit their maker's)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return  # ended meanwhile
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass


def format_cpus(cpus: Iterable[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def parse_cpus(text: str) -> list[int]:
    """``0-1,3`` -> [0, 1, 3], as ``taskset --cpu-list`` reads it.

    Raises
    ------
    ConfigError
        Not a CPU list.
    """
    cpus: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ConfigError(f"not a CPU list: {text!r} (e.g. 0-3 or 0,2)") from None
    return sorted(cpus)


def write_sof(entries: Sequence[SofEntry], workdir: Path) -> Path:
    """Link the inputs into ``workdir/inputs`` under their original names and write the SOF.

    Keeping the names means esorex's own provenance keywords (``PRO.REC1.RAWn.NAME``) name
    the real frames.  The SOF is whitespace-separated, so names with blanks are refused, and
    its lines are relative to ``workdir``, where esorex runs: a scratch directory whose path
    has blanks never reaches the SOF.
    """
    inputs = workdir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    lines = []
    for e in entries:
        name = e.path.name
        if re.search(r"\s", name):
            raise DataError(f"input file name contains white space, which a SOF cannot hold: "
                            f"{name!r}")
        link, k = inputs / name, 1
        # products of different jobs share names (every exposure's IMAGE_FOV_0001.fits):
        # the second goes into inputs/2/, keeping the name esorex records
        while (link.is_symlink() or link.exists()) and link.resolve() != e.path.resolve():
            k += 1
            link = inputs / str(k) / name
        if not link.is_symlink():
            link.parent.mkdir(exist_ok=True)
            link.symlink_to(e.path.resolve())
        lines.append(f"{link.relative_to(workdir)} {e.tag}")
    sof = workdir / SOF_FILE
    sof.write_text("\n".join(lines) + "\n")
    return sof


def parse_log(text: str) -> tuple[list[str], list[str], dict[str, str]]:
    """Errors, warnings and the esorex/CPL/MUSE versions from an esorex log."""
    errors, warnings, versions = [], [], {}
    for line in text.splitlines():
        m = LOG_LINE.match(line)
        if not m:
            continue
        level, msg = m["level"], m["text"].split("] ", 1)[-1]
        if level == "ERROR":
            errors.append(msg)
        elif level == "WARNING" and "Unable to open directory" not in msg:
            warnings.append(msg)
        if v := re.search(r"This is EsoRex, version (\S+)", msg):
            versions["esorex"] = v[1]
        if v := re.search(r"CPL = ([^,\s]+)", msg):
            versions["cpl"] = v[1]
        if v := re.search(r"MUSE Instrument Pipeline v(\S+)", msg):
            versions["muse"] = v[1]
    return errors, warnings, versions


@functools.cache
def esorex_path() -> str:
    exe = shutil.which("esorex")
    if exe is None:
        raise ConfigError("esorex not found on PATH: install it with "
                          "`apt-get install esorex cpl-plugin-muse` (or `make setup`)")
    return exe


def pipeline_version(recipe: str = "muse_bias") -> str:
    """The MUSE pipeline version as the installed recipe reports it (esorex looked up anew:
    a ConfigError when it has gone)."""
    return _version(esorex_path(), recipe)


@functools.cache
def _version(exe: str, recipe: str) -> str:
    with tempfile.TemporaryDirectory(prefix="musedrp-esorex-") as tmp:  # esorex.log lands here
        out = subprocess.run(  # noqa: S603 - fixed argument list, no shell
            [exe, f"--recipe-dir={RECIPE_DIR}", "--man-page", recipe], cwd=tmp,
            env=_child_env(Path(tmp), 0), capture_output=True, text=True, timeout=60,
            check=False).stdout
    m = re.search(rf"{recipe} -- version (\S+)", out)
    if not m:
        raise ConfigError(f"esorex does not know the recipe {recipe}: "
                          "is cpl-plugin-muse installed?")
    return m[1]


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """In the child before exec: a recipe never outlives its worker (SIGKILL, OOM kill)."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _child_env(workdir: Path, threads: int) -> dict[str, str]:
    """The recipe's environment, built from an allow-list rather than scrubbed of a deny-list:
    a variable added to the service later (a token, a debug switch) stays out."""
    env = {k: v for k, v in os.environ.items() if k in RECIPE_ENV or k.startswith("LC_")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env["HOME"] = str(workdir)  # no user-level ~/.esorex configuration
    return env


_active: set[int] = set()  # process groups of running recipes
_active_lock = threading.Lock()


_stopped: set[int] = set()  # recipes killed by kill_all: a shutdown, not a failure


def kill_all() -> None:
    """Kill every recipe this process started that is still running (used on Ctrl-C)."""
    with _active_lock:
        for pid in _active:
            _stopped.add(pid)
            _kill_group(pid)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_recipe(
    recipe: str,
    sof: Sequence[SofEntry],
    args: Sequence[str],
    workdir: Path,
    cpus: Sequence[int],
    timeout_s: float,
    esorex: str | None = None,
    threads: int | None = None,
) -> RecipeRun:
    """Run ``esorex recipe args sof`` and return what happened; raises only on timeout.

    The recipe runs on ``cpus`` (``taskset``) with ``OMP_NUM_THREADS`` = ``threads``, by
    default the size of the CPU set (of a ``CpuGrant``: its ``most``); 0 leaves it unset
    (used by the pinning benchmark).  CPUs added to a ``CpuGrant`` meanwhile are applied
    within 0.1 s; the run records the final set.

    The caller decides what a non-zero exit or missing products mean (see ``check``).

    Raises
    ------
    Transient
        The wall-clock timeout expired; the whole process group was killed.
    """
    if not cpus:
        raise ConfigError("empty CPU set")
    workdir.mkdir(parents=True, exist_ok=True)
    outdir = workdir / "products"
    if outdir.exists():
        shutil.rmtree(outdir)  # a previous attempt's leftovers must not count as products
    outdir.mkdir()
    sof_path = write_sof(sof, workdir)
    if threads is None:
        threads = cpus.most if isinstance(cpus, CpuGrant) else len(cpus)
    applied = sorted(cpus)
    command = [
        "taskset", "--cpu-list", format_cpus(cpus),
        esorex or esorex_path(), f"--recipe-dir={RECIPE_DIR}",
        f"--output-dir={outdir}", f"--log-dir={workdir}", f"--log-file={LOG_FILE}",
        "--suppress-link=TRUE", "--check-sof-exist=TRUE",
        recipe, *args, str(sof_path),
    ]
    started = time.monotonic()
    with (workdir / STDOUT_FILE).open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - argument list built here, never a shell
            command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, env=_child_env(workdir, threads),
            start_new_session=True, preexec_fn=_die_with_parent)
    with _active_lock:
        _active.add(proc.pid)
    timed_out = False
    status = usage = None
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > timeout_s:
                timed_out = True
                _kill_group(proc.pid)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            if (now := sorted(cpus)) != applied:
                _set_affinity(proc.pid, now)
                applied = now
            time.sleep(0.1)
    except BaseException:
        _kill_group(proc.pid)  # interrupted: never leave a recipe running
        raise
    finally:
        _kill_group(proc.pid)  # grandchildren left behind by a crashed recipe
        with _active_lock:
            _active.discard(proc.pid)
            stopped = proc.pid in _stopped
            _stopped.discard(proc.pid)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    log_path = workdir / LOG_FILE
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    errors, warnings, versions = parse_log(log)
    run = RecipeRun(
        recipe=recipe, command=command, returncode=proc.returncode, wall_s=round(wall, 3),
        cpu_user_s=round(usage.ru_utime, 3), cpu_sys_s=round(usage.ru_stime, 3),
        peak_rss_bytes=usage.ru_maxrss * 1024, cpus=applied, omp_num_threads=threads,
        timed_out=timed_out, errors=errors, warnings=warnings, versions=versions,
        products=sorted(outdir.glob("*.fits")), log_path=log_path if log_path.exists() else None,
    )
    if timed_out:
        raise Transient(f"{recipe} exceeded its {timeout_s:.0f} s wall-clock limit and was "
                        "killed", run=run)
    if stopped:  # by a shutdown: not a failure of the job (and not out of memory)
        raise Interrupted(f"{recipe} was stopped by a shutdown")
    return run


def check(run: RecipeRun, expected: Sequence[str],
          estimate_gb: float | None = None) -> dict[str, Path]:
    """Products by file name, after checking exit code, errors and the expected files.

    ``estimate_gb``, the job's memory estimate, goes into the message of a recipe that was
    killed (by the kernel's out-of-memory killer, most likely).

    Raises
    ------
    DataError
        Non-zero exit (or killed), missing or unreadable products, or a product of the
        wrong category.
    """
    if run.returncode == -signal.SIGKILL and not run.timed_out:  # not our own kill
        sizes = ", ".join(filter(None, (
            run.peak_rss_bytes and f"peak RSS {run.peak_rss_bytes / 1e9:.2f} GB",
            estimate_gb is not None and f"estimate {estimate_gb:.1f} GB")))
        raise DataError(f"{run.recipe} was killed by SIGKILL — most likely the kernel's "
                        "out-of-memory killer" + (f" ({sizes})" if sizes else ""), run=run)
    found = {p.name: p for p in run.products}
    missing = [name for name in expected if name not in found]
    if run.returncode != 0 or missing:
        detail = "; ".join(run.errors[-3:]) or "no [ERROR] line in the log"
        raise DataError(f"{run.recipe} exited with {run.returncode}"
                        + (f", missing {', '.join(missing)}" if missing else "")
                        + f": {detail}", run=run)
    for name in expected:
        try:
            catg = fits.getheader(found[name], 0).get("HIERARCH ESO PRO CATG")
        except (OSError, ValueError) as err:
            raise DataError(f"product {name} is not a readable FITS file: {err}", run=run) from err
        if catg != (declared := product_tag(Path(name))):
            raise DataError(f"product {name} has PRO.CATG={catg!r}, not {str(declared)!r}",
                            run=run)
    return {name: found[name] for name in expected}


def qc_keywords(path: Path) -> dict[str, float | int | str | bool]:
    """All ``ESO QC`` keywords of a product's primary header."""
    header = fits.getheader(path, 0)
    return {k.removeprefix("ESO "): v for k, v in header.items() if k.startswith("ESO QC ")}
