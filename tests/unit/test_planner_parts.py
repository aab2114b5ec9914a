"""The planner service planning many nights in parts, in processes forked side by side: the
same jobs, frame statuses and decisions as one plan of every night."""

import logging
from pathlib import Path

import pytest

from musedrp.messages import WorkOrder
from musedrp.planner import plan_night
from musedrp.registry import Registry
from musedrp.service import cpu_count
from musedrp.services.planner import service as planner_service
from musedrp.services.planner.service import ALL, Planner, split
from musedrp.settings import Settings

from .conftest import SCIENCE_MJD

FLAT = {"DPR.TYPE": "FLAT,LAMP", "TPL.ID": "MUSE_wfm_cal_specflat"}


@pytest.fixture
def six_nights(template, science):
    """Nights 0-5 (2014-08-01 to 06) with biases, flats and science, but for night 2
    (calibrations only: an evening template of 4 biases, which its own cascade takes, and a
    morning one of 3) and nights 3 and 4 (no biases): night 3 takes night 2's morning biases,
    which only its own cascade plans; night 4 takes night 5's."""
    frames = []
    for d in range(6):
        if d == 2:
            frames += [*template(56872.75, n=4), *template(56873.40)]
        elif d not in (3, 4):
            frames += template(56870.75 + d)
        if d != 2:
            frames += [*template(56870.8 + d, keys=FLAT), *science(SCIENCE_MJD + d)]
    return frames


def planned(db_url: str, frames, processes: int, caplog) -> tuple[dict, dict, list, str]:
    """Plan every night of ``frames`` in a new registry: jobs (key: stage, night, state and
    order without its rank), frame statuses (path: status, reasons), decisions, the log."""
    registry = Registry(db_url)
    registry.record_frames(frames, {})
    planner = Planner(registry, Settings.load({}), "2.8.7", logging.getLogger("test"))
    planner.processes, planner.part_nights = processes, 1
    caplog.clear()
    with caplog.at_level(logging.INFO):
        planner.plan({ALL})
    jobs = {j.key: (j.stage, j.night, j.state, {**j.order, "rank": None})
            for j in registry.jobs()}
    statuses = {r.path: (r.status, sorted(r.reason.split("; "))) for r in registry.frames()}
    decisions = sorted(registry.decisions())
    registry.close()
    return jobs, statuses, decisions, caplog.text


def test_nights_planned_in_parts_give_what_one_plan_gives(db_url, six_nights, tmp_path,
                                                          caplog):
    """Four parts in two processes ([0], [1, 2], [3], [4, 5]), each recording its nights'
    jobs; the bias of night 2 is planned only by night 3's part and recorded by the planner.
    A job's rank counts the jobs of its part's plan that wait on it, so it is not compared."""
    one = planned(f"sqlite:///{tmp_path / 'one.sqlite'}", six_nights, 1, caplog)
    parts = planned(db_url, six_nights, 2, caplog)
    assert "every night from" in one[3] and " parts:" not in one[3]
    assert "in 4 parts" in parts[3]
    assert parts[:3] == one[:3]
    morning = [o for stage, night, _, o in parts[0].values()
               if stage == "bias" and night == "2014-08-03" and len(o["inputs"]) == 3]
    assert len(morning) == 1
    assert {s for s, _ in parts[1].values()} == {"used", "rejected"}


def test_a_part_that_fails_fails_the_planning(six_nights, tmp_path, monkeypatch):
    """An error in a planning process reaches the planner (which plans again later)."""
    registry = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    registry.record_frames(six_nights, {})
    planner = Planner(registry, Settings.load({}), "2.8.7", logging.getLogger("test"))
    planner.processes, planner.part_nights = 2, 1

    def broken(frames, *args, nights=None, **kwargs):
        if "2014-08-04" in nights:
            raise RuntimeError("planning night 2014-08-04 failed")
        return plan_night(frames, *args, nights=nights, **kwargs)

    monkeypatch.setattr(planner_service, "plan_night", broken)
    with pytest.raises(RuntimeError, match="2014-08-04 failed"):
        planner.plan({ALL})


@pytest.mark.parametrize(("nights", "processes", "sizes"), [
    (365, 2, [91, 91, 91, 92]), (40, 2, [20, 20]), (31, 2, [31]), (365, 1, [365]),
    (3, 2, [3]),
])
def test_nights_are_split_in_runs_of_consecutive_nights(nights, processes, sizes):
    names = [f"n{i:03d}" for i in range(nights)]
    parts = split(names, processes)
    assert [len(p) for p in parts] == sizes
    assert [n for p in parts for n in p] == names


@pytest.mark.parametrize(("cpu_max", "count"), [
    ("max 100000\n", 3), ("100000 100000\n", 1), ("250000 100000\n", 2),
    ("900000 100000\n", 3), ("50000 100000\n", 1), (None, 3), ("garbage\n", 3),
])
def test_the_cpus_a_process_may_use_are_capped_by_its_cgroup_quota(tmp_path, cpu_max, count):
    quota = tmp_path / "cpu.max"
    if cpu_max is not None:
        quota.write_text(cpu_max)
    assert cpu_count(Settings.load({"MUSEDRP_CPUS": "0-2"}), quota) == count


def test_rows_decode_to_the_orders_planned(six_nights):
    """What a planning process sends is each order's JSON, as the registry keeps it."""
    plan = plan_night(six_nights, Path(""), "2.8.7")
    part = planner_service.plan_part(six_nights, None, version="2.8.7")
    assert [WorkOrder.model_validate_json(r.order) for r in part.rows] == plan.orders
    assert part.keys == [o.job_key for o in plan.orders]
