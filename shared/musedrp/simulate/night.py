"""A synthetic MUSE night modelled on the 2014 NGC 6397 commissioning night (MUSE.md).

The night holds what an astronomer found in the real raw data: 11 science-mode (SCI1.0)
biases and 11 fast engineering-mode (1x4 binned) biases, the same split for the lamp
flats plus a second science-mode flat template in the morning (closer in time to the
science, so "closest in time" matters) and a short flat template of a second instrument
mode (WFM-AO-N, closer still, which the flats' mode rule must refuse), 15 arcs (5 per
lamp), 7 twilight skyflats, an illumination flat attached to the science, the science
template (three dithered exposures of a crowded star field and one of an empty SKY field),
a standard star of the same night, an older standard (as a calibration package
would bring) and an astrometric field.  ``truth.json`` records what was simulated so tests
can check the products.
"""

import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from dataclasses import field as dataclass_field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

from musedrp.simulate import detector, field, lines, stars
from musedrp.simulate.static import STANDARD_STARS, write_static

MJD_EPOCH = datetime(1858, 11, 17)
SCIENCE = ("SCI1.0", 1, 1)  # CURNAME, CURID, BINY
FAST = ("FAST", 2, 4)  # engineering read-out, 1x4 binned (exact ESO string unverified)
ARC_LAMPS = {"Ne": 3, "Xe": 4, "HgCd": 5}  # lamp/shutter number per arc lamp
SHUTTER_NAMES = ("ContB", "ContR", "Ne", "Xe", "HgCd", "Ne")
NGC6397 = (265.1754, -53.6743)
NOAO = ("WFM-NOAO-N", "Blue")
AO = ("WFM-AO-N", "Blue-Na2")  # a second instrument mode, for another programme's flats


@dataclass(frozen=True)
class Exposure:
    """One raw frame to write: what it is, when, and how it was read out."""

    kind: str  # bias, flat, arc, skyflat, illum, object, std, astrometry
    dpr: tuple[str, str]  # DPR.CATG, DPR.TYPE
    tpl_id: str
    tpl_start: datetime
    nexp: int
    expno: int
    start: datetime
    exptime: float
    readout: tuple[str, int, int] = SCIENCE
    lamps: tuple[int, ...] = ()  # lamps (and their shutters) that are on
    target: str = ""
    radec: tuple[float, float] = NGC6397
    mode: tuple[str, str] = NOAO  # INS.MODE, INS.OPTI1.NAME
    offset: tuple[float, float] = (0.0, 0.0)  # commanded (east, north) arcsec: in the header
    error: tuple[float, float] = (0.0, 0.0)  # pointing error (east, north) arcsec: not

    @property
    def pointing(self) -> tuple[float, float]:
        """Where the field centre really was, (east, north) arcsec from the target."""
        return self.offset[0] + self.error[0], self.offset[1] + self.error[1]

    @property
    def arcfile(self) -> str:
        return f"MUSE.{self.start:%Y-%m-%dT%H:%M:%S}.{self.start.microsecond // 1000:03d}.fits"

    def file_name(self, compress: bool = False) -> str:
        return self.arcfile + (".fz" if compress else "")


def mjd(t: datetime) -> float:
    return (t - MJD_EPOCH).total_seconds() / 86400.0


def local_sidereal_seconds(mjd_utc: float, longitude_deg: float = -70.4045) -> float:
    """Local sidereal time at Paranal in seconds (GMST to ~0.1 s; what the headers carry)."""
    gmst_hours = 18.697374558 + 24.06570982441908 * (mjd_utc - 51544.5)
    return ((gmst_hours + longitude_deg / 15.0) % 24.0) * 3600.0


def _template(kind, dpr, tpl_id, start, n, step_s, exptime, **kw) -> list[Exposure]:
    return [
        Exposure(kind, dpr, tpl_id, start, n, i + 1, start + timedelta(seconds=i * step_s + 1.5),
                 exptime, **kw)
        for i in range(n)
    ]


# the OB's offsets (east, north arcsec from the target) and kinds, as MUSE_wfm_obs_genericoffset
# takes them: three dithered exposures of the field and one of an empty sky field between them
DITHERS = (((0.0, 0.0), "object"), ((1.6, 1.0), "object"), ((400.0, 300.0), "sky"),
           ((-1.2, 2.0), "object"))
POINTING_ERROR = 0.4  # arcsec, at most, per axis: what the telescope offsets get wrong


