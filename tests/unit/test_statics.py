"""Static calibrations chosen by tag and date validity."""

from datetime import date

from musedrp.frames import Frame
from musedrp.statics import choose_static
from musedrp.tags import Tag


def frame(name: str, tag: Tag = Tag.GEOMETRY_TABLE) -> Frame:
    return Frame(path=f"/static/{name}", name=name, size=1, tag=tag)


def test_dated_geometry_table_wins_inside_its_window():
    files = [frame("geometry_table_wfm.fits"), frame("geometry_table_wfm_comm2b.fits"),
             frame("geometry_table_wfm_2014-12-01.fits")]
    best, why = choose_static(files, Tag.GEOMETRY_TABLE, date(2014, 8, 1))
    assert best.name == "geometry_table_wfm_comm2b.fits"
    assert "valid ... to 2014-12-01" in why
    best, _ = choose_static(files, Tag.GEOMETRY_TABLE, date(2015, 1, 10))
    assert best.name == "geometry_table_wfm_2014-12-01.fits"
    best, why = choose_static(files, Tag.GEOMETRY_TABLE, date(2019, 1, 1))
    assert best.name == "geometry_table_wfm.fits" and "valid at any date" in why


def test_vignetting_mask_only_before_march_2017():
    files = [frame("vignetting_mask.fits", Tag.VIGNETTING_MASK)]
    assert choose_static(files, Tag.VIGNETTING_MASK, date(2017, 3, 10))[0] is not None
    best, why = choose_static(files, Tag.VIGNETTING_MASK, date(2017, 3, 11))
    assert best is None and "no VIGNETTING_MASK valid for 2017-03-11" == why


def test_other_tags_are_ignored():
    assert choose_static([frame("x.fits", Tag.EXTINCT_TABLE)], Tag.GEOMETRY_TABLE,
                         date(2014, 8, 1))[0] is None
