"""The message envelope: round trips, and every way a body can be bad."""

import json
import re
from uuid import uuid4

import pytest

from musedrp.errors import BadMessage
from musedrp.messages import (
    MAX_BODY_BYTES,
    Envelope,
    FrameArrived,
    InputFile,
    JobFinished,
    WorkOrder,
    decode,
    night_correlation,
)
from musedrp.tags import Tag

KEY = "0123456789abcdef"
ORDER = WorkOrder(stage="bias", recipe="muse_bias", job_key=KEY, night="2014-08-01",
                  setup="WFM-NOAO-N_SCI1.0", ifu=1, memory_gb=2.5, timeout_s=600,
                  inputs=(InputFile(tag=Tag.BIAS, path="raw/2014-08-01/a.fits", ifu=1),),
                  params={"combine": "sigclip"})


@pytest.mark.parametrize(("kind", "payload"), [
    ("work.bias", ORDER),
    ("frame.arrived", FrameArrived(key="raw/2014-08-01/a.fits", size=10)),
    ("job.finished", JobFinished(job_key=KEY, stage="bias", night="2014-08-01", ifu=1,
                                 outcome="failed", reason="esorex exited with 1")),
])
def test_round_trip_keeps_the_payload_type(kind, payload):
    env = Envelope(type=kind, source="test", payload=payload)
    back = decode(env.encode())
    assert back == env and type(back.payload) is type(payload)


def test_reply_keeps_the_correlation_id():
    env = Envelope(type="work.bias", source="planner", payload=ORDER,
                   correlation_id=night_correlation("2014-08-01"))
    finished = JobFinished(job_key=KEY, stage="bias", night="2014-08-01", ifu=1,
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


INPUT = ORDER.inputs[0].model_dump(mode="json")


@pytest.mark.parametrize(("changes", "where"), [
    ({"setup": "../../x"}, "payload.setup"),
    ({"setup": "WFM/SCI1.0"}, "payload.setup"),
    ({"setup": "WFM NOAO"}, "payload.setup"),
    ({"setup": "A" * 97}, "payload.setup"),
    ({"night": "../2014-08-01"}, "payload.night"),
    ({"night": "2014-08-01\n"}, "payload.night"),
    ({"stage": "../bias"}, "payload.stage: Value error, unknown stage '../bias'"),
    ({"job_key": "../../../tmp/x"}, "payload.job_key"),
    ({"job_key": "0123456789ABCDEF"}, "payload.job_key"),
    ({"needs": ["../x"]}, "payload.needs.0"),
    ({"ifu": 25}, "payload.ifu"),
    ({"ifu": 0}, "payload.ifu"),
    ({"products": ["../MASTER_BIAS-01.fits"]}, "payload.products.0"),
    ({"products": ["NOT_A_TAG-01.fits"]}, "payload.products.0"),
    ({"inputs": [{**INPUT, "path": "raw/a\x00.fits"}]}, "payload.inputs.0.path"),
    ({"inputs": [{**INPUT, "path": ""}]}, "payload.inputs.0.path"),
    ({"inputs": [{**INPUT, "job_key": "../x"}]}, "payload.inputs.0.job_key"),
    ({"inputs": [{**INPUT, "ifu": 99}]}, "payload.inputs.0.ifu"),
])
def test_an_identifier_that_could_leave_its_directory_is_a_bad_message(changes, where):
    """Night, stage, setup, job key and file names become directories and object keys."""
    data = body(payload={**ORDER.model_dump(mode="json"), **changes})
    with pytest.raises(BadMessage, match=f"^invalid work.bias message: {re.escape(where)}"):
        decode(data)


def test_the_product_location_is_built_from_the_checked_identifiers():
    assert ORDER.product_dir == f"products/2014-08-01/bias/WFM-NOAO-N_SCI1.0/{KEY}"
    assert ORDER.product_key("MASTER_BIAS-01.fits") == f"{ORDER.product_dir}/MASTER_BIAS-01.fits"


FINISHED = {"job_key": KEY, "stage": "bias", "night": "2014-08-01", "ifu": 1,
            "outcome": "succeeded"}
CREATED = {"job_key": KEY, "stage": "bias", "ifu": 1, "tag": "MASTER_BIAS",
           "key": "products/x/MASTER_BIAS-01.fits"}
REGISTERED = {"key": "raw/2014-08-01/a.fits", "night": "2014-08-01", "tag": "BIAS",
              "status": "registered"}


@pytest.mark.parametrize(("kind", "payload", "where"), [
    ("frame.arrived", {"key": "../etc/passwd"}, "payload.key"),
    ("frame.arrived", {"key": "/raw/a.fits"}, "payload.key"),
    ("frame.arrived", {"key": "raw//a.fits"}, "payload.key"),
    ("frame.arrived", {"key": "raw\\..\\a.fits"}, "payload.key"),
    ("frame.arrived", {"key": "raw/a.fits", "size": -1}, "payload.size"),
    ("frame.registered", {**REGISTERED, "night": "../x"}, "payload.night"),
    ("frame.registered", {**REGISTERED, "status": "lost"}, "payload.status"),
    ("product.created", {**CREATED, "key": "products/../../x"}, "payload.key"),
    ("product.created", {**CREATED, "stage": "nope"}, "payload.stage"),
    ("job.finished", {**FINISHED, "products": {"MASTER_BIAS-01.fits": "/x"}},
     "payload.products.MASTER_BIAS-01.fits"),
    ("job.finished", {**FINISHED, "products": {"../MASTER_BIAS-01.fits": "products/x"}},
     "payload.products.../MASTER_BIAS-01.fits"),
    ("job.finished", {**FINISHED, "job_key": "x"}, "payload.job_key"),
    ("job.finished", {**FINISHED, "night": "yesterday"}, "payload.night"),
])
def test_event_identifiers_are_checked_as_well(kind, payload, where):
    raw = {"schema_version": 1, "type": kind, "source": "t", "correlation_id": str(uuid4()),
           "payload": payload}
    with pytest.raises(BadMessage, match=f"^invalid {kind} message: {re.escape(where)}"):
        decode(json.dumps(raw).encode())


def test_a_body_above_the_limit_is_refused_unparsed():
    data = body(source="x" * MAX_BODY_BYTES)
    with pytest.raises(BadMessage, match=f"^body of {len(data)} bytes exceeds the limit of "
                       f"{MAX_BODY_BYTES}$"):
        decode(data)


def test_a_work_order_far_larger_than_a_24_ifu_night_needs_fits_the_limit():
    """The 24-IFU night's largest order (twilight, 105 inputs) is 19.5 kB; 500 inputs with
    long keys are still well below the limit."""
    inputs = tuple(InputFile(tag=Tag.MASTER_FLAT, path=f"products/2014-08-01/flat/"
                             f"WFM-NOAO-N_SCI1.0/{KEY}/MASTER_FLAT-{i % 24 + 1:02d}.fits",
                             job_key=KEY) for i in range(500))
    env = Envelope(type="work.bias", source="t", payload=ORDER.model_copy(
        update={"inputs": inputs, "needs": (KEY,) * 500}))
    assert len(env.encode()) < MAX_BODY_BYTES / 5
    assert decode(env.encode()) == env