def dithers(start: datetime, seed: int) -> list[Exposure]:
    """The science template: dithered exposures with pointing errors (seeded), and a SKY."""
    errors = np.random.default_rng([seed, 16]).uniform(-POINTING_ERROR, POINTING_ERROR,
                                                        (len(DITHERS), 2)).round(3)
    return [Exposure(kind, ("SCIENCE", kind.upper()), "MUSE_wfm_obs_genericoffset", start,
                     len(DITHERS), i + 1, start + timedelta(seconds=700 * i + 1.5), 600.0,
                     target="NGC6397", offset=offset, error=tuple(map(float, err)))
            for i, ((offset, kind), err) in enumerate(zip(DITHERS, errors, strict=True))]


def schedule(night: date, seed: int = 1) -> list[Exposure]:
    """The night's frames in time order; ``night`` is the date at the start of the night."""
    d = datetime(night.year, night.month, night.day)
    cal = ("CALIB", "BIAS")
    flat = ("CALIB", "FLAT,LAMP")
    frames = [
        *_template("bias", cal, "MUSE_wfm_cal_bias", d + timedelta(hours=18), 11, 60, 0.0),
        *_template("bias", cal, "MUSE_wfm_cal_bias", d + timedelta(hours=18, minutes=30), 11, 60,
                   0.0, readout=FAST),
        *_template("flat", flat, "MUSE_wfm_cal_specflat", d + timedelta(hours=19), 11, 90, 10.0,
                   lamps=(1, 2)),
        *_template("flat", flat, "MUSE_wfm_cal_specflat", d + timedelta(hours=19, minutes=30), 11,
                   90, 10.0, lamps=(1, 2), readout=FAST),
    ]
    arc_start = d + timedelta(hours=20)
    for i in range(15):
        lamp = list(ARC_LAMPS.values())[i // 5]
        t = arc_start + timedelta(seconds=75 * i + 1.5)
        frames.append(Exposure("arc", ("CALIB", "WAVE"), "MUSE_wfm_cal_arc", arc_start, 15, i + 1,
                               t, 15.0, lamps=(lamp,)))
    frames += [
        *_template("skyflat", ("CALIB", "FLAT,SKY"), "MUSE_wfm_cal_skyflat",
                   d + timedelta(hours=22, minutes=40), 7, 120, 20.0),
        *_template("astrometry", ("CALIB", "ASTROMETRY"), "MUSE_wfm_cal_astrom",
                   d + timedelta(hours=24, minutes=20), 1, 0, 60.0, target="NGC6397-ASTROM"),
        # flats of the AO mode (for another programme): closest in time, of another INS.MODE
        *_template("flat", flat, "MUSE_wfm_cal_specflat", d + timedelta(hours=26), 3, 90, 10.0,
                   lamps=(1, 2), mode=AO),
        *_template("illum", ("CALIB", "FLAT,LAMP,ILLUM"), "MUSE_wfm_cal_illum",
                   d + timedelta(hours=27), 1, 0, 5.0, lamps=(1, 2)),
        *dithers(d + timedelta(hours=27, minutes=5), seed),
        *_template("std", ("CALIB", "STD"), "MUSE_wfm_cal_specphot",
                   d + timedelta(hours=30, minutes=30), 1, 0, 60.0, target="SIMSTD1",
                   radec=STANDARD_STARS["SIMSTD1"]),
        *_template("flat", flat, "MUSE_wfm_cal_specflat", d + timedelta(hours=34), 11, 90, 10.0,
                   lamps=(1, 2)),
        # the standard a calibration package would bring: two nights earlier
        *_template("std", ("CALIB", "STD"), "MUSE_wfm_cal_specphot",
                   d - timedelta(hours=24) - timedelta(minutes=10), 1, 0, 60.0, target="SIMSTD2",
                   radec=STANDARD_STARS["SIMSTD2"]),
    ]
    return sorted(frames, key=lambda e: e.start)


def monitoring_schedule(night: date, n: int = 3) -> list[Exposure]:
    """A night of detector monitoring only: ``n`` science-mode biases and ``n`` lamp flats,
    the least ``muse_bias`` and ``muse_flat`` accept (read noise, bias level, flat level)."""
    d = datetime(night.year, night.month, night.day)
    return [*_template("bias", ("CALIB", "BIAS"), "MUSE_wfm_cal_bias", d + timedelta(hours=18),
                       n, 60, 0.0),
            *_template("flat", ("CALIB", "FLAT,LAMP"), "MUSE_wfm_cal_specflat",
                       d + timedelta(hours=19), n, 90, 10.0, lamps=(1, 2))]


def primary_header(e: Exposure) -> fits.Header:
    """The keywords of MUSE.md §4 and §7.1 for one exposure."""
    h = fits.Header()
    curname, curid, biny = e.readout
    ra, dec = e.radec
    h["INSTRUME"] = "MUSE"
    h["TELESCOP"] = "ESO-VLT-U4"
    h["OBJECT"] = e.target or e.dpr[1]
    east, north = e.offset
    h["RA"] = ra + east / 3600.0 / np.cos(np.radians(dec))
    h["DEC"], h["EQUINOX"] = dec + north / 3600.0, 2000.0
    h["EXPTIME"] = e.exptime
    h["MJD-OBS"] = round(mjd(e.start), 8)
    h["UTC"] = float((e.start - e.start.replace(hour=0, minute=0, second=0,
                                                microsecond=0)).seconds)  # the DFS wants a float
    h["LST"] = round(local_sidereal_seconds(mjd(e.start)), 3)
    h["DATE-OBS"] = e.start.isoformat(timespec="milliseconds")
    h["ARCFILE"] = e.arcfile
    h["ORIGFILE"] = f"MUSE_{e.kind.upper()}_{e.start:%Y%m%d_%H%M%S}.fits"
    eso = "HIERARCH ESO"
    h[f"{eso} DPR CATG"], h[f"{eso} DPR TYPE"], h[f"{eso} DPR TECH"] = (*e.dpr, "IFU")
    h[f"{eso} OBS ID"] = 200000000 + int(mjd(e.tpl_start) * 10) % 10000000
    h[f"{eso} OBS NAME"] = e.target or e.tpl_id
    h[f"{eso} OBS START"] = e.tpl_start.isoformat(timespec="seconds")
    h[f"{eso} OBS PROG ID"] = "60.A-9100(G)"
    h[f"{eso} OBS TARG NAME"] = e.target or "CALIB"
    h[f"{eso} TPL ID"] = e.tpl_id
    h[f"{eso} TPL NAME"] = e.tpl_id.replace("MUSE_", "")
    h[f"{eso} TPL START"] = e.tpl_start.isoformat(timespec="seconds")
    h[f"{eso} TPL NEXP"] = e.nexp
    h[f"{eso} TPL EXPNO"] = e.expno
    h[f"{eso} INS MODE"], h[f"{eso} INS OPTI1 NAME"] = e.mode
    h[f"{eso} INS OPTI2 NAME"] = "WFM"
    h[f"{eso} INS DROT MODE"] = "SKY"
    h[f"{eso} INS DROT POSANG"] = 0.0
    h[f"{eso} INS TEMP7 VAL"] = 11.2
    h[f"{eso} INS LAMPNUM"] = len(SHUTTER_NAMES)
    for n, shutter in enumerate(SHUTTER_NAMES, start=1):
        on = n in e.lamps
        h[f"{eso} INS LAMP{n} NAME"] = f"CU-LAMP{n}"
        h[f"{eso} INS LAMP{n} ST"] = on
        h[f"{eso} INS SHUT{n} NAME"] = shutter
        h[f"{eso} INS SHUT{n} ST"] = on
        if on:
            h[f"{eso} SEQ LAMP{n} ONTIME"] = e.exptime
    h[f"{eso} DET NAME"] = "MUSE-NGCOPT"
    h[f"{eso} DET CHIPS"] = 24
    h[f"{eso} DET OUTPUTS"] = 96
    h[f"{eso} DET READ CURID"] = curid
    h[f"{eso} DET READ CURNAME"] = curname
    h[f"{eso} DET BINX"] = 1
    h[f"{eso} DET BINY"] = biny
    h[f"{eso} TEL TARG ALPHA"], h[f"{eso} TEL TARG DELTA"] = eso_alpha(ra), eso_delta(dec)
    h[f"{eso} SEQ CUMOFFSETA"], h[f"{eso} SEQ CUMOFFSETD"] = e.offset  # arcsec
    h[f"{eso} OCS SGS AG FWHMX MED"] = h[f"{eso} OCS SGS AG FWHMY MED"] = stars.SEEING
    h[f"{eso} TEL AIRM START"] = 1.004
    h[f"{eso} TEL AIRM END"] = 1.004
    h[f"{eso} TEL AMBI PRES START"] = 744.0
    h[f"{eso} TEL AMBI PRES END"] = 744.0
    h[f"{eso} TEL AMBI TEMP"] = 12.0
    h[f"{eso} TEL AMBI RHUM"] = 10.0
    h[f"{eso} TEL AMBI FWHM START"] = h[f"{eso} TEL AMBI FWHM END"] = stars.SEEING
    h[f"{eso} TEL PARANG START"] = 0.0
    h[f"{eso} TEL PARANG END"] = 0.0
    h[f"{eso} TEL GEOLAT"] = -24.6270
    h[f"{eso} TEL GEOLON"] = -70.4040
    h[f"{eso} TEL GEOELEV"] = 2648.0
    return h


def eso_alpha(ra: float) -> float:
    """RA in ESO's HHMMSS.sss number (TEL.TARG.ALPHA)."""
    h, rest = divmod(ra / 15.0 * 3600.0, 3600.0)
    m, sec = divmod(rest, 60.0)
    return round(h * 10000 + m * 100 + sec, 3)


def eso_delta(dec: float) -> float:
    """Dec in ESO's (-)DDMMSS.ss number (TEL.TARG.DELTA)."""
    d, rest = divmod(abs(dec) * 3600.0, 3600.0)
    m, sec = divmod(rest, 60.0)
    return math.copysign(round(d * 10000 + m * 100 + sec, 2), dec)


# Spectral shapes in electrons per pixel row of a slice.
def _lamp(lam: np.ndarray) -> np.ndarray:
    return 22000.0 * (0.4 + 0.6 * np.exp(-0.5 * ((lam - 7000.0) / 1600.0) ** 2))


def _twilight(lam: np.ndarray) -> np.ndarray:
    return 12000.0 * np.exp(-0.5 * ((lam - 5500.0) / 2500.0) ** 2)


LAMP_NAMES = {n: name for name, n in ARC_LAMPS.items()}


def spectrum(e: Exposure, lam: np.ndarray) -> np.ndarray | None:
    """What one slice sees, per trimmed row, or None for frames without light."""
    match e.kind:
        case "flat":
            return _lamp(lam)
        case "illum":
            return 0.3 * _lamp(lam)
        case "skyflat":
            return _twilight(lam)
        case "arc":
            return lines.arc_spectrum(LAMP_NAMES[e.lamps[0]], lam, detector.DISPERSION)
        case "object" | "sky" | "std" | "astrometry":
            return field.night_sky(lam, e.exptime)
    return None


def slice_throughput(ifu: int, seed: int) -> np.ndarray:
    """Relative throughput of each of the 48 slices (what the master flat must show)."""
    return np.random.default_rng([seed, ifu, 11]).uniform(0.9, 1.1, detector.N_SLICES)


@dataclass(frozen=True)
class Instrument:
    """Departures from the nominal instrument on one night: read noise of a port (IFU, port
    1-4) and throughput of an IFU, each as a factor (what a drift to be found plants)."""

    ron: dict[tuple[int, int], float] = dataclass_field(default_factory=dict)
    throughput: dict[int, float] = dataclass_field(default_factory=dict)

    def ports(self, ifu: int, seed: int) -> tuple[detector.Port, ...]:
        return tuple(replace(p, ron=p.ron * self.ron.get((ifu, i), 1.0))
                     for i, p in enumerate(detector.ports_for(ifu, seed), start=1))


NOMINAL = Instrument()


def electrons(e: Exposure, ifu: int, seed: int, biny: int,
              instrument: Instrument = NOMINAL) -> np.ndarray | None:
    """Illumination of the trimmed CCD in electrons, or None for frames without light.

    Every kind goes through the same slices, throughputs and dispersion; a standard-star
    exposure adds the star through the sky geometry of the GEOMETRY_TABLE stand-in."""
    lam = detector.wavelength_rows(biny)
    rows = spectrum(e, lam)
    if rows is None:
        return None
    index = field.slice_index(ifu, biny)
    light = np.broadcast_to(rows.astype(np.float32)[:, None], index.shape)
    if e.kind == "std" and (star := field.star_image(ifu, index, biny)) is not None:
        shape = (field.STAR_PEAK * e.exptime / 60.0 * field.star_shape(lam)).astype(np.float32)
        light = light + shape[:, None] * star
    field_stars = stars.star_field(seed)
    if e.kind == "object" and (more := stars.light(
            ifu, index, lam, stars.spaxels(field_stars, e.pointing), field_stars, e.exptime,
            biny)) is not None:
        light = light + more
    per_slice = (instrument.throughput.get(ifu, 1.0)
                 * slice_throughput(ifu, seed)).astype(np.float32)[index]
    return detector.slice_mask(ifu, biny) * per_slice * light * biny


def write_exposure(e: Exposure, ifus: Sequence[int], seed: int, out: Path,
                   compress: bool = False, instrument: Instrument = NOMINAL) -> Path:
    """Write one raw frame with a CHANnn extension per IFU; deterministic per (seed, frame).

    ``compress`` writes ``<ARCFILE>.fz`` with Rice tile-compressed extensions (lossless for
    the 16-bit data, 2.2x smaller; esorex reads it as it is)."""
    _, _, biny = e.readout
    hdu = fits.CompImageHDU if compress else fits.ImageHDU
    hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [fits.PrimaryHDU(header=primary_header(e))]
    for ifu in ifus:
        rng = np.random.default_rng([seed, ifu, int(mjd(e.start) * 86400)])
        ports = instrument.ports(ifu, seed)
        data = detector.raw_extension(ifu, ports, rng,
                                      electrons(e, ifu, seed, biny, instrument), biny)
        hdus.append(hdu(data=data, header=detector.extension_header(ifu, ports, biny)))
    path = out / e.file_name(compress)
    fits.HDUList(hdus).writeto(path, overwrite=True, checksum=True)
    return path


@dataclass
class Truth:
    """What the simulator put into the night, for checking the products."""

    night: str
    seed: int
    ifus: list[int]
    ports: dict[int, list[dict]] = dataclass_field(default_factory=dict)
    slice_centres_mid: dict[int, list[float]] = dataclass_field(default_factory=dict)
    slice_throughput: dict[int, list[float]] = dataclass_field(default_factory=dict)
    frames: list[dict] = dataclass_field(default_factory=list)
    # the science field: stars (arcsec from the target), each exposure's offsets, the PSF
    target: tuple[float, float] = NGC6397
    seeing: float = stars.SEEING
    stars: list[dict] = dataclass_field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "Truth":
        """Read ``truth.json`` back (JSON keys are strings; IFUs are ints)."""
        raw = json.loads(path.read_text())
        for name in ("ports", "slice_centres_mid", "slice_throughput"):
            raw[name] = {int(k): v for k, v in raw[name].items()}
        return cls(**raw)

    def objects(self) -> dict[str, dict]:
        """The OBJECT exposures by DATE-OBS."""
        return {f["date_obs"]: f for f in self.frames if f["kind"] == "object"}

    def offsets(self, reference: str) -> dict[str, np.ndarray]:
        """Where each OBJECT exposure's stars appear from those of the exposure taken at
        ``reference`` (DATE-OBS), (east, north) arcsec: error_ref - error_i, what
        muse_exp_align measures with that exposure as its first image."""
        objects = self.objects()
        return {d: np.subtract(objects[reference]["error"], f["error"])
                for d, f in objects.items()}

    def apparent_stars(self) -> np.ndarray:
        """(N, 2) RA, DEC at which a combined cube shows the stars: in the frame of the first
        exposure (muse_exp_combine's reference; its pointing error no alignment can know),
        the header pointing tied to the middle of the IFUs present."""
        objects = self.objects()
        first = objects[min(objects)]
        return stars.apparent([stars.Star(**s) for s in self.stars], first["error"],
                              field.data_centre(self.ifus), self.target)


def simulate_night(out: Path, ifus: Sequence[int], seed: int = 1, night: date = date(2014, 8, 1),
                   workers: int | None = None, progress=None, compress: bool = False,
                   exposures: Sequence[Exposure] | None = None,
                   instrument: Instrument = NOMINAL, static: bool = True) -> Truth:
    """Write the whole night (or only ``exposures``; the static stand-ins unless ``static``
    is false) into ``out`` and return (and save) the truth."""
    out.mkdir(parents=True, exist_ok=True)
    exposures = schedule(night, seed) if exposures is None else exposures
    truth = Truth(night=night.isoformat(), seed=seed, ifus=list(ifus))
    for ifu in ifus:
        truth.ports[ifu] = [asdict(p) for p in instrument.ports(ifu, seed)]
        mid = (detector.TRIMMED[0] - 1) / 2
        truth.slice_centres_mid[ifu] = detector.slice_centres(ifu, mid).round(3).tolist()
        truth.slice_throughput[ifu] = slice_throughput(ifu, seed).round(4).tolist()
    truth.frames = [{"file": e.file_name(compress), "kind": e.kind, "readout": e.readout[0],
                     "mode": e.mode[0],
                     "tpl_start": e.tpl_start.isoformat(), "target": e.target,
                     "date_obs": e.start.isoformat(timespec="milliseconds"),
                     "offset": list(e.offset), "error": list(e.error)} for e in exposures]
    if any(e.kind == "object" for e in exposures):
        truth.stars = stars.as_dicts(stars.star_field(seed))
    workers = workers or len(os.sched_getaffinity(0))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(write_exposure, e, list(ifus), seed, out, compress, instrument)
                   for e in exposures]
        for i, f in enumerate(futures, start=1):
            path = f.result()
            if progress:
                progress(i, len(futures), path.name)
    if static:
        write_static(out / "static")
    (out / "truth.json").write_text(json.dumps(asdict(truth), indent=1))
    return truth
