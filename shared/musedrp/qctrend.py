"""QC over time: every QC value judged against its own history.

ESO watches MUSE's calibrations against rolling medians per IFU and read-out port, not
fixed limits (MUSE.md §11).  This module is the one rule, used by ``musedrp report``,
``musedrp qc`` and the planner's metrics alike:

- A **series** is one QC key of one product type, IFU and setup (``QC BIAS MASTER3 RON`` of
  the MASTER_BIAS of IFU 7 in WFM-NOAO-N_SCI1.0): the port is in the key.
- Its **baseline** on a night is its last ``WINDOW`` unflagged values of earlier nights.  A
  value is judged once the baseline holds ``MIN_HISTORY`` values; before, it is learning.
- **centre** = median of the baseline; **spread** = the largest of
  (a) 1.4826 x MAD of the baseline (a Gaussian sigma, robust to outliers),
  (b) the same pooled over the key's family: the key with its numbers replaced (the four
      ports, the 48 slices of that product and IFU), each about its own centre, so that a
      series with few or identical values does not get a tiny spread,
  (c) ``REL_FLOOR`` x |centre|: changes below 1 % are never news,
  (d) 1 for counts (a baseline of integers): a count moves by whole units,
  (e) the ``FLOORS`` of keys set by a few integer pixels.
  Keys whose sign is noise (``MAGNITUDE``) are judged by their magnitude.
- A value is **flagged** when |value - centre| > ``K`` x spread.  A flagged value does not
  enter the baseline, so a lasting step stays flagged instead of becoming the new normal
  (until the instrument returns to it).

Values are judged from ``LOOKBACK_DAYS`` before the first night asked for.
"""

import re
import statistics
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from musedrp.registry import Registry

WINDOW = 15  # nights of baseline
MIN_HISTORY = 5  # values needed before a value is judged
K = 6.0  # flag beyond K spreads
REL_FLOOR = 0.01  # spread floor, relative to the centre
# Signed extremes whose sign is noise: the trace's steepest slope in a slice that is nearly
# straight comes out +0.0008 one night and -0.0008 the next.  They are judged (and shown) by
# their magnitude.
MAGNITUDE = re.compile(r"QC TRACE SLICE\d+ MAXSLOPE")
# Keys set by a few pixels of integer frames move in steps of a fraction of an adu (a master
# of 3 biases: 1/3 adu) whatever their history shows: their spread is at least this (in adu).
FLOORS = ((re.compile(r"QC BIAS MASTER\d (MEDIAN|MIN|MAX)"), 0.5),
          (re.compile(r"QC BIAS LEVEL\d STDEV"), 0.5))
MAD_SIGMA = 1.4826  # MAD -> sigma for a Gaussian
LOOKBACK_DAYS = 60  # history read before the first night judged
RULE = {"window_nights": WINDOW, "min_history": MIN_HISTORY, "k": K, "rel_floor": REL_FLOOR,
        "lookback_days": LOOKBACK_DAYS}
PORT = re.compile(r" (?:MASTER|LEVEL)([1-4]) ")  # QC BIAS MASTER3 RON, QC BIAS LEVEL3 MEAN


@dataclass(frozen=True)
class Record:
    """One QC value of one product."""

    night: str
    stage: str
    tag: str
    setup: str
    ifu: int  # 0: a product of all IFUs
    key: str
    value: float

    @property
    def series(self) -> tuple[str, str, str, int, str]:
        return self.stage, self.tag, self.setup, self.ifu, self.key

    @property
    def family(self) -> tuple[str, str, str, int, str]:
        return self.stage, self.tag, self.setup, self.ifu, re.sub(r"\d+", "n", self.key)

    @property
    def port(self) -> int | None:
        return int(m[1]) if (m := PORT.search(self.key)) else None


