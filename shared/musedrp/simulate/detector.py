"""The MUSE CCD as esorex reads it: 4 read-out ports, pre- and overscans, slices.

Layout (MUSE.md §7.1), per axis: prescan 32 | data of the lower/left ports | overscan 32 |
overscan 32 | data of the upper/right ports | prescan 32.  Ports 1 and 2 are at the bottom,
4 and 3 at the top.  Everything here works on one IFU's extension.
"""

from dataclasses import dataclass

import numpy as np
from astropy.io import fits

NX, NY = 2048, 2056  # data pixels per port, unbinned
SCAN = 32  # pre- and overscan width, unbinned
TRIMMED = (2 * NY, 2 * NX)  # (rows, columns) of the trimmed CCD: 4112 x 4096

# Slice layout that muse_flat traces (MUSE.md §7.2).
N_SLICES, SLICE_WIDTH, GAP_IN_STACK, GAP_STACKS, FIRST_SLICE_X = 48, 75.0, 9.0, 14.0, 29.0
TILT_OVER_HEIGHT = 1.5  # px of x shift from the bottom to the top of the CCD

# Linear dispersion, blue at the bottom (MUSE.md §7.3): lambda = 4600 + 1.25 * y (0-based).
LAMBDA0, DISPERSION = 4600.0, 1.25


@dataclass(frozen=True)
class Port:
    """One read-out port's truth: level in adu, gain in e-/adu, read noise in e-."""

    bias: float
    gain: float
    ron: float


def ports_for(ifu: int, seed: int) -> tuple[Port, Port, Port, Port]:
    """Deterministic per-IFU port properties, close to the real detectors."""
    rng = np.random.default_rng([seed, ifu, 7])
    return tuple(  # type: ignore[return-value]
        Port(
            bias=float(round(rng.uniform(960.0, 1060.0), 1)),
            gain=float(round(rng.uniform(1.05, 1.15), 3)),
            ron=float(round(rng.uniform(2.4, 2.9), 2)),
        )
        for _ in range(4)
    )


def slice_left_edges() -> np.ndarray:
    """Left edge (trimmed x, 0-based, at y=0 before the per-IFU shift) of each CCD slice."""
    k = np.arange(N_SLICES)
    stack = k // 12
    return FIRST_SLICE_X + SLICE_WIDTH * k + GAP_IN_STACK * (k - stack) + GAP_STACKS * stack


def slice_shift(ifu: int, y: np.ndarray) -> np.ndarray:
    """x shift of every slice at trimmed row y: a tilt plus a per-IFU offset."""
    return 0.1 * (ifu - 12) + TILT_OVER_HEIGHT * y / (TRIMMED[0] - 1)


def slice_centres(ifu: int, y: float) -> np.ndarray:
    """Centre (trimmed x, 1-based as the pipeline counts) of each slice at row y (0-based).

    Pixel x (0-based) spans x-0.5..x+0.5, so a 0-based position p is p+1 in 1-based pixels."""
    return slice_left_edges() + SLICE_WIDTH / 2 + slice_shift(ifu, np.asarray(y)) + 1.0


def slice_mask(ifu: int, biny: int = 1) -> np.ndarray:
    """Fraction of each trimmed pixel covered by a slice, with 1-px soft edges (float32)."""
    rows, cols = TRIMMED[0] // biny, TRIMMED[1]
    y = (np.arange(rows, dtype=np.float32) + 0.5) * biny - 0.5
    u = np.arange(cols, dtype=np.float32)[None, :] - slice_shift(ifu, y)[:, None]
    left = slice_left_edges()
    right = left + SLICE_WIDTH
    # piecewise-linear profile: 0 outside, 1 inside, 1 px ramps at both edges
    xp = np.column_stack([left - 0.5, left + 0.5, right - 0.5, right + 0.5]).ravel()
    fp = np.tile([0.0, 1.0, 1.0, 0.0], N_SLICES)
    return np.interp(u, xp, fp).astype(np.float32)


