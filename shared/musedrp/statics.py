"""Choosing static calibrations (ESO's kit) by tag and by date.

Some static files are valid for a period only: the slice geometry and the astrometry were
re-measured after interventions, bad-pixel tables were renewed (MUSE.md §6.1).  The table
below declares those periods by file name; a file that no rule names is valid at any date.
Among the valid files of a tag the most specific (latest start) wins, then the name.
"""

from dataclasses import dataclass
from datetime import date
from fnmatch import fnmatch

from musedrp.frames import Frame
from musedrp.tags import Tag


@dataclass(frozen=True)
class Validity:
    tag: Tag
    pattern: str  # file name, shell-style
    start: date | None
    end: date | None  # exclusive

    def covers(self, night: date) -> bool:
        return ((self.start is None or night >= self.start)
                and (self.end is None or night < self.end))


VIGNETTING_UNTIL = date(2017, 3, 11)  # the rule file: a mask only for MJD-OBS < 57823

# Windows used by public MUSE reduction scripts (file names as in ESO's kit; unverified).
VALIDITY = (
    Validity(Tag.GEOMETRY_TABLE, "geometry_table_wfm_comm2b*", None, date(2014, 12, 1)),
    Validity(Tag.GEOMETRY_TABLE, "geometry_table_wfm_2014-12-01*", date(2014, 12, 1),
             date(2015, 4, 16)),
    Validity(Tag.GEOMETRY_TABLE, "geometry_table_wfm_2015-04-16*", date(2015, 4, 16),
             date(2015, 9, 8)),
    Validity(Tag.ASTROMETRY_WCS, "astrometry_wcs_wfm_comm2b*", None, date(2014, 12, 1)),
    Validity(Tag.BADPIX_TABLE, "badpix_table_2014-09-17*", date(2014, 9, 17), date(2015, 5, 11)),
    Validity(Tag.BADPIX_TABLE, "badpix_table_2015-05-11*", date(2015, 5, 11), None),
    Validity(Tag.VIGNETTING_MASK, "*", None, VIGNETTING_UNTIL),
)


def rules_for(frame: Frame) -> list[Validity]:
    return [v for v in VALIDITY if v.tag == frame.tag and fnmatch(frame.name, v.pattern)]


def choose_static(candidates: list[Frame], tag: Tag, night: date) -> tuple[Frame | None, str]:
    """The file of ``tag`` valid on ``night``, and why (or why none)."""
    valid = []
    for f in (c for c in candidates if c.tag == tag):
        rules = rules_for(f)
        if not rules or any(r.covers(night) for r in rules):
            start = max((r.start for r in rules if r.start and r.covers(night)), default=None)
            valid.append((start or date.min, f.name, f, rules))
    if not valid:
        return None, f"no {tag} valid for {night}"
    _, _, best, rules = max(valid, key=lambda v: (v[0], v[1]))
    window = (f"valid {rules[0].start or '...'} to {rules[0].end or '...'}" if rules
              else "no dated rule names it: valid at any date")
    others = len(valid) - 1
    return best, (f"{tag}: {best.name} ({window})"
                  + (f"; {others} other valid file(s) less specific" if others else ""))
