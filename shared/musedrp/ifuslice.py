"""A raw frame cut down to what a job of one IFU reads: its primary HDU and that IFU's
extension, fetched by ranged GETs instead of the whole file (36 MB of 860 MB).

A raw MUSE file is a primary HDU (header only) and one extension per IFU, ``CHANnn`` (an
image, or a BINTABLE with its heap when tile-compressed).  Recipes run with ``--nifu=N``
look the extension up by its IFU among those the file has
(``muse_utils_get_extension_for_ifu``), load it and merge its header into the primary one
(``muse_image_load_from_raw``); its position in the file is only logged.  So a file of the
two HDUs, byte for byte as stored, gives esorex the same data and headers as the whole file.
The ingest records every HDU's extent (``Frame.extents``), the planner puts the two ranges
into the work order, and :func:`fetch` writes them one after the other and checks the result
before esorex sees it: two HDUs, the right ``EXTNAME``, the extension's ``DATASUM``.
"""

from pathlib import Path

import numpy as np

from musedrp.errors import DataError
from musedrp.frames import FitsLayoutError, data_size, scan_layout
from musedrp.messages import InputFile
from musedrp.storage import ObjectStore

CHUNK = 8 << 20  # bytes per GET and per checksum step: bounded memory whatever the extension


def fetch(store: ObjectStore, key: str, f: InputFile, dest: Path) -> int:
    """Write the byte ranges of ``f`` of the object ``key`` to ``dest``; the bytes fetched.

    Raises
    ------
    DataError
        The ranges do not fit the object, or what they give is not the primary HDU and the
        extension of ``f.ifu`` with its recorded ``DATASUM`` (the object changed since the
        ingest, or the order is wrong).
    """
    where = f"{key}, IFU {f.ifu}"
    reader, size = store.open_range(key)
    check_ranges(f.ranges, size, where)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as out:
        for offset, length in f.ranges:
            reader.seek(offset)
            while length:
                chunk = reader.read(min(CHUNK, length))
                if not chunk:
                    raise DataError(f"{where}: the object ended before byte {reader.tell()}")
                out.write(chunk)
                length -= len(chunk)
    check_slice(dest, f.ifu, f.datasum, where)
    return reader.bytes_read


def check_ranges(ranges: tuple[tuple[int, int], ...], size: int, where: str) -> None:
    """Two ranges: the primary HDU from byte 0, then one after it, both inside ``size``."""
    if len(ranges) != 2 or ranges[0][0] != 0 or ranges[1][0] < ranges[0][1] \
            or sum(ranges[1]) > size:
        raise DataError(f"{where}: byte ranges {list(ranges)} are not a primary HDU and one "
                        f"extension after it within the object's {size} bytes")


def check_slice(path: Path, ifu: int | None, datasum: str, where: str) -> None:
    """``path`` holds exactly a primary HDU and the extension ``CHAN<ifu>``, whose data sum
    to ``datasum`` (when the frame has one)."""
    try:
        with path.open("rb") as f:
            hdus = scan_layout(f, path.stat().st_size)
    except FitsLayoutError as err:
        raise DataError(f"{where}: the fetched ranges are not a FITS file: {err}") from err
    extnames = [h.get("EXTNAME", "") for h, _ in hdus[1:]]
    if ifu is None or extnames != [f"CHAN{ifu:02d}"]:
        raise DataError(f"{where}: the fetched ranges hold extensions {extnames}, "
                        f"not the primary HDU and CHAN{ifu or 0:02d}")
    header, (offset, length) = hdus[1]
    if datasum not in ("", "0"):
        got = ones_complement_sum(path, offset + length - data_size(header), offset + length)
        if str(got) != datasum:
            raise DataError(f"{where}: the extension's data sum to {got}, its DATASUM "
                            f"recorded at ingest is {datasum}")


def ones_complement_sum(path: Path, start: int, end: int) -> int:
    """The FITS ``DATASUM`` of bytes ``start`` to ``end`` (a whole number of 2880-byte
    blocks): the 32-bit ones' complement sum of their big-endian 32-bit words."""
    total = 0
    with path.open("rb") as f:
        f.seek(start)
        while start < end:
            chunk = f.read(min(CHUNK, end - start))
            if not chunk:
                raise DataError(f"{path}: ends before byte {end}")
            start += len(chunk)
            total += int(np.frombuffer(chunk, dtype=">u4").sum(dtype=np.uint64))
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total
