"""The esorex runner, with a fake esorex: pinning, threads, timeouts, failures, products."""

import functools
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest
from astropy.io import fits

from musedrp import esorex, runner
from musedrp.errors import DataError, Interrupted, Transient
from musedrp.messages import InputFile, WorkOrder
from musedrp.services.bias.spec import SPEC as BIAS
from musedrp.services.combine.spec import SPEC as COMBINE
from musedrp.tags import Tag

FAKE = Path(__file__).parent.parent / "fake_esorex.py"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Run the fake esorex in ``tmp_path/work`` with the given mode and CPU set."""
    raw = tmp_path / "MUSE.2014-08-01T18:00:01.500.fits"
    raw.write_bytes(b"raw")
    # the fake is a Python script: make sure it finds this interpreter's astropy
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.setattr(esorex, "RECIPE_ENV", (*esorex.RECIPE_ENV, "FAKE_ESOREX_MODE"))

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
    assert (tmp_path / "work" / sof[0]).resolve() == tmp_path / "MUSE.2014-08-01T18:00:01.500.fits"
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


def test_a_recipe_stopped_by_a_shutdown_is_interrupted_not_out_of_memory(fake, tmp_path):
    """A second SIGTERM kills the running recipes (``kill_all``): that SIGKILL is ours."""
    threading.Timer(2.0, esorex.kill_all).start()
    with pytest.raises(Interrupted, match="stopped by a shutdown"):
        fake(mode="hang", timeout=60)


def test_failure_carries_the_error_line(fake):
    run, _ = fake(mode="fail")
    assert run.returncode == 1 and run.errors == ["something broke"]
    with pytest.raises(DataError, match="exited with 1.*something broke"):
        esorex.check(run, ["MASTER_BIAS-01.fits"])


def test_a_recipe_killed_by_sigkill_is_said_to_be_out_of_memory(fake):
    run, _ = fake(mode="sigkill")
    assert run.returncode == -9 and not run.timed_out
    with pytest.raises(DataError, match=r"muse_bias was killed by SIGKILL — most likely the "
                       r"kernel's out-of-memory killer \(peak RSS \d+\.\d\d GB, "
                       r"estimate 2\.5 GB\)"):
        esorex.check(run, ["MASTER_BIAS-01.fits"], 2.5)


def test_the_runner_names_the_estimate_of_a_killed_job(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ESOREX_MODE", "sigkill")
    monkeypatch.setattr(esorex, "esorex_path", lambda: str(FAKE))
    order = WorkOrder(stage="bias", recipe="muse_bias", job_key="0123456789abcdef",
                      night="2014-08-01",
                      setup="S", ifu=1, inputs=(InputFile(tag=Tag.BIAS, path=str(FAKE)),),
                      params={}, memory_gb=1.7, timeout_s=60)
    with pytest.raises(DataError, match=r"out-of-memory killer \(peak RSS .*, estimate 1\.7 GB\)"):
        runner.compute(BIAS, order, tmp_path / "work", [0])


def test_inputs_only_musedrp_reads_stay_out_of_the_sof(fake, tmp_path, monkeypatch):
    """muse_exp_combine's SOF holds its tables and offsets, not the field images the grid is
    derived from (``Input.own``)."""
    monkeypatch.setenv("FAKE_ESOREX_MODE", "noproduct")
    monkeypatch.setattr(esorex, "esorex_path", lambda: str(FAKE))
    inputs = [InputFile(tag=tag, path=str(tmp_path / f"{tag}_{i}.fits"))
              for tag in (Tag.PIXTABLE_REDUCED, Tag.IMAGE_FOV) for i in (1, 2)]
    for f in inputs:
        Path(f.path).touch()
    order = WorkOrder(stage="combine", recipe="muse_exp_combine", job_key="0123456789abcdef",
                      night="2014-08-01", setup="S", ifu=None, inputs=tuple(inputs), params={},
                      memory_gb=1.0, timeout_s=60)
    with pytest.raises(DataError):
        runner.compute(COMBINE, order, tmp_path / "work", [0])
    tags = (tmp_path / "work" / esorex.SOF_FILE).read_text().split()[1::2]
    assert tags == ["PIXTABLE_REDUCED", "PIXTABLE_REDUCED"]


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


def test_inputs_of_the_same_name_from_different_jobs_both_reach_the_sof(tmp_path):
    """Every exposure's cube job writes IMAGE_FOV_0001.fits: muse_exp_align reads them all."""
    paths = []
    for job in ("a", "b", "c"):
        (tmp_path / job).mkdir()
        paths.append(tmp_path / job / "IMAGE_FOV_0001.fits")
        paths[-1].write_text(job)
    work = tmp_path / "w"
    sof = esorex.write_sof([esorex.SofEntry(p, Tag.IMAGE_FOV) for p in [*paths, paths[0]]], work)
    lines = [line.split() for line in sof.read_text().splitlines()]
    assert [(work / name).read_text() for name, _ in lines] == ["a", "b", "c", "a"]
    assert all(Path(name).name == "IMAGE_FOV_0001.fits" for name, _ in lines)


def test_parse_log_levels():
    errors, warnings, versions = esorex.parse_log(
        "10:00:00 [ ERROR ] muse_wavecal: [tid=000] bad\n"
        "10:00:00 [WARNING] : [tid=000] Unable to open directory /usr/lib/cpl/plugins\n"
        "10:00:00 [WARNING] muse_trace: [tid=000] lost trace\nnot a log line\n")
    assert errors == ["bad"] and warnings == ["lost trace"] and versions == {}


