"""The esorex runner, with a fake esorex: pinning, threads, timeouts, failures, products."""

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from musedrp import esorex
from musedrp.errors import DataError, Transient
from musedrp.tags import Tag

FAKE = Path(__file__).parent.parent / "fake_esorex.py"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Run the fake esorex in ``tmp_path/work`` with the given mode and CPU set."""
    raw = tmp_path / "MUSE.2014-08-01T18:00:01.500.fits"
    raw.write_bytes(b"raw")
    # the fake is a Python script: make sure it finds this interpreter's astropy
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")

    def run(mode="ok", cpus=(0,), timeout=30.0, threads=None):
        monkeypatch.setenv("FAKE_ESOREX_MODE", mode)
        work = tmp_path / "work"
        result = esorex.run_recipe("muse_bias", [esorex.SofEntry(raw, Tag.BIAS)], ["--nifu=1"],
                                   work, cpus if isinstance(cpus, esorex.CpuGrant) else list(cpus),
                                   timeout, esorex=str(FAKE), threads=threads)
        return result, json.loads((work / "probe.json").read_text())
    return run


def test_affinity_and_threads_reach_the_child(fake, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")  # must not leak: it would oversubscribe
    monkeypatch.setenv("MUSE_DEBUG_IGNORE_READOUT", "1")  # must never reach a recipe
    run, probe = fake(cpus=[0])
    assert probe["cpus_allowed_list"] == "0"
    assert probe["env"]["OMP_NUM_THREADS"] == "1"
    assert "MUSE_DEBUG_IGNORE_READOUT" not in probe["env"]
    assert (run.cpus, run.omp_num_threads) == ([0], 1)


def test_threads_can_be_set_or_left_to_openmp(fake, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    run, probe = fake(cpus=[0], threads=4)
    assert (probe["env"]["OMP_NUM_THREADS"], run.omp_num_threads) == ("4", 4)
    run, probe = fake(cpus=[0], threads=0)  # unset: OpenMP sizes itself to the CPU set
    assert "OMP_NUM_THREADS" not in probe["env"] and run.omp_num_threads == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to")
def test_two_cpus_two_threads(fake):
    cpus = sorted(os.sched_getaffinity(0))[:2]
    _, probe = fake(cpus=cpus)
    assert probe["affinity"] == cpus
    assert probe["env"]["OMP_NUM_THREADS"] == "2"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to")
def test_cpus_granted_while_running_reach_every_thread(fake, tmp_path):
    first, second = sorted(os.sched_getaffinity(0))[:2]
    grant = esorex.CpuGrant([first], most=2)

    def grant_once_started() -> None:  # the fake writes its probe first, then waits
        deadline = time.monotonic() + 30
        while not (tmp_path / "work" / "probe.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        grant.grant([second])

    granter = threading.Thread(target=grant_once_started, daemon=True)
    granter.start()
    run, probe = fake("widen", cpus=grant)
    granter.join()
    assert probe["affinity"] == [first]  # started on one CPU, with OpenMP sized for two
    assert probe["env"]["OMP_NUM_THREADS"] == "2"
    widened = json.loads((tmp_path / "work" / "widened.json").read_text())
    assert widened == {"thread": [first, second], "main": [first, second]}
    assert (run.cpus, run.omp_num_threads) == ([first, second], 2)


def test_sof_log_versions_and_products(fake, tmp_path):
    run, probe = fake()
    sof = (tmp_path / "work" / esorex.SOF_FILE).read_text().split()
    assert Path(sof[0]).name == "MUSE.2014-08-01T18:00:01.500.fits"  # original name kept
    assert Path(sof[0]).resolve() == tmp_path / "MUSE.2014-08-01T18:00:01.500.fits"
    assert sof[1] == "BIAS"
    assert probe["argv"][-1].endswith(esorex.SOF_FILE)
    assert any(a.startswith("--output-dir=") for a in probe["argv"])
    assert run.versions == {"esorex": "9.9.9", "cpl": "7.2.3", "muse": "2.8.7"}
    assert run.warnings == ["a warning"]
    assert run.returncode == 0 and run.peak_rss_bytes > 0
    products = esorex.check(run, ["MASTER_BIAS-01.fits"])
    assert esorex.qc_keywords(products["MASTER_BIAS-01.fits"]) == {"QC BIAS MASTER1 RON": 2.5}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_timeout_kills_the_whole_process_group(fake, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(Transient, match="exceeded its 2 s wall-clock limit") as err:
        fake(mode="hang", timeout=2)
    assert time.monotonic() - t0 < 20
    assert err.value.metadata["run"].timed_out
    child = int((tmp_path / "work" / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the recipe's own child process survived the timeout"


def test_failure_carries_the_error_line(fake):
    run, _ = fake(mode="fail")
    assert run.returncode == 1 and run.errors == ["something broke"]
    with pytest.raises(DataError, match="exited with 1.*something broke"):
        esorex.check(run, ["MASTER_BIAS-01.fits"])


def test_exit_zero_without_products_is_a_failure(fake):
    run, _ = fake(mode="noproduct")
    with pytest.raises(DataError, match="missing MASTER_BIAS-01.fits"):
        esorex.check(run, ["MASTER_BIAS-01.fits"])


def test_product_of_the_wrong_category_is_a_failure(fake):
    run, _ = fake(mode="wrongcatg")
    with pytest.raises(DataError, match="PRO.CATG='MASTER_FLAT'"):
        esorex.check(run, ["MASTER_BIAS-01.fits"])


def test_names_a_sof_cannot_hold_are_refused(tmp_path):
    bad = tmp_path / "with space.fits"
    bad.write_bytes(b"x")
    with pytest.raises(DataError, match="white space"):
        esorex.write_sof([esorex.SofEntry(bad, Tag.BIAS)], tmp_path / "w")


def test_parse_log_levels():
    errors, warnings, versions = esorex.parse_log(
        "10:00:00 [ ERROR ] muse_wavecal: [tid=000] bad\n"
        "10:00:00 [WARNING] : [tid=000] Unable to open directory /usr/lib/cpl/plugins\n"
        "10:00:00 [WARNING] muse_trace: [tid=000] lost trace\nnot a log line\n")
    assert errors == ["bad"] and warnings == ["lost trace"] and versions == {}
