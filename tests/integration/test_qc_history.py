"""QC over time on real recipe QC: ten simulated monitoring nights with two planted drifts
(conftest ``DRIFTS``), reduced by esorex, judged by ``musedrp qc``: the flags must find
every planted drift on every night it is there, and nothing else."""

import json
import subprocess
import sys
from datetime import date, timedelta

import pytest

from .conftest import DRIFTS, HISTORY_NIGHTS

pytestmark = pytest.mark.integration
NIGHTS = [(date(2014, 8, 1) + timedelta(days=i)).isoformat() for i in range(HISTORY_NIGHTS)]
HEADLINE = {"ron": "QC BIAS MASTER{port} RON", "throughput": "QC FLAT MASTER INTFLUX"}


def qc(out, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "musedrp.cli", "qc", str(out), *args],
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def flagged(history) -> dict:
    proc = qc(history, "--night", f"{NIGHTS[0]}:{NIGHTS[-1]}", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def planted(v: dict) -> bool:
    """Whether a planted drift explains a flagged value (``Drift.explains``: its IFU, from its
    first night, the keys it moves)."""
    return any(d.explains(v["stage"], v["ifu"], v["port"], v["key"], v["night"]) for d in DRIFTS)


def test_every_planted_drift_is_flagged_on_every_night(flagged):
    found = {(v["key"], v["ifu"], v["night"]) for v in flagged["flagged"]}
    for d in DRIFTS:
        key = HEADLINE[d.what].format(port=d.port)
        drifted = [n for n in NIGHTS if n >= d.first.isoformat()]
        assert {(key, d.ifu, n) for n in drifted} <= found, (d, sorted(found))


def test_nothing_else_is_flagged(flagged):
    assert flagged["judged"] > 0.4 * flagged["values"]  # half the nights have a baseline
    assert [v for v in flagged["flagged"] if not planted(v)] == []


def test_the_text_lists_one_night(history, flagged):
    night = DRIFTS[1].first.isoformat()
    proc = qc(history, "--night", night)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    mine = [v for v in flagged["flagged"] if v["night"] == night]
    assert f"{len(mine)} flagged" in lines[0]
    assert len(lines) == 1 + len(mine)
    assert any("QC BIAS MASTER3 RON" in line for line in lines[1:])
    assert any("QC FLAT MASTER INTFLUX" in line for line in lines[1:])
    assert all(line.startswith(f"  {night}") for line in lines[1:])