@dataclass(frozen=True)
class Verdict:
    """A value against its baseline; ``centre`` and ``spread`` are None while learning."""

    record: Record
    n: int  # values in the baseline
    centre: float | None = None
    spread: float | None = None

    @property
    def judged(self) -> bool:
        return self.centre is not None

    @property
    def z(self) -> float | None:
        if self.centre is None or self.spread is None:
            return None
        return (self.record.value - self.centre) / self.spread

    @property
    def band(self) -> tuple[float, float] | None:
        """The values that are not flagged: centre -/+ K spreads."""
        if self.centre is None or self.spread is None:
            return None
        return self.centre - K * self.spread, self.centre + K * self.spread

    @property
    def flagged(self) -> bool:
        return self.z is not None and abs(self.z) > K

    def as_dict(self) -> dict[str, Any]:
        r = self.record
        return {"night": r.night, "stage": r.stage, "product": r.tag, "setup": r.setup,
                "ifu": r.ifu, "port": r.port, "key": r.key, "value": r.value,
                "centre": self.centre, "spread": self.spread, "z": self.z, "n": self.n,
                "flagged": self.flagged}

    def __str__(self) -> str:
        r = self.record
        where = f"IFU {r.ifu:02d}" if r.ifu else "all IFUs"
        return (f"{r.night}  {r.stage:<8} {where:<8} {r.key} = {r.value:.5g}  (median "
                f"{self.centre:.5g}, spread {self.spread:.3g}, {self.z:+.1f} spreads, "
                f"{self.n} nights)")


def records(night: str, stage: str, setup: str, ifu: int | None, tag: str,
            qc: dict[str, Any]) -> Iterator[Record]:
    """The numeric QC values of one product (of ``MAGNITUDE`` keys, the magnitude)."""
    for key, value in qc.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = abs(value) if MAGNITUDE.fullmatch(key) else value
            yield Record(night, stage, str(tag), setup, ifu or 0, key, float(value))


def _mad_sigma(deviations: list[float]) -> float:
    return MAD_SIGMA * statistics.median(abs(d) for d in deviations)


def _spread(key: str, baseline: deque[float], centre: float, family: float) -> float:
    count = 1.0 if all(v.is_integer() for v in baseline) else 0.0
    own = _mad_sigma([v - centre for v in baseline])
    floor = max((f for pattern, f in FLOORS if pattern.fullmatch(key)), default=0.0)
    return max(own, family, REL_FLOOR * abs(centre), count, floor)


def judge(values: Iterable[Record], window: int = WINDOW,
          min_history: int = MIN_HISTORY) -> list[Verdict]:
    """Every value judged against the values of its series on earlier nights, in night
    order (the module's docstring states the rule).  A verdict depends only on the history
    of its product type, setup and IFU, so the planner can judge one product from its own
    history and agree with the report."""
    by_night: dict[str, list[Record]] = defaultdict(list)
    for r in values:
        by_night[r.night].append(r)
    history: dict[tuple, deque[float]] = defaultdict(lambda: deque(maxlen=window))
    members: dict[tuple, set[tuple]] = defaultdict(set)  # family -> its series with values
    verdicts = []
    for night in sorted(by_night):
        today = by_night[night]
        centres = {s: statistics.median(h) for s, h in history.items() if len(h) >= min_history}
        family = {}
        for f in {r.family for r in today}:
            pooled = [v - centres[s] for s in members[f] if s in centres for v in history[s]]
            family[f] = _mad_sigma(pooled) if pooled else 0.0
        judged = [Verdict(r, len(history[r.series])) if r.series not in centres else
                  Verdict(r, len(history[r.series]), centres[r.series],
                          _spread(r.key, history[r.series], centres[r.series],
                                  family[r.family]))
                  for r in today]
        for v in judged:
            if not v.flagged:
                history[v.record.series].append(v.record.value)
                members[v.record.family].add(v.record.series)
        verdicts += judged
    return verdicts


def verdicts(values: Iterable[Record], first: str = "", last: str = "9999") -> list[Verdict]:
    """The verdicts on the nights ``first`` to ``last``, judged from the ``LOOKBACK_DAYS``
    before ``first`` on: how the report, ``musedrp qc`` and the planner's metrics all judge,
    so that they agree."""
    since = (date.fromisoformat(first) - timedelta(days=LOOKBACK_DAYS)).isoformat() \
        if first else ""
    return [v for v in judge(r for r in values if since <= r.night <= last)
            if first <= v.record.night <= last]


def from_registry(registry: "Registry", first: str = "", last: str = "9999",
                  stage: str | None = None, ifu: int | None = None) -> list[Verdict]:
    """The verdicts on the nights ``first`` to ``last`` (of one stage and IFU; 0: the
    products of all IFUs), from the registry."""
    since = (date.fromisoformat(first) - timedelta(days=LOOKBACK_DAYS)).isoformat() \
        if first else None
    rows = registry.qc(stage=stage, ifu=ifu, since=since, until=last)
    return verdicts([r for row in rows for r in records(*row)], first, last)
