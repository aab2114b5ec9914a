"""The registry on SQLite and on the machine's PostgreSQL."""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from musedrp import qctrend
from musedrp.frames import Frame, classify_file
from musedrp.messages import InputFile, WorkOrder
from musedrp.registry import Registry
from musedrp.tags import Tag

from ..conftest import job_key


def order(key: str, stage: str = "bias", ifu: int = 1) -> WorkOrder:
    return WorkOrder(stage=stage, recipe=f"muse_{stage}", job_key=key, night="2014-08-01",
                     setup="WFM-NOAO-N_SCI1.0", ifu=ifu,
                     inputs=(InputFile(tag=Tag.BIAS, path="/raw/a.fits", ifu=ifu),),
                     params={"combine": "sigclip"}, memory_gb=2.5, timeout_s=60)


def test_frames_jobs_products_round_trip(db_url, make_frame):
    reg = Registry(db_url)
    job1, job2 = job_key("job1"), job_key("job2")
    good = classify_file(make_frame())
    bad = classify_file(make_frame({"INSTRUME": "FORS2"}))
    reg.record_frames([good, bad], {good.path: ("used", job1),
                                    bad.path: ("unclassified", bad.reason)})
    rows = {r.name: r for r in reg.frames()}
    assert rows[good.name].tag == "BIAS" and rows[good.name].status == "used"
    assert rows[good.name].setup == "WFM-NOAO-N_SCI1.0" and rows[good.name].frame["ifus"] == [1]
    assert {f.path: f for f in reg.load_frames()} == {good.path: good, bad.path: bad}
    assert rows[bad.name].tag is None and "not a MUSE frame" in rows[bad.name].reason

    reg.record_orders([order(job1), order(job2, "flat")])
    reg.set_state(job1, "running")
    reg.set_state(job1, "succeeded", wall_s=30.5, peak_rss_bytes=2_500_000_000)
    reg.record_orders([order(job1)])  # re-planning keeps the state
    (row,) = reg.jobs("succeeded")
    assert (row.key, row.wall_s, row.peak_rss_bytes) == (job1, 30.5, 2_500_000_000)
    assert row.order["inputs"][0]["tag"] == "BIAS"
    (planned,) = reg.jobs("planned")  # as the driver inserted it (``_add_rows``)
    assert planned.key == job2 and WorkOrder.model_validate(planned.order) == order(job2, "flat")
    assert (planned.stage, planned.ifu, planned.reason) == ("flat", 1, "")
    # a time without a zone, as the ORM writes it (``set_state``): they are compared
    assert planned.updated.tzinfo is None and row.updated.tzinfo is None
    assert abs(planned.updated - datetime.now()) < timedelta(days=1)

    reg.record_products(job1, 1, [("/out/MASTER_BIAS-01.fits", "MASTER_BIAS", {"QC X": 1.5})])
    reg.record_products(job1, 1, [("/out/MASTER_BIAS-01.fits", "MASTER_BIAS", {"QC X": 2.5})])
    (p,) = reg.products("MASTER_BIAS")
    assert (p.job_key, p.ifu, p.qc) == (job1, 1, {"QC X": 2.5})
    reg.close()


def test_unknown_state_and_job_are_errors(db_url):
    reg = Registry(db_url)
    reg.record_orders([order(job_key("job1"))])
    with pytest.raises(ValueError, match="unknown job state"):
        reg.set_state(job_key("job1"), "exploded")
    with pytest.raises(KeyError, match="no job"):
        reg.set_state(job_key("nope"), "failed")
    reg.close()


def test_registry_is_persistent(db_url):
    Registry(db_url).record_orders([order(job_key("job1"))])
    assert [j.key for j in Registry(db_url).jobs()] == [job_key("job1")]


