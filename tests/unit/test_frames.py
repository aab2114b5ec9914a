"""Classification from headers, with the rules of ESO's muse.oca."""

import pytest

from musedrp.frames import classify_dir, classify_file, lamp_name, mjd_to_datetime, night_of
from musedrp.tags import Tag


@pytest.mark.parametrize(("catg", "dpr_type", "tpl", "tag"), [
    ("CALIB", "BIAS", "MUSE_wfm_cal_bias", Tag.BIAS),
    ("CALIB", "DARK", "MUSE_wfm_cal_dark", Tag.DARK),
    ("CALIB", "FLAT,LAMP", "MUSE_wfm_cal_specflat", Tag.FLAT),
    ("CALIB", "FLAT,LAMP", "MUSE_nfm_cal_specflat", Tag.FLAT),
    # FLAT vs ILLUM: the same DPR.TYPE, told apart by the template only
    ("CALIB", "FLAT,LAMP,ILLUM", "MUSE_wfm_cal_illum", Tag.ILLUM),
    ("CALIB", "FLAT,LAMP,ILLUM", "MUSE_wfm_cal_specflat", Tag.FLAT),
    ("CALIB", "FLAT,LAMP,ILLUM", "MUSE_wfm_cal_specflatatt", Tag.ILLUM),
    ("CALIB", "FLAT,SKY", "MUSE_wfm_cal_skyflat", Tag.SKYFLAT),
    ("CALIB", "WAVE", "MUSE_wfm_cal_arc", Tag.ARC),
    ("CALIB", "WAVE,LSF", "MUSE_wfm_cal_arc", Tag.ARC_LSF),
    ("CALIB", "WAVE,MASK", "MUSE_wfm_cal_geometry", Tag.MASK),
    ("CALIB", "STD", "MUSE_wfm_cal_specphot", Tag.STD),
    ("CALIB", "ASTROMETRY", "MUSE_wfm_cal_astrom", Tag.ASTROMETRY),
    ("CALIB", "SKY", "MUSE_wfm_obs_sky", Tag.SKY),
    ("SCIENCE", "SKY", "MUSE_wfm_obs_sky", Tag.SKY),
    ("SCIENCE", "OBJECT", "MUSE_wfm_obs_genericoffset", Tag.OBJECT),
])
def test_classification_table(make_frame, catg, dpr_type, tpl, tag):
    f = classify_file(make_frame({"DPR.CATG": catg, "DPR.TYPE": dpr_type, "TPL.ID": tpl}))
    assert f.reason == ""
    assert f.tag == tag


def test_flat_lamp_outside_a_flat_template_is_not_a_flat(make_frame):
    f = classify_file(make_frame({"DPR.TYPE": "FLAT,LAMP", "TPL.ID": "MUSE_wfm_cal_arc"}))
    assert f.tag is None
    assert "no classification rule" in f.reason


def test_bias_needs_dpr_tech_ifu(make_frame):
    assert classify_file(make_frame()).tag == Tag.BIAS
    f = classify_file(make_frame({"DPR.TECH": "IMAGE"}))
    assert f.tag is None and "DPR CALIB/BIAS/IMAGE" in f.reason


def test_setup_template_and_night(make_frame):
    f = classify_file(make_frame({"DET.READ.CURID": 2, "DET.READ.CURNAME": "FAST",
                                  "DET.BINY": 4, "TPL.EXPNO": 2, "MJD-OBS": 56871.4},
                                 ifus=(1, 2, 13)))
    assert f.setup.readout == "FAST" and f.setup.biny == 4 and f.setup.nominal
    assert f.setup.key == "WFM-NOAO-N_FAST_1x4"
    assert (f.tpl_start, f.tpl_nexp, f.tpl_expno) == ("2014-08-01T18:00:00", 3, 2)
    assert f.ifus == (1, 2, 13)
    assert f.night == "2014-08-01"  # 09:36 UT the next morning still belongs to the night


def test_night_boundary():
    assert night_of(mjd_to_datetime(56871.49)).isoformat() == "2014-08-01"  # 11:45 UT
    assert night_of(mjd_to_datetime(56871.51)).isoformat() == "2014-08-02"  # 12:14 UT


@pytest.mark.parametrize(("lamp_st", "shut_st", "expected"), [
    (True, True, ("Ne",)),
    (True, False, ()),  # lamp on behind a closed shutter does not count
    (False, True, ()),
])
def test_lamp_needs_lamp_and_shutter(make_frame, lamp_st, shut_st, expected):
    keys = {"DPR.TYPE": "WAVE", "TPL.ID": "MUSE_wfm_cal_arc", "INS.LAMPNUM": 6}
    for n in range(1, 7):
        keys |= {f"INS.LAMP{n}.NAME": f"CU-LAMP{n}", f"INS.LAMP{n}.ST": False,
                 f"INS.SHUT{n}.ST": False}
    keys |= {"INS.LAMP3.ST": lamp_st, "INS.SHUT3.ST": shut_st}
    assert classify_file(make_frame(keys)).lamps == expected


@pytest.mark.parametrize(("raw", "name"), [
    ("CU-LAMP3", "Ne"), ("CU-LAMP6", "Ne"), ("CU-LAMP4", "Xe"), ("CU-LAMP5", "HgCd"),
    ("CU-LAMP-HgCd", "HgCd"), ("CU-LAMP1", "CU-LAMP1"),
])
def test_lamp_names(raw, name):
    assert lamp_name(raw) == name


def test_unclassifiable_files_are_listed_with_a_reason(make_frame, tmp_path):
    good = make_frame()
    not_muse = make_frame({"INSTRUME": "FORS2"})
    acquisition = make_frame({"DPR.CATG": "ACQUISITION", "DPR.TYPE": "OBJECT"})
    unknown = make_frame({"DPR.TYPE": "LAMP,FOO"})
    no_time = make_frame(drop=("MJD-OBS",))
    no_ifu = make_frame(ifus=())
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(good.read_bytes()[:-2000])
    cut_header = tmp_path / "cut_header.fits"
    cut_header.write_bytes(good.read_bytes()[:1000])
    (tmp_path / "empty.fits").write_bytes(b"")
    (tmp_path / "text.fits").write_text("hello\n")
    (tmp_path / "notes.txt").write_text("not data\n")

    frames, ignored = classify_dir(tmp_path)
    reasons = {f.name: f.reason for f in frames}
    assert reasons[good.name] == ""
    assert "not a MUSE frame" in reasons[not_muse.name]
    assert "ACQUISITION frames are not reduced" in reasons[acquisition.name]
    assert "no classification rule" in reasons[unknown.name]
    assert "MJD-OBS" in reasons[no_time.name]
    assert "no CHANnn" in reasons[no_ifu.name]
    assert reasons["truncated.fits"].startswith("truncated")
    assert reasons["cut_header.fits"] == "truncated header"
    assert "empty file" in reasons["empty.fits"]
    assert "not a FITS file" in reasons["text.fits"]
    assert ignored == [(str(tmp_path / "notes.txt"),
                        "not a FITS file name (.fits, .fit, .fits.fz)")]
    assert all(f.tag is None for f in frames if f.name != good.name)


def test_classification_reads_headers_only(make_frame, monkeypatch):
    """The pixel data is never read: astropy's data loading must not be touched."""
    from astropy.io.fits import hdu
    path = make_frame(ifus=(1, 2, 3))

    def boom(*a, **k):
        raise AssertionError("pixel data read")

    monkeypatch.setattr(hdu.image._ImageBaseHDU, "data", property(boom))
    assert classify_file(path).ifus == (1, 2, 3)
