"""Classify raw MUSE frames from their headers alone, with the pipeline's own rules.

The rules are those of ESO's rule file ``muse.oca`` shipped with the pipeline (MUSE.md §3);
every rule is evaluated, so a frame matching two rules is reported, not guessed.  Only
header blocks are read: the primary header, then each extension header found by seeking
over its data, which also tells which IFUs a file holds and whether it is truncated.
Static calibrations alone are read whole, for the checksum that identifies them.  Every card
is read through ``_card``, so a malformed header gives a reason naming the card, never an
exception.
"""

import hashlib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from astropy.io import fits
from astropy.io.fits.verify import VerifyError
from astropy.utils.exceptions import AstropyWarning
from pydantic import BaseModel, ConfigDict

from musedrp.messages import SAFE_NAME
from musedrp.storage import CONTROL
from musedrp.tags import STATIC_TAGS, Tag

BLOCK = 2880
MJD_EPOCH = datetime(1858, 11, 17)
FITS_SUFFIXES = (".fits", ".fit", ".fits.fz")
CHUNK = 8 * 2**20  # bytes per read when hashing a whole file (one ranged GET in ingest)
MAX_HEADER_BLOCKS = 1000  # a MUSE primary header has about 20; beyond this, not a header
MAX_LAMPS = 99  # INS.LAMPNUM beyond this is a broken header, not an instrument
MAX_SETUP_NAME = 32  # INS.MODE, DET.READ.CURNAME: Setup.key, two and the binning, fits a SetupKey


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
    # where each IFU's HDU (header, data, heap) starts and how long it is, and how long the
    # primary HDU is: what a per-IFU job fetches by ranged GETs instead of the whole file
    extents: dict[int, tuple[int, int]] = {}
    primary_size: int = 0
    temperature: float | None = None  # INS.TEMP7.VAL, deg C: musered's ILLUM choice uses it
    # RA, DEC (deg) where the telescope pointed, offsets included: which exposures overlap
    pointing: tuple[float, float] | None = None
    field: str = ""  # static calibrations: the INS.OPTI2.NAME they serve, "" for both WFM and NFM
    checksum: str = ""  # static calibrations: SHA-256 of the whole file, their identity in job keys

    @property
    def template(self) -> tuple[str, str, str]:
        """Frames of one template share this key (MUSE.md §5.2: templates are atomic)."""
        return (self.tpl_start, str(self.tag), self.setup.key if self.setup else "")


class FitsLayoutError(ValueError):
    """The file is not a readable FITS file; the message says why."""


T = TypeVar("T")
REQUIRED: Any = object()  # _card's default: a missing card is an error


def _card(h: fits.Header, key: str, kind: Callable[[Any], T], default: Any = REQUIRED) -> T:
    """Card ``key`` (ESO's dotted form, ``DET.BINX``, or a plain FITS key) read as ``kind``.

    A missing card gives ``default``. A card without value, with an unparsable value or
    with a value ``kind`` rejects is always an error.

    Raises
    ------
    ValueError
        Naming the card and its value: ``card DET.BINY: 0 is not a positive integer``.
    """
    name = "HIERARCH ESO " + key.replace(".", " ") if "." in key else key
    if name not in h:
        if default is REQUIRED:
            raise ValueError(f"no {key} card")
        return default
    try:
        value = h[name]
    except VerifyError as err:
        raise ValueError(f"card {key}: unparsable value") from err
    if value is None or isinstance(value, fits.card.Undefined):
        raise ValueError(f"card {key}: no value")
    try:
        return kind(value)
    except ValueError as err:
        raise ValueError(f"card {key}: {value!r} {err}") from err


# Kinds for _card: each returns the typed value or raises ValueError saying what it is not.
def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("is not a string")
    return value.strip()  # real headers pad some values: 'SCI1.0  '


def _name(value: Any) -> str:
    """Non-empty text: an empty read-out or instrument card would make a new, empty setup."""
    if not (text := _text(value)):
        raise ValueError("is empty")
    return text


def _token(value: Any) -> str:
    """A name that goes into the setup label, and so into product directories and object
    keys: ``../x`` or a blank would move them elsewhere."""
    if len(text := _name(value)) > MAX_SETUP_NAME or not re.fullmatch(SAFE_NAME, text):
        raise ValueError(f"is not a name of up to {MAX_SETUP_NAME} letters, digits and _+-, "
                         "with single dots between them")
    return text


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("is not a boolean (T or F)")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("is not a number")
    try:
        number = float(value)
    except OverflowError as err:
        raise ValueError("is out of range") from err
    if not math.isfinite(number):
        raise ValueError("is not finite")
    return number


def _mjd(value: Any) -> float:
    if not 0 <= (mjd := _number(value)) < 100_000:
        raise ValueError("is not an MJD from 0 to 100000 (1858 to 2132)")
    return mjd


def _int_in(low: int, high: int, what: str) -> Callable[[Any], int]:
    """A kind for integers from ``low`` to ``high``; booleans are not integers here."""
    def kind(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"is not {what}")
        return value
    return kind


