"""The message envelope: round trips, and every way a body can be bad."""

import json

import pytest

from musedrp.errors import BadMessage
from musedrp.messages import (
    Envelope,
    FrameArrived,
    InputFile,
    JobFinished,
    WorkOrder,
    decode,
    night_correlation,
)
from musedrp.tags import Tag

ORDER = WorkOrder(stage="bias", recipe="muse_bias", job_key="abc", night="2014-08-01",
                  setup="WFM-NOAO-N_SCI1.0", ifu=1, memory_gb=2.5, timeout_s=600,
                  inputs=(InputFile(tag=Tag.BIAS, path="raw/2014-08-01/a.fits", ifu=1),),
                  params={"combine": "sigclip"})


@pytest.mark.parametrize(("kind", "payload"), [
    ("work.bias", ORDER),
    ("frame.arrived", FrameArrived(key="raw/2014-08-01/a.fits", size=10)),
    ("job.finished", JobFinished(job_key="abc", stage="bias", night="2014-08-01", ifu=1,
                                 outcome="failed", reason="esorex exited with 1")),
])
def test_round_trip_keeps_the_payload_type(kind, payload):
    env = Envelope(type=kind, source="test", payload=payload)
    back = decode(env.encode())
    assert back == env and type(back.payload) is type(payload)


def test_reply_keeps_the_correlation_id():
    env = Envelope(type="work.bias", source="planner", payload=ORDER,
                   correlation_id=night_correlation("2014-08-01"))
    finished = JobFinished(job_key="abc", stage="bias", night="2014-08-01", ifu=1,
                           outcome="succeeded")
    reply = env.reply("job.finished", "worker.bias", finished)
    assert reply.correlation_id == env.correlation_id == night_correlation("2014-08-01")
    assert night_correlation("2014-08-02") != env.correlation_id


def body(**changes):
    raw = json.loads(Envelope(type="work.bias", source="t", payload=ORDER).encode())
    raw.update(changes)
    return json.dumps(raw).encode()


@pytest.mark.parametrize(("data", "reason"), [
    (b"{not json", "body is not JSON"),
    (b"\xff\xfe", "body is not JSON"),
    (b"[1, 2]", "a JSON list, not an object"),
    (body(schema_version=2), "unknown schema_version 2"),
    (body(type="work.unknown", payload={}), "invalid work.unknown message: payload.stage"),
    (body(type="frame.vanished"), "unknown message type 'frame.vanished'"),
    (body(payload={**ORDER.model_dump(mode="json"), "extra": 1}), "payload.extra"),
    (body(time="yesterday"), "invalid work.bias message: time"),
])
def test_bad_bodies_say_why(data, reason):
    with pytest.raises(BadMessage, match=reason.replace("(", r"\(")):
        decode(data)
