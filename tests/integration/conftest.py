"""A simulated night of IFUs 1-3, simulated and reduced once per test session with the real
pipeline, and removed afterwards.  Three IFUs are the least the cascade needs: twilight needs
IFU 1, the standard needs the star in the middle one of three."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import create_engine, text

from musedrp.registry import ensure_database
from musedrp.simulate.history import Drift, simulate_history
from musedrp.simulate.night import Truth, simulate_night

from ..conftest import PG_ADMIN_URL

IFU = 1  # the IFU the single-IFU checks look at
IFUS = (1, 2, 3)


@pytest.fixture(scope="session", autouse=True)
def needs_esorex() -> None:
    if shutil.which("esorex") is None:
        pytest.fail("esorex is not installed: run `make setup` (integration tests use the real "
                    "MUSE pipeline)")


# what the integration tests hold on disk at most, above what was used before (measured with
# `df` every 10 s through `make test`, 2026-12-05: 31.8 GB, the session's night and its
# reductions in the temporary directory and the images in podman's store)
DISK_GB = 35


@pytest.fixture(scope="session", autouse=True)
def needs_disk(workspace: Path) -> None:
    """Fail at once, saying why, rather than with a full disk in the middle of the session."""
    free = shutil.disk_usage(workspace).free / 1e9
    if free < DISK_GB:
        pytest.fail(f"{free:.0f} GB free below {workspace}; the integration tests write up to "
                    f"~{DISK_GB} GB: free some, or point TMPDIR at a larger disk")


@pytest.fixture(scope="session")
def workspace() -> Iterator[Path]:
    """A temporary directory, removed afterwards; for development, ``MUSEDRP_IT_WORKSPACE``
    names one to keep and reuse (its simulated night and cached reduction)."""
    if kept := os.environ.get("MUSEDRP_IT_WORKSPACE"):
        Path(kept).mkdir(parents=True, exist_ok=True)
        yield Path(kept)
        return
    with tempfile.TemporaryDirectory(prefix="musedrp-it-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def night(workspace: Path) -> tuple[Path, Truth]:
    raw = workspace / "raw"
    if (raw / "truth.json").exists():  # a kept workspace
        return raw, Truth.load(raw / "truth.json")
    return raw, simulate_night(raw, IFUS, seed=7)


@pytest.fixture(scope="session")
def reduced(night, workspace):
    """``musedrp reduce`` once for the session: (exit code, output directory, output)."""
    raw, _ = night
    out = workspace / "reduced"
    proc = subprocess.run([sys.executable, "-m", "musedrp.cli", "reduce", str(raw), "-o",
                           str(out)], capture_output=True, text=True, timeout=3600, check=False)
    return proc.returncode, out, proc.stdout + proc.stderr


# The monitoring history: ten nights of IFU 1 (3 biases, 3 flats each); port 3's read noise
# 1.25 times nominal from the 7th night on, the IFU's throughput 0.85 times from the 8th.
HISTORY_NIGHTS = 10
DRIFTS = (Drift("ron", IFU, 1.25, date(2014, 8, 7), port=3),
          Drift("throughput", IFU, 0.85, date(2014, 8, 8)))


@pytest.fixture(scope="session")
def history(workspace: Path) -> Path:
    """The monitoring history simulated and reduced once (``musedrp reduce`` over all its
    nights): the output directory."""
    raw, out = workspace / "history-raw", workspace / "history"
    if not (raw / "history.json").exists():
        simulate_history(raw, date(2014, 8, 1), HISTORY_NIGHTS, [IFU], DRIFTS)
    proc = subprocess.run([sys.executable, "-m", "musedrp.cli", "reduce", str(raw), "-o",
                           str(out)], capture_output=True, text=True, timeout=3600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def reduce_into_copy(reduced, workspace: Path, name: str, raw: Path, *args: str):
    """``musedrp reduce`` into a copy of the session's output (hard links): the jobs shared
    with it are answered from its manifests, only what ``args`` change runs again."""
    _, out, _ = reduced
    target = workspace / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(out / "products", target / "products", copy_function=os.link)
    proc = subprocess.run([sys.executable, "-m", "musedrp.cli", "reduce", str(raw), "-o",
                           str(target), *args], capture_output=True, text=True, timeout=3600,
                          check=False)
    return proc.returncode, target, proc.stdout + proc.stderr


@pytest.fixture
def reduce_copy(reduced, workspace: Path):
    """``reduce_into_copy`` for one test, its copies removed afterwards: a night re-reduced
    from the twilight on holds 11 GB of its own."""
    made = []

    def run(name: str, raw: Path, *args: str):
        made.append(workspace / name)
        return reduce_into_copy(reduced, workspace, name, raw, *args)

    yield run
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def products(out: Path, stage: str, name: str = "*.fits") -> list[Path]:
    return sorted(out.glob(f"products/*/{stage}/*/*/{name}"))


def product(out: Path, stage: str, name: str) -> Path:
    (path,) = products(out, stage, name)
    return path


def combined_product(out: Path, name: str) -> Path:
    """A product of the combination made at once, not of one of its wavelength pieces."""
    (path,) = [p for p in products(out, "combine", name) if not json.loads(
        (p.parent / "manifest.json").read_text())["parameters"]["piece"]]
    return path


def manifest(out: Path, stage: str, ifu: int | None = IFU) -> dict:
    found = [json.loads(p.read_text()) for p in products(out, stage, "manifest.json")]
    (m,) = [m for m in found if m["ifu"] == ifu]
    return m


def assert_same_data(got: Path, ref: Path) -> None:
    """Every HDU of ``got`` holds the same pixels or table rows as in ``ref`` (headers may
    differ: dates, file names)."""
    with fits.open(got) as a, fits.open(ref) as b:
        assert len(a) == len(b), got.name
        for ha, hb in zip(a, b, strict=True):
            if ha.data is None:
                assert hb.data is None, got.name
            elif isinstance(ha, fits.BinTableHDU):
                assert ha.data.tobytes() == hb.data.tobytes(), got.name
            else:
                np.testing.assert_array_equal(ha.data, hb.data, err_msg=got.name)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@contextmanager
def throwaway_vhost(database: bool = False) -> Iterator[dict[str, str]]:
    """A RabbitMQ vhost (and, if asked, a PostgreSQL database) of a test's own, removed
    afterwards: the ``MUSEDRP_*`` settings that point at them."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl not found: the services tests need a local RabbitMQ")
    tag = uuid.uuid4().hex[:8]
    vhost, db = f"musedrp-test-{tag}", f"musedrp_test_{tag}"
    env = {"MUSEDRP_AMQP_VHOST": vhost}
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        if database:
            env["MUSEDRP_DB_URL"] = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db}"
            ensure_database(env["MUSEDRP_DB_URL"])
        yield env
    finally:
        rabbitmqctl("delete_vhost", vhost)
        if database:
            engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with engine.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
            engine.dispose()