_integer = _int_in(-(2**31), 2**31 - 1, "a 32-bit integer")
_positive = _int_in(1, 2**31 - 1, "a positive integer")
_count = _int_in(0, 2**63 - 1, "a non-negative integer")


def _read_header(f: BinaryIO) -> fits.Header:
    raw = bytearray()
    while True:
        block = f.read(BLOCK)
        if len(block) < BLOCK:
            raise FitsLayoutError(
                "truncated header" if raw or block else "no header where one should start")
        raw += block
        if len(raw) > MAX_HEADER_BLOCKS * BLOCK:
            raise FitsLayoutError(f"no END card in {MAX_HEADER_BLOCKS} header blocks")
        for i in range(0, BLOCK, 80):
            if block[i : i + 8] == b"END     ":
                try:
                    return fits.Header.fromstring(raw.decode("ascii"))
                except (UnicodeDecodeError, ValueError, VerifyError, AstropyWarning) as err:
                    raise FitsLayoutError(f"unreadable header: {err}") from err


def data_size(h: fits.Header) -> int:
    naxis = _card(h, "NAXIS", _int_in(0, 999, "an axis count from 0 to 999"), 0)
    if naxis == 0:
        return 0
    n = 1
    for i in range(1, naxis + 1):
        n *= _card(h, f"NAXIS{i}", _count)
    n = abs(_card(h, "BITPIX", _integer)) // 8 * _card(h, "GCOUNT", _count, 1) * (
        _card(h, "PCOUNT", _count, 0) + n)
    return -(-n // BLOCK) * BLOCK  # never negative: the scan always moves forward


def scan_layout(f: BinaryIO, size: int) -> list[tuple[fits.Header, tuple[int, int]]]:
    """Every HDU's header with its extent (offset and length of header, data and heap) in a
    seekable stream of ``size`` bytes, reading header blocks only.

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
    hdus, offset = [], 0
    while offset < size:
        f.seek(offset)
        header = _read_header(f)
        end = f.tell() + data_size(header)
        hdus.append((header, (offset, end - offset)))
        offset = end
    if offset > size:
        raise FitsLayoutError(f"truncated: headers declare {offset} bytes, the file has {size}")
    return hdus


def decode_lamps(h: fits.Header) -> tuple[str, ...]:
    """Lamps that are on: both ``INS.LAMPn.ST`` and ``INS.SHUTn.ST`` must be T (MUSE.md §3.2).

    Raises
    ------
    ValueError
        A lamp card is malformed, or INS.LAMPNUM is not a count from 0 to ``MAX_LAMPS``.
    """
    lampnum = _card(h, "INS.LAMPNUM", _int_in(0, MAX_LAMPS, f"a count from 0 to {MAX_LAMPS}"), 0)
    return tuple(lamp_name(_card(h, f"INS.LAMP{n}.NAME", _text, ""))
                 for n in range(1, lampnum + 1)
                 if _card(h, f"INS.LAMP{n}.ST", _flag, False)
                 and _card(h, f"INS.SHUT{n}.ST", _flag, False))


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
    """ESO's night changes at local noon at Paranal: 16:00 UT (Chilean standard time, UT-4)."""
    return (t - timedelta(hours=16)).date()


def mjd_to_datetime(mjd: float) -> datetime:
    return MJD_EPOCH + timedelta(days=mjd)


def datetime_to_mjd(t: datetime) -> float:
    """``t`` (UTC; naive or aware) as an MJD."""
    return (t.replace(tzinfo=None) - MJD_EPOCH).total_seconds() / 86400


def _night(mjd: float) -> str:
    return night_of(mjd_to_datetime(mjd)).isoformat()


def classify_header(h: fits.Header, extensions: Iterable[fits.Header] = ()) -> dict:
    """Frame fields from a primary header; raises ``ValueError`` with the reason if unusable."""
    if (pro_catg := _card(h, "PRO.CATG", _text, None)) is not None:
        return _static(pro_catg, h, list(extensions))
    if (instrument := _card(h, "INSTRUME", _text, "")) != "MUSE":
        raise ValueError(f"not a MUSE frame (INSTRUME={instrument!r})")
    catg, dpr_type, tech, tpl_id = (_card(h, key, _text, "")
                                    for key in ("DPR.CATG", "DPR.TYPE", "DPR.TECH", "TPL.ID"))
    dpr = f"{catg}/{dpr_type}/{tech}"
    if catg in IGNORED_CATG:
        raise ValueError(f"{catg} frames are not reduced (DPR {dpr})")
    tags = match_rules(catg, dpr_type, tech, tpl_id)
    if not tags:
        raise ValueError(f"no classification rule matches DPR {dpr} with TPL.ID {tpl_id!r}")
    if len(tags) > 1:
        raise ValueError(f"ambiguous: DPR {dpr} with TPL.ID {tpl_id!r} matches "
                         + " and ".join(tags))
    mjd = _card(h, "MJD-OBS", _mjd)
    chans = _channels(extensions)
    return dict(
        tag=tags[0], arcfile=_card(h, "ARCFILE", _text, ""), dpr=dpr, setup=_setup(h),
        tpl_id=tpl_id, tpl_start=_card(h, "TPL.START", _text, ""),
        tpl_nexp=_card(h, "TPL.NEXP", _positive, 0), tpl_expno=_card(h, "TPL.EXPNO", _positive, 0),
        mjd=mjd, night=_night(mjd), exptime=_card(h, "EXPTIME", _number, 0.0),
        lamps=decode_lamps(h), target=_card(h, "OBS.TARG.NAME", _text, ""),
        ifus=tuple(sorted(chans)), datasums={ifu: datasum for ifu, (_, datasum) in chans.items()},
        temperature=_card(h, "INS.TEMP7.VAL", _number, None),
        pointing=_pointing(h),
    )


def _pointing(h: fits.Header) -> tuple[float, float] | None:
    """RA, DEC if both are there (calibrations may have neither); a bad value is an error."""
    ra, dec = _card(h, "RA", _number, None), _card(h, "DEC", _number, None)
    if ra is None or dec is None:
        return None
    if not (0.0 <= ra < 360.0 and -90.0 <= dec <= 90.0):
        raise ValueError(f"RA/DEC {ra}, {dec} are not sky coordinates")
    return ra, dec


def _setup(h: fits.Header) -> Setup:
    """A raw frame's setup; every card is required (MUSE.md §8: a frame whose read-out is
    unknown is unclassifiable, not a new empty setup)."""
    return Setup(
        ins_mode=_card(h, "INS.MODE", _token),
        nominal=_card(h, "INS.OPTI1.NAME", _name).startswith("Blue"),
        field=_card(h, "INS.OPTI2.NAME", _token),
        readout_id=_card(h, "DET.READ.CURID", _integer),
        readout=_card(h, "DET.READ.CURNAME", _token),
        binx=_card(h, "DET.BINX", _positive),
        biny=_card(h, "DET.BINY", _positive),
    )


def _channels(extensions: Iterable[fits.Header]) -> dict[int, tuple[int, str]]:
    """Each ``CHANnn`` extension's position in ``extensions`` and ``DATASUM``, by IFU number."""
    chans = {}
    for i, e in enumerate(extensions):
        try:
            if m := re.fullmatch(r"CHAN(\d\d)", _card(e, "EXTNAME", _text, "")):
                chans[int(m.group(1))] = (i, _card(e, "DATASUM", _text, ""))
        except ValueError as err:
            raise ValueError(f"extension {i + 1}: {err}") from err
    return chans


def _static(catg: str, h: fits.Header, extensions: list[fits.Header]) -> dict:
    """A static calibration of ESO's kit (or a stand-in), recognised by PRO.CATG as the
    rule file does; other pipeline products are not inputs."""
    if catg not in {str(t) for t in STATIC_TAGS}:
        raise ValueError(f"a pipeline product (PRO.CATG={catg}), not a raw frame or a "
                         "static calibration")
    datasum = next((s for e in [h, *extensions] if (s := _card(e, "DATASUM", _text, "0")) != "0"),
                   "")
    mjd = _card(h, "MJD-OBS", _mjd, 0.0)
    return dict(tag=Tag(catg), arcfile=_card(h, "ARCFILE", _text, ""), mjd=mjd,
                night=_night(mjd) if mjd else "", datasums={0: datasum} if datasum else {},
                field=_card(h, "INS.OPTI2.NAME", _text, ""))


def _sha256(f: BinaryIO) -> str:
    """SHA-256 of the whole stream, read from its start in chunks."""
    f.seek(0)
    digest = hashlib.sha256()
    while chunk := f.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


# What a file's content can make reading and classifying its headers raise.
CONTENT_ERRORS = (ValueError, TypeError, OverflowError, KeyError, OSError, VerifyError,
                  AstropyWarning)


def classify(f: BinaryIO, size: int, path: str, name: str) -> Frame:
    """Classify one frame from a seekable stream; never raises for bad data, the reason goes
    into the Frame. A static calibration's checksum is computed from the whole stream."""
    base = dict(path=path, name=name, size=size)
    try:
        (primary, (_, primary_size)), *extensions = scan_layout(f, size)
        fields = classify_header(primary, [h for h, _ in extensions])
        if fields["tag"] in STATIC_TAGS:
            fields["checksum"] = _sha256(f)
        elif not fields["ifus"]:
            return Frame(**base, reason="no CHANnn image extension: no IFU data in the file")
        else:
            fields["primary_size"] = primary_size
            fields["extents"] = {ifu: extensions[i][1] for ifu, (i, _) in
                                 _channels(h for h, _ in extensions).items()}
        return Frame(**base, **fields)
    except CONTENT_ERRORS as err:
        # ValueError and OSError name the file's problem; the others may hint at a bug here
        reason = str(err) if isinstance(err, ValueError | OSError) else \
            f"{type(err).__name__}: {err}"
        return Frame(**base, reason=reason)


def classify_file(path: Path) -> Frame:
    if re.search(f"[{CONTROL}]", str(path)):  # no work order may name it (nor a SOF hold it)
        return Frame(path=str(path), name=path.name, size=0,
                     reason="control characters in the file's path")
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
