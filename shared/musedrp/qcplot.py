"""QC plots an operator can look at, written beside the products of a job."""

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402

log = logging.getLogger(__name__)


def _image_panel(ax, data: np.ndarray, title: str) -> None:
    small = data[::8, ::8]
    lo, hi = np.nanpercentile(small, [1, 99])
    im = ax.imshow(small, origin="lower", cmap="gray", vmin=lo, vmax=hi,
                   extent=(0, data.shape[1], 0, data.shape[0]))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x [pix]")
    ax.set_ylabel("y [pix]")
    plt.colorbar(im, ax=ax, fraction=0.046)


def master_bias(path: Path, out: Path) -> Path:
    data = fits.getdata(path, "DATA")
    h = fits.getheader(path)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    _image_panel(a, data, f"{path.name} (every 8th pixel)")
    ny, nx = data.shape
    for i, (rows, cols) in enumerate([(slice(0, ny // 2), slice(0, nx // 2)),
                                      (slice(0, ny // 2), slice(nx // 2, nx)),
                                      (slice(ny // 2, ny), slice(nx // 2, nx)),
                                      (slice(ny // 2, ny), slice(0, nx // 2))], start=1):
        q = data[rows, cols].ravel()[::16]
        ron = h.get(f"ESO QC BIAS MASTER{i} RON", float("nan"))
        b.hist(q, bins=120, range=(-5, 5), histtype="step", label=f"port {i}: RON {ron:.2f} e-")
    b.set_xlabel("adu (after overscan correction)")
    b.set_title("pixel distribution per read-out port", fontsize=9)
    b.legend(fontsize=8)
    return save(fig, out)


def master_flat(path: Path, trace: Path | None, out: Path) -> Path:
    data = fits.getdata(path, "DATA")
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    _image_panel(a, data, f"{path.name} with the traced slice edges")
    if trace is not None:
        table = fits.getdata(trace, 1)
        y = np.linspace(1, data.shape[0], 50)
        for r in table:
            for edge in (1, 2):
                x = sum(r[f"tc{edge}_{k:02d}"] * y**k for k in range(6))
                a.plot(x, y, lw=0.4, color="tab:red")
        b.plot(table["SliceNo"], table["Width"], "o", ms=3)
        b.set_xlabel("slice on the CCD")
        b.set_ylabel("traced width [pix]")
        b.set_title("slice widths", fontsize=9)
    row = data[data.shape[0] // 2]
    inset = b.inset_axes((0.1, 0.12, 0.8, 0.3))
    inset.plot(row, lw=0.5)
    inset.set_title("middle row", fontsize=7)
    inset.tick_params(labelsize=6)
    return save(fig, out)


def save(fig, out, dpi: int = 90):
    """Lay out, write as PNG to ``out`` (a path or a binary file), close; returns ``out``."""
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=dpi)
    plt.close(fig)
    return out


def plot_products(products: dict[str, Path], directory: Path) -> list[Path]:
    """QC plots for the products we know how to show; a plotting failure is logged, not fatal."""
    plots = []
    try:
        for name, path in products.items():
            stem = name.removesuffix(".fits")
            if name.startswith("MASTER_BIAS"):
                plots.append(master_bias(path, directory / f"qc-{stem}.png"))
            elif name.startswith("MASTER_FLAT"):
                trace = next((p for n, p in products.items() if n.startswith("TRACE_TABLE")), None)
                plots.append(master_flat(path, trace, directory / f"qc-{stem}.png"))
    except Exception as err:  # a plot must never cost the products
        log.warning("QC plot failed for %s: %r", directory, err)
    return plots
