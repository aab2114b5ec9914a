"""Classify raw MUSE frames from their headers alone, with the pipeline's own rules.

The rules are those of ESO's rule file ``muse.oca`` shipped with the pipeline (MUSE.md §3);
every rule is evaluated, so a frame matching two rules is reported, not guessed.  Only
header blocks are read: the primary header, then each extension header found by seeking
over its data, which also tells which IFUs a file holds and whether it is truncated.
"""

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from astropy.io import fits
from pydantic import BaseModel, ConfigDict

from musedrp.tags import STATIC_TAGS, Tag

BLOCK = 2880
MJD_EPOCH = datetime(1858, 11, 17)
FITS_SUFFIXES = (".fits", ".fit", ".fits.fz")


class Setup(BaseModel):
    """What must match between a frame and its calibrations (MUSE.md §4)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ins_mode: str  # WFM-NOAO-N, ...
    nominal: bool  # INS.OPTI1.NAME starts with "Blue" (the rule file's INS.OPTI1.FILTER)
    field: str  # INS.OPTI2.NAME: WFM or NFM
    readout_id: int  # DET.READ.CURID
    readout: str  # DET.READ.CURNAME, e.g. SCI1.0
    binx: int
    biny: int

    @property
    def key(self) -> str:
        """ESO's setup label, e.g. ``WFM-NOAO-N_SCI1.0``, plus binning when not 1x1."""
        label = f"{self.ins_mode}_{self.readout}"
        return label if (self.binx, self.biny) == (1, 1) else f"{label}_{self.binx}x{self.biny}"

    @property
    def readout_label(self) -> str:
        return f"{self.readout} (CURID={self.readout_id}, {self.binx}x{self.biny} binning)"


class Frame(BaseModel):
    """A raw file and everything the planner needs to know about it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    name: str
    size: int
    tag: Tag | None = None
    reason: str = ""  # why the frame could not be classified (tag is None)
    arcfile: str = ""
    dpr: str = ""  # CATG/TYPE/TECH for messages
    setup: Setup | None = None
    tpl_id: str = ""
    tpl_start: str = ""
    tpl_nexp: int = 0
    tpl_expno: int = 0
    mjd: float = 0.0
    night: str = ""
    exptime: float = 0.0
    lamps: tuple[str, ...] = ()
    target: str = ""
    ifus: tuple[int, ...] = ()
    datasums: dict[int, str] = {}  # DATASUM of each IFU extension: content identity, header-only

    @property
    def template(self) -> tuple[str, str, str]:
        """Frames of one template share this key (MUSE.md §5.2: templates are atomic)."""
        return (self.tpl_start, str(self.tag), self.setup.key if self.setup else "")


class FitsLayoutError(ValueError):
    """The file is not a readable FITS file; the message says why."""


def _read_header(f: BinaryIO) -> fits.Header:
    raw = bytearray()
    while True:
        block = f.read(BLOCK)
        if len(block) < BLOCK:
            raise FitsLayoutError(
                "truncated header" if raw or block else "no header where one should start")
        raw += block
        for i in range(0, BLOCK, 80):
            if block[i : i + 8] == b"END     ":
                try:
                    return fits.Header.fromstring(raw.decode("ascii"))
                except (UnicodeDecodeError, ValueError) as err:
                    raise FitsLayoutError(f"unreadable header: {err}") from err


def _data_size(h: fits.Header) -> int:
    naxis = int(h.get("NAXIS", 0))
    if naxis == 0:
        return 0
    n = 1
    for i in range(1, naxis + 1):
        n *= int(h[f"NAXIS{i}"])
    n = abs(int(h["BITPIX"])) // 8 * int(h.get("GCOUNT", 1)) * (int(h.get("PCOUNT", 0)) + n)
    return -(-n // BLOCK) * BLOCK


def scan_headers(f: BinaryIO, size: int) -> tuple[fits.Header, list[fits.Header]]:
    """Primary and extension headers of a seekable stream of ``size`` bytes, reading header
    blocks only.

    Raises
    ------
    FitsLayoutError
        Not FITS, a truncated header, or a file shorter than its headers declare.
    """
    if size == 0:
        raise FitsLayoutError("empty file")
    if f.read(9) != b"SIMPLE  =":
        raise FitsLayoutError("not a FITS file (no SIMPLE card at the start)")
    f.seek(0)
    primary = _read_header(f)
    offset = f.tell() + _data_size(primary)
    extensions = []
    while offset < size:
        f.seek(offset)
        ext = _read_header(f)
        extensions.append(ext)
        offset = f.tell() + _data_size(ext)
    if offset > size:
        raise FitsLayoutError(f"truncated: headers declare {offset} bytes, the file has {size}")
    return primary, extensions


def decode_lamps(h: fits.Header) -> tuple[str, ...]:
    """Lamps that are on: both ``INS.LAMPn.ST`` and ``INS.SHUTn.ST`` must be T (MUSE.md §3.2)."""
    names = []
    for n in range(1, int(h.get("HIERARCH ESO INS LAMPNUM", 0)) + 1):
        if h.get(f"HIERARCH ESO INS LAMP{n} ST") is True and \
                h.get(f"HIERARCH ESO INS SHUT{n} ST") is True:
            names.append(lamp_name(str(h.get(f"HIERARCH ESO INS LAMP{n} NAME", ""))))
    return tuple(names)


def lamp_name(raw: str) -> str:
    """The pipeline's lamp naming: strip ``CU-LAMP-``; CU-LAMP3/6 are Ne, 4 Xe, 5 HgCd."""
    if raw.startswith("CU-LAMP-"):
        return raw.removeprefix("CU-LAMP-")
    return {"CU-LAMP3": "Ne", "CU-LAMP6": "Ne", "CU-LAMP4": "Xe", "CU-LAMP5": "HgCd"}.get(raw, raw)


