"""The registry on SQLite and on the machine's PostgreSQL."""

import pytest

from musedrp.frames import classify_file
from musedrp.messages import InputFile, WorkOrder
from musedrp.registry import Registry
from musedrp.tags import Tag


def order(key: str, stage: str = "bias", ifu: int = 1) -> WorkOrder:
    return WorkOrder(stage=stage, recipe=f"muse_{stage}", job_key=key, night="2014-08-01",
                     setup="WFM-NOAO-N_SCI1.0", ifu=ifu,
                     inputs=(InputFile(tag=Tag.BIAS, path="/raw/a.fits", ifu=ifu),),
                     params={"combine": "sigclip"}, memory_gb=2.5, timeout_s=60)


def test_frames_jobs_products_round_trip(db_url, make_frame):
    reg = Registry(db_url)
    good = classify_file(make_frame())
    bad = classify_file(make_frame({"INSTRUME": "FORS2"}))
    reg.record_frames([good, bad], {good.path: ("used", "job1"),
                                    bad.path: ("unclassified", bad.reason)})
    rows = {r.name: r for r in reg.frames()}
    assert rows[good.name].tag == "BIAS" and rows[good.name].status == "used"
    assert rows[good.name].setup == "WFM-NOAO-N_SCI1.0" and rows[good.name].frame["ifus"] == [1]
    assert {f.path: f for f in reg.load_frames()} == {good.path: good, bad.path: bad}
    assert rows[bad.name].tag is None and "not a MUSE frame" in rows[bad.name].reason

    reg.record_orders([order("job1"), order("job2", "flat")])
    reg.set_state("job1", "running")
    reg.set_state("job1", "succeeded", wall_s=30.5, peak_rss_bytes=2_500_000_000)
    reg.record_orders([order("job1")])  # re-planning keeps the state
    (job1,) = reg.jobs("succeeded")
    assert (job1.key, job1.wall_s, job1.peak_rss_bytes) == ("job1", 30.5, 2_500_000_000)
    assert job1.order["inputs"][0]["tag"] == "BIAS"
    assert [j.key for j in reg.jobs("planned")] == ["job2"]

    reg.record_products("job1", 1, [("/out/MASTER_BIAS-01.fits", "MASTER_BIAS", {"QC X": 1.5})])
    reg.record_products("job1", 1, [("/out/MASTER_BIAS-01.fits", "MASTER_BIAS", {"QC X": 2.5})])
    (p,) = reg.products("MASTER_BIAS")
    assert (p.job_key, p.ifu, p.qc) == ("job1", 1, {"QC X": 2.5})
    reg.close()


def test_unknown_state_and_job_are_errors(db_url):
    reg = Registry(db_url)
    reg.record_orders([order("job1")])
    with pytest.raises(ValueError, match="unknown job state"):
        reg.set_state("job1", "exploded")
    with pytest.raises(KeyError, match="no job"):
        reg.set_state("nope", "failed")
    reg.close()


def test_registry_is_persistent(db_url):
    Registry(db_url).record_orders([order("job1")])
    assert [j.key for j in Registry(db_url).jobs()] == ["job1"]


def test_re_recording_updates_frames_and_adds_only_new_jobs(db_url, make_frame):
    """Both are done in chunks of 500 keys: more than one chunk, and a key twice in one call."""
    reg = Registry(db_url)
    frame = classify_file(make_frame())
    reg.record_frames([frame], {frame.path: ("registered", "")})
    reg.record_frames([frame], {frame.path: ("used", "job1")})
    (row,) = reg.frames()
    assert (row.status, row.reason) == ("used", "job1")
    reg.record_orders([order(f"k{i}") for i in range(700)] + [order("k3")])
    reg.set_state("k650", "succeeded")
    reg.record_orders([order(f"k{i}") for i in range(1200)])
    jobs = reg.jobs()
    assert len(jobs) == 1200 and len({j.key for j in jobs}) == 1200
    assert [j.key for j in jobs if j.state == "succeeded"] == ["k650"]
    reg.close()