def test_re_recording_updates_frames_and_adds_only_new_jobs(db_url, make_frame):
    """Both are done in chunks of 500 keys: more than one chunk, and a key twice in one call."""
    reg = Registry(db_url)
    frame = classify_file(make_frame())
    reg.record_frames([frame], {frame.path: ("registered", "")})
    reg.record_frames([frame], {frame.path: ("used", job_key("job1"))})
    (row,) = reg.frames()
    assert (row.status, row.reason) == ("used", job_key("job1"))
    reg.record_orders([order(job_key(f"k{i}")) for i in range(700)] + [order(job_key("k3"))])
    reg.set_state(job_key("k650"), "succeeded")
    reg.record_orders([order(job_key(f"k{i}")) for i in range(1200)])
    jobs = reg.jobs()
    assert len(jobs) == 1200 and len({j.key for j in jobs}) == 1200
    assert [j.key for j in jobs if j.state == "succeeded"] == [job_key("k650")]
    reg.close()


def frame_of(night: str, tag: Tag | None = Tag.BIAS) -> Frame:
    return Frame(path=f"raw/{night}/{tag}.fits", name=f"{tag}.fits", size=1, tag=tag,
                 night=night)


def test_frames_of_the_nights_near_others_and_every_static(db_url):
    """What a re-plan of some nights reads: the frames they may use, found by night (indexed)."""
    reg = Registry(db_url)
    nights = ["2014-07-14", "2014-07-16", "2014-08-01", "2014-08-17", "2014-08-18", "2014-10-01"]
    static = frame_of("2014-08-02", Tag.EXTINCT_TABLE)  # serves every night, has none
    reg.record_frames([*map(frame_of, nights), static, frame_of("", None)], {})
    assert reg.nights(["2014-08-01"], 16) == {"2014-07-16", "2014-08-01", "2014-08-17"}
    assert reg.nights(["2014-07-14", "2014-10-01"], 1) == {"2014-07-14", "2014-10-01"}
    assert reg.nights([], 16) == set()
    near = reg.load_frames(["2014-07-16", "2014-10-01"], 2)
    assert {f.night for f in near} == {"2014-07-14", "2014-07-16", "2014-10-01", "2014-08-02"}
    assert len(reg.load_frames()) == 8
    reg.close()


def test_statuses_leave_a_newer_registration_alone(db_url):
    """The planner writes its verdicts only: ingest may have re-registered a frame since the
    planner read it."""
    reg = Registry(db_url)
    old = frame_of("2014-08-01")
    reg.record_frames([old], {old.path: ("registered", "")})
    new = old.model_copy(update={"target": "re-registered", "mjd": 56870.8})
    reg.record_frames([new], {new.path: ("registered", "")})
    reg.set_statuses({old.path: ("used", "k1")})
    (row,) = reg.frames()
    assert (row.status, row.reason, row.mjd) == ("used", "k1", 56870.8)
    assert reg.load_frames() == [new]
    reg.close()


def test_dependents_and_states(db_url):
    """What a finished job may unblock, without reading every job; a registry made before the
    needs table has its jobs indexed when opened."""
    reg = Registry(db_url)
    a, b, c, d = map(job_key, "abcd")
    flat = order(b, "flat").model_copy(update={"needs": (a,)})
    wavecal = order(c, "wavecal").model_copy(update={"needs": (a, b)})
    assert reg.record_orders([order(a), flat, wavecal]) == [a, b, c]
    assert reg.record_orders([order(a), order(d)]) == [d]
    assert sorted(j.key for j in reg.dependents([a], "planned")) == [b, c]
    reg.set_state(b, "queued")
    assert [j.key for j in reg.dependents([a, b], "planned")] == [c]
    assert reg.states([a, b, job_key("nope")]) == {a: "planned", b: "queued"}
    assert [j.key for j in reg.jobs("planned", "blocked", keys=[b, c, d])] == [d, c]
    with reg.engine.begin() as conn:
        conn.execute(text("DROP TABLE needs"))
    reopened = Registry(db_url)
    assert sorted(j.key for j in reopened.dependents([a], "planned", "queued")) == [b, c]
    reopened.close()
    reg.close()


