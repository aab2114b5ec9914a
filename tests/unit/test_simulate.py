"""The simulator: detector layout esorex accepts, the night's content, determinism."""

from datetime import date

import numpy as np
import pytest
from astropy.io import fits

from musedrp.frames import classify_file
from musedrp.simulate import detector, field, night, stars
from musedrp.simulate.history import Drift, instrument_on


def test_raw_layout_levels_and_signal():
    ports = detector.ports_for(1, seed=3)
    signal = np.zeros(detector.TRIMMED, np.float32)
    signal[0, 0] = signal[-1, -1] = 50000.0  # first and last trimmed pixel
    img = detector.raw_extension(1, ports, np.random.default_rng(0), signal)
    assert img.shape == (4240, 4224) and img.dtype == np.uint16
    # quadrant levels: port 1 bottom-left, 2 bottom-right, 3 top-right, 4 top-left
    for (rows, cols), port in zip([(slice(40, 2000), slice(40, 2000)),
                                   (slice(40, 2000), slice(2200, 4100)),
                                   (slice(2200, 4200), slice(2200, 4100)),
                                   (slice(2200, 4200), slice(40, 2000))], ports, strict=True):
        q = img[rows, cols].astype(float)
        assert abs(q.mean() - port.bias) < 0.1
        assert abs(q.std() * port.gain - port.ron) < 0.05
    # the data section starts after the 32-pixel prescan, in both axes
    assert img[32, 32] > ports[0].bias + 40000 / ports[0].gain
    assert img[4240 - 33, 4224 - 33] > ports[2].bias + 40000 / ports[2].gain
    assert img[31, 31] < ports[0].bias + 100


def test_slices_on_the_ccd():
    mask = detector.slice_mask(1)
    row = mask[2056]
    edges = np.flatnonzero(np.diff((row > 0.5).astype(int)))
    assert len(edges) == 2 * detector.N_SLICES  # 48 slices, each with two edges
    widths = edges[1::2] - edges[0::2]
    assert np.all(np.abs(widths - 75) <= 1)
    centres = (edges[0::2] + edges[1::2]) / 2 + 1  # 1-based
    np.testing.assert_allclose(centres, detector.slice_centres(1, 2056), atol=1.0)


def test_night_content():
    frames = night.schedule(date(2014, 8, 1))
    count = lambda kind, readout="SCI1.0": sum(  # noqa: E731
        1 for e in frames if e.kind == kind and e.readout[0] == readout)
    assert (count("bias"), count("bias", "FAST")) == (11, 11)
    assert (count("flat"), count("flat", "FAST")) == (25, 11)
    assert sum(1 for e in frames if e.mode == night.AO) == 3  # a second instrument mode
    assert count("arc") == 15 and count("skyflat") == 7 and count("illum") == 1
    assert count("std") == 2 and count("astrometry") == 1 and count("object") >= 1
    arcs = [e.lamps for e in frames if e.kind == "arc"]
    assert sorted(set(arcs)) == [(3,), (4,), (5,)] and all(arcs.count(a) == 5 for a in set(arcs))
    assert len({e.arcfile for e in frames}) == len(frames)


def test_the_science_template_is_dithered_with_a_sky_field():
    frames = [e for e in night.schedule(date(2014, 8, 1), seed=3)
              if e.tpl_id == "MUSE_wfm_obs_genericoffset"]
    assert [e.kind for e in frames] == ["object", "object", "sky", "object"]
    assert len({e.offset for e in frames}) == 4
    assert all(0 < max(map(abs, e.error)) <= night.POINTING_ERROR for e in frames)
    h = night.primary_header(frames[1])
    east, north = frames[1].offset
    assert h["RA"] - night.NGC6397[0] == pytest.approx(east / 3600 / np.cos(np.radians(
        night.NGC6397[1])))
    assert h["DEC"] - night.NGC6397[1] == pytest.approx(north / 3600)
    assert (h["ESO SEQ CUMOFFSETA"], h["ESO SEQ CUMOFFSETD"]) == (east, north)
    assert h["ESO TEL TARG ALPHA"] == 174042.096 and h["ESO TEL TARG DELTA"] == -534027.48
    assert h["ESO DPR TYPE"] == "OBJECT" and night.primary_header(frames[2])["ESO DPR TYPE"] \
        == "SKY"


def test_star_field_luminosity_function_and_spectra():
    field = stars.star_field(1)
    assert field == stars.star_field(1) != stars.star_field(2)
    flux = np.array([s.flux for s in field])
    bright = flux > stars.BRIGHTEST * 10 ** (-0.4 * 3)  # the brightest 3 magnitudes
    assert 0.03 < bright.mean() < 0.2  # many faint stars, few bright (10^0.3 per magnitude)
    assert {s.kind for s in field} == set(stars.TYPES)
    lam = np.array([6540.0, 6562.8, 7000.0])
    a = stars.stellar_shape("A", lam)
    assert a[1] < 0.7 * a[0] and a[2] == pytest.approx(1.0, abs=0.01)


