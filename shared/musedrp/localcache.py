"""Objects kept on a machine's scratch disk by their SHA-256, so that a worker does not
download what a worker of the same machine has just uploaded or downloaded.

Every object carries its content's SHA-256 (:mod:`musedrp.storage`), so a cached file named
by it is the object whatever its key, and a key rewritten with other content is simply a
miss.  The workers of one machine (``musedrp serve``) share one cache under the scratch
directory; a Kubernetes pod has its own.  Files enter by hard link (no copy: the job's file
and the cached one are one inode, read-only), leave oldest-used first once the cache holds
more than its limit, and all of them when the scratch disk fills (the job then retries).
Several processes use one cache without a lock: a file enters under a temporary name and is
renamed into place, and a file removed under a reader is a miss.
"""

import contextlib
import os
import re
import shutil
from pathlib import Path

SHA256 = re.compile(r"[0-9a-f]{64}")


class LocalCache:
    def __init__(self, root: Path, limit_bytes: int) -> None:
        self.root, self.limit = root, limit_bytes
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        if not SHA256.fullmatch(sha256):  # object metadata is input: never a path
            raise ValueError(f"{sha256!r} is not a SHA-256")
        return self.root / sha256

    def get(self, sha256: str, dest: Path) -> bool:
        """Put the file with this content at ``dest``; False if the cache does not hold it."""
        src = self._path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            link_or_copy(src, dest)
            os.utime(src)  # used now: the last to go
        except FileNotFoundError:
            return False
        return True

    def add(self, path: Path, sha256: str) -> None:
        """Keep ``path`` (whose content has this SHA-256), then trim to the limit."""
        dest = self._path(sha256)
        if dest.exists():
            os.utime(dest)
            return
        tmp = dest.with_name(f".{sha256}.{os.getpid()}")
        try:
            link_or_copy(path, tmp)
            tmp.chmod(0o444)
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
        self.trim(self.limit)

    def trim(self, limit: int) -> int:
        """Remove the least recently used files until at most ``limit`` bytes are held;
        returns the bytes removed."""
        files = []
        for p in self.root.iterdir():
            with contextlib.suppress(FileNotFoundError):  # another process trimmed it
                st = p.stat()
                files.append((st.st_mtime, st.st_size, p))
        held, removed = sum(size for _, size, _ in files), 0
        for _, size, p in sorted(files, key=lambda f: f[0]):
            if held - removed <= limit:
                break
            p.unlink(missing_ok=True)
            removed += size
        return removed


def link_or_copy(src: Path, dest: Path) -> bool:
    """Make ``dest`` the file ``src``: a hard link (True) where the file system allows one,
    else a copy (False)."""
    try:
        os.link(src, dest)
    except FileExistsError:
        dest.unlink()
        os.link(src, dest)
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            raise
        shutil.copyfile(src, dest)  # another file system, or no hard links there
        return False
    return True
