"""Classification from headers, with the rules of ESO's muse.oca."""

import hashlib
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from pydantic import TypeAdapter

from musedrp.frames import BLOCK, classify_dir, classify_file, lamp_name, night_of
from musedrp.messages import SetupKey
from musedrp.tags import Tag

from .conftest import ARC

FLAT = {"DPR.TYPE": "FLAT,LAMP", "TPL.ID": "MUSE_wfm_cal_specflat"}


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
                                  "DET.BINY": 4, "TPL.EXPNO": 2, "MJD-OBS": 56871.4,
                                  "INS.TEMP7.VAL": 11.2}, ifus=(1, 2, 13)))
    assert f.setup.readout == "FAST" and f.setup.biny == 4 and f.setup.nominal
    assert f.temperature == 11.2 and (f.field, f.checksum) == ("", "")  # both for statics
    assert f.setup.key == "WFM-NOAO-N_FAST_1x4"
    assert (f.tpl_start, f.tpl_nexp, f.tpl_expno) == ("2014-08-01T18:00:00", 3, 2)
    assert f.ifus == (1, 2, 13)
    assert f.night == "2014-08-01"  # 09:36 UT the next morning still belongs to the night


def test_night_boundary():
    """The night changes at local noon at Paranal, 16:00 UT, not at UT noon."""
    assert night_of(datetime(2014, 8, 2, 15, 45)).isoformat() == "2014-08-01"
    assert night_of(datetime(2014, 8, 2, 16, 15)).isoformat() == "2014-08-02"


def test_a_morning_calibration_ob_stays_with_the_night_before(make_frame):
    """A real daytime OB (MUSE.md §8): bias at 10:40, flats at 12:15, arcs at 12:32 UT."""
    day = 56871.0  # 2014-08-02 00:00 UT
    ob = [({}, 10 + 40 / 60), (FLAT, 12 + 15 / 60), (ARC, 12 + 32 / 60)]
    frames = [classify_file(make_frame({**keys, "MJD-OBS": day + hours / 24}))
              for keys, hours in ob]
    assert [f.tag for f in frames] == [Tag.BIAS, Tag.FLAT, Tag.ARC]
    assert {f.night for f in frames} == {"2014-08-01"}


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
    (tmp_path / "endless.fits").write_bytes(b"SIMPLE  =".ljust(1001 * BLOCK))
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
    assert reasons["endless.fits"] == "no END card in 1000 header blocks"
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


def with_card(path: Path, image: str) -> Path:
    """Put the card ``image`` in place of the first card of the same keyword, byte for byte,
    as a broken writer could have left it (astropy refuses to write such values)."""
    data = bytearray(path.read_bytes())
    key = image.split("=")[0].encode()
    at = next(i for i in range(0, len(data), 80) if data[i : i + len(key)] == key)
    data[at : at + 80] = image.ljust(80).encode()
    path.write_bytes(data)
    return path


LAMP3 = {**ARC, "INS.LAMPNUM": 3}


@pytest.mark.parametrize(("keys", "drop", "image", "reason"), [
    pytest.param({"TPL.NEXP": None}, (), None, "card TPL.NEXP: no value", id="no value"),
    pytest.param({"MJD-OBS": "abc"}, (), None, "card MJD-OBS: 'abc' is not a number",
                 id="MJD-OBS string"),
    pytest.param({}, (), "MJD-OBS =                  NaN", "card MJD-OBS: unparsable value",
                 id="MJD-OBS NaN"),
    pytest.param({}, (), "MJD-OBS =                1E999", "card MJD-OBS: inf is not finite",
                 id="MJD-OBS inf"),
    pytest.param({"MJD-OBS": 1e9}, (), None,
                 "card MJD-OBS: 1000000000.0 is not an MJD from 0 to 100000 (1858 to 2132)",
                 id="MJD-OBS far future"),
    pytest.param({"DET.BINY": "x"}, (), None, "card DET.BINY: 'x' is not a positive integer",
                 id="DET.BINY string"),
    pytest.param({"DET.BINY": 0}, (), None, "card DET.BINY: 0 is not a positive integer",
                 id="DET.BINY zero"),
    pytest.param({"DET.BINX": True}, (), None, "card DET.BINX: True is not a positive integer",
                 id="DET.BINX boolean"),
    pytest.param({}, ("DET.READ.CURID",), None, "no DET.READ.CURID card", id="no CURID"),
    pytest.param({"DET.READ.CURNAME": ""}, (), None, "card DET.READ.CURNAME: '' is empty",
                 id="empty CURNAME"),
    pytest.param({}, ("INS.MODE",), None, "no INS.MODE card", id="no INS.MODE"),
    pytest.param({}, ("INS.OPTI1.NAME",), None, "no INS.OPTI1.NAME card", id="no OPTI1"),
    pytest.param({**LAMP3, "INS.LAMPNUM": 10**9}, (), None,
                 "card INS.LAMPNUM: 1000000000 is not a count from 0 to 99", id="LAMPNUM huge"),
    pytest.param({**LAMP3, "INS.LAMPNUM": "abc"}, (), None,
                 "card INS.LAMPNUM: 'abc' is not a count from 0 to 99", id="LAMPNUM string"),
    pytest.param({**LAMP3, "INS.LAMPNUM": -1}, (), None,
                 "card INS.LAMPNUM: -1 is not a count from 0 to 99", id="LAMPNUM negative"),
    pytest.param({**LAMP3, "INS.SHUT3.ST": 1}, (), None,
                 "card INS.SHUT3.ST: 1 is not a boolean (T or F)", id="shutter not boolean"),
    pytest.param({}, (), "EXTNAME =                   12",
                 "extension 1: card EXTNAME: 12 is not a string", id="EXTNAME number"),
    pytest.param({}, (), "NAXIS1  =                   -4",
                 "card NAXIS1: -4 is not a non-negative integer", id="NAXIS1 negative"),
    pytest.param({"TPL.EXPNO": -1}, (), None, "card TPL.EXPNO: -1 is not a positive integer",
                 id="TPL.EXPNO negative"),
    pytest.param({"INS.TEMP7.VAL": "warm"}, (), None,
                 "card INS.TEMP7.VAL: 'warm' is not a number", id="temperature string"),
    pytest.param({"RA": "17:40:42", "DEC": -53.67}, (), None,
                 "card RA: '17:40:42' is not a number", id="RA sexagesimal"),
    pytest.param({"RA": 400.0, "DEC": -53.67}, (), None,
                 "RA/DEC 400.0, -53.67 are not sky coordinates", id="RA out of range"),
])
def test_hostile_header_is_unclassified_with_a_reason(make_frame, tmp_path, keys, drop, image,
                                                      reason):
    bad = make_frame(keys, drop=drop, name="bad.fits")
    if image:
        with_card(bad, image)
    good = make_frame()
    frames, ignored = classify_dir(tmp_path)
    by_name = {f.name: f for f in frames}
    assert (by_name["bad.fits"].tag, by_name["bad.fits"].reason) == (None, reason)
    assert (by_name[good.name].tag, by_name[good.name].reason) == (Tag.BIAS, "")
    assert len(frames) == 2 and ignored == []


