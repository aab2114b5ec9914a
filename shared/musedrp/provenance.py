"""Provenance, stamped once by the shared runner: product headers and ``manifest.json``."""

import functools
import hashlib
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astropy.io import fits

import musedrp

if TYPE_CHECKING:  # messages imports storage, which imports this module
    from musedrp.messages import InputFile

MANIFEST = "manifest.json"
ERROR_FILE = "error.txt"  # why a job failed, beside where its products would be


@functools.cache
def git_sha() -> str:
    """The code's revision: ``MUSEDRP_GIT_SHA`` (set in images) or the checkout's HEAD."""
    if sha := os.environ.get("MUSEDRP_GIT_SHA"):
        return sha
    try:
        out = subprocess.run(  # noqa: S603 - fixed arguments, git from PATH in a checkout
            ["git", "rev-parse", "--short=12", "HEAD"],  # noqa: S607
            cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5, check=False)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's content, read in 4 MB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


@functools.cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return "sha256:" + file_sha256(Path(path))


def checksum(f: "InputFile") -> str:
    """A content checksum of what the job reads.

    For a raw frame the ``DATASUM`` of its IFU extension (written by ESO and the simulator,
    read from the header at classification) identifies exactly the data used; otherwise the
    file's SHA-256, computed once per file and process.
    """
    if f.datasum:
        return f"datasum:CHAN{f.ifu:02d}:{f.datasum}" if f.ifu else f"datasum:{f.datasum}"
    path = Path(f.path)
    st = path.stat()
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


def stamp(product: Path, job_key: str) -> None:
    """Write musedrp's identity into a product's primary header."""
    with fits.open(product, mode="update") as hdul:
        h = hdul[0].header
        h["HIERARCH MUSEDRP VERSION"] = musedrp.__version__
        h["HIERARCH MUSEDRP GIT SHA"] = git_sha()
        h["HIERARCH MUSEDRP JOB KEY"] = job_key


def write_manifest(directory: Path, content: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` atomically (the commit point of a job); return what it holds."""
    content = {
        "musedrp": {"version": musedrp.__version__, "git_sha": git_sha()},
        "host": platform.node(),
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        **content,
    }
    tmp = directory / (MANIFEST + ".tmp")
    text = json.dumps(content, indent=1, default=str)
    tmp.write_text(text + "\n")
    tmp.replace(directory / MANIFEST)
    return json.loads(text)


def write_error(directory: Path, reason: str) -> None:
    """Record why the job of ``directory`` failed (``musedrp report`` shows it)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ERROR_FILE).write_text(reason.rstrip("\n") + "\n")


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None
