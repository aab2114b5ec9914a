"""A simulated 1-IFU night, made once per test session and removed afterwards."""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from musedrp.simulate.night import Truth, simulate_night

IFU = 1


@pytest.fixture(scope="session", autouse=True)
def needs_esorex() -> None:
    if shutil.which("esorex") is None:
        pytest.fail("esorex is not installed: run `make setup` (integration tests use the real "
                    "MUSE pipeline)")


@pytest.fixture(scope="session")
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="musedrp-it-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def night(workspace: Path) -> tuple[Path, Truth]:
    raw = workspace / "raw"
    return raw, simulate_night(raw, [IFU], seed=7)