def test_the_recipe_gets_no_secret_of_the_service(fake, monkeypatch, tmp_path):
    secrets = {"PGPASSWORD": "s1", "MUSEDRP_S3_SECRET_KEY": "s2", "MUSEDRP_AMQP_PASSWORD": "s3",
               "MUSEDRP_DB_URL": "postgresql+psycopg://u:s4@db/musedrp", "AWS_ACCESS_KEY_ID": "s5",
               "AWS_SECRET_ACCESS_KEY": "s6", "AWS_SESSION_TOKEN": "s7", "SOME_API_TOKEN": "s8",
               "MUSEDRP_S3_SECRET_KEY_FILE": "/run/secrets/s9"}
    kept = {"LANG": "C.UTF-8", "LC_NUMERIC": "C", "TZ": "UTC", "TMPDIR": str(tmp_path)}
    for name, value in {**secrets, **kept}.items():
        monkeypatch.setenv(name, value)
    _, probe = fake(cpus=[0])
    env = probe["env"]
    assert not set(secrets) & set(env)
    assert not any(s in value for value in env.values() for s in ("s1", "s4", "s6", "s9"))
    assert {k: env[k] for k in kept} == kept
    assert env["PATH"] == os.environ["PATH"] and env["OMP_NUM_THREADS"] == "1"
    assert env["HOME"] == str(tmp_path / "work")


def test_compute_leaves_its_inputs_unchanged(fake, tmp_path, monkeypatch, make_frame):
    """STYLE.md §5: a stage's compute, run by the runner, changes no byte of its inputs."""
    monkeypatch.setattr(esorex, "esorex_path", lambda: str(FAKE))
    raws = [make_frame({"TPL.EXPNO": i}) for i in (1, 2, 3)]
    order = WorkOrder(stage="bias", recipe="muse_bias", job_key="0123456789abcdef",
                      night="2014-08-01", setup="S", ifu=1, params={}, memory_gb=1.0,
                      timeout_s=60, inputs=tuple(InputFile(tag=Tag.BIAS, path=str(p))
                                                 for p in raws))
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in raws}
    result = runner.execute(order, BIAS, functools.partial(runner.compute, BIAS),
                            tmp_path / "out", [0], tmp_path)
    assert result.outcome == "succeeded", result.reason
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in raws} == before


def test_sof_entries_work_in_a_directory_whose_path_has_blanks(tmp_path, monkeypatch):
    """esorex splits SOF lines on blanks: the lines name the inputs' links relative to the
    work directory, where esorex runs, so a scratch path like this one never reaches it."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ESOREX_MODE", "ok")
    raw = tmp_path / "raw frames" / "MUSE.2014-08-01T18:00:01.500.fits"
    raw.parent.mkdir()
    raw.write_bytes(b"raw")
    work = tmp_path / "scratch dir" / "job 1"
    run = esorex.run_recipe("muse_bias", [esorex.SofEntry(raw, Tag.BIAS)], ["--nifu=1"], work,
                            [0], 30.0, esorex=str(FAKE))
    assert (run.returncode, run.errors) == (0, [])
    assert (work / esorex.SOF_FILE).read_text() == (
        "inputs/MUSE.2014-08-01T18:00:01.500.fits BIAS\n")
    assert list(esorex.check(run, ["MASTER_BIAS-01.fits"])) == ["MASTER_BIAS-01.fits"]


def _run_with(tmp_path: Path, name: str, catg: str | None) -> esorex.RecipeRun:
    """A finished run whose one product ``name`` carries PRO.CATG ``catg`` (None: none)."""
    header = fits.Header()
    if catg is not None:
        header["HIERARCH ESO PRO CATG"] = catg
    fits.PrimaryHDU(header=header).writeto(tmp_path / name)
    return esorex.RecipeRun(recipe="muse_flat", command=[], returncode=0, wall_s=1.0,
                            cpu_user_s=1.0, cpu_sys_s=0.0, peak_rss_bytes=1, cpus=[0],
                            omp_num_threads=1, timed_out=False, products=[tmp_path / name])


@pytest.mark.parametrize("catg", ["MASTER", "", "MASTER_FLAT_X", "TRACE_TABLE", None])
def test_a_product_must_carry_exactly_the_category_its_name_declares(tmp_path, catg):
    run = _run_with(tmp_path, "MASTER_FLAT-01.fits", catg)
    with pytest.raises(DataError, match=f"^product MASTER_FLAT-01.fits has PRO.CATG={catg!r}, "
                       "not 'MASTER_FLAT'$"):
        esorex.check(run, ["MASTER_FLAT-01.fits"])


@pytest.mark.parametrize(("name", "catg"), [("MASTER_FLAT-01.fits", "MASTER_FLAT"),
                                            ("PIXTABLE_OBJECT_0001-01.fits", "PIXTABLE_OBJECT"),
                                            ("DATACUBE_FINAL.fits", "DATACUBE_FINAL")])
def test_a_product_of_its_declared_category_passes(tmp_path, name, catg):
    assert list(esorex.check(_run_with(tmp_path, name, catg), [name])) == [name]
