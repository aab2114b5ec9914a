"""The QC trending rule on synthetic series (the integration test runs it on real recipe QC
of a simulated history; this checks the rule's parts one by one)."""

from datetime import date, timedelta

import numpy as np
import pytest

from musedrp import qctrend
from musedrp.qctrend import Record, judge, records, verdicts

NIGHTS = [(date(2014, 8, 1) + timedelta(days=i)).isoformat() for i in range(30)]


def ron(night: str, ifu: int, port: int, value: float) -> Record:
    return Record(night, "bias", "MASTER_BIAS", "S", ifu, f"QC BIAS MASTER{port} RON", value)


def history(rng, step_from: int | None = None, factor: float = 1.25) -> list[Record]:
    """30 nights of read noise for 3 IFUs x 4 ports, 0.5 % noise; IFU 2 port 3 stepped by
    ``factor`` from night ``step_from`` on."""
    return [ron(n, ifu, port, 2.6 * (1 + 0.005 * rng.standard_normal())
                * (factor if (ifu, port) == (2, 3) and step_from is not None and i >= step_from
                   else 1.0))
            for i, n in enumerate(NIGHTS) for ifu in (1, 2, 3) for port in (1, 2, 3, 4)]


@pytest.mark.parametrize("seed", range(5))
def test_a_step_in_one_port_is_flagged_on_every_night_and_nothing_else(seed):
    judged = judge(history(np.random.default_rng(seed), step_from=20))
    flagged = {(v.record.night, v.record.ifu, v.record.port) for v in judged if v.flagged}
    assert flagged == {(n, 2, 3) for n in NIGHTS[20:]}


def test_nothing_is_judged_before_the_minimum_history():
    judged = judge(history(np.random.default_rng(0)))
    first = {v.record.night for v in judged if v.judged}
    assert min(first) == NIGHTS[qctrend.MIN_HISTORY]
    assert all(v.z is None and v.band is None and not v.flagged for v in judged
               if v.record.night < NIGHTS[qctrend.MIN_HISTORY])


def test_the_baseline_is_the_last_window_of_unflagged_nights():
    values = [ron(n, 1, 1, 2.6 + 0.01 * (i % 3)) for i, n in enumerate(NIGHTS)]
    v = judge(values)[-1]
    assert v.n == qctrend.WINDOW
    assert v.centre == pytest.approx(np.median([r.value for r in values[-1 - qctrend.WINDOW:-1]]))


def test_a_flagged_value_stays_out_of_the_baseline():
    values = [ron(n, 1, 1, 2.6 if i < 10 else 4.0) for i, n in enumerate(NIGHTS)]
    judged = judge(values)
    assert all(v.flagged for v in judged[10:])  # the step never becomes the new normal
    assert judged[-1].centre == 2.6 and judged[-1].n == 10


def test_a_series_of_identical_values_takes_its_familys_spread():
    """IFU 1 port 1 always read 2.600 (MAD 0) while its other ports scatter by 3 %: a 10 %
    change of port 1 is within 6 of the ports' spread, a 30 % one is not."""
    rng = np.random.default_rng(3)
    values = [Record(r.night, r.stage, r.tag, r.setup, r.ifu, r.key,
                     2.6 + 6 * (r.value - 2.6)) for r in history(rng) if (r.ifu, r.port) != (1, 1)]
    values += [ron(n, 1, 1, 2.6) for n in NIGHTS[:10]]
    values += [ron(NIGHTS[10], 1, 1, 2.6 * 1.1), ron(NIGHTS[11], 1, 1, 2.6 * 1.3)]
    mine = {v.record.night: v for v in judge(values) if (v.record.ifu, v.record.port) == (1, 1)}
    assert mine[NIGHTS[10]].spread == pytest.approx(0.03 * 2.6, rel=0.3)
    assert not mine[NIGHTS[10]].flagged and mine[NIGHTS[11]].flagged


def test_counts_levels_and_few_pixel_keys_have_floors():
    def series(key: str, base: float, *later: float) -> list[Record]:
        return [Record(n, "bias", "MASTER_BIAS", "S", 1, key, v)
                for n, v in zip(NIGHTS, [base] * 8 + list(later), strict=False)]

    judged = {(v.record.key, v.record.value): v for v in judge(
        series("QC BIAS MASTER NBADPIX", 0.0, 4.0, 40.0)
        + series("QC BIAS LEVEL1 MEAN", 1000.0, 1050.0, 1070.0)
        + series("QC BIAS MASTER1 MAX", 6.9, 6.57, 10.0))}
    assert not judged[("QC BIAS MASTER NBADPIX", 4.0)].flagged  # 4 counts: within 6 x 1
    assert judged[("QC BIAS MASTER NBADPIX", 40.0)].flagged
    assert not judged[("QC BIAS LEVEL1 MEAN", 1050.0)].flagged  # 5 %: within 6 x 1 %
    assert judged[("QC BIAS LEVEL1 MEAN", 1070.0)].flagged
    assert not judged[("QC BIAS MASTER1 MAX", 6.57)].flagged  # a third of an adu
    assert judged[("QC BIAS MASTER1 MAX", 10.0)].flagged


def test_series_are_apart_per_setup_and_ifu():
    values = [ron(n, 1, 1, 2.6) for n in NIGHTS[:6]]
    other = Record(NIGHTS[6], "bias", "MASTER_BIAS", "FAST", 1, "QC BIAS MASTER1 RON", 9.0)
    (v,) = [v for v in judge([*values, other]) if v.record.setup == "FAST"]
    assert not v.judged


def test_verdicts_read_only_the_lookback_before_the_first_night():
    old = [ron((date(2014, 1, 1) + timedelta(days=i)).isoformat(), 1, 1, 2.6) for i in range(10)]
    new = ron(NIGHTS[0], 1, 1, 5.0)
    (v,) = verdicts([*old, new], NIGHTS[0], NIGHTS[0])  # 2014-01 is beyond the lookback
    assert not v.judged
    (v,) = verdicts([*old, ron("2014-07-01", 1, 1, 2.6), new], NIGHTS[0], NIGHTS[0])
    assert v.n == 1  # July is within it


def test_records_keep_numbers_and_name_the_port():
    rs = list(records("2014-08-01", "bias", "S", 2, "MASTER_BIAS", {
        "QC BIAS MASTER3 RON": 2.7, "QC BIAS LEVEL2 MEAN": 1000, "QC BIAS INPUT3 NSATURATED": 0,
        "QC BIAS MASTER NBADPIX": 5, "QC NAME": "text", "QC FLAG": True,
        "QC TRACE SLICE7 MAXSLOPE": -0.0008}))
    assert {r.key: r.port for r in rs} == {
        "QC BIAS MASTER3 RON": 3, "QC BIAS LEVEL2 MEAN": 2, "QC BIAS INPUT3 NSATURATED": None,
        "QC BIAS MASTER NBADPIX": None, "QC TRACE SLICE7 MAXSLOPE": None}
    assert {r.key: r.value for r in rs}["QC TRACE SLICE7 MAXSLOPE"] == 0.0008  # its magnitude
    assert {(r.tag, r.ifu) for r in rs} == {("MASTER_BIAS", 2)}