def wavelength_rows(biny: int = 1) -> np.ndarray:
    """Wavelength in Angstrom of each trimmed row."""
    y = (np.arange(TRIMMED[0] // biny) + 0.5) * biny - 0.5
    return LAMBDA0 + DISPERSION * y


def raw_extension(
    ifu: int,
    ports: tuple[Port, ...],
    rng: np.random.Generator,
    electrons: np.ndarray | None = None,
    biny: int = 1,
) -> np.ndarray:
    """One raw CCD image (uint16) in the layout esorex accepts.

    Every port's quadrant (data, prescan, overscan) gets its bias level and read noise;
    ``electrons`` (trimmed shape, binned rows) is added to the data sections with
    Poisson noise (normal approximation) and converted to adu with the port's gain.
    """
    ny, scan_y = NY // biny, SCAN // biny
    qy, qx = ny + 2 * scan_y, NX + 2 * SCAN  # one quadrant incl. its pre- and overscan
    image = rng.standard_normal((2 * qy, 2 * qx), dtype=np.float32)
    # port order by quadrant (row half, column half): 1 bottom-left, 2 bottom-right, 3, 4
    quadrants = {(0, 0): 0, (0, 1): 1, (1, 1): 2, (1, 0): 3}
    for (qr, qc), p in quadrants.items():
        port = ports[p]
        rows, cols = slice(qr * qy, (qr + 1) * qy), slice(qc * qx, (qc + 1) * qx)
        image[rows, cols] *= port.ron / port.gain
        image[rows, cols] += port.bias
        if electrons is None:
            continue
        data_rows = slice(qr * qy + scan_y, qr * qy + scan_y + ny)
        data_cols = slice(qc * qx + SCAN, qc * qx + SCAN + NX)
        signal = np.clip(electrons[qr * ny : (qr + 1) * ny, qc * NX : (qc + 1) * NX], 0, None)
        shot = np.sqrt(signal) * rng.standard_normal(signal.shape, dtype=np.float32)
        image[data_rows, data_cols] += (signal + shot) / port.gain
    return np.clip(np.rint(image), 0, 65535).astype(np.uint16)


def extension_header(ifu: int, ports: tuple[Port, ...], biny: int = 1) -> fits.Header:
    """Per-extension keywords: CCD identity and per-port geometry, gain and read noise."""
    h = fits.Header()
    h["EXTNAME"] = f"CHAN{ifu:02d}"
    h["INHERIT"] = True
    h["HIERARCH ESO DET CHIP NAME"] = f"SIM{ifu:02d}"
    h["HIERARCH ESO DET CHIP ID"] = f"ESO-CCD-SIM-{ifu:02d}"
    h["HIERARCH ESO DET CHIP DATE"] = "2013-10-01"
    h["HIERARCH ESO DET CHIP INDEX"] = ifu
    h["HIERARCH ESO DET CHIP LIVE"] = True
    h["HIERARCH ESO DET CHIP NX"] = 2 * NX
    h["HIERARCH ESO DET CHIP NY"] = 2 * NY // biny
    corners = {1: (1, 1), 2: (2 * NX, 1), 3: (2 * NX, 2 * NY // biny), 4: (1, 2 * NY // biny)}
    for i, port in enumerate(ports, start=1):
        o = f"HIERARCH ESO DET OUT{i}"
        h[f"{o} NAME"] = f"OUT{i}"
        h[f"{o} GAIN"] = port.gain
        h[f"{o} CONAD"] = round(1.0 / port.gain, 5)
        h[f"{o} RON"] = port.ron
        h[f"{o} NX"] = NX
        h[f"{o} NY"] = NY // biny
        h[f"{o} PRSCX"] = SCAN
        h[f"{o} PRSCY"] = SCAN // biny
        h[f"{o} OVSCX"] = SCAN
        h[f"{o} OVSCY"] = SCAN // biny
        h[f"{o} X"], h[f"{o} Y"] = corners[i]
    return h
