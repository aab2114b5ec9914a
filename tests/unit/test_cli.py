"""``musedrp plan`` and ``reduce`` around a stand-in executor: options, memory budget, esorex,
JSON, the console summary and the exit code."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from musedrp import cli, esorex, report
from musedrp.frames import classify_file
from musedrp.messages import WorkOrder
from musedrp.planner import Plan
from musedrp.registry import Registry
from musedrp.runner import JobResult

from ..conftest import job_key
from .conftest import SCIENCE_MJD


@pytest.fixture
def night(template, science, tmp_path):
    """A raw directory: three biases and, unless ``calibrations_only``, one exposure."""
    def make(calibrations_only: bool = False) -> Path:
        template(SCIENCE_MJD - 0.3)
        if not calibrations_only:
            science()
        return tmp_path
    return make


@pytest.fixture
def no_esorex(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path_factory.mktemp("empty-path")))
    esorex.esorex_path.cache_clear()
    yield
    esorex.esorex_path.cache_clear()


class FakeExecutor:
    """Stands in for LocalExecutor: records its budget; every job succeeds."""

    seen: dict = {}

    def __init__(self, out, cpus, memory_gb, *args, **kwargs) -> None:
        self.out = out
        FakeExecutor.seen = {"cpus": cpus, "memory_gb": memory_gb}

    def run(self, orders):
        return {o.job_key: JobResult(o, "succeeded", self.out / o.product_dir) for o in orders}


@pytest.fixture
def reduce(monkeypatch, tmp_path_factory, capsys):
    """``musedrp reduce RAW -o OUT ...`` without esorex runs: (exit code, stdout, OUT)."""
    monkeypatch.setattr(esorex, "pipeline_version", lambda: esorex.EXPECTED_VERSION)
    monkeypatch.setattr(cli, "LocalExecutor", FakeExecutor)
    out = tmp_path_factory.mktemp("out")

    def run(raw: Path, *options: str):
        code = cli.main(["reduce", str(raw), "-o", str(out), *options])
        return code, capsys.readouterr().out, out
    return run


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--cpus", "0", "--cpus must be a positive integer"),
    ("--cpus", "-2", "--cpus must be a positive integer"),
    ("--cpus", "two", "--cpus must be a positive integer"),
    ("--memory", "0", "--memory must be a positive number of GB"),
    ("--memory", "-1.5", "--memory must be a positive number of GB"),
    ("--memory", "nan", "--memory must be a positive number of GB"),
])
def test_cpus_and_memory_must_be_positive(option, value, message, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["reduce", "raw", option, value])
    assert exited.value.code == 2
    assert f"{message}, not '{value}'" in capsys.readouterr().err


def test_more_cpus_than_this_process_may_use_is_an_error(tmp_path, capsys):
    cpus = sorted(os.sched_getaffinity(0))
    assert cli.main(["reduce", str(tmp_path), "-o", str(tmp_path / "out"),
                     "--cpus", str(len(cpus) + 1)]) == 2
    assert (f"this process may use only {len(cpus)} CPU(s) ({esorex.format_cpus(cpus)})"
            in capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_planner_and_executor_share_one_memory_budget(night, reduce, monkeypatch):
    available = iter([10.0, 20.0])  # memory frees up between two readings
    monkeypatch.setattr(cli, "available_memory_gb", lambda: next(available))
    planned = []
    plan_night = cli.plan_night
    monkeypatch.setattr(cli, "plan_night", lambda *a, **kw: planned.append(kw["memory_gb"])
                        or plan_night(*a, **kw))
    _, _, out = reduce(night())
    assert planned == [8.5] and FakeExecutor.seen["memory_gb"] == 8.5
    assert "memory budget 8.5 GB (85 % of available)" in (out / "plan.txt").read_text()
    assert json.loads((out / "plan.json").read_text())["memory_budget_gb"] == 8.5
    reduce(night(), "--memory", "3")
    assert "memory budget 3.0 GB (--memory)" in (out / "plan.txt").read_text()


def test_plan_needs_no_esorex(night, no_esorex, capsys):
    code = cli.main(["plan", str(night(calibrations_only=True)), "--memory", "4"])
    out, err = capsys.readouterr()
    assert code in (0, 2), err  # 2: no science, while the planner wants some
    assert "esorex" not in err
    assert f"job keys assume MUSE pipeline {esorex.EXPECTED_VERSION}: esorex was not found" in out


def test_reduce_needs_esorex(night, no_esorex, tmp_path, capsys):
    assert cli.main(["reduce", str(night()), "-o", str(tmp_path / "out")]) == 2
    assert "esorex not found on PATH" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_plan_json_is_what_reduce_writes(night, no_esorex, reduce, capsys):
    raw = night()
    (raw / "README.txt").write_text("not a frame")
    _, _, out = reduce(raw, "--memory", "4")
    assert cli.main(["plan", str(raw), "-o", str(out), "--memory", "4", "--json"]) == 0
    stdout, stderr = capsys.readouterr()
    assert json.loads(stdout) == json.loads((out / "plan.json").read_text())
    assert "ignored" in stderr and "job keys assume" in stderr


def test_unclassified_files_are_named_with_their_reason(make_frame):
    fors = classify_file(make_frame({"INSTRUME": "FORS2"}))
    odd = classify_file(make_frame({"DPR.TYPE": "WHAT"}))
    lines = report.frame_summary(Plan(frames=[fors, odd, classify_file(make_frame())]))
    assert lines[0].endswith("0 used, 0 rejected, 1 unused, 2 unclassified")
    assert f"  unclassified {fors.name}: not a MUSE frame (INSTRUME='FORS2')" in lines
    assert f"  unclassified {odd.name}: {odd.reason}" in lines


def test_science_without_a_cube_fails_the_reduction(night, reduce):
    code, out, _ = reduce(night())  # no flat, no arc: the exposure cannot be reduced
    assert code == 1
    assert "1 science exposure(s) got no cube: 1 x not reduced" in out.splitlines()[-1]


def _order(name: str, stage: str, needs=()) -> WorkOrder:
    return WorkOrder(stage=stage, recipe=f"muse_{stage}", job_key=job_key(name),
                     night="2014-08-01", setup="S", ifu=None, inputs=(), params={},
                     memory_gb=1, timeout_s=60, needs=tuple(map(job_key, needs)))


def test_a_cube_is_a_scipost_job_reading_the_exposure(science, template):
    (first,), (second,) = science(), science(SCIENCE_MJD + 0.01)
    plan = Plan(frames=[first, second])
    for f, n in ((first, 1), (second, 2)):
        plan.add(_order(f"basic{n}", "scibasic"), [f])
    plan.add(_order("post1", "scipost", needs=("basic1",)), [])

    def results(post1="succeeded"):
        return {o.job_key: JobResult(o, post1 if o.stage == "scipost" else "succeeded",
                                     Path(), reason="upstream job basic1 did not succeed")
                for o in plan.orders}

    assert report.missing_cubes(plan, results()) == (
        "1 science exposure(s) got no cube: 1 x no scipost planned (see the decisions)")
    plan.add(_order("post2", "scipost", needs=("basic2",)), [])
    assert report.missing_cubes(plan, results()) == ""
    assert report.missing_cubes(plan, results("skipped")) == (
        "2 science exposure(s) got no cube: "
        "2 x scipost skipped: upstream job basic1 did not succeed")
    assert report.missing_cubes(Plan(frames=template(SCIENCE_MJD)), {}) == ""  # no science


def test_qc_needs_a_registry_and_says_when_it_has_nothing(tmp_path, capsys):
    assert cli.main(["qc", str(tmp_path)]) == 2
    assert "no registry in" in capsys.readouterr().err
    Registry.for_output(tmp_path).close()  # an empty registry
    assert cli.main(["qc", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "no product with QC in the registry\n"
    assert cli.main(["qc", str(tmp_path), "--night", "2014-08-01:2014-08-03", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["first"], shown["last"], shown["values"], shown["flagged"]) == (
        "2014-08-01", "2014-08-03", 0, [])
    with pytest.raises(SystemExit):
        cli.main(["qc", str(tmp_path), "--night", "2014-13-01"])
    assert "not a night or range" in capsys.readouterr().err


def test_a_reader_that_stops_early_gets_no_traceback(night):
    """`musedrp plan RAW | head -1`: the reader closes the pipe (here before plan writes at all:
    the shell's ``:`` reads nothing and exits while Python still starts)."""
    raw = night()
    proc = subprocess.run(f"{sys.executable} -m musedrp.cli plan {raw} --memory 4 | :",
                          shell=True, capture_output=True, text=True, check=False,  # noqa: S602
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_the_report_of_a_deployment_says_where_it_reads_and_no_password(tmp_path, monkeypatch,
                                                                        capsys):
    """``musedrp report --state-dir``: the registry without its password, the store as
    ``serve`` configured it (a directory on one machine)."""
    from musedrp import deployment

    for name in list(os.environ):
        if name.startswith("MUSEDRP_"):
            monkeypatch.delenv(name)
    (tmp_path / "services.env").write_text(
        "MUSEDRP_DB_URL=postgresql+psycopg://u:db-secret@127.0.0.1/musedrp\n"
        "MUSEDRP_S3_ENDPOINT=file:///srv/store\n")
    sources = []
    monkeypatch.setattr(Registry, "connect", lambda _: type("R", (), {"close": lambda _: None})())
    monkeypatch.setattr(deployment, "materialise",
                        lambda _r, _s, _o, source: sources.append(source))
    cli.from_services(tmp_path / "out", tmp_path)
    said = capsys.readouterr().out
    assert "db-secret" not in said and "registry postgresql+psycopg://u:***@" in said
    assert "directory /srv/store" in said and sources == ["raw/ of the directory /srv/store"]