@dataclass(frozen=True)
class Rule:
    """One classification rule of muse.oca."""

    tag: Tag
    catg: tuple[str, ...]
    type_test: Callable[[str], bool]
    tpl: str = ""  # unanchored regular expression on TPL.ID, as in the rule file


def _is(value: str) -> Callable[[str], bool]:
    return lambda t: t == value


def _has(*words: str) -> Callable[[str], bool]:
    return lambda t: all(w in t for w in words)


RULES = (
    Rule(Tag.BIAS, ("CALIB",), _is("BIAS")),
    Rule(Tag.DARK, ("CALIB",), _is("DARK")),
    Rule(Tag.FLAT, ("CALIB",), _has("FLAT", "LAMP"), r"MUSE_[wn]fm_cal_specflat"),
    # the rule file lists only *_cal_illum; the library also treats the attached flats of
    # *_cal_specflatatt as illumination flats, which the FLAT rule would claim as well
    Rule(Tag.ILLUM, ("CALIB",), _has("FLAT", "LAMP", "ILLUM"),
         r"MUSE_[wn]fm_cal_(illum|specflatatt)"),
    Rule(Tag.SKYFLAT, ("CALIB",), _has("FLAT", "SKY")),
    Rule(Tag.MASK, ("CALIB",), _has("WAVE", "MASK")),
    Rule(Tag.ARC_LSF, ("CALIB",), _has("WAVE", "LSF")),
    Rule(Tag.ARC, ("CALIB",), _is("WAVE")),
    Rule(Tag.SKY, ("CALIB", "SCIENCE"), _is("SKY")),
    Rule(Tag.STD, ("CALIB",), _is("STD")),
    Rule(Tag.ASTROMETRY, ("CALIB",), _is("ASTROMETRY")),
    Rule(Tag.OBJECT, ("SCIENCE",), _is("OBJECT")),
)
IGNORED_CATG = {"ACQUISITION", "TEST", "TECHNICAL"}


def match_rules(catg: str, dpr_type: str, tech: str, tpl_id: str) -> list[Tag]:
    """Every tag whose rule the frame satisfies."""
    if tech != "IFU":
        return []
    tags = [r.tag for r in RULES
            if catg in r.catg and r.type_test(dpr_type) and re.search(r.tpl, tpl_id)]
    if set(tags) == {Tag.FLAT, Tag.ILLUM} and "ILLUM" in dpr_type:
        return [Tag.ILLUM]  # attached illumination flat (see the ILLUM rule)
    return tags


def night_of(t: datetime) -> date:
    """ESO's night: the date of the evening it started (UT minus 12 h; Paranal is UT-4)."""
    return (t - timedelta(hours=12)).date()


def mjd_to_datetime(mjd: float) -> datetime:
    return MJD_EPOCH + timedelta(days=mjd)