def test_jobs_a_plan_no_longer_holds_are_superseded_and_come_back_when_held(db_url):
    """Only the plan's nights, only jobs not issued yet; held again, a job waits again."""
    reg = Registry(db_url)
    a, b, c, d, e = map(job_key, "abcde")
    other = order(e).model_copy(update={"night": "2014-08-20"})
    reg.record_orders([order(a), order(b), order(c), order(d), other])
    reg.set_state(c, "queued")
    reg.set_state(d, "blocked", "upstream failed")
    assert sorted(reg.supersede({"2014-08-01"}, [a], "frames arrived")) == [b, d]
    assert reg.states([a, b, c, d, e]) == {a: "planned", b: "superseded", c: "queued",
                                           d: "superseded", e: "planned"}
    assert reg.job(b).reason == "frames arrived"
    assert reg.supersede(None, [a, b, d], "again") == [e]  # every night
    assert reg.states([b, d, e]) == {b: "planned", d: "planned", e: "superseded"}
    # a plan of one night holds a job of another (a calibration taken there): it waits again
    assert reg.supersede({"2014-08-01"}, [a, b, d, e], "and again") == []
    assert reg.states([e]) == {e: "planned"}
    reg.close()


def test_qc_history_by_stage_ifu_and_nights(db_url):
    """What QC trending reads: the QC of products by night, stage and IFU (0: all IFUs),
    judged the same from SQLite and PostgreSQL."""
    reg = Registry(db_url)
    for day in range(1, 9):
        night = f"2014-08-{day:02d}"
        for n, (stage, ifu) in enumerate((("bias", 1), ("bias", 2), ("twilight", None))):
            key = job_key(f"{n}{day}")
            reg.record_orders([order(key, stage, ifu or 1).model_copy(
                update={"night": night, "ifu": ifu})])
            ron = 2.6 + 0.001 * (day % 3) + (1.0 if (ifu, day) == (2, 8) else 0.0)
            reg.record_products(key, ifu, [(f"/out/{night}/{stage}/{ifu}.fits", "MASTER_BIAS",
                                            {"QC BIAS MASTER1 RON": ron, "QC NAME": "x"})])
    reg.record_products(job_key("01"), 1, [("/out/empty.fits", "MASTER_BIAS", {})])
    moved = reg.qc(stage="bias", ifu=1, since="2014-08-01", until="2014-08-01")[0][-1]
    reg.record_products(job_key("01"), 1, [("/moved/2014-08-01/bias/1.fits", "MASTER_BIAS",
                                            moved)])  # the same product, recorded elsewhere
    assert reg.last_qc_night() == "2014-08-08"
    rows = reg.qc(stage="bias", ifu=2, since="2014-08-03", until="2014-08-05")
    assert [(night, ifu) for night, _, _, ifu, _, _ in rows] == [
        (f"2014-08-0{d}", 2) for d in (3, 4, 5)]
    assert {r[3] for r in reg.qc(stage="twilight", ifu=0)} == {None}
    assert len(reg.qc()) == 3 * 8  # without QC: left out; recorded twice: once
    flagged = [v for v in qctrend.from_registry(reg, "2014-08-08", "2014-08-08") if v.flagged]
    assert [(v.record.stage, v.record.ifu) for v in flagged] == [("bias", 2)]
    reg.close()


def test_a_plan_of_some_nights_replaces_only_their_decisions(db_url):
    reg = Registry(db_url)
    reg.record_decisions(None, ["night 2014-08-01, WFM: 11 biases", "night 2014-08-02, WFM: 9"])
    reg.record_decisions(["2014-08-02"], ["night 2014-08-02, WFM: 10 biases"])
    assert reg.decisions() == ["night 2014-08-01, WFM: 11 biases",
                               "night 2014-08-02, WFM: 10 biases"]
    reg.record_decisions(None, [])
    assert reg.decisions() == []
    reg.close()


def test_services_starting_together_create_one_schema_in_a_fresh_database(db_url):
    """``serve`` starts the ingest, the planner and the workers at once on a new database:
    each creates the tables it finds missing, and none may fail because another did."""
    together = threading.Barrier(6, timeout=30)

    def connect(_):
        together.wait()
        registry = Registry.connect(db_url)
        registry.close()

    with ThreadPoolExecutor(6) as threads:
        list(threads.map(connect, range(6)))
    registry = Registry.connect(db_url)
    assert registry.jobs() == []
    registry.close()
