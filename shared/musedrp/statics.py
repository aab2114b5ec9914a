"""Choosing static calibrations (ESO's kit) by tag and by date.

Some static files are valid for a period only: the slice geometry and the astrometry were
re-measured after interventions, bad-pixel tables were renewed (MUSE.md §6.1).  The table
below declares those periods by file name; a file that no rule names is valid at any date.
Among the valid files of a tag a dated window covering the night beats a file valid at any
date; among dated ones the later start wins, then the earlier end (a narrower window), then
the name.  Geometry and astrometry must also match the science field mode, INS.OPTI2.NAME
(muse.oca; MUSE.md §8); a file without that keyword serves both.
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


FIELD_TAGS = frozenset({Tag.GEOMETRY_TABLE, Tag.ASTROMETRY_WCS})  # per INS.OPTI2.NAME


def rules_for(frame: Frame) -> list[Validity]:
    return [v for v in VALIDITY if v.tag == frame.tag and fnmatch(frame.name, v.pattern)]


def specificity(rule: Validity | None) -> tuple[bool, date, int]:
    """Sort key, largest most specific: dated over none, later start, then earlier end."""
    if rule is None:
        return False, date.min, 0
    return True, rule.start or date.min, -(rule.end or date.max).toordinal()


def choose_static(candidates: list[Frame], tag: Tag, night: date,
                  field: str = "") -> tuple[Frame | None, str]:
    """The file of ``tag`` valid on ``night`` in field mode ``field`` (the science frames'
    INS.OPTI2.NAME; empty: not checked), and why (or why none)."""
    in_field = f" in field mode {field}" if field and tag in FIELD_TAGS else ""
    valid = []
    for f in (c for c in candidates if c.tag == tag):
        rules = rules_for(f)
        covering = [r for r in rules if r.covers(night)]
        if (covering or not rules) and not (in_field and f.field and f.field != field):
            rule = max(covering, key=specificity, default=None)
            valid.append((specificity(rule), f.name, f, rule))
    if not valid:
        return None, f"no {tag} valid for {night}{in_field}"
    *_, best, rule = max(valid, key=lambda v: v[:2])
    window = (f"valid {rule.start or '...'} to {rule.end or '...'}" if rule
              else "no dated rule names it: valid at any date")
    others = len(valid) - 1
    return best, (f"{tag}: {best.name} ({window}{in_field})"
                  + (f"; {others} other valid file(s) less specific" if others else ""))