def classify_header(h: fits.Header, extensions: Iterable[fits.Header] = ()) -> dict:
    """Frame fields from a primary header; raises ``ValueError`` with the reason if unusable."""
    eso = "HIERARCH ESO "
    if (pro_catg := h.get(eso + "PRO CATG")) is not None:
        return _static(str(pro_catg), h, list(extensions))
    if h.get("INSTRUME") != "MUSE":
        raise ValueError(f"not a MUSE frame (INSTRUME={h.get('INSTRUME')!r})")
    catg = str(h.get(eso + "DPR CATG", ""))
    dpr_type = str(h.get(eso + "DPR TYPE", ""))
    tech = str(h.get(eso + "DPR TECH", ""))
    tpl_id = str(h.get(eso + "TPL ID", ""))
    dpr = f"{catg}/{dpr_type}/{tech}"
    if catg in IGNORED_CATG:
        raise ValueError(f"{catg} frames are not reduced (DPR {dpr})")
    tags = match_rules(catg, dpr_type, tech, tpl_id)
    if not tags:
        raise ValueError(f"no classification rule matches DPR {dpr} with TPL.ID {tpl_id!r}")
    if len(tags) > 1:
        raise ValueError(f"ambiguous: DPR {dpr} with TPL.ID {tpl_id!r} matches "
                         + " and ".join(tags))
    if "MJD-OBS" not in h:
        raise ValueError("no MJD-OBS: cannot place the frame in time")
    mjd = float(h["MJD-OBS"])
    chans = {int(m.group(1)): str(e.get("DATASUM", "")) for e in extensions
             if (m := re.fullmatch(r"CHAN(\d\d)", str(e.get("EXTNAME", ""))))}
    opti1 = str(h.get(eso + "INS OPTI1 NAME", ""))
    setup = Setup(
        ins_mode=str(h.get(eso + "INS MODE", "")),
        nominal=opti1.startswith("Blue"),
        field=str(h.get(eso + "INS OPTI2 NAME", "")),
        readout_id=int(h.get(eso + "DET READ CURID", 0)),
        readout=str(h.get(eso + "DET READ CURNAME", "")),
        binx=int(h.get(eso + "DET BINX", 1)),
        biny=int(h.get(eso + "DET BINY", 1)),
    )
    return dict(
        tag=tags[0], arcfile=str(h.get("ARCFILE", "")), dpr=dpr, setup=setup, tpl_id=tpl_id,
        tpl_start=str(h.get(eso + "TPL START", "")), tpl_nexp=int(h.get(eso + "TPL NEXP", 0)),
        tpl_expno=int(h.get(eso + "TPL EXPNO", 0)), mjd=mjd,
        night=night_of(mjd_to_datetime(mjd)).isoformat(), exptime=float(h.get("EXPTIME", 0.0)),
        lamps=decode_lamps(h), target=str(h.get(eso + "OBS TARG NAME", "")),
        ifus=tuple(sorted(chans)), datasums=chans,
    )


def _static(catg: str, h: fits.Header, extensions: list[fits.Header]) -> dict:
    """A static calibration of ESO's kit (or a stand-in), recognised by PRO.CATG as the
    rule file does; other pipeline products are not inputs."""
    if catg not in {str(t) for t in STATIC_TAGS}:
        raise ValueError(f"a pipeline product (PRO.CATG={catg}), not a raw frame or a "
                         "static calibration")
    datasum = next((str(e["DATASUM"]) for e in [h, *extensions]
                    if str(e.get("DATASUM", "0")) != "0"), "")
    mjd = float(h.get("MJD-OBS", 0.0))
    return dict(tag=Tag(catg), arcfile=str(h.get("ARCFILE", "")), mjd=mjd,
                night=night_of(mjd_to_datetime(mjd)).isoformat() if mjd else "",
                datasums={0: datasum} if datasum else {})


def classify(f: BinaryIO, size: int, path: str, name: str) -> Frame:
    """Classify one frame from a seekable stream; never raises for bad data, the reason goes
    into the Frame."""
    base = dict(path=path, name=name, size=size)
    try:
        primary, extensions = scan_headers(f, size)
        fields = classify_header(primary, extensions)
    except (FitsLayoutError, ValueError, KeyError, OSError) as err:
        return Frame(**base, reason=str(err))
    if not fields.get("ifus") and fields["tag"] not in STATIC_TAGS:
        return Frame(**base, reason="no CHANnn image extension: no IFU data in the file")
    return Frame(**base, **fields)


def classify_file(path: Path) -> Frame:
    try:
        with path.open("rb") as f:
            return classify(f, path.stat().st_size, str(path), path.name)
    except OSError as err:
        return Frame(path=str(path), name=path.name, size=0, reason=str(err))


def classify_dir(raw_dir: Path) -> tuple[list[Frame], list[tuple[str, str]]]:
    """Classify every FITS file below ``raw_dir``; other files are listed as ignored."""
    frames, ignored = [], []
    for path in sorted(p for p in raw_dir.rglob("*") if p.is_file()):
        if path.name.lower().endswith(FITS_SUFFIXES):
            frames.append(classify_file(path))
        else:
            ignored.append((str(path), "not a FITS file name (.fits, .fit, .fits.fz)"))
    return frames, ignored
