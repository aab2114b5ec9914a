"""Weeks of detector monitoring: one night of biases and lamp flats after another, with
drifts planted on purpose, so that QC trending can be checked against what was planted.

Every night has the same detectors (same seed); only the noise differs, so without a drift
a QC value wanders by its measurement noise alone.  ``history.json`` lists the nights and
the drifts.
"""

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

from musedrp.simulate.night import Instrument, monitoring_schedule, simulate_night


@dataclass(frozen=True)
class Drift:
    """From night ``first`` on, the read noise of ``port`` of ``ifu`` (``what="ron"``) or the
    throughput of the whole IFU (``what="throughput"``) is ``factor`` times nominal."""

    what: Literal["ron", "throughput"]
    ifu: int
    factor: float
    first: date
    port: int = 0


    def explains(self, stage: str, ifu: int, port: int | None, key: str, night: str) -> bool:
        """Whether this drift is the cause of a QC value that moved: from its first night,
        in its IFU, the master bias keys of its port for read noise (and the flats' input
        minima, read-noise extremes of the raw frames), the flat keys for throughput."""
        if ifu != self.ifu or night < self.first.isoformat():
            return False
        if self.what == "throughput":
            return stage == "flat"
        return ((stage == "bias" and port == self.port)
                or re.fullmatch(r"QC FLAT INPUT\d+ MIN", key) is not None)


def instrument_on(night: date, drifts: Sequence[Drift]) -> Instrument:
    """The instrument as the drifts leave it on ``night``."""
    on = [d for d in drifts if d.first <= night]
    return Instrument(ron={(d.ifu, d.port): d.factor for d in on if d.what == "ron"},
                      throughput={d.ifu: d.factor for d in on if d.what == "throughput"})


def simulate_history(out: Path, first: date, nights: int, ifus: Sequence[int],
                     drifts: Sequence[Drift] = (), seed: int = 1, frames: int = 3,
                     workers: int | None = None) -> list[Path]:
    """``nights`` monitoring nights from ``first`` on, each into ``out/<night>/``
    (``frames`` biases and ``frames`` flats per night); returns the night directories."""
    dirs = []
    for i in range(nights):
        night = first + timedelta(days=i)
        d = out / night.isoformat()
        simulate_night(d, ifus, seed, night, workers, exposures=monitoring_schedule(night, frames),
                       instrument=instrument_on(night, drifts), static=False)
        dirs.append(d)
    (out / "history.json").write_text(json.dumps(
        {"first": first.isoformat(), "nights": nights, "ifus": list(ifus), "seed": seed,
         "drifts": [asdict(d) for d in drifts]}, indent=1, default=str))
    return dirs
