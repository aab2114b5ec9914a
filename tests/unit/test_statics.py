"""Static calibrations chosen by tag, date validity and field mode."""

from datetime import date

from musedrp.frames import Frame
from musedrp.statics import Validity, choose_static, specificity
from musedrp.tags import Tag


def frame(name: str, tag: Tag = Tag.GEOMETRY_TABLE, field: str = "") -> Frame:
    return Frame(path=f"/static/{name}", name=name, size=1, tag=tag, field=field)


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


def test_a_window_ending_after_the_night_beats_an_undated_file_whatever_the_names():
    files = [frame("geometry_table_wfm_zzz.fits"), frame("geometry_table_wfm_comm2b.fits")]
    best, why = choose_static(files, Tag.GEOMETRY_TABLE, date(2014, 8, 1))
    assert best.name == "geometry_table_wfm_comm2b.fits"
    assert "valid ... to 2014-12-01" in why and "1 other valid file(s)" in why


def test_specificity_dated_then_later_start_then_earlier_end():
    g = Tag.GEOMETRY_TABLE
    ranked = sorted([Validity(g, "a", date(2014, 1, 1), None), None,
                     Validity(g, "b", None, date(2015, 1, 1)),
                     Validity(g, "c", date(2014, 1, 1), date(2015, 1, 1)),
                     Validity(g, "d", None, None)], key=specificity, reverse=True)
    assert [r.pattern if r else None for r in ranked] == ["c", "a", "b", "d", None]


def test_geometry_and_astrometry_match_the_field_mode():
    files = [frame("geometry_table_wfm_comm2b.fits", field="WFM"),
             frame("geometry_table_nfm.fits", field="NFM")]
    night = date(2014, 8, 1)
    assert choose_static(files, Tag.GEOMETRY_TABLE, night, "WFM")[0] is files[0]
    assert choose_static(files, Tag.GEOMETRY_TABLE, night)[0] is files[0]  # mode not checked
    best, why = choose_static(files, Tag.GEOMETRY_TABLE, night, "NFM")
    assert best is files[1] and "in field mode NFM" in why
    assert choose_static(files[:1], Tag.GEOMETRY_TABLE, night, "NFM") == (
        None, "no GEOMETRY_TABLE valid for 2014-08-01 in field mode NFM")
    generic = frame("astrometry_wcs.fits", Tag.ASTROMETRY_WCS)  # no INS.OPTI2.NAME: both modes
    wcs = [generic, frame("astrometry_wcs_wfm.fits", Tag.ASTROMETRY_WCS, "WFM")]
    assert choose_static(wcs, Tag.ASTROMETRY_WCS, night, "NFM")[0] is generic
    lines = frame("line_catalog.fits", Tag.LINE_CATALOG, "WFM")  # other tags: field not checked
    assert choose_static([lines], Tag.LINE_CATALOG, night, "NFM")[0] is lines


def test_vignetting_mask_only_before_march_2017():
    files = [frame("vignetting_mask.fits", Tag.VIGNETTING_MASK)]
    assert choose_static(files, Tag.VIGNETTING_MASK, date(2017, 3, 10))[0] is not None
    best, why = choose_static(files, Tag.VIGNETTING_MASK, date(2017, 3, 11))
    assert best is None and "no VIGNETTING_MASK valid for 2017-03-11" == why


def test_other_tags_are_ignored():
    assert choose_static([frame("x.fits", Tag.EXTINCT_TABLE)], Tag.GEOMETRY_TABLE,
                         date(2014, 8, 1))[0] is None