def test_a_star_puts_its_whole_flux_into_the_slices():
    """Summed over the IFUs it falls on, a star gives flux x electrons-per-flux x time in
    every wavelength row: the PSF is integrated over each spaxel, none lost, none doubled."""
    star = [stars.Star(east=0.0, north=0.0, flux=1e-15, kind="G")]
    xy = np.array([[-40.3, -120.6]])  # between slices of IFU 2, off the spaxel grid
    lam = detector.wavelength_rows()
    total = np.zeros(len(lam))
    for ifu in (1, 2, 3):
        light = stars.light(ifu, field.slice_index(ifu), lam, xy, star, 600.0)
        if light is not None:
            total += light.sum(axis=1)
    expected = 1e-15 * stars.ELECTRONS_PER_FLUX * 600.0 * stars.stellar_shape("G", lam)
    np.testing.assert_allclose(total, expected, rtol=2e-3)


def test_deterministic_for_a_seed(tmp_path):
    e = next(e for e in night.schedule(date(2014, 8, 1)) if e.kind == "flat")
    data = {}
    for run, seed in (("a", 5), ("b", 5), ("c", 6)):
        (tmp_path / run).mkdir()
        data[run] = fits.getdata(night.write_exposure(e, [2], seed, tmp_path / run), "CHAN02")
    assert np.array_equal(data["a"], data["b"])
    assert not np.array_equal(data["a"], data["c"])


def test_compressed_frame_is_lossless_and_classified_alike(tmp_path):
    e = next(e for e in night.schedule(date(2014, 8, 1)) if e.kind == "bias")
    paths = {}
    for compress in (False, True):
        (tmp_path / str(compress)).mkdir()
        paths[compress] = night.write_exposure(e, [1, 2], 5, tmp_path / str(compress), compress)
    assert paths[True].name == e.arcfile + ".fz"
    assert paths[True].stat().st_size < paths[False].stat().st_size / 1.5
    for ext in ("CHAN01", "CHAN02"):
        assert np.array_equal(fits.getdata(paths[True], ext), fits.getdata(paths[False], ext))
    # datasums and extents: of the (compressed) data units
    same = {"path", "name", "size", "datasums", "extents"}
    plain, packed = (classify_file(paths[c]).model_dump(exclude=same) for c in (False, True))
    assert packed == plain
    assert packed["ifus"] == (1, 2)


def test_planted_drifts_scale_one_port_and_one_ifu_from_their_night():
    drifts = [Drift("ron", 2, 1.25, date(2014, 8, 7), port=3),
              Drift("throughput", 1, 0.85, date(2014, 8, 8))]
    before, after = instrument_on(date(2014, 8, 6), drifts), instrument_on(date(2014, 8, 8), drifts)
    nominal = detector.ports_for(2, 1)
    assert before.ports(2, 1) == nominal
    assert [p.ron for p in after.ports(2, 1)] == pytest.approx(
        [p.ron * (1.25 if i == 2 else 1) for i, p in enumerate(nominal)])
    assert after.ports(1, 1) == detector.ports_for(1, 1)
    (flat,) = night.monitoring_schedule(date(2014, 8, 8), 1)[1:]
    nominal_light = night.electrons(flat, 1, 1, 1, before)
    lit = night.electrons(flat, 1, 1, 1, after)[nominal_light > 0] / nominal_light[
        nominal_light > 0]
    assert lit.min() == pytest.approx(0.85) and lit.max() == pytest.approx(0.85)
    assert drifts[0].explains("bias", 2, 3, "QC BIAS MASTER3 RON", "2014-08-07")
    assert not drifts[0].explains("bias", 2, 2, "QC BIAS MASTER2 RON", "2014-08-07")
    assert not drifts[0].explains("bias", 2, 3, "QC BIAS MASTER3 RON", "2014-08-06")
    assert drifts[1].explains("flat", 1, None, "QC FLAT MASTER INTFLUX", "2014-08-09")
    assert not drifts[1].explains("bias", 1, None, "QC BIAS MASTER NBADPIX", "2014-08-09")


def test_a_monitoring_night_has_biases_and_flats_only():
    frames = night.monitoring_schedule(date(2014, 8, 1), 3)
    assert [e.kind for e in frames] == ["bias"] * 3 + ["flat"] * 3
    assert {e.readout for e in frames} == {night.SCIENCE}