def test_the_pointing_is_read_when_both_cards_are_there(make_frame):
    assert classify_file(make_frame({"RA": 265.1754, "DEC": -53.6743})).pointing == (
        265.1754, -53.6743)
    assert classify_file(make_frame({"RA": 265.1754})).pointing is None  # a lab frame


def test_a_card_without_value_is_written_as_real_files_carry_it(make_frame):
    """The file behind the "no value" case: astropy reads the card back as None, which the
    bare ``int()`` of the old classifier turned into an uncaught TypeError."""
    header = fits.getheader(make_frame({"TPL.NEXP": None}))
    assert header.cards["HIERARCH ESO TPL NEXP"].image.rstrip() == "HIERARCH ESO TPL NEXP ="
    with pytest.raises(TypeError):
        int(header["HIERARCH ESO TPL NEXP"])


def test_static_checksum_is_the_sha256_of_the_whole_file(tmp_path):
    path = tmp_path / "geometry_table_nfm.fits"
    header = fits.Header({"HIERARCH ESO PRO CATG": "GEOMETRY_TABLE",
                          "HIERARCH ESO INS OPTI2 NAME": "NFM"})
    fits.PrimaryHDU(np.arange(100, dtype=np.int16), header=header).writeto(path)
    first = classify_file(path)
    assert (first.tag, first.field, first.reason) == (Tag.GEOMETRY_TABLE, "NFM", "")
    assert first.checksum == hashlib.sha256(path.read_bytes()).hexdigest()

    data = bytearray(path.read_bytes())
    data[-BLOCK + 1] ^= 1  # one byte of the pixel data, in the last block
    path.write_bytes(data)
    second = classify_file(path)
    assert second.checksum == hashlib.sha256(data).hexdigest() != first.checksum


def test_a_static_without_field_mode_serves_both(tmp_path):
    path = tmp_path / "extinct_table.fits"
    fits.PrimaryHDU(header=fits.Header({"HIERARCH ESO PRO CATG": "EXTINCT_TABLE"})).writeto(path)
    assert classify_file(path).field == ""


@pytest.mark.parametrize(("card", "value"), [
    ("INS.MODE", "../../etc"),
    ("INS.MODE", "WFM NOAO N"),
    ("INS.MODE", "W" * 33),
    ("DET.READ.CURNAME", "SCI1.0/.."),
    ("DET.READ.CURNAME", ".hidden"),
    ("INS.OPTI2.NAME", "a..b"),
])
def test_a_setup_card_that_is_no_safe_name_leaves_the_frame_unclassified(make_frame, card,
                                                                          value):
    """The setup label becomes a product directory and an object key: a header must not be
    able to move them (``../../etc``) or break them (blanks)."""
    f = classify_file(make_frame({card: value}))
    assert f.tag is None
    assert f.reason == (f"card {card}: {value!r} is not a name of up to 32 letters, digits "
                        "and _+-, with single dots between them")


def test_the_longest_setup_label_is_a_valid_work_order_setup(make_frame):
    f = classify_file(make_frame({"INS.MODE": "W" * 32, "DET.READ.CURNAME": "S" * 32,
                                  "DET.BINX": 2**31 - 1, "DET.BINY": 2**31 - 1}))
    assert TypeAdapter(SetupKey).validate_python(f.setup.key) == f.setup.key


def test_a_file_whose_path_has_control_characters_is_unclassified(make_frame, tmp_path):
    """A work order refuses such a path, so no job may be planned with it."""
    odd = make_frame().rename(tmp_path / "bias\x1b.fits")
    frames, _ = classify_dir(tmp_path)
    assert [(f.name, f.tag, f.reason) for f in frames] == [
        (odd.name, None, "control characters in the file's path")]
